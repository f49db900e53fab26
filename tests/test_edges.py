"""The edges of the input space against the peers' own numbers: float64 precision
(PyTorch double, optax), mixed-dtype trees, complex values, Python scalar leaves, integer
leaves, derivatives where units are exactly zero, and the errors for shapes that do not fit.
"""

from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import jaxreg
from jaxreg.training import tune_strength


def _step(tx, params, updates=None):
    """New params after one step of a parameter-space ``tx`` (zero optimizer updates by default)."""
    updates = jax.tree.map(jnp.zeros_like, params) if updates is None else updates
    u, _ = tx.update(updates, tx.init(params), params)
    return optax.apply_updates(params, u)


# ---- float64 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
def test_float64_global_norm_clip_beyond_float32_range_matches_torch_double(norm_type):
    # 100 entries of 2e150: the float32 norm is inf, the float64 one 2e151 (2-norm).
    g = np.full(100, 2e150)
    p = torch.nn.Parameter(torch.zeros(100, dtype=torch.float64))
    p.grad = torch.tensor(g)
    torch_norm = float(torch.nn.utils.clip_grad_norm_([p], 1.0, norm_type=norm_type))
    with jax.enable_x64(True):
        tx = jaxreg.clip_by_global_norm(1.0, norm_type=norm_type, eps=1e-6)
        grads = {"w": jnp.asarray(g)}
        updates, state = tx.update(grads, tx.init(grads))
        assert state.norm.dtype == np.float64 and updates["w"].dtype == np.float64
        np.testing.assert_allclose(float(state.norm), torch_norm, rtol=1e-14)
        np.testing.assert_allclose(np.asarray(updates["w"]), p.grad.numpy(), rtol=1e-14)
    if norm_type == 2.0:
        assert torch_norm == pytest.approx(2e151) and float(p.grad[0]) == pytest.approx(0.1)


def test_float64_norms_have_float64_accuracy():
    rng = np.random.default_rng(0)
    g = {"a": rng.standard_normal((300, 7)), "b": rng.standard_normal(11) * 1e-3}
    exact = np.sqrt(sum(np.sum(np.square(x)) for x in g.values()))
    with jax.enable_x64(True):
        tx = jaxreg.clip_by_global_norm(1e-3)
        grads = jax.tree.map(jnp.asarray, g)
        updates, state = tx.update(grads, tx.init(grads))
        np.testing.assert_allclose(float(state.norm), exact, rtol=1e-14)
        for k in g:
            np.testing.assert_allclose(np.asarray(updates[k]), g[k] * (1e-3 / exact), rtol=1e-13)
        leaf = jaxreg.clip_by_leaf_norm(1e-3)
        _, leaf_state = leaf.update(grads, leaf.init(grads))
        np.testing.assert_allclose(float(leaf_state.norm["a"]), np.linalg.norm(g["a"]), rtol=1e-14)


@pytest.mark.parametrize("scope", ["global", "leaf"])
def test_float64_l2_ball_matches_optax_to_float64_precision(scope):
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        params = {"a": jnp.asarray(rng.standard_normal((5, 4))), "b": jnp.asarray(rng.standard_normal(3))}
        out = _step(jaxreg.project_l2_ball(0.7, scope=scope), params)
        if scope == "global":
            expected = optax.projections.projection_l2_ball(params, 0.7)
        else:
            expected = {k: optax.projections.projection_l2_ball(v, 0.7) for k, v in params.items()}
        for k in params:
            assert out[k].dtype == np.float64
            np.testing.assert_allclose(np.asarray(out[k]), np.asarray(expected[k]), rtol=1e-14, atol=1e-15)


def _optax_standard(fn, *args):
    """An optax projection under standard dtype promotion (optax mixes dtypes in its sums)."""
    with jax.numpy_dtype_promotion("standard"):
        return fn(*args)


