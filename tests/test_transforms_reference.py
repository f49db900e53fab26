"""Every jaxreg transform, penalty and schedule against a plain numpy reference.

The references below are written from the docstrings' formulas in float64 numpy, with
no jaxreg code. Each transform runs under ``jax.jit`` on random pytrees of mixed shapes
(``conftest.random_tree``). Parameter-space transforms are checked through their
contract (docs/architecture.md, "Two spaces, one contract"): ``optax.apply_updates(params, u2) == op(params + u)``
on the leaves the mask selects, and ``u2 is u`` (bit for bit) elsewhere. Where optax has
the same operation (``optax.clip``, ``optax.clip_by_global_norm``,
``optax.add_decayed_weights``, ``optax.projections.*``) it is a second oracle.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_tree

import jaxreg

LR = 0.1
KERNELS = jaxreg.masks.weights_only
# Selectors that leave some leaves out, so that every test also sees unselected leaves.
SOME = jaxreg.masks.by_path(r"dense1|scale")  # dense1/kernel, dense1/bias, scale
MOST = jaxreg.masks.mask_not(jaxreg.masks.by_path("out/bias"))  # all leaves but one
SOME_LEAVES = {  # an explicit tree of bools
    "conv": {"kernel": True},
    "dense1": {"bias": True, "kernel": False},
    "out": {"bias": True, "kernel": True},
    "scale": False,
}
# An explicit tree of bools for axis-based transforms: two of the three kernels.
SOME_KERNELS = {
    "conv": {"kernel": True},
    "dense1": {"bias": False, "kernel": False},
    "out": {"bias": False, "kernel": True},
    "scale": False,
}

# ---- numpy references (float64) --------------------------------------------------


def f64(x: Any) -> np.ndarray:
    return np.asarray(jnp.asarray(x).astype(jnp.float32), np.float64)


def np_soft(w, t):
    return np.sign(w) * np.maximum(np.abs(w) - t, 0.0)


def np_unit_norms(w, axis):
    others = tuple(a for a in range(w.ndim) if a != axis % w.ndim)
    return np.sqrt(np.sum(np.square(w), axis=others, keepdims=True))


def np_group_lasso(w, t, axis):
    n = np_unit_norms(w, axis)
    return w * np.maximum(1.0 - t / np.where(n > 0, n, 1.0), 0.0) * (n > 0)


def np_max_norm(w, c, axis):
    n = np_unit_norms(w, axis)
    return w * np.where(n > c, c / np.where(n > 0, n, 1.0), 1.0)


def np_pnorm(xs, p):
    a = np.concatenate([np.abs(x).ravel() for x in xs])
    if math.isinf(p):
        return float(a.max(initial=0.0))
    return float(np.sum(a**p) ** (1.0 / p))


def np_l2_ball(ws, r):
    n = np_pnorm(ws, 2)
    return [w * (r / n) for w in ws] if n > r else list(ws)


def np_l1_ball(ws, r):
    """Duchi et al. 2008: sort the magnitudes, find the threshold, soft-threshold."""
    a = np.concatenate([np.abs(w).ravel() for w in ws])
    if a.sum() <= r:
        return list(ws)
    mu = np.sort(a)[::-1]
    cums = np.cumsum(mu)
    k = np.arange(1, a.size + 1)
    rho = np.nonzero(mu - (cums - r) / k > 0)[0][-1]
    tau = (cums[rho] - r) / (rho + 1)
    return [np_soft(w, tau) for w in ws]


def per_leaf(f):
    """A reference for scope='leaf': ``f`` applied to each leaf as its own list."""
    return lambda ws, idx: [f([w])[0] for w in ws]


def whole(f):
    """A reference for scope='global' (or element-wise ops): ``f`` on all selected leaves."""
    return lambda ws, idx: f(ws)


# Per-leaf box bounds: a scalar per leaf, and a per-element array for one leaf.
BOX_LOWER = {
    "conv": {"kernel": -1.0},
    "dense1": {"bias": np.linspace(-0.5, 0.1, 7, dtype=np.float32), "kernel": -0.3},
    "out": {"bias": 0.0, "kernel": -0.2},
    "scale": -5.0,
}
BOX_UPPER = {
    "conv": {"kernel": 0.5},
    "dense1": {"bias": np.linspace(0.15, 0.6, 7, dtype=np.float32), "kernel": 0.3},
    "out": {"bias": 1.0, "kernel": 0.25},
    "scale": 5.0,
}


def np_box_tree(ws, idx):
    lows, highs = jax.tree.leaves(BOX_LOWER), jax.tree.leaves(BOX_UPPER)
    return [np.clip(w, f64(lows[i]), f64(highs[i])) for w, i in zip(ws, idx)]


@dataclasses.dataclass(frozen=True)
class ParamCase:
    """A parameter-space transform, its numpy reference and its optax peer (if any)."""

    make: Callable[[Any], optax.GradientTransformation]  # mask -> transform
    ref: Callable[[list[np.ndarray], list[int]], list[np.ndarray]]  # (w = p + u, leaf indices) -> new params
    mask: Any  # selects some leaves and leaves others out
    peer: Callable[[list[jax.Array]], list[jax.Array]] | None = None  # optax on the selected w


def _optax_l1_ball(r):
    def project(ws):
        with jax.numpy_dtype_promotion("standard"):  # optax's simplex projection mixes dtypes
            return optax.projections.projection_l1_ball(ws, r)

    return project


# Strengths and radii are chosen so that, on these trees, each op both acts on some
# entries/units/leaves (zeroes, shrinks, clips) and leaves others alone.
PARAM_CASES = {
    "l1_prox": ParamCase(
        lambda m: jaxreg.l1_prox(0.5, learning_rate=LR, mask=m),
        whole(lambda ws: [np_soft(w, LR * 0.5) for w in ws]),
        MOST,
    ),
    "elastic_net_prox": ParamCase(
        lambda m: jaxreg.elastic_net_prox(0.5, 2.0, learning_rate=LR, mask=m),
        whole(lambda ws: [np_soft(w, LR * 0.5) / (1 + LR * 2.0) for w in ws]),
        SOME,
    ),
    "group_lasso_prox axis=-1": ParamCase(
        lambda m: jaxreg.group_lasso_prox(26.0, axis=-1, learning_rate=LR, mask=m),
        whole(lambda ws: [np_group_lasso(w, LR * 26.0, -1) for w in ws]),
        KERNELS,
    ),
    "group_lasso_prox axis=0": ParamCase(
        lambda m: jaxreg.group_lasso_prox(20.0, axis=0, learning_rate=LR, mask=m),
        whole(lambda ws: [np_group_lasso(w, LR * 20.0, 0) for w in ws]),
        SOME_KERNELS,
    ),
    "project_box scalar bounds": ParamCase(
        lambda m: jaxreg.project_box(-0.5, 0.7, mask=m),
        whole(lambda ws: [np.clip(w, -0.5, np.float32(0.7)) for w in ws]),
        SOME_LEAVES,
        lambda ws: optax.projections.projection_box(ws, [-0.5] * len(ws), [0.7] * len(ws)),
    ),
    "project_box per-leaf bounds": ParamCase(
        lambda m: jaxreg.project_box(BOX_LOWER, BOX_UPPER, mask=m),
        np_box_tree,
        MOST,
    ),
    "project_nonnegative": ParamCase(
        lambda m: jaxreg.project_nonnegative(mask=m),
        whole(lambda ws: [np.maximum(w, 0.0) for w in ws]),
        SOME,
        optax.projections.projection_non_negative,
    ),
    "project_l2_ball global": ParamCase(
        lambda m: jaxreg.project_l2_ball(3.0, mask=m),
        whole(lambda ws: np_l2_ball(ws, 3.0)),
        MOST,
        lambda ws: optax.projections.projection_l2_ball(ws, 3.0),
    ),
    "project_l2_ball leaf": ParamCase(
        lambda m: jaxreg.project_l2_ball(1.5, scope="leaf", mask=m),
        per_leaf(lambda ws: np_l2_ball(ws, 1.5)),
        SOME,
        lambda ws: [optax.projections.projection_l2_ball(w, 1.5) for w in ws],
    ),
    "project_l1_ball global": ParamCase(
        lambda m: jaxreg.project_l1_ball(10.0, mask=m),
        whole(lambda ws: np_l1_ball(ws, 10.0)),
        MOST,
        _optax_l1_ball(10.0),
    ),
    "project_l1_ball leaf": ParamCase(
        lambda m: jaxreg.project_l1_ball(2.0, scope="leaf", mask=m),
        per_leaf(lambda ws: np_l1_ball(ws, 2.0)),
        SOME,
        lambda ws: [_optax_l1_ball(2.0)(w) for w in ws],
    ),
    "max_norm axis=-1": ParamCase(
        lambda m: jaxreg.max_norm(3.0, axis=-1, mask=m),
        whole(lambda ws: [np_max_norm(w, 3.0, -1) for w in ws]),
        SOME_KERNELS,
    ),
    "max_norm axis=0": ParamCase(
        lambda m: jaxreg.max_norm(3.0, axis=0, mask=m),
        whole(lambda ws: [np_max_norm(w, 3.0, 0) for w in ws]),
        KERNELS,
    ),
}


def _selected(mask, params) -> list[bool]:
    if mask is None:
        return [True] * len(jax.tree.leaves(params))
    return [bool(b) for b in jax.tree.leaves(mask(params) if callable(mask) else mask)]


def _jnp_tree(tree, dtype=None):
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


def _step(tx, params, updates, state=None, update=None):
    """One jitted update: (u2, new params, new state)."""
    state = tx.init(params) if state is None else state
    u2, state = (update or jax.jit(tx.update))(updates, state, params)
    return u2, optax.apply_updates(params, u2), state


@functools.cache
def built(name: str) -> tuple[optax.GradientTransformation, Callable]:
    """The case's transform and its jitted update, built once (compiles are the cost here)."""
    case = PARAM_CASES[name]
    tx = case.make(case.mask)
    return tx, jax.jit(tx.update)


