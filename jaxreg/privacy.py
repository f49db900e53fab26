"""Differentially private aggregation of per-example gradients (DP-SGD) and per-example clipping.

These transforms take *per-example* gradients, every leaf with a leading batch axis (as
``jax.vmap(jax.grad(loss), in_axes=(None, 0))(params, batch)`` gives them), and return
one aggregated gradient without that axis, so they must come *first* in a chain. jaxreg
has no privacy accountant: it computes the step, not the guarantee (see
:func:`dp_aggregate`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from jaxreg import _checks, _tree
from jaxreg.noise import key_data

__all__ = ["DPAggregateState", "dp_aggregate", "per_example_clip"]


class DPAggregateState(NamedTuple):
    """State of :func:`dp_aggregate` and :func:`per_example_clip`."""

    count: jax.Array  # steps taken
    key: jax.Array  # raw key data (jax.random.key_data) of the key for the next step's noise
    clipped_fraction: jax.Array  # share of the examples whose gradient was clipped on the last step


def _batch_size(fn: str, paths: list[Any], leaves: list[Any]) -> int:
    """The common leading axis of the per-example gradients; a ValueError names a leaf without it."""
    size = None
    for path, x in zip(paths, leaves):
        shape = jnp.shape(x)
        where = f"params{jax.tree_util.keystr(path)}"
        if not shape or (size is not None and shape[0] != size):
            want = "a leading batch axis" if size is None else f"the leading batch axis of size {size} of the others"
            raise ValueError(
                f"{fn}: the per-example gradient {where} has shape {shape}, but every leaf needs {want}; pass "
                "per-example gradients, e.g. jax.vmap(jax.grad(loss), in_axes=(None, 0))(params, batch)."
            )
        size = shape[0]
    if size == 0:
        raise ValueError(f"{fn}: the per-example gradients have a batch of size 0; pass at least one example.")
    return size or 1


def _aggregate(fn: str, clip: Any, noise_multiplier: Any, seed: Any) -> optax.GradientTransformation:
    start = key_data(fn, seed)

    def init_fn(params: optax.Params) -> DPAggregateState:
        del params
        return DPAggregateState(jnp.zeros([], jnp.int32), start, jnp.zeros([], jnp.float32))

    def update_fn(
        updates: optax.Updates, state: DPAggregateState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, DPAggregateState]:
        del params
        paths, leaves, treedef = _tree.leaves_with_paths(updates)
        leaves = [_tree.as_array(x) for x in leaves]
        picked = [i for i, x in enumerate(leaves) if _tree.is_inexact(x)]
        for i in picked:
            if jnp.issubdtype(leaves[i].dtype, jnp.complexfloating):
                raise TypeError(
                    f"{fn}: params{jax.tree_util.keystr(paths[i])} is {leaves[i].dtype}, but {fn} takes real values "
                    "only."
                )
        batch = _batch_size(fn, paths, leaves)
        gs = [_tree.wide(leaves[i]) for i in picked]
        # Each example's global L2 norm, from per-leaf sums of squares (in the widest compute dtype).
        dtype = _tree.widest_real(gs)
        squares = [jnp.sum(g * g, axis=tuple(range(1, g.ndim))).astype(dtype) for g in gs]
        norms = jnp.sqrt(sum(squares[1:], squares[0])) if squares else jnp.zeros([batch], dtype)
        bound = jnp.asarray(clip).astype(dtype)
        multipliers = jnp.nan_to_num(jnp.minimum(bound / norms, 1.0), nan=1.0)
        clipped = jnp.mean(multipliers < 1.0, dtype=jnp.float32)
        key, *keys = jax.random.split(jax.random.wrap_key_data(state.key), len(gs) + 1)
        std = bound * jnp.asarray(noise_multiplier).astype(dtype)
        out = [jnp.zeros(jnp.shape(x)[1:], x.dtype) for x in leaves]  # integer leaves have no gradient
        for i, g, k in zip(picked, gs, keys):
            total = jnp.tensordot(multipliers.astype(g.dtype), g, axes=1)
            noise = jax.random.normal(k, total.shape, total.dtype)
            out[i] = ((total + std.astype(g.dtype) * noise) / batch).astype(leaves[i].dtype)
        new_state = DPAggregateState(optax.safe_increment(state.count), jax.random.key_data(key), clipped)
        return jax.tree.unflatten(treedef, out), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def dp_aggregate(
    l2_norm_clip: chex.Numeric, noise_multiplier: chex.Numeric, seed: Any = 0
) -> optax.GradientTransformation:
    """The DP-SGD aggregation: clip each example's gradient, sum, add Gaussian noise, average.

    With per-example gradients ``g_1, ..., g_B`` (every leaf with a leading batch axis of
    size ``B``), ``C = l2_norm_clip`` and ``sigma = noise_multiplier``::

        g <- (sum_b g_b * min(1, C / ||g_b||) + N(0, (sigma * C)^2 I)) / B

    where ``||g_b||`` is the global L2 norm of example ``b``'s gradient over all leaves.
    The same numbers as ``optax.contrib.differentially_private_aggregate(C, sigma,
    key=seed)``: bit for bit at ``sigma = 0``, and with the same keys split the same way
    (so the same draws) otherwise. The state records ``clipped_fraction``, the share of
    examples whose gradient was clipped (if it is near 1, ``C`` is too small). It must be
    the first member of a chain; every leaf is privatized (there is no ``mask``: a leaf
    left out would leak). Real values only; integer leaves give zeros.

    jaxreg has **no privacy accountant**: this computes the step, not the (epsilon,
    delta) it buys. Compute epsilon with an external accountant from the noise
    multiplier, the sampling rate ``B / N`` (with Poisson or shuffled sampling) and the
    number of steps, e.g. Google's ``dp-accounting`` package
    (``dp_accounting.rdp.RdpAccountant`` with a ``PoissonSampledDpEvent`` of a
    ``GaussianDpEvent(noise_multiplier)``, composed over the steps) or Opacus'
    ``RDPAccountant``. Tensorflow Privacy's ``compute_dp_sgd_privacy`` does the same.

    Args:
      l2_norm_clip: the bound ``C`` on each example's gradient norm, > 0.
      noise_multiplier: the ratio ``sigma`` of the noise's standard deviation to ``C``, >= 0.
      seed: an int, or a key (``jax.random.key(...)`` or ``jax.random.PRNGKey(...)``).

    Returns:
      An ``optax.GradientTransformation`` with a :class:`DPAggregateState`.

    References:
      Abadi et al., *Deep Learning with Differential Privacy*, CCS 2016.
    """
    fn = "dp_aggregate"
    _checks.check_positive(fn, "l2_norm_clip", l2_norm_clip)
    _checks.check_nonnegative(fn, "noise_multiplier", noise_multiplier)
    return _aggregate(fn, l2_norm_clip, noise_multiplier, seed)


def per_example_clip(l2_norm_clip: chex.Numeric) -> optax.GradientTransformation:
    """Clips each example's gradient to global L2 norm ``l2_norm_clip`` and averages them.

    ``g <- (1/B) sum_b g_b * min(1, C / ||g_b||)`` over per-example gradients with a
    leading batch axis: :func:`dp_aggregate` without noise (``optax.per_example_global_norm_clip``'s
    sum divided by ``B``). It bounds each example's influence on the step, which is
    also a robustness measure against outliers. The state records ``clipped_fraction``.

    Args:
      l2_norm_clip: the bound ``C`` on each example's gradient norm, > 0.

    Returns:
      An ``optax.GradientTransformation`` with a :class:`DPAggregateState`.
    """
    fn = "per_example_clip"
    _checks.check_positive(fn, "l2_norm_clip", l2_norm_clip)
    return _aggregate(fn, l2_norm_clip, 0.0, 0)
