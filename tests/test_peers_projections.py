"""The projections and Keras constraints against their peers: optax.projections on the same
tree, Keras' documented UnitNorm / MinMaxNorm formulas, all under jit."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxreg

P = optax.projections


def _tree(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(scale * rng.standard_normal(s), jnp.float32) for k, s in {"b": (3,), "w": (4, 3)}.items()}


PARAMS, UPDATES = _tree(0), _tree(1, 0.3)
W = jax.tree.map(lambda p, u: p + u, PARAMS, UPDATES)
A = _tree(2)


def _applied(tx, params=PARAMS, updates=UPDATES):
    updates, _ = jax.jit(tx.update)(updates, tx.init(params), params)
    return optax.apply_updates(params, updates)


def _close(got, want, rtol=1e-5, atol=1e-6):
    chex.assert_trees_all_close(got, want, rtol=rtol, atol=atol)


CASES = {
    "simplex": (lambda: jaxreg.project_simplex(2.0), lambda w: P.projection_simplex(w, 2.0)),
    "l1_sphere": (lambda: jaxreg.project_l1_sphere(1.5), lambda w: P.projection_l1_sphere(w, 1.5)),
    "l1_sphere inside": (lambda: jaxreg.project_l1_sphere(40.0), lambda w: P.projection_l1_sphere(w, 40.0)),
    "l2_sphere": (lambda: jaxreg.project_l2_sphere(0.7), lambda w: P.projection_l2_sphere(w, 0.7)),
    "linf_ball": (lambda: jaxreg.project_linf_ball(0.5), lambda w: P.projection_linf_ball(w, 0.5)),
    "halfspace": (lambda: jaxreg.project_halfspace(A, -1.0), lambda w: P.projection_halfspace(w, A, -1.0)),
    "halfspace inside": (lambda: jaxreg.project_halfspace(A, 50.0), lambda w: P.projection_halfspace(w, A, 50.0)),
    "hyperplane": (lambda: jaxreg.project_hyperplane(A, 0.5), lambda w: P.projection_hyperplane(w, A, 0.5)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_projection_is_optaxs_on_the_same_tree(name):
    ours, theirs = CASES[name]
    with jax.numpy_dtype_promotion("standard"):  # optax's own code mixes int and float
        want = theirs(W)
    _close(_applied(ours()), want)


LEAF_CASES = {
    "simplex": (lambda: jaxreg.project_simplex(1.0, scope="leaf"), lambda w: P.projection_simplex(w, 1.0)),
    "l1_sphere": (lambda: jaxreg.project_l1_sphere(1.0, scope="leaf"), lambda w: P.projection_l1_sphere(w, 1.0)),
    "l2_sphere": (lambda: jaxreg.project_l2_sphere(0.7, scope="leaf"), lambda w: P.projection_l2_sphere(w, 0.7)),
    "halfspace": (
        lambda: jaxreg.project_halfspace(A, -0.5, scope="leaf"),
        lambda w: {k: P.projection_halfspace(w[k], A[k], -0.5) for k in w},
    ),
    "hyperplane": (
        lambda: jaxreg.project_hyperplane(1.0, 0.0, scope="leaf"),
        lambda w: {k: P.projection_hyperplane(w[k], jnp.ones_like(w[k]), 0.0) for k in w},
    ),
}


@pytest.mark.parametrize("name", sorted(LEAF_CASES))
def test_leaf_scope_projects_each_leaf_as_optax_does_alone(name):
    ours, theirs = LEAF_CASES[name]
    with jax.numpy_dtype_promotion("standard"):  # optax's own code mixes int and float
        want = theirs(W) if name in ("halfspace", "hyperplane") else {k: theirs(W[k]) for k in W}
    _close(_applied(ours()), want)


def test_the_constraints_hold_after_apply_updates():
    w = _applied(jaxreg.project_simplex(2.0))
    assert min(float(jnp.min(x)) for x in w.values()) >= 0
    np.testing.assert_allclose(sum(float(jnp.sum(x)) for x in w.values()), 2.0, rtol=1e-5)
    w = _applied(jaxreg.project_linf_ball(0.5))
    assert max(float(jnp.max(jnp.abs(x))) for x in w.values()) <= 0.5  # exactly: the update is nudged


def test_l2_sphere_leaves_a_zero_tree_zero_where_optax_gives_nan():
    zeros = jax.tree.map(jnp.zeros_like, PARAMS)
    w = _applied(jaxreg.project_l2_sphere(1.0), zeros, zeros)
    assert all(np.array_equal(x, np.zeros_like(x)) for x in w.values())


def _keras(w, axis, min_value, max_value, rate):
    # keras.constraints.MinMaxNorm.__call__ (UnitNorm: min = max = 1, rate = 1), epsilon 1e-7.
    norms = np.sqrt(np.sum(np.square(w), axis=axis, keepdims=True))
    desired = rate * np.clip(norms, min_value, max_value) + (1 - rate) * norms
    return w * (desired / (1e-7 + norms))


@pytest.mark.parametrize("axis", [-1, 0])
def test_unit_norm_is_keras_unit_norm(axis):
    tx = jaxreg.unit_norm(axis=axis, mask={"b": False, "w": True})
    got = _applied(tx)
    keras_axis = 1 - axis % 2  # Keras names the axis the norm runs over
    np.testing.assert_allclose(got["w"], _keras(np.asarray(W["w"]), keras_axis, 1.0, 1.0, 1.0), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got["b"], W["b"])


@pytest.mark.parametrize(("low", "high", "rate"), [(0.5, 0.9, 1.0), (1.0, 2.0, 0.3), (0.0, 0.6, 0.5)])
def test_min_max_norm_is_keras_min_max_norm(low, high, rate):
    got = _applied(jaxreg.min_max_norm(low, high, rate=rate))
    for k in W:
        want = _keras(np.asarray(W[k]), tuple(range(W[k].ndim - 1)), low, high, rate)
        np.testing.assert_allclose(got[k], want, rtol=1e-6, atol=1e-7, err_msg=k)


ERRORS = [
    (lambda: jaxreg.project_simplex(0.0), r"project_simplex: scale must be a positive number, got 0.0"),
    (lambda: jaxreg.project_simplex(1.0, scope="unit"), r"project_simplex: scope must be 'global' or 'leaf'"),
    (lambda: jaxreg.project_l1_sphere(-1.0), r"project_l1_sphere: radius must be a positive number"),
    (lambda: jaxreg.project_l2_sphere(0), r"project_l2_sphere: radius must be a positive number"),
    (lambda: jaxreg.project_linf_ball(0.0), r"project_linf_ball: radius must be a positive number"),
    (lambda: jaxreg.project_halfspace(0.0, 1.0), r"project_halfspace: a must not be zero everywhere"),
    (lambda: jaxreg.project_hyperplane({"b": 0.0, "w": 0.0}, 1.0), r"project_hyperplane: a must not be zero"),
    (lambda: jaxreg.project_hyperplane(1.0, "x"), r"project_hyperplane: b must be a real number"),
    (lambda: jaxreg.min_max_norm(2.0, 1.0), r"min_max_norm: min_value must be <= max_value"),
    (lambda: jaxreg.min_max_norm(0.0, 1.0, rate=1.5), r"min_max_norm: rate must lie in \[0, 1\], got 1.5"),
    (lambda: jaxreg.min_max_norm(-1.0, 1.0), r"min_max_norm: min_value must be a non-negative number"),
    (lambda: jaxreg.unit_norm(axis=0.5), r"unit_norm: axis must be an int, got 0.5"),
]


@pytest.mark.parametrize("index", range(len(ERRORS)))
def test_documented_errors(index):
    make, message = ERRORS[index]
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_a_normal_without_the_params_structure_names_the_leaf():
    tx = jaxreg.project_hyperplane({"w": jnp.ones((4, 3))}, 0.0)
    with pytest.raises(ValueError, match=r"project_hyperplane: a has no entry for params\['b'\]"):
        tx.init(PARAMS)


def test_unit_norm_needs_the_axis_on_every_selected_leaf():
    with pytest.raises(ValueError, match=r"unit_norm: axis -1 is out of range for params\['s'\]"):
        jaxreg.unit_norm().init({"s": jnp.zeros(())})


# ---- feasible and idempotent, on random trees (few examples: each is eager, small) -------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402

FLOATS = st.floats(-5, 5, width=32, allow_subnormal=False)
TREES = st.fixed_dictionaries(
    {"b": arrays(np.float32, (3,), elements=FLOATS), "w": arrays(np.float32, (2, 3), elements=FLOATS)}
)

SETS = {
    "simplex": (
        lambda: jaxreg.project_simplex(2.0),
        lambda w: min(np.min(x) for x in w) >= 0 and abs(sum(np.sum(x) for x in w) - 2) < 1e-4,
    ),
    "l1_sphere": (
        lambda: jaxreg.project_l1_sphere(2.0),
        lambda w: not any(np.any(x) for x in w) or abs(sum(np.sum(np.abs(x)) for x in w) - 2) < 1e-4,
    ),
    "l2_sphere": (
        lambda: jaxreg.project_l2_sphere(2.0),
        lambda w: not any(np.any(x) for x in w) or abs(np.sqrt(sum(np.sum(x * x) for x in w)) - 2) < 1e-4,
    ),
    "linf_ball": (lambda: jaxreg.project_linf_ball(0.5), lambda w: max(np.max(np.abs(x)) for x in w) <= 0.5),
    "halfspace": (lambda: jaxreg.project_halfspace(1.0, -1.0), lambda w: sum(np.sum(x) for x in w) <= -1.0 + 1e-4),
    "hyperplane": (lambda: jaxreg.project_hyperplane(1.0, 1.0), lambda w: abs(sum(np.sum(x) for x in w) - 1.0) < 1e-4),
}


@pytest.mark.parametrize("name", sorted(SETS))
def test_projections_are_feasible_and_idempotent(name):
    make, inside = SETS[name]
    tx = make()
    step = jax.jit(tx.update)

    @settings(max_examples=15, deadline=None)
    @given(TREES)
    def check(params):
        zeros = jax.tree.map(np.zeros_like, params)
        once = optax.apply_updates(params, step(zeros, tx.init(params), params)[0])
        assert inside([np.asarray(x, np.float64) for x in jax.tree.leaves(once)]), once
        twice = optax.apply_updates(once, step(zeros, tx.init(once), once)[0])
        _close(twice, once, rtol=1e-5, atol=1e-5)

    check()


def test_l1_sphere_grows_exact_zeros_where_optax_misses_the_sphere():
    params = {"w": jnp.array([1.0, 0.0, 0.0])}
    w = _applied(jaxreg.project_l1_sphere(2.0), params, {"w": jnp.zeros(3)})["w"]
    np.testing.assert_allclose(w, [4 / 3, 1 / 3, 1 / 3], rtol=1e-6)
    with jax.numpy_dtype_promotion("standard"):
        np.testing.assert_allclose(P.projection_l1_sphere(params, 2.0)["w"], [4 / 3, 0, 0], rtol=1e-6)