# ---- parameter space: the contract ----------------------------------------------


@pytest.mark.parametrize("name", list(PARAM_CASES))
def test_parameter_space_contract_against_numpy(name):
    case = PARAM_CASES[name]
    mask = case.mask
    params, updates = _jnp_tree(random_tree(0)), _jnp_tree(random_tree(1, scale=0.6))
    tx, update = built(name)
    u2, new, state = _step(tx, params, updates, update=update)

    assert jax.tree.structure(u2) == jax.tree.structure(params)
    assert int(state.count) == 1
    chosen = _selected(mask, params)
    assert any(chosen) and not all(chosen)
    ps, us = jax.tree.leaves(params), jax.tree.leaves(updates)
    idx = [i for i, c in enumerate(chosen) if c]
    ws = [f64(ps[i] + us[i]) for i in idx]  # p + u rounded to float32, as apply_updates would
    want = dict(zip(idx, case.ref(ws, idx)))
    for i, (u, out, n) in enumerate(zip(us, jax.tree.leaves(u2), jax.tree.leaves(new))):
        assert out.dtype == u.dtype and out.shape == u.shape
        if chosen[i]:
            np.testing.assert_allclose(f64(n), want[i], rtol=1e-5, atol=1e-6, err_msg=f"leaf {i}")
        else:
            np.testing.assert_array_equal(out, u, err_msg=f"unselected leaf {i} changed")
    if name.startswith("project_box"):  # a hard constraint: inside the float32 box exactly
        lows, highs = (
            (jax.tree.leaves(BOX_LOWER), jax.tree.leaves(BOX_UPPER)) if "per-leaf" in name else ([-0.5] * 6, [0.7] * 6)
        )
        for i in idx:
            n = np.asarray(jax.tree.leaves(new)[i])
            assert np.all(n >= np.float32(lows[i])) and np.all(n <= np.float32(highs[i])), f"leaf {i} left the box"

    if case.peer is not None:
        peer = jax.jit(case.peer)([ps[i] + us[i] for i in idx])
        for i, q in zip(idx, peer):
            np.testing.assert_allclose(f64(jax.tree.leaves(new)[i]), f64(q), rtol=1e-5, atol=1e-6)