@pytest.mark.parametrize("mixed", [False, True], ids=["float64", "float64 and float32"])
def test_l1_ball_on_float64_and_mixed_trees_matches_optax(mixed):
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        params = {"a": jnp.asarray(rng.standard_normal((6, 3))), "b": jnp.asarray(rng.standard_normal(4))}
        if mixed:
            params["b"] = params["b"].astype(jnp.float32)
        out = jax.jit(lambda p: _step(jaxreg.project_l1_ball(2.0), p))(params)
        expected = _optax_standard(optax.projections.projection_l1_ball, params, 2.0)
        assert out["a"].dtype == np.float64 and out["b"].dtype == params["b"].dtype
        np.testing.assert_allclose(np.asarray(out["a"]), np.asarray(expected["a"]), rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(np.asarray(out["b"]), np.asarray(expected["b"]), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(sum(float(jnp.sum(jnp.abs(x))) for x in out.values()), 2.0, rtol=1e-6)


# ---- complex ------------------------------------------------------------------------------------


def test_global_norm_clip_of_complex_counts_the_modulus():
    grads = {"z": jnp.asarray([3 + 4j, 0], jnp.complex64)}
    tx = jaxreg.clip_by_global_norm(1.0)
    updates, state = tx.update(grads, tx.init(grads))
    assert float(state.norm) == pytest.approx(5.0)
    np.testing.assert_allclose(np.asarray(updates["z"]), [0.6 + 0.8j, 0], rtol=1e-6)
    optax_updates, _ = optax.clip_by_global_norm(1.0).update(grads, None)
    np.testing.assert_allclose(np.asarray(updates["z"]), np.asarray(optax_updates["z"]), rtol=1e-6)


def test_adam_then_decoupled_weight_decay_on_complex64_is_optax_adamw():
    rng = np.random.default_rng(3)

    def z(shape):
        return jnp.asarray(rng.standard_normal(shape) + 1j * rng.standard_normal(shape), jnp.complex64)

    params = {"w": z((4, 3)), "b": z(3)}
    grads = [{"w": z((4, 3)), "b": z(3)} for _ in range(5)]
    ours = optax.chain(optax.adam(1e-2), jaxreg.decoupled_weight_decay(0.1, learning_rate=1e-2))
    theirs = optax.adamw(1e-2, weight_decay=0.1)
    p1, s1, p2, s2 = params, ours.init(params), params, theirs.init(params)
    with jax.numpy_dtype_promotion("standard"):  # optax's Adam mixes complex and real
        for g in grads:
            u1, s1 = ours.update(g, s1, p1)
            u2, s2 = theirs.update(g, s2, p2)
            p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    for k in params:
        assert p1[k].dtype == np.complex64
        np.testing.assert_allclose(np.asarray(p1[k]), np.asarray(p2[k]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("scope", ["global", "leaf"])
def test_complex_l1_ball_matches_optax(scope):
    rng = np.random.default_rng(6)
    params = {
        k: jnp.asarray(rng.standard_normal(s) + 1j * rng.standard_normal(s), jnp.complex64)
        for k, s in [("a", (4, 3)), ("b", 5)]
    }
    out = _step(jaxreg.project_l1_ball(2.0, scope=scope), params)
    if scope == "global":
        expected = _optax_standard(optax.projections.projection_l1_ball, params, 2.0)
    else:
        expected = {k: _optax_standard(optax.projections.projection_l1_ball, v, 2.0) for k, v in params.items()}
    for k in params:
        assert out[k].dtype == np.complex64
        np.testing.assert_allclose(np.asarray(out[k]), np.asarray(expected[k]), rtol=2e-5, atol=2e-6)


def test_decay_keeps_the_imaginary_part_without_a_warning():
    params = {"z": jnp.asarray([1 + 2j], jnp.complex64)}
    with np.testing.assert_no_warnings():
        out = _step(jaxreg.decoupled_weight_decay(0.5), params)
    np.testing.assert_allclose(np.asarray(out["z"]), [0.5 + 1j])


# ---- Python scalars and integer leaves ---------------------------------------------------------------

SCALARS = (-1.0, {"k": 1.0, "m": 3.0})


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (jaxreg.project_l2_ball(1.5), lambda t: optax.projections.projection_l2_ball(t, 1.5)),
        (jaxreg.project_l1_ball(1.5), lambda t: optax.projections.projection_l1_ball(t, 1.5)),
        (
            jaxreg.project_box(-0.5, 0.5),
            lambda t: optax.projections.projection_box(
                t, jax.tree.map(lambda _: -0.5, t), jax.tree.map(lambda _: 0.5, t)
            ),
        ),
        (jaxreg.project_nonnegative(), optax.projections.projection_non_negative),
    ],
    ids=["l2 ball", "l1 ball", "box", "nonnegative"],
)
def test_python_scalar_leaves_project_as_optax_projections_do(ours, theirs):
    out = _step(ours, SCALARS)
    expected = _optax_standard(theirs, SCALARS)
    for a, e in zip(jax.tree.leaves(out), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-6)


def test_integer_leaves_are_neither_changed_nor_counted():
    params = {"w": jnp.asarray([3.0, 4.0]), "step": jnp.asarray(5, jnp.int32)}
    assert int(_step(jaxreg.l1_prox(1.0), params)["step"]) == 5
    out = _step(jaxreg.project_l2_ball(1.0), params)
    assert int(out["step"]) == 5
    np.testing.assert_allclose(np.asarray(out["w"]), [0.6, 0.8], rtol=1e-6)  # the norm is 5, not sqrt(50)


# ---- derivatives ----------------------------------------------------------------------------------


def test_l1_ball_jacobian_matches_optax():
    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.standard_normal(7))

        def ours(v, radius):
            return _step(jaxreg.project_l1_ball(radius), {"v": v})["v"]

        def theirs(v, radius):
            return _optax_standard(optax.projections.projection_l1_ball, v, radius)

        # d/dv forward and reverse, and along the radius (d tau / d radius = -1 / |support|).
        derivatives = [
            jax.jit(jac(f, argnums=arg))
            for jac, arg in ((jax.jacrev, 0), (jax.jacfwd, 0), (jax.jacrev, 1))
            for f in (ours, theirs)
        ]
        for radius in (0.5, 2.0, 10.0):  # few, many and all entries on the support
            results = [d(x, radius) for d in derivatives]
            for got, want in zip(results[::2], results[1::2]):
                np.testing.assert_allclose(got, want, atol=1e-12)


@pytest.mark.parametrize(
    "make, identity",
    [
        (lambda: jaxreg.project_l2_ball(1.0), True),
        (lambda: jaxreg.project_l2_ball(1.0, scope="leaf"), True),
        (lambda: jaxreg.max_norm(1.0), True),
        (lambda: jaxreg.group_lasso_prox(0.2), False),
    ],
    ids=["l2 ball", "l2 ball per leaf", "max_norm", "group_lasso_prox"],
)
def test_derivative_at_a_zero_unit_is_finite(make, identity):
    params = {"w": jnp.zeros((3, 2)).at[:, 0].set(jnp.asarray([0.3, 0.0, 0.4]))}  # inside every ball
    jac = jax.jacrev(lambda p: _step(make(), {"w": p})["w"])(params["w"])
    assert np.all(np.isfinite(jac))
    if identity:  # optax's ball projections are the identity around 0: derivative 1 there
        np.testing.assert_allclose(jac[:, 1][:, :, 1], np.eye(3), atol=1e-7)


def test_tune_strength_through_a_group_lasso_that_zeroes_a_unit_has_no_nan():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((40, 4)), jnp.float32)
    w_true = jnp.asarray([[1.0, 0.0], [0.5, 0.0], [-1.0, 0.0], [2.0, 0.01]], jnp.float32)
    y = x @ w_true

    def make_optimizer(lam):
        return optax.chain(optax.sgd(0.1), jaxreg.group_lasso_prox(lam, learning_rate=0.1))

    def loss(p):
        return 0.5 * jnp.mean((x @ p["w"] - y) ** 2)

    init = {"w": jnp.zeros((4, 2), jnp.float32)}
    # At the starting strength, training ends with the second unit exactly zero.
    tx, params = make_optimizer(0.5), init
    state = tx.init(params)
    for _ in range(20):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
    assert np.all(np.asarray(params["w"][:, 1]) == 0) and np.all(np.asarray(params["w"][:, 0]) != 0)
    result = tune_strength(make_optimizer, loss, loss, init, 0.5, inner_steps=20, outer_steps=4)
    assert np.all(np.isfinite(result.strengths)) and np.all(np.isfinite(result.val_losses))


