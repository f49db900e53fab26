"""``nnx.Optimizer`` with jaxreg's one-pass update step."""

from __future__ import annotations

from typing import Any

import optax
from flax import nnx

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
      None; ``model``'s parameters and ``optimizer``'s state and step are updated in place.
    """
    params = nnx.as_pure(nnx.state(model, optimizer.wrt, graph=optimizer.graph))
    grad_arrays = nnx.as_pure(nnx.state(grads, optimizer.wrt, graph=optimizer.graph))
    opt_state = nnx.as_pure(optimizer.opt_state)
    new_params, new_state = apply_step(optimizer.tx, grad_arrays, opt_state, params, **extra_args)
    nnx.update(model, new_params)
    nnx.update(optimizer.opt_state, nnx.state(new_state, graph=optimizer.graph))
    optimizer.step[...] += 1


class Optimizer(nnx.Optimizer):
    """``nnx.Optimizer`` whose ``update`` runs :func:`jaxreg.apply_step`.

    Build it as ``nnx.Optimizer(model, tx, wrt=nnx.Param)``; with ``tx`` a
    :func:`jaxreg.chain` every step is one pass over the parameters and the optimizer
    state on CPU. Unlike ``nnx.Optimizer.update`` it returns None rather than the
    updates (the single pass never forms them). Extra keyword arguments (for a
    ``GradientTransformationExtraArgs`` such as a line search) are passed on to
    ``nnx.Optimizer.update``, which runs the chain unfused and returns the updates.
    """

    def __init__(self, model: nnx.Module, tx: optax.GradientTransformation, *, wrt: Any, graph: bool | None = None):
        """As ``nnx.Optimizer``: ``tx``'s state for the parameters of ``model`` that ``wrt`` selects."""
        super().__init__(model, tx, wrt=wrt, graph=graph)

    def update(self, model: nnx.Module, grads: Any, /, **kwargs: Any) -> Any:
        """One step of ``tx`` on ``model``'s ``wrt`` parameters (see :func:`update_model`)."""
        if kwargs:
            return super().update(model, grads, **kwargs)
        update_model(self, model, grads)
        return None
