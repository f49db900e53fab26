"""Invariants, checked by hypothesis on small random trees.

Projections are feasible and idempotent; a prox with strength 0 is the identity and
otherwise minimizes its objective; zeros stay exactly zero; clipping never exceeds its
bound and keeps the direction.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jaxreg

# XLA's CPU backend flushes subnormals to zero, so they are left out of the inputs.
FLOATS = st.floats(-10, 10, allow_nan=False, allow_subnormal=False, width=32)
MATRIX = hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=5), elements=FLOATS)
VECTOR = hnp.arrays(np.float32, st.integers(1, 6), elements=FLOATS)
TREES = st.fixed_dictionaries({"kernel": MATRIX, "bias": VECTOR})
# Radii and strengths as float32 values, so that bounds compare exactly with the params.
POSITIVE = st.floats(0.0625, 4.0, width=32)
SETTINGS = settings(max_examples=40, deadline=None)


def _apply(tx, params, updates=None):
    """The params after one step of ``tx`` (parameter space) from ``params`` with ``updates``."""
    params = jax.tree.map(jnp.asarray, params)
    updates = jax.tree.map(jnp.zeros_like, params) if updates is None else jax.tree.map(jnp.asarray, updates)
    out, _ = tx.update(updates, tx.init(params), params)
    return optax.apply_updates(params, out)


def _leaves(tree):
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


PROJECTIONS = {
    "box": (lambda r: jaxreg.project_box(-r, r), lambda t, r: all(np.all(np.abs(x) <= r) for x in _leaves(t))),
    "nonnegative": (lambda r: jaxreg.project_nonnegative(), lambda t, r: all(np.all(x >= 0) for x in _leaves(t))),
    "l2 ball": (
        lambda r: jaxreg.project_l2_ball(r),
        lambda t, r: np.sqrt(sum((x**2).sum() for x in _leaves(t))) <= r * (1 + 1e-5),
    ),
    "l2 ball leaf": (
        lambda r: jaxreg.project_l2_ball(r, scope="leaf"),
        lambda t, r: all(np.sqrt((x**2).sum()) <= r * (1 + 1e-5) for x in _leaves(t)),
    ),
    "l1 ball": (
        lambda r: jaxreg.project_l1_ball(r),
        lambda t, r: sum(np.abs(x).sum() for x in _leaves(t)) <= r * (1 + 1e-5),
    ),
    "max norm": (
        lambda r: jaxreg.max_norm(r, mask={"kernel": True, "bias": False}),
        lambda t, r: np.all(np.sqrt((np.asarray(t["kernel"], np.float64) ** 2).sum(0)) <= r * (1 + 1e-5)),
    ),
}


@SETTINGS
@given(tree=TREES, radius=POSITIVE, name=st.sampled_from(sorted(PROJECTIONS)))
def test_projection_is_feasible_and_idempotent(tree, radius, name):
    make, feasible = PROJECTIONS[name]
    tx = make(radius)
    once = _apply(tx, tree)
    assert feasible(once, radius)
    twice = _apply(tx, once)
    for a, b in zip(_leaves(once), _leaves(twice)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


PROXES = {
    "l1": lambda s: jaxreg.l1_prox(s),
    "elastic net": lambda s: jaxreg.elastic_net_prox(s, s),
    "group lasso": lambda s: jaxreg.group_lasso_prox(s, mask={"kernel": True, "bias": False}),
}


@SETTINGS
@given(tree=TREES, name=st.sampled_from(sorted(PROXES)))
def test_prox_with_zero_strength_is_identity(tree, name):
    out = _apply(PROXES[name](0.0), tree)
    for a, b in zip(_leaves(out), _leaves(tree)):
        np.testing.assert_array_equal(a, b)


OBJECTIVES = {
    "l1": (lambda s: jaxreg.l1_prox(s), lambda x, s: s * np.abs(x).sum()),
    "elastic net": (lambda s: jaxreg.elastic_net_prox(s, 2 * s), lambda x, s: s * np.abs(x).sum() + s * (x**2).sum()),
    "group lasso": (
        lambda s: jaxreg.group_lasso_prox(s, axis=-1),
        lambda x, s: s * np.sqrt((x**2).sum(0)).sum(),
    ),
}


@SETTINGS
@given(
    w=hnp.arrays(np.float32, (3, 2), elements=FLOATS),
    strength=POSITIVE,
    name=st.sampled_from(sorted(OBJECTIVES)),
    seed=st.integers(0, 2**16),
)
def test_prox_output_minimizes_its_objective(w, strength, name, seed):
    make, penalty = OBJECTIVES[name]
    x = np.asarray(_apply(make(strength), {"w": w})["w"], np.float64)

    def objective(z):
        return penalty(z, strength) + 0.5 * ((z - w.astype(np.float64)) ** 2).sum()

    rng = np.random.default_rng(seed)
    best = objective(x)
    for scale in (1e-3, 1e-2, 1e-1, 1.0):
        for _ in range(10):
            assert best <= objective(x + scale * rng.standard_normal(x.shape)) + 1e-4


PARAMETER_SPACE = {
    "decoupled decay": jaxreg.decoupled_weight_decay(0.3, learning_rate=0.1),
    "l1": jaxreg.l1_prox(0.5),
    "elastic net": jaxreg.elastic_net_prox(0.5, 0.5),
    "group lasso": jaxreg.group_lasso_prox(0.5, mask={"kernel": True, "bias": False}),
    "box": jaxreg.project_box(-1.0, 1.0),
    "nonnegative": jaxreg.project_nonnegative(),
    "l2 ball": jaxreg.project_l2_ball(1.0),
    "l1 ball": jaxreg.project_l1_ball(1.0),
    "max norm": jaxreg.max_norm(1.0, mask={"kernel": True, "bias": False}),
}


@SETTINGS
@given(tree=TREES, name=st.sampled_from(sorted(PARAMETER_SPACE)), data=st.data())
def test_zeros_stay_exactly_zero(tree, name, data):
    # Zero some parameters and give them zero updates: every parameter-space transform
    # must leave them at exactly 0.0.
    keep = jax.tree.map(lambda x: data.draw(hnp.arrays(np.bool_, x.shape)), tree)
    params = jax.tree.map(lambda x, k: np.where(k, x, np.float32(0)), tree, keep)
    updates = jax.tree.map(lambda x, k: np.where(k, np.float32(0.1), np.float32(0)), tree, keep)
    out = _apply(PARAMETER_SPACE[name], params, updates)
    for o, k in zip(jax.tree.leaves(out), jax.tree.leaves(keep)):
        assert np.all(np.asarray(o)[~k] == 0.0)


@SETTINGS
@given(tree=TREES, strength=POSITIVE)
def test_l1_prox_zeros_are_exact_and_match_the_threshold(tree, strength):
    out = _apply(jaxreg.l1_prox(strength), tree)
    for o, w in zip(_leaves(out), _leaves(tree)):
        assert np.all((o == 0.0) == (np.abs(w) <= strength))


@SETTINGS
@given(tree=TREES, max_norm=POSITIVE)
def test_clip_by_global_norm_bound_and_direction(tree, max_norm):
    grads = jax.tree.map(jnp.asarray, tree)
    tx = jaxreg.clip_by_global_norm(max_norm)
    out, state = tx.update(grads, tx.init(grads))
    got = np.concatenate([x.ravel() for x in _leaves(out)])
    g = np.concatenate([x.ravel() for x in _leaves(tree)])
    assert np.linalg.norm(got) <= max_norm * (1 + 1e-6)
    assert np.all(np.isfinite(got))
    norm = np.linalg.norm(g)
    np.testing.assert_allclose(float(state.norm), norm, rtol=1e-5, atol=1e-6)
    if norm > 0:
        # Same direction: a non-negative multiple of the input.
        np.testing.assert_allclose(got, g * min(1.0, max_norm / norm), rtol=1e-5, atol=1e-6)


@SETTINGS
@given(shape=hnp.array_shapes(max_dims=3, max_side=4), name=st.sampled_from(["global", "leaf", "value"]))
def test_zero_gradients_give_zeros_never_nan(shape, name):
    grads = {"w": jnp.zeros(shape, jnp.float32)}
    tx = {
        "global": jaxreg.clip_by_global_norm(1.0),
        "leaf": jaxreg.clip_by_leaf_norm(1.0),
        "value": jaxreg.clip(1.0),
    }[name]
    out, _ = tx.update(grads, tx.init(grads))
    assert np.all(np.asarray(out["w"]) == 0.0)
