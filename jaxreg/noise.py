"""Annealed Gaussian gradient noise (Neelakantan et al. 2015).

A gradient-space transform: place it *before* the optimizer. The random key lives in the
state (as raw ``uint32`` key data, so the state jits, checkpoints and resumes like any
other array), so the same seed gives the same noise, step after step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg import _checks, _tree
from jaxreg.masks import Mask

__all__ = ["AddNoiseState", "add_gradient_noise"]


class AddNoiseState(NamedTuple):
    """State of :func:`add_gradient_noise`."""

    count: jax.Array  # steps taken: the annealing's t and a schedule's step
    key: jax.Array  # raw key data (jax.random.key_data) of the key for the next step


def key_data(fn: str, seed: Any) -> jax.Array:
    """The raw key data of ``seed``: an int seed, a typed key (``jax.random.key``) or raw key data."""
    if isinstance(seed, jax.Array) and jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(seed)
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return jax.random.key_data(jax.random.key(int(seed)))
    if isinstance(seed, (jax.Array, np.ndarray)) and seed.dtype == np.uint32:
        return jnp.asarray(seed)
    raise TypeError(
        f"{fn}: seed must be an int or a key (jax.random.key(...) or jax.random.PRNGKey(...)), got {seed!r} of type "
        f"{type(seed).__name__}."
    )


def add_gradient_noise(
    eta: chex.Numeric | optax.Schedule, gamma: chex.Numeric = 0.55, seed: Any = 0, mask: Mask = None
) -> optax.GradientTransformation:
    """Adds annealed Gaussian noise to the gradients: ``g_t <- g_t + N(0, sigma_t^2)``.

    ``sigma_t^2 = eta / t^gamma`` at step ``t = 1, 2, ...``, each entry drawn
    independently. Same distribution as ``optax.add_noise(eta, gamma, key=seed)``, and
    the same numbers on float32 gradients (the same keys, split the same way, over the
    selected leaves). The noise is drawn in float32 and added in each leaf's compute
    dtype, so bf16/f16/float64 gradients get the same draws as float32 ones. The key is
    in the state (:class:`AddNoiseState`), so a jitted step is reproducible and a
    restored state resumes the same stream. Real values only; integer leaves are left
    alone.

    Args:
      eta: the noise variance at step 1, >= 0 (float or schedule; the paper uses 0.01,
        0.3 or 1.0).
      gamma: the annealing exponent, >= 0 (the paper's 0.55).
      seed: an int, or a key (``jax.random.key(...)`` or ``jax.random.PRNGKey(...)``).
      mask: pytree of bools or callable ``updates -> mask``; True where noise is added.

    Returns:
      An ``optax.GradientTransformation`` with an :class:`AddNoiseState`.

    References:
      Neelakantan et al., *Adding Gradient Noise Improves Learning for Very Deep
      Networks*, 2015.
    """
    fn = "add_gradient_noise"
    _checks.check_nonnegative(fn, "eta", eta)
    _checks.check_nonnegative(fn, "gamma", gamma)
    start = key_data(fn, seed)

    def init_fn(params: optax.Params) -> AddNoiseState:
        _tree.acted_on(fn, mask, params, real_only=True)
        return AddNoiseState(jnp.zeros([], jnp.int32), start)

    def update_fn(
        updates: optax.Updates, state: AddNoiseState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, AddNoiseState]:
        del params
        _, leaves, picked = _tree.acted_on(fn, mask, updates, real_only=True)
        count = optax.safe_increment(state.count)
        variance = _tree.value_at(eta, state.count)
        key, sample = jax.random.split(jax.random.wrap_key_data(state.key))
        keys = jax.random.split(sample, len(picked))
        out = list(leaves)
        for k, i in zip(keys, picked):
            g = _tree.as_array(leaves[i])
            z = jax.random.normal(k, jnp.shape(g), jnp.float32)
            # sigma in the leaf's real compute dtype (float32, or float64 for float64 leaves).
            t = count.astype(_tree.real_dtype(g.dtype))
            std = jnp.sqrt(_tree.real_for(variance, g) / t ** _tree.real_for(gamma, g))
            out[i] = (_tree.wide(g) + std * z.astype(_tree.compute_dtype(g.dtype))).astype(g.dtype)
        return _tree.rebox_like(updates, out), AddNoiseState(count, jax.random.key_data(key))

    return optax.GradientTransformation(init_fn, update_fn)
