"""Sparsity schedules: how much to prune at each step, as optax-style schedules.

A sparsity schedule maps the step count to the fraction of weights pruned at that step
(a float32 scalar). It is an ``optax.Schedule``: a pure function of the count that
works under ``jit``, so :func:`~jaxreg.pruning.transforms.prune_during_training` can
evaluate it inside the compiled step. Before pruning starts a schedule gives ``0``
(the dense model).
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg import _checks
from jaxreg.pruning.masks import check_sparsity

__all__ = ["constant_sparsity", "polynomial_sparsity"]


def _check_step(fn: str, name: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise ValueError(f"{fn}: {name} must be an int >= {least}, got {value!r}.")
    return int(value)


def polynomial_sparsity(
    final: chex.Numeric,
    begin_step: int,
    end_step: int,
    initial: chex.Numeric = 0.0,
    frequency: int = 1,
    power: chex.Numeric = 3,
) -> optax.Schedule:
    """Gradual pruning (Zhu & Gupta 2017): the sparsity rises as a polynomial to ``final``.

    With ``t0 = begin_step``, ``t1 = end_step`` and ``f = frequency``, the sparsity at
    step ``t`` is

    ``s(t) = final + (initial - final) * (1 - (t' - t0) / (t1 - t0)) ** power``,

    where ``t' = t0 + f * floor((t - t0) / f)`` is the last pruning step (so the value
    changes only every ``f`` steps) and ``t' = t1`` from ``t1`` on (so ``final`` is
    reached at ``end_step`` even when ``f`` does not divide ``t1 - t0``). Before ``t0``
    it is ``0``: the model is dense until pruning begins. The paper's rule with
    ``power=3`` and ``initial=0``; TensorFlow Model Optimization's ``PolynomialDecay``
    and jaxpruner's ``PolynomialSchedule`` compute the same curve, but also return
    whether to prune at ``t``: here that is decided by the transform (it prunes when the
    value changes).

    Args:
      final: target sparsity in ``[0, 1]`` (a number or a traced scalar).
      begin_step: step at which pruning starts, an int >= 0.
      end_step: step at which ``final`` is reached, an int > ``begin_step``.
      initial: sparsity at ``begin_step``, in ``[0, final]``.
      frequency: steps between two pruning steps, an int >= 1.
      power: exponent of the polynomial, > 0 (3 in the paper).

    Returns:
      An ``optax.Schedule`` mapping the step count to a float32 sparsity.

    References:
      Zhu & Gupta, *To prune, or not to prune: exploring the efficacy of pruning for
      model compression*, 2017 (arXiv:1710.01878), equation (1).
    """
    fn = "polynomial_sparsity"
    check_sparsity(fn, final, name="final")
    check_sparsity(fn, initial, name="initial")
    begin_step = _check_step(fn, "begin_step", begin_step, 0)
    end_step = _check_step(fn, "end_step", end_step, begin_step + 1)
    frequency = _check_step(fn, "frequency", frequency, 1)
    _checks.check_positive(fn, "power", power)
    lo, hi = _checks.concrete(initial), _checks.concrete(final)
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"{fn}: initial must be <= final, got initial={initial!r} and final={final!r}.")
    span = end_step - begin_step

    def schedule(count: chex.Numeric) -> jax.Array:
        count = jnp.asarray(count, jnp.int32)
        last = jnp.maximum(count - begin_step, 0) // frequency * frequency
        progress = jnp.where(count >= end_step, 1.0, jnp.minimum(last, span) / span)
        s = final + (initial - final) * (1.0 - progress) ** power
        s = jnp.where(progress == 0, initial, s)  # the end points exactly, not up to a rounding
        return jnp.where(count < begin_step, 0.0, s).astype(jnp.float32)

    return schedule


def constant_sparsity(sparsity: chex.Numeric, step: int = 0) -> optax.Schedule:
    """One-shot pruning: sparsity ``0`` before ``step``, then ``sparsity`` for good.

    ``s(t) = sparsity if t >= step else 0``. With ``step=0`` the mask is computed at the
    first update (prune at initialization, e.g. with ``snip_score``); with a later step,
    after dense training (train, prune once, fine-tune).

    Args:
      sparsity: the sparsity in ``[0, 1]`` (a number or a traced scalar).
      step: the step at which it is applied, an int >= 0.

    Returns:
      An ``optax.Schedule`` mapping the step count to a float32 sparsity.
    """
    fn = "constant_sparsity"
    check_sparsity(fn, sparsity)
    step = _check_step(fn, "step", step, 0)

    def schedule(count: chex.Numeric) -> jax.Array:
        count = jnp.asarray(count, jnp.int32)
        return jnp.where(count >= step, jnp.asarray(sparsity, jnp.float32), 0.0).astype(jnp.float32)

    return schedule
