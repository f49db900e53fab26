"""Choosing a regularization strength: grid search, random search, k-fold cross-validation.

The source articles choose lambda by grid search, random search or cross-validation.
Here every candidate value (and every fold) is a lane of one ``vmap`` inside one
compiled program, not a Python loop of recompilations: the user writes one pure
``score_fn`` for one value, and jaxreg maps it. Where memory demands, ``chunk_size``
runs the lanes in chunks (``jax.lax.map(..., batch_size=chunk_size)``), still in one
program.

Folds are given as per-sample weights rather than index sets, so that every fold has
the same static shapes: ``score_fn(value, train_weight, val_weight)`` weights its
training loss by ``train_weight`` and its validation score by ``val_weight``.

k-fold cross-validation over candidate values (a ``kfold_cv(n_splits)``;
scikit-learn's ``GridSearchCV``) is ``grid_search(score_fn, values,
n_splits=k, n_samples=n)``: every (value, fold) pair is a lane of the same vmapped
program, and the :class:`SearchResult` holds each value's mean and std over the folds.
``random_search`` takes the same ``n_splits``. To cross-validate a single setting,
give one value.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg import _checks


class SearchResult(NamedTuple):
    """Scores of a hyperparameter search; lower is better unless ``mode == "max"``."""

    values: np.ndarray  # the candidate values, shape (n,)
    scores: np.ndarray  # per value and fold, shape (n, n_folds); n_folds = 1 without CV
    mean: np.ndarray  # mean score per value over the folds
    std: np.ndarray  # standard deviation over the folds (0 without CV)
    best_index: int | None  # None when every mean score is NaN
    best_value: float  # NaN when every mean score is NaN
    mode: str

    def table(self) -> str:
        """A printable table: value, mean and std of the score, the best marked."""
        lines = [f"{'value':>12} {'mean':>12} {'std':>10}", "-" * 36]
        for i, (v, m, s) in enumerate(zip(self.values, self.mean, self.std)):
            mark = "  <- best" if i == self.best_index else ""
            lines.append(f"{v:12.4g} {m:12.5g} {s:10.3g}{mark}")
        return "\n".join(lines)


def kfold_weights(n_samples: int, n_splits: int) -> tuple[jax.Array, jax.Array]:
    """Per-sample weights of k contiguous folds, as ``sklearn.model_selection.KFold``.

    Fold ``i`` validates on one contiguous block of samples (the first
    ``n_samples % n_splits`` blocks are one sample longer, as in scikit-learn) and
    trains on the rest. Shuffle the data beforehand for shuffled folds.

    Args:
      n_samples: number of samples.
      n_splits: number of folds, ``2 <= n_splits <= n_samples``.

    Returns:
      ``(train_weight, val_weight)``, float32 arrays of shape ``(n_splits, n_samples)``
      holding 0/1, with ``train_weight + val_weight == 1``.
    """
    return _kfold("kfold_weights", n_samples, n_splits)


def _kfold(fn: str, n_samples: int, n_splits: int) -> tuple[jax.Array, jax.Array]:
    n_samples = _checks.check_positive_int(fn, "n_samples", n_samples)
    if isinstance(n_splits, bool) or not isinstance(n_splits, (int, np.integer)) or not 2 <= n_splits <= n_samples:
        raise ValueError(f"{fn}: n_splits must be an int in [2, n_samples={n_samples}], got {n_splits!r}.")
    n_splits = int(n_splits)
    sizes = np.full(n_splits, n_samples // n_splits)
    sizes[: n_samples % n_splits] += 1
    fold_of = np.repeat(np.arange(n_splits), sizes)
    val = (fold_of[None, :] == np.arange(n_splits)[:, None]).astype(np.float32)
    return jnp.asarray(1.0 - val), jnp.asarray(val)


def _check_mode(fn: str, mode: str) -> str:
    if mode not in ("min", "max"):
        raise ValueError(f"{fn}: mode must be 'min' or 'max', got {mode!r}.")
    return mode


def grid_search(
    score_fn: Callable[..., jax.Array],
    values: jax.Array | np.ndarray | list[float],
    *,
    n_splits: int | None = None,
    n_samples: int | None = None,
    chunk_size: int | None = None,
    mode: str = "min",
) -> SearchResult:
    """Scores every candidate value (on every fold) in one compiled, vmapped program.

    Without cross-validation ``score_fn(value) -> scalar``; with ``n_splits`` it is
    ``score_fn(value, train_weight, val_weight) -> scalar`` and is run on each of the
    :func:`kfold_weights` folds of ``n_samples`` samples: this is k-fold
    cross-validation (a ``kfold_cv(n_splits)``, scikit-learn's
    ``GridSearchCV``), every (value, fold) pair one lane of the same program.
    ``score_fn`` typically trains a model with the regularization strength ``value`` (a
    traced scalar: build the jaxreg transforms inside it) and returns a validation loss.

    Args:
      score_fn: pure, jit-able function of one value (and one fold's weights).
      values: the candidate values, a non-empty 1-D sequence.
      n_splits: number of cross-validation folds, or None for a single score.
      n_samples: number of samples, required with ``n_splits``.
      chunk_size: run this many lanes at a time (``jax.lax.map`` batches) to bound
        memory; None runs all lanes in one ``vmap``.
      mode: ``"min"`` (a loss) or ``"max"`` (an accuracy).

    Returns:
      A :class:`SearchResult` with the scores, their mean and std over folds, and the
      best value. A value whose mean score is NaN is never the best; as scikit-learn's
      ``GridSearchCV`` does, a RuntimeWarning says how many are NaN, and when all are,
      ``best_index`` is None and ``best_value`` NaN.
    """
    return _search("grid_search", score_fn, values, n_splits, n_samples, chunk_size, mode)


# The compiled search program of each score function, by chunk size: a second search
# with the same ``score_fn`` (another grid of the same size, another key, the same
# folds) runs the program already compiled instead of tracing and compiling anew. Keyed
# weakly, and the program holds ``score_fn`` only weakly, so a cached program never
# keeps a score function (or the data it closes over) alive.
_PROGRAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _NotAScalar(ValueError):
    """Raised while tracing a lane whose score is not a scalar; the search adds its own name to the message."""


def _program(score_fn: Callable[..., jax.Array], chunk_size: int | None) -> Callable[[tuple], jax.Array]:
    """``lanes -> scores``: ``score_fn`` mapped over the lanes, jitted (cached per ``score_fn``)."""
    try:
        programs = _PROGRAMS.setdefault(score_fn, {})
        held: Callable[[], Callable[..., jax.Array] | None] = weakref.ref(score_fn)
    except TypeError:  # a callable without weak references: compiled afresh each search
        programs = {}

        def held() -> Callable[..., jax.Array]:
            return score_fn

    if chunk_size not in programs:

        def lane(args: tuple) -> jax.Array:
            score = jnp.asarray(held()(*args), jnp.float32)
            if score.shape != ():
                raise _NotAScalar(f"score_fn must return a scalar score, got an array of shape {score.shape}")
            return score

        programs[chunk_size] = jax.jit(lambda xs: jax.lax.map(lane, xs, batch_size=chunk_size or xs[0].shape[0]))
    return programs[chunk_size]


def _search(
    fn: str,
    score_fn: Callable[..., jax.Array],
    values: jax.Array | np.ndarray | list[float],
    n_splits: int | None,
    n_samples: int | None,
    chunk_size: int | None,
    mode: str,
) -> SearchResult:
    """grid_search's body; ``fn`` names the public function in error messages."""
    _check_mode(fn, mode)
    grid = np.asarray(values, np.float32).reshape(-1)
    if grid.size == 0:
        raise ValueError(f"{fn}: values must hold at least one candidate, got {values!r}.")
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise ValueError(f"{fn}: chunk_size must be a positive int or None, got {chunk_size!r}.")
        chunk_size = int(chunk_size)  # a static argument of the program: a NumPy integer would key another
    if n_splits is None:
        lanes = (jnp.asarray(grid),)
        n_folds = 1
    else:
        if n_samples is None:
            raise ValueError(f"{fn}: n_samples is required with n_splits.")
        train_w, val_w = _kfold(fn, n_samples, n_splits)
        n_folds = n_splits
        # One lane per (value, fold) pair, value-major.
        lanes = (
            jnp.repeat(jnp.asarray(grid), n_folds),
            jnp.tile(train_w, (grid.size, 1)),
            jnp.tile(val_w, (grid.size, 1)),
        )
    try:
        scores = np.asarray(_program(score_fn, chunk_size)(lanes)).reshape(grid.size, n_folds)
    except _NotAScalar as err:
        raise ValueError(f"{fn}: {err} (one score per value and fold).") from None
    mean, std = scores.mean(axis=1), scores.std(axis=1)
    nan = np.isnan(mean)
    if nan.all():
        warnings.warn(
            f"{fn}: every mean score is NaN; no value is best (best_index=None, best_value=nan).",
            RuntimeWarning,
            stacklevel=3,
        )
        return SearchResult(grid, scores, mean, std, None, math.nan, mode)
    if nan.any():
        warnings.warn(
            f"{fn}: {int(nan.sum())} of {nan.size} mean scores are NaN (values {grid[nan].tolist()}); "
            "the best is chosen among the others.",
            RuntimeWarning,
            stacklevel=3,
        )
    ranked = np.where(nan, np.inf, mean if mode == "min" else -mean)
    best = int(np.argmin(ranked))
    return SearchResult(grid, scores, mean, std, best, float(grid[best]), mode)


def random_search(
    score_fn: Callable[..., jax.Array],
    key: jax.Array,
    low: float,
    high: float,
    num: int,
    *,
    log: bool = True,
    n_splits: int | None = None,
    n_samples: int | None = None,
    chunk_size: int | None = None,
    mode: str = "min",
) -> SearchResult:
    """:func:`grid_search` over ``num`` values drawn at random from ``[low, high]``.

    With ``log=True`` (the default, right for regularization strengths that span
    decades) the values are log-uniform: ``exp(U(log low, log high))``.

    Args:
      score_fn: as in :func:`grid_search`.
      key: PRNG key for the draws.
      low: smallest value (> 0 when ``log``).
      high: largest value, > ``low``.
      num: number of draws, >= 1.
      log: draw log-uniformly (True) or uniformly.
      n_splits: as in :func:`grid_search`.
      n_samples: as in :func:`grid_search`.
      chunk_size: as in :func:`grid_search`.
      mode: as in :func:`grid_search`.

    Returns:
      A :class:`SearchResult`, values sorted ascending.
    """
    fn = "random_search"
    num = _checks.check_positive_int(fn, "num", num)
    if not high > low:
        raise ValueError(f"{fn}: high must be greater than low, got low={low!r}, high={high!r}.")
    if log:
        _checks.check_positive(fn, "low", low)
        u = jax.random.uniform(key, (num,), minval=math.log(low), maxval=math.log(high))
        draws = jnp.exp(u)
    else:
        draws = jax.random.uniform(key, (num,), minval=low, maxval=high)
    return _search(fn, score_fn, np.sort(np.asarray(draws)), n_splits, n_samples, chunk_size, mode)
