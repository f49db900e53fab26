"""Adaptive choice of a regularization strength by hypergradient descent.

The "adaptive regularization" the source articles mention: treat the validation loss
after ``K`` training steps as a differentiable function of ``log(lambda)``, and take
gradient steps on ``log(lambda)``. Because jaxreg's hyperparameters are traceable, the
strength can sit in any transform of the training chain (coupled or decoupled weight
decay, a prox, a projection radius) and ``jax.grad`` differentiates through the whole
unrolled run.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg import _checks


class TuneResult(NamedTuple):
    """The outcome of :func:`tune_strength`."""

    strength: float  # the final strength
    strengths: np.ndarray  # the strength before each outer step, then the final one
    val_losses: np.ndarray  # the validation loss at each strength in ``strengths[:-1]``


def unrolled_val_loss(
    make_optimizer: Callable[[jax.Array], optax.GradientTransformation],
    train_loss: Callable[[optax.Params], jax.Array],
    val_loss: Callable[[optax.Params], jax.Array],
    init_params: optax.Params,
    inner_steps: int,
) -> Callable[[jax.Array], jax.Array]:
    """The map ``log(strength) -> val_loss(params after inner_steps of training)``.

    Args:
      make_optimizer: builds the training chain from a (traced) strength.
      train_loss: the training loss of the params.
      val_loss: the validation loss of the params.
      init_params: where every training run starts.
      inner_steps: training steps per run.

    Returns:
      A pure, differentiable function of ``log(strength)``.
    """

    def run(log_strength: jax.Array) -> jax.Array:
        tx = make_optimizer(jnp.exp(log_strength))

        def step(carry, _):
            params, state = carry
            updates, state = tx.update(jax.grad(train_loss)(params), state, params)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (init_params, tx.init(init_params)), length=inner_steps)
        return val_loss(params)

    return run


def tune_strength(
    make_optimizer: Callable[[jax.Array], optax.GradientTransformation],
    train_loss: Callable[[optax.Params], jax.Array],
    val_loss: Callable[[optax.Params], jax.Array],
    init_params: optax.Params,
    init_strength: float,
    *,
    inner_steps: int = 50,
    outer_steps: int = 30,
    outer_learning_rate: float = 0.2,
) -> TuneResult:
    """Tunes a regularization strength by gradient descent on ``log(strength)``.

    Each outer step trains from ``init_params`` for ``inner_steps`` steps with
    ``make_optimizer(strength)``, measures ``val_loss``, and moves ``log(strength)``
    along ``-d val_loss / d log(strength)`` (Adam with ``outer_learning_rate``): the
    hypergradient flows back through the unrolled training run. The outer loop is one
    ``lax.scan``, so the whole search compiles once.

    Args:
      make_optimizer: builds the training chain from a (traced) strength, e.g.
        ``lambda lam: optax.chain(optax.sgd(0.1), jaxreg.decoupled_weight_decay(lam,
        learning_rate=0.1))``.
      train_loss: training loss of the params (without the penalty when the chain
        applies it; with it, e.g. ``jaxreg.penalties.l2``, when it does not).
      val_loss: validation loss of the params.
      init_params: where every training run starts.
      init_strength: the starting strength, finite and > 0.
      inner_steps: training steps per run, >= 1.
      outer_steps: hypergradient steps, >= 1.
      outer_learning_rate: Adam's step size on ``log(strength)``, > 0.

    Returns:
      A :class:`TuneResult` with the final strength and the path it took. A
      RuntimeWarning says from which outer step the validation loss or the strength
      is NaN, if they become NaN.

    References:
      Maclaurin, Duvenaud & Adams, *Gradient-based hyperparameter optimization through
      reversible learning*, ICML 2015; Franceschi et al., *Forward and reverse
      gradient-based hyperparameter optimization*, ICML 2017.
    """
    fn = "tune_strength"
    _checks.check_positive(fn, "init_strength", init_strength)
    if not np.all(np.isfinite(np.asarray(init_strength))):
        raise ValueError(f"{fn}: init_strength must be a finite positive number, got {init_strength!r}.")
    _checks.check_positive(fn, "outer_learning_rate", outer_learning_rate)
    inner_steps = _checks.check_positive_int(fn, "inner_steps", inner_steps)
    outer_steps = _checks.check_positive_int(fn, "outer_steps", outer_steps)
    objective = jax.value_and_grad(unrolled_val_loss(make_optimizer, train_loss, val_loss, init_params, inner_steps))
    outer = optax.adam(outer_learning_rate)

    def outer_step(carry, _):
        log_strength, state = carry
        loss, grad = objective(log_strength)
        updates, state = outer.update(grad, state)
        return (optax.apply_updates(log_strength, updates), state), (log_strength, loss)

    @jax.jit
    def search(log_strength):
        (final, _), (path, losses) = jax.lax.scan(
            outer_step, (log_strength, outer.init(log_strength)), length=outer_steps
        )
        return final, path, losses

    # optax.adam raises its decay to an int32 power, which strict dtype promotion
    # refuses; trace the search with standard promotion so it runs under either.
    with jax.numpy_dtype_promotion("standard"):
        final, path, losses = search(jnp.asarray(math.log(init_strength), jnp.float32))
    strengths = np.exp(np.append(np.asarray(path), float(final)))
    losses = np.asarray(losses)
    _warn_nan(fn, strengths, losses)
    return TuneResult(float(strengths[-1]), strengths, losses)


def _warn_nan(fn: str, strengths: np.ndarray, losses: np.ndarray) -> None:
    """Warns where the validation loss or the strength first became NaN (outer steps from 0)."""
    found = []
    if np.isnan(losses).any():
        step = int(np.argmax(np.isnan(losses)))
        found.append(f"the validation loss is NaN from outer step {step} (strength {strengths[step]:.4g})")
    if np.isnan(strengths).any():
        found.append(f"the strength is NaN from outer step {int(np.argmax(np.isnan(strengths)))}")
    if found:
        warnings.warn(
            f"{fn}: {'; '.join(found)}. A training run diverged or the hypergradient was not finite: lower "
            "outer_learning_rate or the inner learning rate, or start from another init_strength.",
            RuntimeWarning,
            stacklevel=3,
        )
