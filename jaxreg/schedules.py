"""Learning-rate decays from the source articles, as plain optax schedules.

A negative step count is clamped to 0, as optax's schedules treat steps before their
start: the rate there is ``init_value``.
"""

from __future__ import annotations

import chex
import jax.numpy as jnp
import optax

from jaxreg import _checks

__all__ = ["inverse_sqrt_decay", "epoch_decay"]


def inverse_sqrt_decay(init_value: chex.Numeric, gamma: chex.Numeric) -> optax.Schedule:
    """``eta_t = init_value / sqrt(1 + gamma^2 * t)``.

    The decay of the second source article: fast early progress, step sizes that still
    sum to infinity (so gradient descent converges) while their squares grow only like
    ``log t``.

    Args:
      init_value: eta_0 > 0.
      gamma: decay speed >= 0; 0 gives a constant schedule.

    Returns:
      An optax schedule ``step -> learning rate``.

    Example:
      >>> import jaxreg
      >>> schedule = jaxreg.inverse_sqrt_decay(0.1, gamma=1.0)
      >>> [round(float(schedule(t)), 4) for t in (0, 3, 8)]
      [0.1, 0.05, 0.0333]
    """
    _checks.check_positive("inverse_sqrt_decay", "init_value", init_value)
    _checks.check_nonnegative("inverse_sqrt_decay", "gamma", gamma)

    def schedule(count: chex.Numeric) -> chex.Numeric:
        count = jnp.maximum(jnp.asarray(count, jnp.float32), 0)  # steps before 0 are step 0, as in optax
        return init_value / jnp.sqrt(1 + gamma**2 * count)

    return schedule


def epoch_decay(init_value: chex.Numeric, decay: chex.Numeric, steps_per_epoch: int) -> optax.Schedule:
    """``eta = init_value * (1 - decay) ** epoch``, constant within an epoch.

    The per-epoch multiplicative decay ``eta <- eta * (1 - decay)`` of the second
    source article. ``decay`` may be traced (a sweep over it is one ``vmap``), which
    ``optax.exponential_decay(staircase=True)`` does not allow: it branches on the rate
    in Python.

    Args:
      init_value: eta_0 > 0.
      decay: fraction removed per epoch, in [0, 1).
      steps_per_epoch: optimizer steps per epoch, a positive int.

    Returns:
      An optax schedule ``step -> learning rate``.
    """
    fn = "epoch_decay"
    _checks.check_positive(fn, "init_value", init_value)
    value = _checks.concrete(decay)
    if value is not None and not (0 <= value < 1):
        raise ValueError(f"{fn}: decay must lie in [0, 1), got {decay!r}.")
    steps_per_epoch = _checks.check_positive_int(fn, "steps_per_epoch", steps_per_epoch)

    def schedule(count: chex.Numeric) -> chex.Numeric:
        count = jnp.maximum(jnp.asarray(count, jnp.int32), 0)  # steps before 0 are step 0, as in optax
        epoch = (count // steps_per_epoch).astype(jnp.float32)
        return init_value * (1 - jnp.asarray(decay, jnp.float32)) ** epoch

    return schedule
