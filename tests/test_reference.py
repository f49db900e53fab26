"""Every transform against a plain numpy reference on random pytrees of mixed shapes.

Each update runs under ``jax.jit``. Parameter-space transforms are checked through
their contract: ``apply_updates(params, u2) == op(params + u)`` on the leaves the mask
selects, and ``u2 == u`` elsewhere.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_tree

import jaxreg

# ---- numpy references ------------------------------------------------------------


def np_soft(w, t):
    return np.sign(w) * np.maximum(np.abs(w) - t, 0)


def np_unit_norms(w, axis):
    others = tuple(a for a in range(w.ndim) if a != axis % w.ndim)
    return np.sqrt(np.sum(w.astype(np.float64) ** 2, axis=others, keepdims=True))


def np_group_lasso(w, t, axis):
    n = np_unit_norms(w, axis)
    return w * np.where(n == 0, 0, np.maximum(1 - t / np.where(n == 0, 1, n), 0))


def np_max_norm(w, c, axis):
    n = np_unit_norms(w, axis)
    return w * np.where(n > c, c / np.where(n == 0, 1, n), 1)


def np_l2_ball(ws, r):
    n = math.sqrt(sum(float(np.sum(w.astype(np.float64) ** 2)) for w in ws))
    return [w * (r / n if n > r else 1.0) for w in ws]


def np_l1_ball(ws, r):
    flat = np.concatenate([np.abs(w).ravel() for w in ws]).astype(np.float64)
    if flat.sum() <= r:
        return ws
    u = np.sort(flat)[::-1]
    css = np.cumsum(u)
    k = np.nonzero(u * np.arange(1, len(u) + 1) > css - r)[0][-1]
    tau = (css[k] - r) / (k + 1)
    return [np_soft(w, tau) for w in ws]


def np_pnorm(ws, p):
    a = np.concatenate([np.abs(w).ravel() for w in ws]).astype(np.float64)
    return a.max() if math.isinf(p) else (a**p).sum() ** (1 / p)


LR = 0.1
KERNELS = jaxreg.masks.weights_only

# name -> (transform, selector, numpy op on the list of selected new params w = p + u)
PARAM_SPACE = {
    "l1_prox": (jaxreg.l1_prox(0.5, learning_rate=LR), None, lambda ws: [np_soft(w, 0.05) for w in ws]),
    "elastic_net_prox": (
        jaxreg.elastic_net_prox(0.5, 2.0, learning_rate=LR),
        None,
        lambda ws: [np_soft(w, 0.05) / 1.2 for w in ws],
    ),
    "group_lasso_prox axis -1": (
        jaxreg.group_lasso_prox(5.0, axis=-1, learning_rate=LR, mask=KERNELS),
        KERNELS,
        lambda ws: [np_group_lasso(w, 0.5, -1) for w in ws],
    ),
    "group_lasso_prox axis 0": (
        jaxreg.group_lasso_prox(5.0, axis=0, learning_rate=LR, mask=KERNELS),
        KERNELS,
        lambda ws: [np_group_lasso(w, 0.5, 0) for w in ws],
    ),
    "project_box": (jaxreg.project_box(-0.5, 0.7), None, lambda ws: [np.clip(w, -0.5, 0.7) for w in ws]),
    "project_nonnegative": (jaxreg.project_nonnegative(), None, lambda ws: [np.maximum(w, 0) for w in ws]),
    "project_l2_ball global": (jaxreg.project_l2_ball(3.0), None, lambda ws: np_l2_ball(ws, 3.0)),
    "project_l2_ball leaf": (
        jaxreg.project_l2_ball(1.5, scope="leaf"),
        None,
        lambda ws: [np_l2_ball([w], 1.5)[0] for w in ws],
    ),
    "project_l1_ball global": (jaxreg.project_l1_ball(10.0), None, lambda ws: np_l1_ball(ws, 10.0)),
    "project_l1_ball leaf": (
        jaxreg.project_l1_ball(2.0, scope="leaf"),
        None,
        lambda ws: [np_l1_ball([w], 2.0)[0] for w in ws],
    ),
    "max_norm axis -1": (
        jaxreg.max_norm(1.2, mask=KERNELS),
        KERNELS,
        lambda ws: [np_max_norm(w, 1.2, -1) for w in ws],
    ),
    "max_norm axis 0": (
        jaxreg.max_norm(1.2, axis=0, mask=KERNELS),
        KERNELS,
        lambda ws: [np_max_norm(w, 1.2, 0) for w in ws],
    ),
    "l1_prox on kernels only": (
        jaxreg.l1_prox(0.5, learning_rate=LR, mask=jaxreg.masks.by_path("kernel")),
        jaxreg.masks.by_path("kernel"),
        lambda ws: [np_soft(w, 0.05) for w in ws],
    ),
}


def _run(tx, params, updates):
    params, updates = jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, updates)
    out, _ = jax.jit(tx.update)(updates, tx.init(params), params)
    return out, optax.apply_updates(params, out)


@pytest.mark.parametrize("name", sorted(PARAM_SPACE))
def test_parameter_space_transform_matches_numpy(name):
    tx, selector, op = PARAM_SPACE[name]
    params, updates = random_tree(0), random_tree(1, scale=0.5)
    out, new = _run(tx, params, updates)
    leaves_p, treedef = jax.tree.flatten(params)
    leaves_u, leaves_out, leaves_new = jax.tree.leaves(updates), jax.tree.leaves(out), jax.tree.leaves(new)
    chosen = [True] * len(leaves_p) if selector is None else jax.tree.leaves(selector(params))
    ws = [(p + u).astype(np.float32) for p, u, c in zip(leaves_p, leaves_u, chosen) if c]
    want = iter(op(ws))
    for u, o, n, c in zip(leaves_u, leaves_out, leaves_new, chosen):
        if c:
            np.testing.assert_allclose(n, next(want), rtol=2e-6, atol=2e-6)
        else:
            np.testing.assert_array_equal(o, u)
    assert treedef == jax.tree.structure(out)


@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.0, math.inf])
@pytest.mark.parametrize("eps", [0.0, 1e-6])
@pytest.mark.parametrize("max_norm", [0.5, 1e4])
def test_clip_by_global_norm_matches_numpy(norm_type, eps, max_norm):
    grads = random_tree(2)
    out, state = jax.jit(jaxreg.clip_by_global_norm(max_norm, norm_type, eps).update)(
        jax.tree.map(jnp.asarray, grads), jaxreg.clip_by_global_norm(max_norm).init(grads)
    )
    n = np_pnorm(jax.tree.leaves(grads), norm_type)
    np.testing.assert_allclose(float(state.norm), n, rtol=1e-6)
    coef = min(max_norm / (n + eps), 1.0)
    jax.tree.map(lambda o, g: np.testing.assert_allclose(o, g * coef, rtol=1e-6, atol=1e-7), out, grads)


def test_clip_by_global_norm_matches_optax_at_eps0():
    grads = jax.tree.map(jnp.asarray, random_tree(3))
    got, _ = jaxreg.clip_by_global_norm(0.7).update(grads, jaxreg.clip_by_global_norm(0.7).init(grads))
    want, _ = optax.clip_by_global_norm(0.7).update(grads, optax.clip_by_global_norm(0.7).init(grads))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)


@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_clip_by_leaf_norm_matches_numpy(norm_type):
    grads = random_tree(4)
    tx = jaxreg.clip_by_leaf_norm(1.0, norm_type)
    out, state = jax.jit(tx.update)(jax.tree.map(jnp.asarray, grads), tx.init(grads))

    def check(o, g, n):
        want_n = np_pnorm([g], norm_type)
        np.testing.assert_allclose(float(n), want_n, rtol=1e-6)
        np.testing.assert_allclose(o, g * min(1.0 / want_n, 1.0), rtol=1e-6, atol=1e-7)

    jax.tree.map(check, out, grads, state.norm)


def test_clip_matches_numpy_and_optax_and_counts():
    grads = jax.tree.map(jnp.asarray, random_tree(5))
    out, state = jax.jit(jaxreg.clip(0.8).update)(grads, jaxreg.clip(0.8).init(grads))
    want, _ = optax.clip(0.8).update(grads, optax.clip(0.8).init(grads))
    jax.tree.map(np.testing.assert_array_equal, out, want)
    leaves = [np.asarray(g) for g in jax.tree.leaves(grads)]
    fraction = sum(int((np.abs(g) > 0.8).sum()) for g in leaves) / sum(g.size for g in leaves)
    np.testing.assert_allclose(float(state.clipped_fraction), fraction, rtol=1e-6)


def test_decays_match_numpy():
    params, grads = random_tree(6), random_tree(7)
    coupled, _ = _run(jaxreg.coupled_weight_decay(0.3), params, grads)
    jax.tree.map(lambda o, g, p: np.testing.assert_allclose(o, g + 0.3 * p, rtol=1e-6), coupled, grads, params)
    decoupled, new = _run(jaxreg.decoupled_weight_decay(0.3, learning_rate=LR), params, grads)
    jax.tree.map(
        lambda n, g, p: np.testing.assert_allclose(n, p + g - LR * 0.3 * p, rtol=1e-6, atol=1e-7), new, grads, params
    )


def test_decay_on_weights_only_leaves_biases_alone():
    params, grads = random_tree(8), random_tree(9)
    out, _ = _run(jaxreg.decoupled_weight_decay(0.3, mask=KERNELS), params, grads)
    np.testing.assert_array_equal(out["dense1"]["bias"], grads["dense1"]["bias"])
    assert not np.allclose(out["dense1"]["kernel"], grads["dense1"]["kernel"])


def test_project_box_with_per_leaf_bounds():
    params, updates = random_tree(10), random_tree(11)
    lower = jax.tree.map(lambda p: -0.1 * np.ones_like(p), params)
    upper = jax.tree.map(lambda p: np.full_like(p, 0.2), params)
    _, new = _run(jaxreg.project_box(lower, upper), params, updates)
    # Equal to the clip up to one rounding, and inside the box exactly.
    jax.tree.map(
        lambda n, p, u: np.testing.assert_allclose(n, np.clip(p + u, -0.1, 0.2), rtol=1e-6), new, params, updates
    )
    assert all(bool(jnp.all((n >= jnp.float32(-0.1)) & (n <= jnp.float32(0.2)))) for n in jax.tree.leaves(new))


def test_box_and_nonnegative_match_optax_projections():
    w = jax.tree.map(jnp.asarray, random_tree(12))
    zeros = jax.tree.map(jnp.zeros_like, w)
    bound = jax.tree.map(lambda _: 0.3, w)  # optax's projection_box wants trees of bounds
    with jax.numpy_dtype_promotion("standard"):  # optax's simplex projection is not strict-clean
        cases = [
            (
                jaxreg.project_box(-0.3, 0.3),
                optax.projections.projection_box(w, jax.tree.map(jnp.negative, bound), bound),
            ),
            (jaxreg.project_nonnegative(), optax.projections.projection_non_negative(w)),
            (jaxreg.project_l2_ball(2.0), optax.projections.projection_l2_ball(w, 2.0)),
            (jaxreg.project_l1_ball(4.0), optax.projections.projection_l1_ball(w, 4.0)),
        ]
    for tx, want in cases:
        # Starting from params = 0 with update = w, the new params are op(w).
        u, _ = tx.update(w, tx.init(zeros), zeros)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), u, want)


def test_l1_ball_result_is_on_the_sphere_and_exact_zeros():
    params, updates = random_tree(13), random_tree(14)
    _, new = _run(jaxreg.project_l1_ball(5.0), params, updates)
    leaves = [np.asarray(x) for x in jax.tree.leaves(new)]
    np.testing.assert_allclose(sum(np.abs(x).sum() for x in leaves), 5.0, rtol=1e-5)
    assert sum(int((x == 0).sum()) for x in leaves) > 0


def test_schedules_match_formulas():
    inv = jaxreg.inverse_sqrt_decay(0.5, 0.3)
    ep = jaxreg.epoch_decay(0.5, 0.1, steps_per_epoch=10)
    for t in [0, 1, 9, 10, 25, 1000]:
        np.testing.assert_allclose(float(inv(t)), 0.5 / math.sqrt(1 + 0.09 * t), rtol=1e-6)
        # optax.exponential_decay raises to the power in float32: ~3e-6 at 0.9 ** 100.
        np.testing.assert_allclose(float(ep(t)), 0.5 * 0.9 ** (t // 10), rtol=1e-5)


def test_penalties_match_numpy_and_gradients():
    params = random_tree(15)
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(params)]
    np.testing.assert_allclose(
        float(jaxreg.penalties.l1(params, 0.3)), 0.3 * sum(np.abs(x).sum() for x in leaves), rtol=1e-6
    )
    np.testing.assert_allclose(
        float(jaxreg.penalties.l2(params, 0.3)), 0.15 * sum((x**2).sum() for x in leaves), rtol=1e-6
    )
    np.testing.assert_allclose(
        float(jaxreg.penalties.elastic_net(params, 0.3, 0.2)),
        float(jaxreg.penalties.l1(params, 0.3)) + float(jaxreg.penalties.l2(params, 0.2)),
        rtol=1e-6,
    )
    kernels = [np.asarray(x, np.float64) for x in jax.tree.leaves(params) if x.ndim >= 2]
    np.testing.assert_allclose(
        float(jaxreg.penalties.group_lasso(params, 0.3, axis=-1, mask=KERNELS)),
        0.3 * sum(np_unit_norms(k, -1).sum() for k in kernels),
        rtol=1e-6,
    )
    jparams = jax.tree.map(jnp.asarray, params)
    grad = jax.grad(lambda p: jaxreg.penalties.l2(p, 0.3))(jparams)
    jax.tree.map(lambda g, p: np.testing.assert_allclose(g, 0.3 * p, rtol=1e-6), grad, params)


@pytest.mark.parametrize(
    "tx",
    [
        jaxreg.clip_by_global_norm(0.5),
        jaxreg.clip(0.1),
        jaxreg.decoupled_weight_decay(0.3, learning_rate=LR),
        jaxreg.l1_prox(0.5, learning_rate=LR),
        jaxreg.group_lasso_prox(0.5, mask=KERNELS),
        jaxreg.project_l2_ball(1.0),
        jaxreg.project_l1_ball(1.0),
        jaxreg.max_norm(0.5, mask=KERNELS),
        jaxreg.project_box(-0.2, 0.2),
    ],
    ids=lambda t: "",
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dtypes_are_kept_and_bf16_is_close_to_f32(tx, dtype):
    params32, updates32 = random_tree(16), random_tree(17, scale=0.3)
    params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params32)
    updates = jax.tree.map(lambda x: jnp.asarray(x, dtype), updates32)
    out, _ = jax.jit(tx.update)(updates, tx.init(params), params)
    new = optax.apply_updates(params, out)
    assert all(x.dtype == dtype for x in jax.tree.leaves(out) + jax.tree.leaves(new))
    ref_out, _ = tx.update(jax.tree.map(jnp.asarray, updates32), tx.init(params32), jax.tree.map(jnp.asarray, params32))
    ref_new = optax.apply_updates(jax.tree.map(jnp.asarray, params32), ref_out)
    tol = 1e-6 if dtype == jnp.float32 else 3e-2
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=tol, atol=tol), new, ref_new
    )
