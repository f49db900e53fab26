"""EarlyStopping: the same state machine in a Python loop, lax.scan, lax.while_loop and vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg.training import EarlyStopping

LOSSES = [5.0, 4.0, 3.0, 3.5, 2.9, 3.1, 3.2, 3.3, 1.0, 0.5]


def _params_at(step):
    return {"w": jnp.full((2,), step, jnp.float32)}


def _python_loop(stopper, scores):
    state = stopper.init(_params_at(-1))
    for step, score in enumerate(scores):
        state = stopper.update(state, score, _params_at(step))
        if state.should_stop:
            break
    return state, step


def test_python_loop_stops_after_patience_and_keeps_best():
    state, stopped_at = _python_loop(EarlyStopping(patience=3), LOSSES)
    # Best is 2.9 at step 4; steps 5, 6, 7 do not improve, so it stops at step 7.
    assert stopped_at == 7 and bool(state.should_stop)
    assert float(state.best_score) == pytest.approx(2.9) and int(state.best_step) == 4
    np.testing.assert_array_equal(state.best_params["w"], [4.0, 4.0])


def test_min_delta_and_max_mode():
    # With min_delta=0.2, 3.0 -> 2.9 is not an improvement.
    state, stopped_at = _python_loop(EarlyStopping(patience=3, min_delta=0.2), LOSSES)
    assert int(state.best_step) == 2 and stopped_at == 5
    accuracies = [-x for x in LOSSES]
    state, stopped_at = _python_loop(EarlyStopping(patience=3, mode="max"), accuracies)
    assert int(state.best_step) == 4 and stopped_at == 7
    assert float(state.best_score) == pytest.approx(-2.9)


def test_nan_is_never_an_improvement():
    state, stopped_at = _python_loop(EarlyStopping(patience=2), [1.0, float("nan"), float("nan"), 0.1])
    assert stopped_at == 2 and int(state.best_step) == 0


@pytest.mark.parametrize("min_delta", [1e9, float("inf")])
def test_the_first_finite_score_always_improves_whatever_min_delta(min_delta):
    # As Keras: the first evaluation is the best, no later one beats it by min_delta.
    state, stopped_at = _python_loop(EarlyStopping(patience=2, min_delta=min_delta), LOSSES)
    assert int(state.best_step) == 0 and float(state.best_score) == 5.0 and stopped_at == 2
    jitted = jax.jit(EarlyStopping(patience=2, min_delta=min_delta).update)
    assert int(jitted(EarlyStopping().init(_params_at(-1)), 5.0, _params_at(0)).best_step) == 0


def test_a_score_that_is_not_a_scalar_is_refused():
    stopper = EarlyStopping()
    with pytest.raises(ValueError, match=r"EarlyStopping.update: score must be a scalar, got an array of shape \(3,\)"):
        stopper.update(stopper.init(_params_at(-1)), jnp.ones(3), _params_at(0))


def test_numpy_integer_patience():
    stopper = EarlyStopping(patience=np.int64(2))
    assert stopper.patience == 2 and type(stopper.patience) is int
    assert _python_loop(stopper, LOSSES)[1] == 6


def test_scan_matches_python_loop_and_freezes_after_stopping():
    stopper = EarlyStopping(patience=3)

    def step(state, xs):
        i, score = xs
        return stopper.update(state, score, _params_at(i)), state.should_stop

    state, _ = jax.lax.scan(
        step, stopper.init(_params_at(-1)), (jnp.arange(len(LOSSES), dtype=jnp.float32), jnp.asarray(LOSSES))
    )
    # The later improvements (1.0, 0.5) arrive after stopping and are ignored.
    want, _ = _python_loop(stopper, LOSSES)
    assert int(state.best_step) == int(want.best_step) == 4
    assert int(state.evaluations) == 8
    np.testing.assert_array_equal(state.best_params["w"], want.best_params["w"])


def test_while_loop_training_stops_itself():
    # Gradient descent on a noisy-looking validation curve that bottoms out at step 30.
    stopper = EarlyStopping(patience=5)

    def val_loss(t):
        return (t - 30.0) ** 2 / 100.0

    def cond(carry):
        t, state = carry
        return jnp.logical_not(state.should_stop) & (t < 1000)

    def body(carry):
        t, state = carry
        return t + 1, stopper.update(state, val_loss(t.astype(jnp.float32)), {"t": t})

    t, state = jax.jit(lambda: jax.lax.while_loop(cond, body, (jnp.int32(0), stopper.init({"t": jnp.int32(0)}))))()
    assert int(state.best_params["t"]) == 30 and int(t) == 36


def test_vmap_each_lane_stops_on_its_own():
    stopper = EarlyStopping(patience=2)
    curves = jnp.asarray(
        [
            [3.0, 2.0, 2.5, 2.6, 0.1, 0.0],  # stops at index 3, best index 1
            [3.0, 2.0, 1.0, 0.5, 0.4, 0.3],  # never stops, best index 5
            [1.0, 1.1, 1.2, 0.0, 0.0, 0.0],  # stops at index 2, best index 0
        ],
        jnp.float32,
    )

    def run(curve):
        def step(state, xs):
            i, score = xs
            return stopper.update(state, score, {"i": i}), None

        return jax.lax.scan(step, stopper.init({"i": jnp.int32(-1)}), (jnp.arange(6), curve))[0]

    states = jax.jit(jax.vmap(run))(curves)
    np.testing.assert_array_equal(states.should_stop, [True, False, True])
    np.testing.assert_array_equal(states.best_params["i"], [1, 5, 0])
    for lane in range(3):
        single = run(curves[lane])
        assert int(single.best_step) == int(states.best_step[lane])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"patience": 0}, r"EarlyStopping: patience must be an int >= 1, got 0"),
        ({"patience": 2.5}, r"EarlyStopping: patience must be an int >= 1, got 2.5"),
        ({"min_delta": -0.1}, r"EarlyStopping: min_delta must be a non-negative number, got -0.1"),
        ({"mode": "lowest"}, r"EarlyStopping: mode must be 'min' or 'max', got 'lowest'"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EarlyStopping(**kwargs)
