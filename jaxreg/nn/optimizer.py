"""``nnx.Optimizer`` with jaxreg's one-pass update step."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax.nnx.training.optimizer import to_opt_state

from jaxreg.buffers import write_into
from jaxreg.fused import apply_step

__all__ = ["Optimizer", "update_model"]


def update_model(optimizer: nnx.Optimizer, model: nnx.Module, grads: Any, **extra_args: Any) -> None:
    """``optimizer.update(model, grads)`` through :func:`jaxreg.apply_step`.

    The same as ``nnx.Optimizer.update`` (parameters selected by ``optimizer.wrt``,
    state and step counter advanced), except that a :func:`jaxreg.chain` runs as one
    pass over the memory; any other transformation runs ``tx.update`` +
    ``optax.apply_updates`` as nnx does. ``jaxreg.training.fit`` steps with it.

    Args:
      optimizer: an ``nnx.Optimizer`` (its ``tx``, ``wrt``, state and step are used).
      model: the model it was built for.
      grads: the gradients, e.g. from ``nnx.grad(loss)(model)``.
      **extra_args: passed to ``tx.update`` for the transforms that read them, such as
        ``value=loss`` for ``optax.contrib.reduce_on_plateau`` (as optax's
        ``GradientTransformationExtraArgs``; the others ignore them). The single pass
        of a fused chain reads none: its members are element-wise.

    Returns:
      None; ``model``'s parameters and ``optimizer``'s state and step are updated in
      place (and its ``grads`` for a ``jaxreg.nn.Optimizer(..., keep_grads=True)``).
    """
    params = nnx.as_pure(nnx.state(model, optimizer.wrt, graph=optimizer.graph))
    grad_arrays = _kept(optimizer, grads)
    opt_state = nnx.as_pure(optimizer.opt_state)
    new_params, new_state = apply_step(optimizer.tx, grad_arrays, opt_state, params, **extra_args)
    nnx.update(model, new_params)
    nnx.update(optimizer.opt_state, nnx.state(new_state, graph=optimizer.graph))
    optimizer.step[...] += 1


def _kept(optimizer: nnx.Optimizer, grads: Any) -> Any:
    """The ``wrt`` gradients as pure arrays, written into ``optimizer.grads`` when it keeps them."""
    grad_arrays = nnx.as_pure(nnx.state(grads, optimizer.wrt, graph=optimizer.graph))
    if isinstance(optimizer, Optimizer) and optimizer.grads is not None:
        grad_arrays = write_into(nnx.as_pure(optimizer.grads), grad_arrays)
        nnx.update(optimizer.grads, nnx.state(grad_arrays, graph=optimizer.graph))
    return grad_arrays


class Optimizer(nnx.Optimizer):
    """``nnx.Optimizer`` whose ``update`` runs :func:`jaxreg.apply_step`.

    Build it as ``nnx.Optimizer(model, tx, wrt=nnx.Param)``; with ``tx`` a
    :func:`jaxreg.chain` every step is one pass over the parameters and the optimizer
    state on CPU. Unlike ``nnx.Optimizer.update`` it returns None rather than the
    updates (the single pass never forms them). Extra keyword arguments (for a
    ``GradientTransformationExtraArgs`` such as a line search) are passed on to
    ``nnx.Optimizer.update``, which runs the chain unfused and returns the updates.

    With ``keep_grads=True`` the optimizer also holds the last gradients it was given, in
    ``optimizer.grads`` (zeros before the first step), as PyTorch keeps ``param.grad``:
    one more copy of the ``wrt`` parameters in memory. In a jitted step that donates the
    optimizer (``nnx.jit(train_step, donate_argnums=(0, 1))``, or ``jax.jit`` of a split
    state with ``donate_argnums``), the backward pass then writes the gradients into that
    memory (:func:`jaxreg.write_into`) instead of into the call's temporaries. On CPU
    this is what makes a step that clips by the global norm cheap: XLA:CPU allocates a
    call's temporaries afresh every call, and a step that keeps all its gradients alive
    for the norm has over 32 MB of them from about 8M float32 parameters on, which glibc
    maps afresh and the step faults in page by page (docs/benchmarks.md measures it).
    Inside ``jaxreg.training.fit`` (one jitted scan per epoch) it changes nothing but the
    memory.
    """

    def __init__(
        self,
        model: nnx.Module,
        tx: optax.GradientTransformation,
        *,
        wrt: Any,
        graph: bool | None = None,
        keep_grads: bool = False,
    ):
        """As ``nnx.Optimizer``: ``tx``'s state for the parameters of ``model`` that
        ``wrt`` selects; with ``keep_grads``, also a zero gradient buffer per parameter."""
        super().__init__(model, tx, wrt=wrt, graph=graph)
        if not isinstance(keep_grads, bool):
            raise TypeError(f"jaxreg.nn.Optimizer: keep_grads must be True or False, got {keep_grads!r}.")
        self.grads = None
        if keep_grads:
            zeros = jax.tree.map(jnp.zeros_like, nnx.state(model, wrt, graph=graph))
            self.grads = nnx.data(to_opt_state(zeros))

    def update(self, model: nnx.Module, grads: Any, /, **kwargs: Any) -> Any:
        """One step of ``tx`` on ``model``'s ``wrt`` parameters (see :func:`update_model`)."""
        if kwargs:
            _kept(self, grads)
            return super().update(model, grads, **kwargs)
        update_model(self, model, grads)
        return None
