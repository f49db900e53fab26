"""Model selection: vmapped grid/random search and k-fold CV against loops and scikit-learn."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.model_selection import KFold

import jaxreg
from jaxreg.training import grid_search, kfold_weights, random_search

RNG = np.random.default_rng(0)
X = RNG.standard_normal((60, 8)).astype(np.float32)
Y = (X @ (RNG.standard_normal(8) * (RNG.random(8) < 0.5)) + 0.5 * RNG.standard_normal(60)).astype(np.float32)
LAMBDAS = np.geomspace(1e-3, 10.0, 9).astype(np.float32)


@pytest.mark.parametrize("n_samples, n_splits", [(10, 2), (11, 3), (60, 5), (7, 7)])
def test_kfold_weights_are_sklearns_folds(n_samples, n_splits):
    train_w, val_w = kfold_weights(n_samples, n_splits)
    for k, (train_idx, val_idx) in enumerate(KFold(n_splits).split(np.zeros(n_samples))):
        np.testing.assert_array_equal(np.nonzero(np.asarray(val_w[k]))[0], val_idx)
        np.testing.assert_array_equal(np.nonzero(np.asarray(train_w[k]))[0], train_idx)


def _ridge_score(lam, train_w, val_w):
    """Closed-form ridge on the weighted training rows; weighted validation MSE."""
    x, y = jnp.asarray(X), jnp.asarray(Y)
    n = jnp.sum(train_w)
    gram = (x * train_w[:, None]).T @ x / n + lam * jnp.eye(x.shape[1], dtype=jnp.float32)
    w = jnp.linalg.solve(gram, (x * train_w[:, None]).T @ y / n)
    return jnp.sum(val_w * (x @ w - y) ** 2) / jnp.sum(val_w)


def test_cross_validation_equals_index_based_folds():
    result = grid_search(_ridge_score, LAMBDAS, n_splits=5, n_samples=len(X))
    for i, lam in enumerate(LAMBDAS):
        for k, (tr, va) in enumerate(KFold(5).split(X)):
            xt, yt = X[tr].astype(np.float64), Y[tr].astype(np.float64)
            w = np.linalg.solve(xt.T @ xt / len(tr) + lam * np.eye(8), xt.T @ yt / len(tr))
            want = np.mean((X[va] @ w - Y[va]) ** 2)
            np.testing.assert_allclose(result.scores[i, k], want, rtol=1e-4)
    np.testing.assert_allclose(result.mean, result.scores.mean(1))
    assert result.best_value == LAMBDAS[np.argmin(result.mean)]
    assert "<- best" in result.table() and result.table().count("\n") == len(LAMBDAS) + 1


def _train_and_score(lam):
    """25 steps of SGD with jaxreg's l1_prox at strength lam; MSE on the last 20 rows."""
    x, y = jnp.asarray(X[:40]), jnp.asarray(Y[:40])
    tx = optax.chain(optax.sgd(0.05), jaxreg.l1_prox(lam, learning_rate=0.05))
    params = {"w": jnp.zeros(8, jnp.float32)}

    def step(carry, _):
        p, s = carry
        u, s = tx.update(jax.grad(lambda q: jnp.mean((x @ q["w"] - y) ** 2))(p), s, p)
        return (optax.apply_updates(p, u), s), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), length=25)
    return jnp.mean((jnp.asarray(X[40:]) @ params["w"] - jnp.asarray(Y[40:])) ** 2)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_vmapped_training_runs_equal_a_python_loop(chunk_size):
    result = grid_search(_train_and_score, LAMBDAS, chunk_size=chunk_size)
    loop = [float(jax.jit(_train_and_score)(lam)) for lam in LAMBDAS]
    np.testing.assert_allclose(result.scores[:, 0], loop, rtol=1e-5)
    assert result.std.tolist() == [0.0] * len(LAMBDAS)


def test_random_search_is_log_uniform_and_sorted():
    result = random_search(_train_and_score, jax.random.key(0), 1e-4, 1.0, 32)
    assert np.all(np.diff(result.values) >= 0)
    assert result.values.min() >= 1e-4 and result.values.max() <= 1.0
    # Log-uniform: about half the draws fall below the geometric midpoint 1e-2.
    assert 8 <= int(np.sum(result.values < 1e-2)) <= 24
    assert result.best_value == result.values[np.argmin(result.mean)]


def test_random_search_cross_validates_every_draw():
    # kfold_cv(n_splits) is n_splits= on grid_search or random_search.
    result = random_search(_ridge_score, jax.random.key(1), 1e-3, 10.0, 5, n_splits=4, n_samples=len(X))
    assert result.scores.shape == (5, 4)
    for i, lam in enumerate(result.values):
        folds = [_ridge_score(lam, *w) for w in zip(*kfold_weights(len(X), 4))]
        np.testing.assert_allclose(result.scores[i], folds, rtol=1e-5)
    np.testing.assert_allclose(result.std, result.scores.std(1))


