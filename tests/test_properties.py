"""Invariants of jaxreg's transforms, checked by hypothesis on small random pytrees.

Projections are feasible and idempotent; a prox with strength 0 is the identity, and
otherwise its output minimizes its objective; exact zeros stay exactly zero; the zeros
of ``l1_prox`` are exactly ``0.0``; ``clip_by_global_norm`` respects its bound and keeps
the direction; all-zero gradients give zeros, never NaN.

Every run goes through one jitted function per transform whose hyperparameters arrive
traced, so that hypothesis's examples reuse one compilation (and the traced path is the
one being tested).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jaxreg

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)

SHAPES = {"kernel": (4, 3), "bias": (3,), "scale": ()}
KERNEL_AND_BIAS = {"kernel": True, "bias": True, "scale": False}
KERNEL_ONLY = {"kernel": True, "bias": False, "scale": False}
VALUES = st.floats(-3, 3, width=32, allow_subnormal=False)


def trees(elements=VALUES) -> st.SearchStrategy[dict[str, np.ndarray]]:
    return st.fixed_dictionaries({k: hnp.arrays(np.float32, s, elements=elements) for k, s in SHAPES.items()})


def leaves64(tree: Any) -> list[np.ndarray]:
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


@functools.cache
def stepper(make: Callable[..., optax.GradientTransformation]) -> Callable:
    """Jitted ``(hyper, params, updates) -> new params`` for ``make(*hyper)``, one per factory."""

    @jax.jit
    def run(hyper, params, updates):
        tx = make(*hyper)
        u2, _ = tx.update(updates, tx.init(params), params)
        return optax.apply_updates(params, u2)

    return run


def step(make, hyper, params, updates=None):
    params = jax.tree.map(np.asarray, params)
    updates = jax.tree.map(np.zeros_like, params) if updates is None else updates
    return stepper(make)(tuple(np.float32(h) for h in hyper), params, updates)


# ---- the transforms under test -----------------------------------------------------------

# Every parameter-space transform as a factory of (h, lr): h is the strength, radius or
# bound, lr the learning rate where the transform takes one. One table, so that every test
# reuses one compilation per transform.
PARAMETER_SPACE = {
    "decoupled_weight_decay": lambda h, lr: jaxreg.decoupled_weight_decay(h, learning_rate=lr),
    "l1_prox": lambda h, lr: jaxreg.l1_prox(h, learning_rate=lr),
    "elastic_net_prox": lambda h, lr: jaxreg.elastic_net_prox(h, 2 * h, learning_rate=lr),
    "group_lasso_prox axis=-1": lambda h, lr: jaxreg.group_lasso_prox(
        h, axis=-1, learning_rate=lr, mask=KERNEL_AND_BIAS
    ),
    "group_lasso_prox axis=0": lambda h, lr: jaxreg.group_lasso_prox(h, axis=0, learning_rate=lr, mask=KERNEL_ONLY),
    "project_box": lambda h, lr: jaxreg.project_box(-h, h / 2),
    "project_nonnegative": lambda h, lr: jaxreg.project_nonnegative(),
    "project_l2_ball global": lambda h, lr: jaxreg.project_l2_ball(h),
    "project_l2_ball leaf": lambda h, lr: jaxreg.project_l2_ball(h, scope="leaf"),
    "project_l1_ball global": lambda h, lr: jaxreg.project_l1_ball(h),
    "project_l1_ball leaf": lambda h, lr: jaxreg.project_l1_ball(h, scope="leaf"),
    "max_norm axis=-1": lambda h, lr: jaxreg.max_norm(h, axis=-1, mask=KERNEL_AND_BIAS),
    "max_norm axis=0": lambda h, lr: jaxreg.max_norm(h, axis=0, mask=KERNEL_AND_BIAS),
}
MASKS = {
    "group_lasso_prox axis=-1": KERNEL_AND_BIAS,
    "group_lasso_prox axis=0": KERNEL_ONLY,
    "max_norm axis=-1": KERNEL_AND_BIAS,
    "max_norm axis=0": KERNEL_AND_BIAS,
}


def run(name, h, lr, params, updates=None):
    return step(PARAMETER_SPACE[name], (h, lr), params, updates)


# ---- projections: feasible and idempotent -----------------------------------------


def _unit_norms(x, axis):
    others = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
    return np.sqrt(np.sum(x**2, axis=others))


def _l2(xs):
    return math.sqrt(sum(float(np.sum(x**2)) for x in xs))


def _l1(xs):
    return sum(float(np.sum(np.abs(x))) for x in xs)


TOL = 1 + 1e-5


def _units_within(axis):
    def check(t, r):
        return all(np.all(_unit_norms(np.asarray(t[k], np.float64), axis) <= r * TOL) for k in ("kernel", "bias"))

    return check


# name -> feasibility check (new params, radius) -> bool
PROJECTIONS = {
    "project_box": lambda t, r: all(
        np.all((x >= -np.float32(r)) & (x <= np.float32(np.float32(r) / 2))) for x in leaves64(t)
    ),
    "project_nonnegative": lambda t, r: all(np.all(x >= 0) for x in leaves64(t)),
    "project_l2_ball global": lambda t, r: _l2(leaves64(t)) <= r * TOL,
    "project_l2_ball leaf": lambda t, r: all(_l2([x]) <= r * TOL for x in leaves64(t)),
    "project_l1_ball global": lambda t, r: _l1(leaves64(t)) <= r * TOL,
    "project_l1_ball leaf": lambda t, r: all(_l1([x]) <= r * TOL for x in leaves64(t)),
    "max_norm axis=-1": _units_within(-1),
    "max_norm axis=0": _units_within(0),
}


def _pairs(norm, groups):
    """(norm before, norm after) for each ball, given as a list of leaf names."""

    def pairs(w, x):
        return [(norm([w[k] for k in g]), norm([x[k] for k in g])) for g in groups]

    return pairs


def _unit_pairs(axis):
    def pairs(w, x):
        return [
            (b, a)
            for k in ("kernel", "bias")
            for b, a in zip(_unit_norms(w[k], axis).ravel(), _unit_norms(x[k], axis).ravel())
        ]

    return pairs


# name -> (w, new params) -> [(norm before, norm after)] for each ball
BOUNDARY = {
    "project_l2_ball global": _pairs(_l2, [list(SHAPES)]),
    "project_l2_ball leaf": _pairs(_l2, [[k] for k in SHAPES]),
    "project_l1_ball global": _pairs(_l1, [list(SHAPES)]),
    "project_l1_ball leaf": _pairs(_l1, [[k] for k in SHAPES]),
    "max_norm axis=-1": _unit_pairs(-1),
    "max_norm axis=0": _unit_pairs(0),
}


@pytest.mark.parametrize("name", list(PROJECTIONS))
@SETTINGS
@given(params=trees(), updates=trees(), radius=st.floats(0.5, 5.0))
def test_projection_is_feasible_and_idempotent(name, params, updates, radius):
    radius = float(np.float32(radius))  # the value the traced hyperparameter holds
    once = run(name, radius, 1.0, params, updates)
    assert PROJECTIONS[name](once, radius)
    # Tight: a point outside the set lands on its boundary, not strictly inside.
    if name in BOUNDARY:
        w = {k: (params[k] + updates[k]).astype(np.float32).astype(np.float64) for k in SHAPES}
        for before, after in BOUNDARY[name](w, {k: np.asarray(v, np.float64) for k, v in once.items()}):
            if before > radius * (1 + 1e-4):
                np.testing.assert_allclose(after, radius, rtol=1e-4)
    twice = run(name, radius, 1.0, once)  # projecting a feasible point again moves nothing
    for a, b in zip(leaves64(once), leaves64(twice)):
        if name in ("project_box", "project_nonnegative"):
            np.testing.assert_array_equal(b, a)
        else:
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


# ---- proxes: identity at strength 0, argmin of their objective ------------------------

# The proxes' penalties R(list of selected leaves, strength), as PARAMETER_SPACE builds them.
PENALTIES = {
    "l1_prox": lambda xs, s: s * _l1(xs),
    "elastic_net_prox": lambda xs, s: s * _l1(xs) + s * _l2(xs) ** 2,  # l2 = 2s with the 1/2 convention
    "group_lasso_prox axis=-1": lambda xs, s: s * sum(float(_unit_norms(x, -1).sum()) for x in xs),
    "group_lasso_prox axis=0": lambda xs, s: s * sum(float(_unit_norms(x, 0).sum()) for x in xs),
}
# The same penalties on a grid of scalars (for the 1-d check).
PENALTIES_1D = {"l1_prox": lambda z, s: s * np.abs(z), "elastic_net_prox": lambda z, s: s * np.abs(z) + s * z**2}
LEARNING_RATES = st.floats(0.01, 2.0)


@pytest.mark.parametrize("name", [*PENALTIES, "decoupled_weight_decay"])
@SETTINGS
@given(params=trees(), updates=trees(), lr=LEARNING_RATES)
def test_prox_with_strength_zero_is_the_identity(name, params, updates, lr):
    # From params with a zero update: exactly the params, bit for bit.
    for a, b in zip(leaves64(run(name, 0.0, lr, params)), leaves64(params)):
        np.testing.assert_array_equal(a, b)
    # With an update: p + u (up to the rounding of p + ((p + u) - p)).
    want = jax.tree.map(lambda p, u: p + u, params, updates)
    got = run(name, 0.0, lr, params, updates)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_array_max_ulp(np.asarray(a), np.asarray(b), maxulp=1)


def _selected(tree, mask):
    return [x for k, x in sorted(tree.items()) if mask is None or mask[k]]


@pytest.mark.parametrize("name", list(PENALTIES))
@SETTINGS
@given(w=trees(), strength=st.floats(0.0, 3.0), lr=LEARNING_RATES, seed=st.integers(0, 2**31))
def test_prox_output_is_the_argmin_of_its_objective(name, w, strength, lr, seed):
    penalty, mask = PENALTIES[name], MASKS.get(name)
    strength, lr = float(np.float32(strength)), float(np.float32(lr))
    zeros = jax.tree.map(np.zeros_like, w)
    # From params 0 with update w the new params are exactly prox(w).
    x = {k: np.asarray(v, np.float64) for k, v in run(name, strength, lr, zeros, w).items()}
    w64 = {k: np.asarray(v, np.float64) for k, v in w.items()}
    xs, ws = _selected(x, mask), _selected(w64, mask)

    def objective(zs):
        return lr * penalty(zs, strength) + 0.5 * sum(float(np.sum((z - v) ** 2)) for z, v in zip(zs, ws))

    best = objective(xs)
    tol = 1e-6 * (1 + abs(best))
    rng = np.random.default_rng(seed)
    for scale in (1e-4, 1e-2, 1e-1, 1.0):
        for _ in range(5):
            other = [z + scale * rng.standard_normal(z.shape) for z in xs]
            assert best <= objective(other) + tol, f"a perturbation of size {scale} does better"
    # Unselected leaves pass through.
    for k in x:
        if mask is not None and not mask[k]:
            np.testing.assert_array_equal(x[k], w64[k])
    # In one dimension (the scalar leaf, when selected), compare with a fine grid.
    if name in PENALTIES_1D:
        v = float(w64["scale"])

        def objective_1d(z):
            return lr * PENALTIES_1D[name](z, strength) + 0.5 * (z - v) ** 2

        grid = np.linspace(-abs(v) - 1, abs(v) + 1, 4001)
        values = objective_1d(grid)
        assert objective_1d(x["scale"]) <= values.min() + 1e-6 * (1 + abs(values.min()))
        assert abs(float(x["scale"]) - grid[values.argmin()]) <= 2 * (grid[1] - grid[0]) * (1 + abs(v))


# ---- exact zeros ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PARAMETER_SPACE))
@SETTINGS
@given(params=trees(), updates=trees(), h=st.floats(0.1, 3.0), data=st.data())
def test_exact_zeros_stay_exactly_zero(name, params, updates, h, data):
    # Zero some parameters and give them a zero update: they must stay exactly +0.0.
    zero = {k: data.draw(hnp.arrays(np.bool_, s), label=f"zero[{k}]") for k, s in SHAPES.items()}
    params = {k: np.where(zero[k], np.float32(0), v).astype(np.float32) for k, v in params.items()}
    updates = {k: np.where(zero[k], np.float32(0), v).astype(np.float32) for k, v in updates.items()}
    new = run(name, h, 0.5, params, updates)
    for k in SHAPES:
        x = np.asarray(new[k])[zero[k]]
        assert np.all(x == 0) and not np.any(np.signbit(x)), f"{k}: {x}"


@SETTINGS
@given(params=trees(), updates=trees(), strength=st.floats(0.0, 3.0), lr=LEARNING_RATES)
def test_l1_prox_zeros_are_exactly_zero(params, updates, strength, lr):
    new = run("l1_prox", strength, lr, params, updates)
    t = np.float32(strength) * np.float32(lr)  # the threshold, as float32 computes it
    for k in SHAPES:
        w = (params[k] + updates[k]).astype(np.float32)
        x = np.asarray(new[k])
        inside = np.abs(w) <= t
        assert np.all(x[inside] == 0) and not np.any(np.signbit(x[inside]))  # exact +0.0
        # Outside the band: shrunk by t towards 0, same sign (it may round to 0 next to a large p).
        assert np.all(np.sign(x[~inside]) * np.sign(w[~inside]) >= 0)
        want = np.sign(w) * np.maximum(np.abs(w.astype(np.float64)) - t, 0)
        np.testing.assert_allclose(x, want, rtol=1e-6, atol=1e-6)


# ---- clipping -------------------------------------------------------------------------

NORM_TYPES = [1, 2, 3, math.inf]


def _pnorm(xs, p):
    a = np.concatenate([np.abs(x).ravel() for x in xs])
    return float(a.max(initial=0.0)) if math.isinf(p) else float(np.sum(a**p) ** (1 / p))


@pytest.mark.parametrize("norm_type", NORM_TYPES)
@SETTINGS
@given(grads=trees(st.floats(-100, 100, width=32, allow_subnormal=False)), max_norm=st.floats(1e-3, 10.0))
def test_clip_by_global_norm_bound_and_direction(norm_type, grads, max_norm):
    max_norm = float(np.float32(max_norm))
    out = leaves64(_clip_runner(norm_type)(np.float32(max_norm), grads))
    g = leaves64(grads)
    assert all(np.all(np.isfinite(x)) for x in out)
    n_in, n_out = _pnorm(g, norm_type), _pnorm(out, norm_type)
    assert n_out <= max_norm * (1 + 1e-6)
    if n_in <= max_norm * (1 - 1e-6):
        for a, b in zip(out, g):  # inside the ball: untouched, bit for bit
            np.testing.assert_array_equal(a, b)
    elif n_in > 0:
        # The same direction: one factor c in (0, 1] for every entry of every leaf.
        c = n_out / n_in
        assert 0 < c <= 1
        for a, b in zip(out, g):
            np.testing.assert_allclose(a, c * b, rtol=2e-6, atol=1e-30)
            assert np.all(np.sign(a) * np.sign(b) >= 0)


@functools.cache
def _clip_runner(norm_type):
    def run(m, g):
        tx = jaxreg.clip_by_global_norm(m, norm_type)
        return tx.update(g, tx.init(g))[0]

    return jax.jit(run)


# ---- all-zero inputs ------------------------------------------------------------------

# The gradient-space transforms also meet an empty leaf.
ZERO_TREE_SHAPES = {"kernel": (4, 3), "bias": (3,), "scale": (), "empty": (0, 3)}

GRADIENT_SPACE = {
    "clip": lambda: jaxreg.clip(1.0),
    **{f"clip_by_global_norm p={p} eps=0": (lambda p=p: jaxreg.clip_by_global_norm(1.0, p)) for p in NORM_TYPES},
    **{f"clip_by_leaf_norm p={p} eps=0": (lambda p=p: jaxreg.clip_by_leaf_norm(1.0, p)) for p in NORM_TYPES},
    "coupled_weight_decay": lambda: jaxreg.coupled_weight_decay(0.5),
}


@pytest.mark.parametrize("name", list(GRADIENT_SPACE))
def test_all_zero_gradients_give_zeros_never_nan(name):
    tx = GRADIENT_SPACE[name]()
    zeros = {k: jnp.zeros(s, jnp.float32) for k, s in ZERO_TREE_SHAPES.items()}
    out, state = jax.jit(tx.update)(zeros, tx.init(zeros), zeros)
    for x in jax.tree.leaves(out):
        x = np.asarray(x)
        assert np.all(x == 0) and not np.any(np.signbit(x)), f"{name}: {x}"
    for x in jax.tree.leaves(state):
        assert np.all(np.isfinite(np.asarray(x))), f"{name}: state {state}"


@pytest.mark.parametrize("name", list(PARAMETER_SPACE))
def test_all_zero_params_and_updates_give_zeros_never_nan(name):
    zeros = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    for h in (0.0, 1.0):
        for x in leaves64(run(name, h, 1.0, zeros, zeros)):
            assert np.all(x == 0) and not np.any(np.signbit(x)), f"{name}: {x}"


@pytest.mark.parametrize("axis", [0, -1])
def test_group_lasso_at_strength_zero_keeps_units_whose_norm_underflows(axis):
    # Found by hypothesis: entries at the smallest normal float32 square to zero, so the
    # unit's norm is 0; a zero strength must still leave the unit alone.
    tiny = np.float32(np.finfo(np.float32).tiny)
    params = {"kernel": jnp.full((4, 3), tiny), "bias": jnp.zeros(3)}
    for strength, want in [(0.0, tiny), (0.1, 0.0)]:
        tx = jaxreg.group_lasso_prox(strength, axis=axis)
        updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
        np.testing.assert_array_equal(optax.apply_updates(params, updates)["kernel"], np.full((4, 3), want))
