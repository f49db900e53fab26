"""tune_strength moves lambda toward the grid-search optimum of the same validation loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxreg
from jaxreg.training import grid_search, tune_strength, unrolled_val_loss

RNG = np.random.default_rng(3)
W_TRUE = RNG.standard_normal(20).astype(np.float32)
X_TRAIN = RNG.standard_normal((25, 20)).astype(np.float32)  # few samples: L2 helps
Y_TRAIN = (X_TRAIN @ W_TRUE + 2.0 * RNG.standard_normal(25)).astype(np.float32)
X_VAL = RNG.standard_normal((200, 20)).astype(np.float32)
Y_VAL = (X_VAL @ W_TRUE).astype(np.float32)
LR, STEPS = 0.1, 300
PARAMS = {"w": jnp.zeros(20, jnp.float32)}


def make_optimizer(lam):
    return optax.chain(jaxreg.coupled_weight_decay(lam), optax.sgd(LR))


def train_loss(p):
    return 0.5 * jnp.mean((jnp.asarray(X_TRAIN) @ p["w"] - jnp.asarray(Y_TRAIN)) ** 2)


def val_loss(p):
    return jnp.mean((jnp.asarray(X_VAL) @ p["w"] - jnp.asarray(Y_VAL)) ** 2)


@pytest.fixture(scope="module")
def grid_optimum():
    objective = unrolled_val_loss(make_optimizer, train_loss, val_loss, PARAMS, STEPS)
    grid = np.geomspace(1e-3, 3.0, 41)
    result = grid_search(lambda lam: objective(jnp.log(lam)), grid)
    assert 0 < result.best_index < len(grid) - 1, "the optimum must be inside the grid"
    return result.best_value


@pytest.mark.parametrize("start_factor", [1 / 30, 30.0])
def test_tune_strength_moves_toward_the_grid_optimum(grid_optimum, start_factor):
    start = grid_optimum * start_factor
    result = tune_strength(
        make_optimizer, train_loss, val_loss, PARAMS, start, inner_steps=STEPS, outer_steps=40, outer_learning_rate=0.3
    )
    start_gap = abs(np.log(start) - np.log(grid_optimum))
    end_gap = abs(np.log(result.strength) - np.log(grid_optimum))
    assert end_gap < 0.3 * start_gap, (start, result.strength, grid_optimum)
    assert result.val_losses[-1] < result.val_losses[0]
    assert len(result.strengths) == 41 and result.strengths[0] == pytest.approx(start, rel=1e-5)


def test_hypergradient_matches_finite_differences():
    objective = unrolled_val_loss(make_optimizer, train_loss, val_loss, PARAMS, STEPS)
    x = jnp.float32(np.log(0.3))
    grad = float(jax.grad(objective)(x))
    h = 1e-2
    fd = (float(objective(x + h)) - float(objective(x - h))) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=2e-2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"init_strength": 0.0}, r"tune_strength: init_strength must be a positive number, got 0.0"),
        ({"init_strength": float("inf")}, r"tune_strength: init_strength must be a finite positive number, got inf"),
        ({"init_strength": 1.0, "inner_steps": 0}, r"tune_strength: inner_steps must be a positive int, got 0"),
        ({"init_strength": 1.0, "outer_steps": 2.5}, r"tune_strength: outer_steps must be a positive int, got 2.5"),
        ({"init_strength": 1.0, "outer_learning_rate": -1.0}, r"outer_learning_rate must be a positive number"),
    ],
)
def test_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tune_strength(make_optimizer, train_loss, val_loss, PARAMS, **kwargs)


def test_a_nan_loss_or_strength_is_warned_about():
    def diverging(p):  # NaN wherever the weights are not huge: NaN loss, NaN hypergradient
        return jnp.sqrt(jnp.sum(p["w"]) - 1e6)

    with pytest.warns(
        RuntimeWarning,
        match=r"tune_strength: the validation loss is NaN from outer step 0 .*; "
        r"the strength is NaN from outer step 1\.",
    ):
        result = tune_strength(make_optimizer, train_loss, diverging, PARAMS, 0.1, inner_steps=2, outer_steps=3)
    assert np.isnan(result.strength)