def test_a_second_search_with_the_same_score_function_reuses_its_program():
    traces = []

    def score(value):
        traces.append(value)  # runs only while tracing
        return (value - 2.0) ** 2

    first = grid_search(score, [0.0, 1.0, 2.0, 3.0])
    second = grid_search(score, [1.5, 2.0, 2.5, 4.0])
    assert len(traces) == 1
    assert (first.best_value, second.best_value) == (2.0, 2.0)
    grid_search(score, [0.0, 1.0, 2.0, 3.0], chunk_size=2)  # another program, compiled once
    assert len(traces) == 2


def test_the_program_cache_does_not_keep_a_score_function_alive():
    import gc
    import weakref

    from jaxreg.training import selection

    def score(value):
        return value**2

    grid_search(score, [1.0, 2.0])
    ref = weakref.ref(score)
    del score
    gc.collect()
    assert ref() is None
    assert all(fn is not None for fn in selection._PROGRAMS.keys())


def test_max_mode_picks_the_largest_score():
    result = grid_search(lambda v: -((v - 2.0) ** 2), [0.0, 1.0, 2.0, 3.0], mode="max")
    assert result.best_value == 2.0


def test_nan_scores_are_never_best_and_are_warned_about():
    with pytest.warns(RuntimeWarning, match=r"grid_search: 2 of 4 mean scores are NaN \(values \[1.0, 3.0\]\)"):
        result = grid_search(lambda v: jnp.where(v % 2 == 1, jnp.nan, (v - 1.8) ** 2), [0.0, 1.0, 2.0, 3.0])
    assert result.best_index == 2 and result.best_value == 2.0
    with pytest.warns(RuntimeWarning, match=r"grid_search: every mean score is NaN; no value is best"):
        result = grid_search(lambda v: v * jnp.nan, [0.0, 1.0], mode="max")
    assert result.best_index is None and np.isnan(result.best_value)
    assert "<- best" not in result.table()


def test_a_score_fn_that_does_not_return_a_scalar_is_named():
    with pytest.raises(
        ValueError, match=r"grid_search: score_fn must return a scalar score, got an array of shape \(2,\)"
    ):
        grid_search(lambda v: jnp.stack([v, v]), [0.0, 1.0])
    with pytest.raises(ValueError, match=r"random_search: score_fn must return a scalar score, got .* shape \(1,\)"):
        random_search(lambda v, tw, vw: jnp.atleast_1d(v), jax.random.key(0), 0.1, 1.0, 2, n_splits=2, n_samples=4)


def test_numpy_integers_are_ints():
    want = grid_search(_ridge_score, LAMBDAS, n_splits=3, n_samples=60, chunk_size=2)
    got = grid_search(_ridge_score, LAMBDAS, n_splits=np.int64(3), n_samples=np.int64(60), chunk_size=np.int32(2))
    np.testing.assert_array_equal(got.scores, want.scores)
    np.testing.assert_array_equal(kfold_weights(np.int64(10), np.int64(3))[1], kfold_weights(10, 3)[1])
    schedule = jaxreg.schedules.epoch_decay(1.0, 0.5, np.int64(4))
    assert float(schedule(9)) == float(jaxreg.schedules.epoch_decay(1.0, 0.5, 4)(9)) == 0.25


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: grid_search(_train_and_score, []), r"grid_search: values must hold at least one candidate"),
        (lambda: grid_search(_ridge_score, LAMBDAS, n_splits=5), r"grid_search: n_samples is required with n_splits"),
        (
            lambda: grid_search(_train_and_score, LAMBDAS, chunk_size=0),
            r"grid_search: chunk_size must be a positive int",
        ),
        (lambda: grid_search(_train_and_score, LAMBDAS, mode="best"), r"grid_search: mode must be 'min' or 'max'"),
        (lambda: kfold_weights(10, 1), r"kfold_weights: n_splits must be an int in \[2, n_samples=10\], got 1"),
        (lambda: kfold_weights(0, 2), r"kfold_weights: n_samples must be a positive int, got 0"),
        (
            lambda: grid_search(_ridge_score, LAMBDAS, n_splits=61, n_samples=60),
            r"grid_search: n_splits must be an int in \[2, n_samples=60\], got 61",
        ),
        (
            lambda: random_search(_ridge_score, jax.random.key(0), 0.1, 1.0, 4, n_splits=1, n_samples=60),
            r"random_search: n_splits must be an int in \[2, n_samples=60\], got 1",
        ),
        (lambda: kfold_weights(10, 11), r"kfold_weights: n_splits must be an int in \[2, n_samples=10\], got 11"),
        (
            lambda: random_search(_train_and_score, jax.random.key(0), 0.0, 1.0, 4),
            r"random_search: low must be a positive",
        ),
        (
            lambda: random_search(_train_and_score, jax.random.key(0), 1.0, 0.5, 4),
            r"random_search: high must be greater",
        ),
        (
            lambda: random_search(_train_and_score, jax.random.key(0), 0.1, 1.0, 0),
            r"random_search: num must be a positive int",
        ),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