# ---- errors name the argument and the leaf --------------------------------------------------------


def test_a_box_bound_of_the_wrong_shape_names_the_argument_and_the_leaf():
    params = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}
    tx = jaxreg.project_box({"w": -jnp.ones(3), "b": -jnp.ones(2)}, 1.0)
    message = (
        "project_box: lower has shape (2,), which does not broadcast to the shape (3,) of params['b']; give lower "
        "as a scalar, an array that broadcasts to every leaf it applies to, or a tree with the params' structure."
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        tx.init(params)


def test_an_array_strength_of_the_wrong_shape_names_the_argument_and_the_leaf():
    params = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}
    tx = jaxreg.l1_prox(jnp.ones(2))
    with pytest.raises(ValueError, match=r"l1_prox: strength has shape \(2,\), which does not broadcast to the shape"):
        tx.init(params)
    ok = jaxreg.l1_prox(jnp.asarray([0.0, 1.0, 2.0]))  # broadcasts to every leaf: accepted
    np.testing.assert_array_equal(_step(ok, {"w": jnp.ones((2, 3))})["w"], [[1.0, 0.0, 0.0]] * 2)


@pytest.mark.parametrize("make", [jaxreg.l1_prox, lambda h: jaxreg.project_box(-h, h), lambda h: jaxreg.clip(h)])
def test_complex_leaves_are_refused_by_transforms_of_real_values(make):
    params = {"w": jnp.zeros(2), "z": jnp.zeros(2, jnp.complex64)}
    with pytest.raises(TypeError, match=r"params\['z'\] is complex64, but .* takes real values only"):
        make(1.0).init(params)