def test_decoupled_weight_decay_against_numpy():
    mask = MOST
    params, updates = _jnp_tree(random_tree(2)), _jnp_tree(random_tree(3, scale=0.6))
    u2, new, state = _step(jaxreg.decoupled_weight_decay(0.3, learning_rate=LR, mask=mask), params, updates)
    assert int(state.count) == 1
    for c, p, u, out, n in zip(
        _selected(mask, params), *(jax.tree.leaves(t) for t in (params, updates, u2, new)), strict=True
    ):
        if c:
            np.testing.assert_allclose(f64(out), f64(u) - LR * 0.3 * f64(p), rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(f64(n), f64(p) + f64(u) - LR * 0.3 * f64(p), rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(out, u)


# ---- gradient space ---------------------------------------------------------------


def _grad_step(tx, grads, params=None):
    state = tx.init(grads if params is None else params)
    return jax.jit(tx.update)(grads, state, params)


@functools.cache
def clip_norm_fn(kind: str, norm_type: Any) -> Callable:
    """A jitted ``(grads, max_norm, eps) -> (updates, state)``: one compile per norm type.

    The hyperparameters arrive traced, which is how a sweep would pass them.
    """
    make = {"global": jaxreg.clip_by_global_norm, "leaf": jaxreg.clip_by_leaf_norm}[kind]

    def run(grads, max_norm, eps):
        tx = make(max_norm, norm_type, eps)
        return tx.update(grads, tx.init(grads))

    return jax.jit(run)


@pytest.mark.parametrize("norm_type", [1, 2, 3, "inf"])
def test_clip_by_global_norm_against_numpy(norm_type):
    grads = _jnp_tree(random_tree(6, scale=0.3))
    p = math.inf if norm_type == "inf" else norm_type
    n = np_pnorm([f64(g) for g in jax.tree.leaves(grads)], p)
    for eps in (0.0, 1e-6):
        for max_norm in (0.5, 1e4):  # clips, does not clip
            out, state = clip_norm_fn("global", norm_type)(grads, jnp.float32(max_norm), jnp.float32(eps))
            assert state.norm.dtype == jnp.float32
            np.testing.assert_allclose(float(state.norm), n, rtol=2e-6)
            coef = min(max_norm / (n + eps), 1.0)
            assert (coef < 1) == (max_norm == 0.5)
            for o, g in zip(jax.tree.leaves(out), jax.tree.leaves(grads)):
                assert o.dtype == g.dtype
                np.testing.assert_allclose(f64(o), f64(g) * coef, rtol=2e-6, atol=1e-8)
    # The static-hyperparameter path, and optax's own (2-norm, eps = 0 only) as a peer.
    tx = jaxreg.clip_by_global_norm(0.5, norm_type)
    out, _ = _grad_step(tx, grads)
    coef = min(0.5 / n, 1.0)
    jax.tree.map(lambda o, g: np.testing.assert_allclose(f64(o), f64(g) * coef, rtol=2e-6, atol=1e-8), out, grads)
    if p == 2:
        peer = optax.clip_by_global_norm(0.5)
        want, _ = jax.jit(peer.update)(grads, peer.init(grads))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8), out, want)


