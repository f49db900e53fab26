"""Early stopping as a pure state machine (third source article).

Watch a validation score, stop after ``patience`` evaluations without an improvement of
at least ``min_delta``, and keep the best parameters. Unlike Keras' ``EarlyStopping``
callback or a PyTorch loop with mutable counters, the state is a pytree of arrays, so
the same object works in a Python loop, inside ``lax.scan``/``lax.while_loop``, and
under ``vmap``, where each lane (say, one lambda of a sweep) stops on its own.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg import _checks, _tree


class EarlyStoppingState(NamedTuple):
    """State of :class:`EarlyStopping`; every field is an array, so it jits and vmaps."""

    best_score: jax.Array  # best score seen (inf / -inf before the first evaluation)
    best_params: Any  # the params that scored best_score
    best_step: jax.Array  # index of the evaluation that scored best_score (-1 if none)
    evaluations: jax.Array  # number of evaluations seen while not stopped
    wait: jax.Array  # evaluations since the last improvement
    should_stop: jax.Array  # True once wait reached patience; then nothing changes


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """Stops when the score has not improved for ``patience`` evaluations; keeps the best.

    An evaluation improves when ``score < best - min_delta`` (``mode="min"``, e.g. a
    loss) or ``score > best + min_delta`` (``mode="max"``, e.g. an accuracy); the first
    finite score always improves, whatever ``min_delta`` (``inf`` included), as in
    Keras. After
    ``patience`` evaluations in a row without improvement, ``should_stop`` becomes True
    and stays True: later updates leave the state unchanged, so a stopped lane of a
    ``vmap`` keeps its best parameters while the others train on. A NaN score is never
    an improvement (it counts toward ``patience``), as in Keras.

    Example::

        stopper = EarlyStopping(patience=5)
        state = stopper.init(params)
        for epoch in range(100):
            params = train_one_epoch(params)
            state = stopper.update(state, validation_loss(params), params)
            if state.should_stop:
                break
        params = state.best_params

    Args:
      patience: evaluations without improvement before stopping, an int >= 1 (a
        Python or NumPy integer).
      min_delta: the smallest change that counts as an improvement, >= 0.
      mode: ``"min"`` (lower is better) or ``"max"`` (higher is better).

    Returns:
      A frozen object with pure ``init(params)`` and ``update(state, score, params)``.
    """

    patience: int = 5
    min_delta: chex.Numeric = 0.0
    mode: str = "min"

    def __post_init__(self) -> None:
        fn = "EarlyStopping"
        if isinstance(self.patience, bool) or not isinstance(self.patience, (int, np.integer)) or self.patience < 1:
            raise ValueError(f"{fn}: patience must be an int >= 1, got {self.patience!r}.")
        object.__setattr__(self, "patience", int(self.patience))  # frozen: a plain int, as given by a NumPy one
        _checks.check_nonnegative(fn, "min_delta", self.min_delta)
        if self.mode not in ("min", "max"):
            raise ValueError(f"{fn}: mode must be 'min' or 'max', got {self.mode!r}.")

    def _sign(self) -> float:
        # Scores are compared as sign * score, so that lower is always better inside.
        return 1.0 if self.mode == "min" else -1.0

    def init(self, params: optax.Params) -> EarlyStoppingState:
        """The state before any evaluation; ``best_params`` starts as ``params``.

        Args:
          params: the initial parameters (any pytree; NNX ``State`` is unboxed).

        Returns:
          An :class:`EarlyStoppingState`.
        """
        params = _tree.unbox(params)
        return EarlyStoppingState(
            best_score=jnp.asarray(self._sign() * jnp.inf, jnp.float32),
            best_params=jax.tree.map(jnp.asarray, params),
            best_step=jnp.asarray(-1, jnp.int32),
            evaluations=jnp.asarray(0, jnp.int32),
            wait=jnp.asarray(0, jnp.int32),
            should_stop=jnp.asarray(False),
        )

    def update(self, state: EarlyStoppingState, score: chex.Numeric, params: optax.Params) -> EarlyStoppingState:
        """Records one evaluation.

        Args:
          state: the current state.
          score: the validation score of ``params`` (a scalar; traced is fine).
          params: the parameters that scored ``score``.

        Returns:
          The new state; unchanged once ``state.should_stop`` is True.
        """
        if jnp.ndim(score) != 0:
            raise ValueError(
                f"EarlyStopping.update: score must be a scalar, got an array of shape {jnp.shape(score)}; "
                "reduce it to one number (e.g. its mean), or vmap the update over it."
            )
        sign = self._sign()
        signed = sign * jnp.asarray(score, jnp.float32)
        best = sign * state.best_score
        active = jnp.logical_not(state.should_stop)
        # Before the first improvement best is inf, and inf - min_delta would be NaN for
        # min_delta = inf: compare with best itself, so the first finite score improves.
        # NaN compares False, so never does.
        threshold = jnp.where(state.best_step < 0, best, best - self.min_delta)
        improved = active & (signed < threshold)
        wait = jnp.where(improved, 0, state.wait + active.astype(jnp.int32))
        params = _tree.unbox(params)
        return EarlyStoppingState(
            best_score=jnp.where(improved, jnp.asarray(score, jnp.float32), state.best_score),
            best_params=jax.tree.map(lambda new, old: jnp.where(improved, new, old), params, state.best_params),
            best_step=jnp.where(improved, state.evaluations, state.best_step),
            evaluations=state.evaluations + active.astype(jnp.int32),
            wait=wait,
            should_stop=state.should_stop | (wait >= self.patience),
        )
