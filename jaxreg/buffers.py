"""Values written into a buffer that a jitted step donates: :func:`write_into`.

On CPU, XLA:CPU allocates the temporaries of a jitted call when the call starts and
frees them when it ends. A step that clips by the global norm keeps every gradient
alive until the norm is known, so its temporaries hold all the gradients; once they pass
32 MB, glibc serves them with a fresh ``mmap`` every call, and the step faults them in
4 KiB at a time. Gradients that the step returns into a donated buffer are not
temporaries: they are written where the previous step's were, as PyTorch keeps
``param.grad`` from step to step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxreg._tree import leaves_with_paths, path_str, rebox_like

__all__ = ["write_into"]


def write_into(buffer: Any, values: Any) -> Any:
    """``values``, tied to ``buffer`` so that a jitted step that donates ``buffer`` and
    returns the result in its place computes them in ``buffer``'s memory.

    Use it for the gradients of a training step, with a buffer carried from step to step
    (``jax.tree.map(jnp.zeros_like, params)`` at the start)::

        @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
        def train_step(params, opt_state, grads, x, y):
            grads = jaxreg.write_into(grads, jax.grad(loss)(params, x, y))
            params, opt_state = jaxreg.apply_step(tx, grads, opt_state, params)
            return params, opt_state, grads

    The returned tree holds exactly ``values``; ``buffer``'s contents are never read. Why
    the call is needed: ``jax.jit`` drops an argument the function does not use before it
    matches donated arguments to results, so a buffer that is only overwritten would be
    freed, and the results would be matched to the other donated arguments of the same
    shape out of order (XLA then copies them). ``write_into`` makes the buffer an operand
    (of a select on a constant that XLA removes), so it is kept and aliased to the
    gradients. Return the results in the order of the donated arguments, as above.

    There is no optax or PyTorch function like it: PyTorch keeps ``param.grad`` between
    steps by default; ``jaxreg.nn.Optimizer(..., keep_grads=True)`` does it for Flax NNX.

    Args:
      buffer: a pytree with the structure of ``values`` and, leaf by leaf, their shape
        and dtype.
      values: the arrays to write (e.g. the gradients).

    Returns:
      ``values`` (in its own containers), to be returned from the step in place of
      ``buffer``.

    Raises:
      ValueError: when ``buffer`` and ``values`` differ in structure, or a leaf in shape
        or dtype.
    """
    fn = "jaxreg.write_into"
    paths, new, treedef = leaves_with_paths(values)
    old_paths, old, old_def = leaves_with_paths(buffer)
    if old_def != treedef:
        missing = sorted(set(map(path_str, paths)) ^ set(map(path_str, old_paths)))
        where = f"the leaf '{missing[0]}' is in one and not the other" if missing else "their containers differ"
        raise ValueError(
            f"{fn}: buffer and values have different tree structures ({where}); make the buffer "
            "from the values' structure, e.g. jax.tree.map(jnp.zeros_like, params) for gradients."
        )
    for path, n, o in zip(paths, new, old):
        if jnp.shape(n) != jnp.shape(o) or jnp.result_type(n) != jnp.result_type(o):
            raise ValueError(
                f"{fn}: buffer leaf '{path_str(path)}' is {jnp.result_type(o)}{list(jnp.shape(o))} but the value "
                f"is {jnp.result_type(n)}{list(jnp.shape(n))}; give a buffer of the values' shapes and dtypes."
            )
    kept = [jax.lax.select(jnp.bool_(True), n, o) for n, o in zip(new, old)]
    return rebox_like(values, kept)