@pytest.mark.parametrize("norm_type", [1, 2, 3, math.inf])
def test_clip_by_leaf_norm_against_numpy(norm_type):
    grads = _jnp_tree(random_tree(7, scale=0.5))
    for eps in (0.0, 1e-6):
        out, state = clip_norm_fn("leaf", norm_type)(grads, jnp.float32(1.0), jnp.float32(eps))
        assert jax.tree.structure(state.norm) == jax.tree.structure(grads)
        clipped = 0
        for o, g, n in zip(jax.tree.leaves(out), jax.tree.leaves(grads), jax.tree.leaves(state.norm)):
            want_n = np_pnorm([f64(g)], norm_type)
            np.testing.assert_allclose(float(n), want_n, rtol=2e-6)
            coef = min(1.0 / (want_n + eps), 1.0)
            clipped += coef < 1
            assert o.dtype == g.dtype
            np.testing.assert_allclose(f64(o), f64(g) * coef, rtol=2e-6, atol=1e-8)
        assert 0 < clipped < len(jax.tree.leaves(grads))  # both branches were exercised


def test_clip_against_numpy_and_optax():
    grads = _jnp_tree(random_tree(8, scale=0.5))
    gs = [f64(g) for g in jax.tree.leaves(grads)]
    tx = jaxreg.clip(0.2)
    static = _grad_step(tx, grads)
    assert int(static[1].count) == 1
    traced = jax.jit(lambda g, m: jaxreg.clip(m).update(g, tx.init(g)))
    optax_clip = jax.jit(lambda g, m: optax.clip(m).update(g, optax.EmptyState())[0])
    for max_delta in (0.0, 0.2, 10.0):
        # The static bound 0.2, and the same transform with a traced bound.
        out, state = static if max_delta == 0.2 else traced(grads, jnp.float32(max_delta))
        want = optax_clip(grads, jnp.float32(max_delta))
        bound = f64(np.float32(max_delta))
        for o, w, g in zip(jax.tree.leaves(out), jax.tree.leaves(want), gs):
            np.testing.assert_array_equal(o, w)
            np.testing.assert_array_equal(f64(o), np.clip(g, -bound, bound))
        fraction = sum(int((np.abs(g) > bound).sum()) for g in gs) / sum(g.size for g in gs)
        np.testing.assert_allclose(float(state.clipped_fraction), fraction, rtol=1e-6)