# ---- masks on the clipping transforms ------------------------------------------------------------


def test_masked_clips_scale_the_selected_leaves_by_their_own_norms():
    grads = {"a": jnp.asarray([3.0, 4.0]), "b": jnp.asarray([12.0]), "n": jnp.asarray(7, jnp.int32)}
    mask = {"a": True, "b": False, "n": True}
    tx = jaxreg.clip_by_global_norm(1.0, mask=mask)
    updates, state = tx.update(grads, tx.init(grads))
    assert float(state.norm) == pytest.approx(5.0)  # over "a" only: not 13, and the int is not counted
    np.testing.assert_allclose(np.asarray(updates["a"]), [0.6, 0.8], rtol=1e-6)
    assert float(updates["b"][0]) == 12.0 and int(updates["n"]) == 7
    # Fused, the norm sums the selected leaves only, as unfused.
    floats = {"a": grads["a"], "b": grads["b"]}
    chain = jaxreg.chain(jaxreg.clip_by_global_norm(1.0, mask={"a": True, "b": False}), jaxreg.sgd(0.1))
    if jaxreg.fused._native.available():
        assert jaxreg.fused.fast_path(chain, floats, floats) is None
    with jax.numpy_dtype_promotion("standard"):
        fused_params, fused_state = jaxreg.apply_step(chain, floats, chain.init(floats), floats)
        updates, unfused_state = chain.update(floats, chain.init(floats), floats)
    chex.assert_trees_all_close((fused_params, fused_state), (optax.apply_updates(floats, updates), unfused_state))
    # clip_by_leaf_norm records the norm of every floating leaf, and clips the selected ones.
    leaf = jaxreg.clip_by_leaf_norm(1.0, mask=mask)
    updates, state = leaf.update(grads, leaf.init(grads))
    assert {k: float(v) for k, v in state.norm.items()} == pytest.approx({"a": 5.0, "b": 12.0, "n": 0.0})
    np.testing.assert_allclose(np.asarray(updates["a"]), [0.6, 0.8], rtol=1e-6)
    assert float(updates["b"][0]) == 12.0