@pytest.mark.parametrize("mask", [None, SOME, KERNELS, SOME_KERNELS], ids=["all", "by_path", "weights", "tree"])
def test_coupled_weight_decay_against_numpy_and_optax(mask):
    params, grads = _jnp_tree(random_tree(9)), _jnp_tree(random_tree(10, scale=0.3))
    out, _ = _grad_step(jaxreg.coupled_weight_decay(0.3, mask=mask), grads, params)
    chosen = _selected(mask, params)
    peer = optax.add_decayed_weights(0.3, mask=jax.tree.structure(params).unflatten(chosen))
    want, _ = jax.jit(peer.update)(grads, peer.init(params), params)
    for c, o, w, g, p in zip(chosen, *(jax.tree.leaves(t) for t in (out, want, grads, params)), strict=True):
        np.testing.assert_array_equal(o, w)
        if c:
            np.testing.assert_allclose(f64(o), f64(g) + 0.3 * f64(p), rtol=1e-6, atol=1e-8)
        else:
            np.testing.assert_array_equal(o, g)


# ---- learning-rate schedules inside the proxes ----------------------------------

SCHEDULE = optax.exponential_decay(0.2, transition_steps=1, decay_rate=0.5)  # 0.2, 0.1, 0.05

# name -> (factory of the transform from a learning rate, numpy op (p, u, lr) -> new params)
SCHEDULED = {
    "l1_prox": (
        lambda lr: jaxreg.l1_prox(2.0, learning_rate=lr),
        lambda p, u, lr: np_soft(p + u, lr * 2.0),
    ),
    "elastic_net_prox": (
        lambda lr: jaxreg.elastic_net_prox(2.0, 3.0, learning_rate=lr),
        lambda p, u, lr: np_soft(p + u, lr * 2.0) / (1 + lr * 3.0),
    ),
    "group_lasso_prox": (
        lambda lr: jaxreg.group_lasso_prox(6.0, learning_rate=lr, mask=KERNELS),
        lambda p, u, lr: np_group_lasso(p + u, lr * 6.0, -1) if p.ndim >= 2 else p + u,
    ),
    "decoupled_weight_decay": (
        lambda lr: jaxreg.decoupled_weight_decay(2.0, learning_rate=lr),
        lambda p, u, lr: p + u - lr * 2.0 * p,
    ),
}


@pytest.mark.parametrize("name", list(SCHEDULED))
def test_learning_rate_schedule_is_read_at_the_transforms_own_count(name):
    make, op = SCHEDULED[name]
    tx = make(SCHEDULE)
    # Behind another transform in a chain, so that nothing but its own state counts.
    chain = optax.chain(optax.identity(), tx)
    params = _jnp_tree(random_tree(11))
    state = chain.init(params)
    update = jax.jit(chain.update)
    # The same step taken by a transform built with the constant (traced) value lr.
    fixed = jax.jit(lambda u, p, lr: make(lr).update(u, make(lr).init(p), p)[0])
    for step in range(3):
        lr = 0.2 * 0.5**step
        updates = _jnp_tree(random_tree(20 + step, scale=0.3))
        u2, state = update(updates, state, params)
        new = optax.apply_updates(params, u2)
        for n, p, u in zip(jax.tree.leaves(new), jax.tree.leaves(params), jax.tree.leaves(updates)):
            np.testing.assert_allclose(f64(n), op(f64(p), f64(u), lr), rtol=1e-5, atol=1e-6, err_msg=f"step {step}")
        want = fixed(updates, params, jnp.float32(lr))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), u2, want)
        params = new
    assert int(state[1].count) == 3


def test_strength_schedule_is_read_at_the_step_count():
    tx = jaxreg.l1_prox(SCHEDULE, learning_rate=0.5)
    params = _jnp_tree(random_tree(12))
    state = tx.init(params)
    for step in range(3):
        updates = _jnp_tree(random_tree(30 + step, scale=0.3))
        u2, new, state = _step(tx, params, updates, state)
        for n, p, u in zip(jax.tree.leaves(new), jax.tree.leaves(params), jax.tree.leaves(updates)):
            np.testing.assert_allclose(f64(n), np_soft(f64(p) + f64(u), 0.5 * 0.2 * 0.5**step), rtol=1e-5, atol=1e-6)
        params = new


# ---- schedules ------------------------------------------------------------------

STEPS = [0, 1, 2, 3, 9, 10, 11, 99, 100, 12345]


@pytest.mark.parametrize("eta0, gamma", [(0.5, 0.3), (1.0, 0.0), (2e-3, 2.0)])
def test_inverse_sqrt_decay_formula(eta0, gamma):
    schedule = jaxreg.inverse_sqrt_decay(eta0, gamma)
    jitted = jax.jit(schedule)
    for t in STEPS:
        want = eta0 / math.sqrt(1 + gamma**2 * t)
        np.testing.assert_allclose(float(schedule(t)), want, rtol=1e-6)
        np.testing.assert_allclose(float(jitted(jnp.asarray(t, jnp.int32))), want, rtol=1e-6)


@pytest.mark.parametrize("eta0, decay, steps_per_epoch", [(0.5, 0.1, 10), (1.0, 0.0, 3), (0.1, 0.5, 1), (2.0, 0.99, 7)])
def test_epoch_decay_formula(eta0, decay, steps_per_epoch):
    schedule = jaxreg.epoch_decay(eta0, decay, steps_per_epoch)
    jitted = jax.jit(schedule)
    for t in STEPS:
        want = eta0 * (1 - decay) ** (t // steps_per_epoch)
        # optax raises (1 - decay) to the epoch in float32; tiny values underflow to 0.
        np.testing.assert_allclose(float(schedule(t)), want, rtol=2e-5, atol=1e-30)
        np.testing.assert_allclose(float(jitted(jnp.asarray(t, jnp.int32))), want, rtol=2e-5, atol=1e-30)


# ---- penalties --------------------------------------------------------------------


def _np_l1(ws, s):
    return s * sum(np.abs(w).sum() for w in ws)


def _np_l2(ws, s):
    return s / 2 * sum(np.square(w).sum() for w in ws)


PENALTIES = {
    "l1": (lambda t, m: jaxreg.penalties.l1(t, 0.3, mask=m), lambda ws: _np_l1(ws, 0.3)),
    "l2": (lambda t, m: jaxreg.penalties.l2(t, 0.3, mask=m), lambda ws: _np_l2(ws, 0.3)),
    "elastic_net": (
        lambda t, m: jaxreg.penalties.elastic_net(t, 0.3, 0.7, mask=m),
        lambda ws: _np_l1(ws, 0.3) + _np_l2(ws, 0.7),
    ),
    "group_lasso axis=-1": (
        lambda t, m: jaxreg.penalties.group_lasso(t, 0.3, axis=-1, mask=m),
        lambda ws: 0.3 * sum(np_unit_norms(w, -1).sum() for w in ws),
    ),
    "group_lasso axis=0": (
        lambda t, m: jaxreg.penalties.group_lasso(t, 0.3, axis=0, mask=m),
        lambda ws: 0.3 * sum(np_unit_norms(w, 0).sum() for w in ws),
    ),
}


@pytest.mark.parametrize("name", list(PENALTIES))
def test_penalty_against_numpy(name):
    penalty, ref = PENALTIES[name]
    mask = SOME_KERNELS if name.startswith("group_lasso") else MOST
    params = _jnp_tree(random_tree(13))
    got = jax.jit(lambda t: penalty(t, mask))(params)
    assert got.shape == () and got.dtype == jnp.float32
    ws = [f64(x) for x, c in zip(jax.tree.leaves(params), _selected(mask, params)) if c]
    np.testing.assert_allclose(float(got), ref(ws), rtol=2e-6)


@pytest.mark.parametrize("mask", [None, SOME], ids=["all", "by_path"])
def test_gradient_of_l2_is_strength_times_w(mask):
    params = _jnp_tree(random_tree(14))
    grads = jax.jit(jax.grad(lambda t: jaxreg.penalties.l2(t, 0.3, mask=mask)))(params)
    for c, g, p in zip(_selected(mask, params), jax.tree.leaves(grads), jax.tree.leaves(params)):
        np.testing.assert_allclose(f64(g), 0.3 * f64(p) if c else 0.0 * f64(p), rtol=1e-6, atol=1e-8)
    # ... which is what coupled_weight_decay adds to a zero gradient.
    zeros = jax.tree.map(jnp.zeros_like, params)
    tx = jaxreg.coupled_weight_decay(0.3, mask=mask)
    added, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8), added, grads)


def test_penalties_accumulate_bf16_in_float32():
    params = random_tree(15)
    got = jax.jit(jaxreg.penalties.l2)(_jnp_tree(params, jnp.bfloat16), 0.3)
    assert got.dtype == jnp.float32
    ws = [f64(jnp.asarray(x, jnp.bfloat16)) for x in jax.tree.leaves(params)]
    np.testing.assert_allclose(float(got), _np_l2(ws, 0.3), rtol=1e-5)


# ---- dtypes -----------------------------------------------------------------------
# Every transform keeps bf16/f16/float64 leaves in their dtype: tests/test_catalog.py.


def test_coupled_weight_decay_keeps_bf16_with_a_schedule_under_standard_promotion():
    params, grads = _jnp_tree(random_tree(2), jnp.bfloat16), _jnp_tree(random_tree(3, scale=0.3), jnp.bfloat16)
    tx = jaxreg.coupled_weight_decay(optax.exponential_decay(0.3, 1, 0.5))
    with jax.numpy_dtype_promotion("standard"):
        out, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    assert {x.dtype for x in jax.tree.leaves(out)} == {jnp.dtype(jnp.bfloat16)}
