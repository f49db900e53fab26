"""jaxreg.chain + apply_step: the single pass gives the unfused chain's numbers and state."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxreg
from jaxreg import _native, fused
from jaxreg._native import cache

pytestmark = pytest.mark.skipif(not _native.available(), reason=f"no native kernels: {_native.why_unavailable()}")

SHAPES = [(37, 5), (64,), (3, 4, 5), (1,), (700, 3)]


def _tree(seed, scale=1.0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return {f"p{i}": jnp.asarray(scale * rng.standard_normal(s), jnp.float32) for i, s in enumerate(shapes)}


def _is_bias(params):
    return {k: v.ndim == 1 for k, v in params.items()}


CHAINS = {
    "card": lambda: (
        jaxreg.clip_by_global_norm(1.0),
        jaxreg.adam(1e-2),
        jaxreg.decoupled_weight_decay(1e-2, learning_rate=1e-2),
        jaxreg.l1_prox(0.5, learning_rate=1e-2),
        jaxreg.project_box(-0.2, 0.2),
    ),
    "masks and eps": lambda: (
        jaxreg.clip_by_global_norm(0.5, eps=1e-6),
        jaxreg.coupled_weight_decay(0.1, mask=jaxreg.masks.weights_only),
        jaxreg.adam(3e-2, b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-12),
        jaxreg.l1_prox(1.0, learning_rate=3e-2, mask=_is_bias),
        jaxreg.project_nonnegative(mask=jaxreg.masks.weights_only),
    ),
    "schedules": lambda: (
        jaxreg.adam(optax.linear_schedule(1e-2, 1e-3, 3)),
        jaxreg.decoupled_weight_decay(
            optax.constant_schedule(0.05), learning_rate=optax.linear_schedule(1e-2, 1e-3, 3)
        ),
        jaxreg.l1_prox(optax.linear_schedule(0.0, 2.0, 3), learning_rate=1e-2),
    ),
    "no optimizer": lambda: (jaxreg.decoupled_weight_decay(0.1), jaxreg.project_box(-0.05, 0.3)),
    "sgd, heavy ball": lambda: (
        jaxreg.clip_by_global_norm(1.0),
        jaxreg.coupled_weight_decay(0.05, mask=jaxreg.masks.weights_only),
        jaxreg.sgd(0.1, momentum=0.9),
        jaxreg.l1_prox(0.5, learning_rate=0.1),
    ),
    "sgd, nesterov, schedule": lambda: (
        jaxreg.sgd(optax.linear_schedule(0.1, 0.01, 3), momentum=0.5, nesterov=True),
        jaxreg.project_box(-0.3, 0.3),
    ),
    "value clips, counted": lambda: (
        jaxreg.clip_by_global_norm(30.0),
        jaxreg.clip(optax.linear_schedule(0.3, 1.0, 3)),
        jaxreg.adam(1e-2),
        jaxreg.clip(8e-3),
    ),
    "leaf-norm clip": lambda: (
        jaxreg.clip_by_leaf_norm(optax.linear_schedule(3.0, 10.0, 3), eps=1e-6),
        jaxreg.adam(1e-2),
        jaxreg.project_box(-0.2, 0.2),
    ),
    "pruned, kept at zero": lambda: (
        jaxreg.clip_by_global_norm(1.0),
        jaxreg.adam(1e-2),
        jaxreg.decoupled_weight_decay(1e-2, learning_rate=1e-2),
        jaxreg.pruning.keep_pruned(lambda p: jaxreg.pruning.magnitude_mask(p, 0.6, where=jaxreg.masks.weights_only)),
    ),
    "pruned, broadcast masks": lambda: (
        jaxreg.sgd(0.1, momentum=0.9),
        jaxreg.pruning.keep_pruned(
            lambda p: {k: jnp.arange(v.shape[-1]) % 2 == 0 if v.ndim == 2 else v.ndim != 1 for k, v in p.items()}
        ),
    ),
    "plain sgd": lambda: (jaxreg.sgd(0.1), jaxreg.decoupled_weight_decay(0.1, learning_rate=0.1)),
    "elastic net": lambda: (
        jaxreg.adam(1e-2),
        jaxreg.elastic_net_prox(0.5, optax.linear_schedule(0.1, 1.0, 3), learning_rate=1e-2, mask=_is_bias),
    ),
}


# Leaves big enough to be cut into several chunks: rows of units (axis -1), unit rows
# (axis 0) and pieces of one unit (the (2, 70000) leaf by rows, the whole-leaf units).
BIG_SHAPES = [(300, 700), (700,), (3, 3, 8, 16), (2, 70_000), (1,)]

# Chains with members that rescale units by their norms: each starts a stage.
UNIT_CHAINS = {
    "six transforms": lambda: (
        jaxreg.clip_by_global_norm(1.0),
        jaxreg.adam(1e-1),
        jaxreg.decoupled_weight_decay(1e-2, learning_rate=1e-1),
        jaxreg.l1_prox(1e-3, learning_rate=1e-1),
        jaxreg.max_norm(1.0, mask=jaxreg.masks.weights_only),
        jaxreg.project_box(-0.3, 0.3),
    ),
    "max-norm rows, then group lasso rows": lambda: (
        jaxreg.adam(1e-1),
        jaxreg.max_norm(1.5, axis=0, mask=jaxreg.masks.weights_only),
        jaxreg.group_lasso_prox(optax.linear_schedule(2.0, 4.0, 3), axis=0, learning_rate=1e-1, mask=_is_bias),
        jaxreg.group_lasso_prox(1.0, axis=0, learning_rate=1e-1, mask=jaxreg.masks.weights_only),
    ),
    "per-leaf balls, then a global ball": lambda: (
        jaxreg.adam(1e-1),
        jaxreg.project_l2_ball(20.0, scope="leaf"),
        jaxreg.project_l2_ball(25.0, mask=jaxreg.masks.weights_only),
        jaxreg.project_box(-0.5, 0.5),
    ),
    "per-leaf ball, then non-negative": lambda: (
        jaxreg.coupled_weight_decay(0.1),
        jaxreg.adam(1e-1),
        jaxreg.project_l2_ball(30.0, scope="leaf"),
        jaxreg.project_nonnegative(),
    ),
}


# Every transform on its own, as a chain of one: where it fuses, its rule must compute
# what its optax update computes (a wrong rule would otherwise fuse silently). The ones
# that must not fuse say so.
ALONE = {
    "adam": lambda: jaxreg.adam(0.1),
    "sgd": lambda: jaxreg.sgd(0.1, momentum=0.9),
    "clip": lambda: jaxreg.clip(0.5),
    "clip_by_global_norm": lambda: jaxreg.clip_by_global_norm(1.0),
    "clip_by_leaf_norm": lambda: jaxreg.clip_by_leaf_norm(1.0),
    "coupled_weight_decay": lambda: jaxreg.coupled_weight_decay(0.5),
    "decoupled_weight_decay": lambda: jaxreg.decoupled_weight_decay(0.5, learning_rate=0.1),
    "l1_prox": lambda: jaxreg.l1_prox(0.5, learning_rate=0.1),
    "elastic_net_prox": lambda: jaxreg.elastic_net_prox(0.5, 0.5, learning_rate=0.1),
    "group_lasso_prox": lambda: jaxreg.group_lasso_prox(2.0, learning_rate=0.1),
    "project_box": lambda: jaxreg.project_box(-0.5, 0.5),
    "project_nonnegative": lambda: jaxreg.project_nonnegative(),
    "project_l2_ball leaf": lambda: jaxreg.project_l2_ball(2.0, scope="leaf"),
    "project_l2_ball global": lambda: jaxreg.project_l2_ball(2.0),
    "max_norm": lambda: jaxreg.max_norm(0.5),
    "project_linf_ball": lambda: jaxreg.project_linf_ball(0.05),
    "project_l2_sphere leaf": lambda: jaxreg.project_l2_sphere(0.5, scope="leaf"),
    "project_l2_sphere global": lambda: jaxreg.project_l2_sphere(0.5),
    "unit_norm": lambda: jaxreg.unit_norm(mask=jaxreg.masks.weights_only),
    "unit_norm rows": lambda: jaxreg.unit_norm(axis=0, mask=jaxreg.masks.weights_only),
    "min_max_norm": lambda: jaxreg.min_max_norm(0.2, 0.3, rate=0.5, mask=jaxreg.masks.weights_only),
    "keep_pruned": lambda: jaxreg.pruning.keep_pruned(lambda p: jaxreg.pruning.magnitude_mask(p, 0.5)),
}
NOT_FUSED = {
    "project_l1_ball leaf": lambda: jaxreg.project_l1_ball(2.0, scope="leaf"),
    "project_l1_ball global": lambda: jaxreg.project_l1_ball(2.0),
    "prune_during_training": lambda: jaxreg.pruning.prune_during_training(jaxreg.pruning.magnitude_score, 0.5),
}


@pytest.mark.parametrize("name", sorted(NOT_FUSED))
def test_transforms_without_a_fused_form_say_so(name):
    # (apply_step then runs the unfused chain: test_what_has_no_single_pass... checks that)
    params = _tree(4, 0.1)
    reason = fused.fast_path(jaxreg.chain(NOT_FUSED[name]()), params, params)
    assert reason == "member 0 of the chain has no element-wise form"


@pytest.mark.parametrize("name", sorted(ALONE))
def test_each_transform_alone_gives_its_update(name):
    make = ALONE[name]
    tx = jaxreg.chain(make())
    params, grads = _tree(4, 0.1), [_tree(50 + k, 0.1) for k in range(2)]
    assert fused.fast_path(tx, grads[0], params) is None
    with jax.numpy_dtype_promotion("standard"):
        got = _run(_fused(tx), tx, params, grads)
        want = _run(_unfused(optax.chain(make())), optax.chain(make()), params, grads)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)


def _run(step, tx, params, grads):
    params = jax.tree.map(jnp.copy, params)  # the fused step donates its inputs
    state = tx.init(params)
    for g in grads:
        params, state = step(params, state, g)
    return params, state


def _unfused(tx):
    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def _fused(tx):
    return jax.jit(lambda p, s, g: jaxreg.apply_step(tx, g, s, p), donate_argnums=(0, 1))


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_single_pass_equals_the_unfused_chain(name):
    members = CHAINS[name]
    tx = jaxreg.chain(*members())
    params, grads = _tree(0, 0.1), [_tree(10 + k) for k in range(4)]
    assert fused.fast_path(tx, grads[0], params) is None
    with jax.numpy_dtype_promotion("standard"):
        got = _run(_fused(tx), tx, params, grads)
        want = _run(_unfused(optax.chain(*members())), optax.chain(*members()), params, grads)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)  # new params, and the state entry by entry


@pytest.mark.parametrize("name", sorted(UNIT_CHAINS))
def test_members_that_rescale_units_fuse_in_stages(name):
    members = UNIT_CHAINS[name]
    tx = jaxreg.chain(*members())
    params, grads = _tree(7, 0.1, BIG_SHAPES), [_tree(70 + k, 1.0, BIG_SHAPES) for k in range(3)]
    assert fused.fast_path(tx, grads[0], params) is None
    with jax.numpy_dtype_promotion("standard"):
        got = _run(_fused(tx), tx, params, grads)
        want = _run(_unfused(optax.chain(*members())), optax.chain(*members()), params, grads)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)


def test_value_clips_count_over_every_chunk_and_thread():
    # Leaves cut into many chunks run on several threads: each chunk counts its clipped
    # entries, and the fractions in the state are the unfused chain's.
    def members():
        return (jaxreg.clip_by_global_norm(1e3), jaxreg.clip(0.5), jaxreg.adam(1e-2), jaxreg.clip(8e-3))

    tx = jaxreg.chain(*members())
    params, grads = _tree(9, 0.1, BIG_SHAPES), [_tree(90 + k, 1.0, BIG_SHAPES) for k in range(2)]
    with jax.numpy_dtype_promotion("standard"):
        got = _run(_fused(tx), tx, params, grads)
        want = _run(_unfused(optax.chain(*members())), optax.chain(*members()), params, grads)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)
    for member in (1, 3):
        assert 0.05 < float(got[1][member].clipped_fraction) < 0.95


@pytest.mark.parametrize("clip", [jaxreg.clip_by_global_norm, jaxreg.clip_by_leaf_norm])
def test_large_gradients_get_norm_calls_of_their_own(clip):
    # Leaves of OWN_NORM_CALL elements or more are summed in calls of their own, the
    # others in one call; the norms come back in the leaves' order, as the unfused chain's.
    shapes = [(600, 500), (64,), (300, 1000), (3,)]
    assert sum(np.prod(s) >= fused.OWN_NORM_CALL for s in shapes) == 2

    def members():
        return (clip(1.0), jaxreg.adam(1e-2))

    tx = jaxreg.chain(*members())
    params, grads = _tree(11, 0.1, shapes), [_tree(110 + k, 1.0, shapes) for k in range(2)]
    with jax.numpy_dtype_promotion("standard"):
        lowered = _fused(tx).lower(params, tx.init(params), grads[0]).as_text()
        got = _run(_fused(tx), tx, params, grads)
        want = _run(_unfused(optax.chain(*members())), optax.chain(*members()), params, grads)
    assert lowered.count("jaxreg_sumsq") == 3
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)


def test_pruned_weights_stay_exactly_zero_in_the_single_pass():
    # The mask is read next to g, w and the moments, chunk by chunk, on big leaves.
    def members():
        keep = jaxreg.pruning.magnitude_mask(params, 0.7)
        return jaxreg.adam(1e-1), jaxreg.l1_prox(1e-3, learning_rate=1e-1), jaxreg.pruning.keep_pruned(keep)

    params = _tree(11, 0.1, BIG_SHAPES)
    grads = [_tree(110 + k, 1.0, BIG_SHAPES) for k in range(2)]
    tx = jaxreg.chain(*members())
    assert fused.fast_path(tx, grads[0], params) is None
    with jax.numpy_dtype_promotion("standard"):
        got = _run(_fused(tx), tx, params, grads)
        want = _run(_unfused(optax.chain(*members())), optax.chain(*members()), params, grads)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)
    w = np.concatenate([np.ravel(x) for x in jax.tree.leaves(got[0])])
    keep = np.concatenate([np.ravel(k) for k in jax.tree.leaves(got[1][2].keep)])
    assert np.all(w[~keep] == 0.0) and 0.6 < np.mean(~keep) < 0.8
    assert np.mean(w[keep] != 0.0) > 0.9  # the prox zeroes a few kept ones


def test_max_norm_binds_in_the_single_pass():
    tx = jaxreg.chain(*UNIT_CHAINS["six transforms"]())
    params = _tree(8, 0.1, BIG_SHAPES)
    with jax.numpy_dtype_promotion("standard"):
        new, _ = _run(_fused(tx), tx, params, [_tree(80, 1.0, BIG_SHAPES)])
    norms = np.linalg.norm(np.asarray(new["p0"]), axis=0)  # columns: the units of axis -1
    assert np.all(norms <= 1.0 + 1e-6) and np.sum(np.isclose(norms, 1.0, rtol=1e-6)) > 100
    assert np.abs(np.asarray(new["p3"])).max() <= 0.3


def test_box_and_zeros_hold_exactly():
    tx = jaxreg.chain(jaxreg.adam(0.5), jaxreg.l1_prox(1.0, learning_rate=0.5), jaxreg.project_box(-0.3, 0.3))
    params, grads = _tree(1, 0.3), [_tree(20 + k) for k in range(3)]
    with jax.numpy_dtype_promotion("standard"):
        new, _ = _run(_fused(tx), tx, params, grads)
    leaves = np.concatenate([np.ravel(x) for x in jax.tree.leaves(new)])
    assert leaves.min() >= -0.3 and leaves.max() <= 0.3
    assert np.mean(leaves == 0.0) > 0.1  # the prox made exact zeros


@pytest.mark.parametrize(
    "members",
    [
        CHAINS["card"],
        UNIT_CHAINS["six transforms"],
        lambda: (jaxreg.clip(0.5), jaxreg.adam(1e-2)),  # inf is clipped and counted, NaN neither
        CHAINS["leaf-norm clip"],  # only the leaf holding them turns NaN
    ],
    ids=["card", "six", "value clip", "leaf-norm clip"],
)
def test_non_finite_gradients_follow_the_unfused_chain(members):
    tx = jaxreg.chain(*members())
    params, g = _tree(2, 0.1), _tree(30)
    g["p1"] = g["p1"].at[3].set(jnp.nan).at[5].set(jnp.inf)
    with jax.numpy_dtype_promotion("standard"):
        got = _run(_fused(tx), tx, params, [g])
        want = _run(_unfused(optax.chain(*members())), optax.chain(*members()), params, [g])
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7, equal_nan=True)


def test_nnx_state_keeps_its_variable_boxes():
    model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    grads = jax.tree.map(jnp.ones_like, params)
    tx = jaxreg.chain(jaxreg.adam(1e-2), jaxreg.decoupled_weight_decay(0.1, learning_rate=1e-2))
    with jax.numpy_dtype_promotion("standard"):
        new, state = jax.jit(lambda p, s, g: jaxreg.apply_step(tx, g, s, p))(params, tx.init(params), grads)
        updates, want_state = tx.update(grads, tx.init(params), params)
    want = optax.apply_updates(params, updates)
    assert jax.tree.structure(new) == jax.tree.structure(params)
    chex.assert_trees_all_close(new, want, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(state, want_state, rtol=1e-6, atol=1e-7)


def test_a_vmapped_sweep_over_strengths_runs_each_lane():
    params, g = _tree(3, 0.1), _tree(40)

    def step(rate, fused_step):
        # Each lane has its own shared scalars, per-leaf scalars (the leaf-norm clip's)
        # and counters (the value clip's fraction).
        tx = jaxreg.chain(
            jaxreg.clip_by_leaf_norm(1.0 + rate),
            jaxreg.clip(0.05 + rate / 10),
            jaxreg.adam(1e-2),
            jaxreg.decoupled_weight_decay(rate, learning_rate=1e-2),
        )
        if fused_step:
            return jaxreg.apply_step(tx, g, tx.init(params), params)
        updates, state = tx.update(g, tx.init(params), params)
        return optax.apply_updates(params, updates), state

    rates = jnp.array([0.0, 0.5, 5.0])
    with jax.numpy_dtype_promotion("standard"):
        got = jax.jit(jax.vmap(lambda r: step(r, True)))(rates)
        want = jax.jit(jax.vmap(lambda r: step(r, False)))(rates)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)


# Lanes of leaves cut into several chunks each (the (700, 130) leaf) and of one element.
LANE_SHAPES = [(700, 130), (64,), (3, 4, 5), (1,)]
LANE_CHAINS = {
    "value clips, counted": CHAINS["value clips, counted"],
    "leaf-norm clip": CHAINS["leaf-norm clip"],
    "pruned, broadcast masks": CHAINS["pruned, broadcast masks"],
    "max-norm rows, then group lasso rows": UNIT_CHAINS["max-norm rows, then group lasso rows"],
    "per-leaf balls, then a global ball": UNIT_CHAINS["per-leaf balls, then a global ball"],
}


@pytest.mark.parametrize("name", sorted(LANE_CHAINS))
def test_vmapped_lanes_run_in_one_call_with_the_unfused_numbers(name):
    # Two nested vmaps, the outer one over axis 1: 2 x 3 lanes, each with its own
    # parameters, gradients and state, so its own norms, counters, unit sums and global
    # ball; a mask that is not batched is the same on every lane.
    rng = np.random.default_rng(5)
    lanes = {f"p{i}": jnp.asarray(rng.standard_normal((2, 3, *s)), jnp.float32) for i, s in enumerate(LANE_SHAPES)}
    grads = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32), lanes)
    scales = jnp.asarray([0.05, 0.3, 2.0], jnp.float32)  # lanes far apart: clipped or not, inside the ball or not

    def run(fused_step):
        tx = jaxreg.chain(*LANE_CHAINS[name]())

        def two_steps(p, g, scale):
            p = jax.tree.map(lambda x: scale * x, p)
            state = tx.init(p)
            for _ in range(2):
                if fused_step:
                    p, state = jaxreg.apply_step(tx, g, state, p)
                else:
                    updates, state = tx.update(g, state, p)
                    p = optax.apply_updates(p, updates)
            return p, state

        swept = jax.jit(jax.vmap(jax.vmap(two_steps, in_axes=(0, 0, None)), in_axes=(1, 1, 0)))
        return swept, swept(lanes, grads, scales), jax.jit(two_steps)

    with jax.numpy_dtype_promotion("standard"):
        swept, got, one_lane = run(True)
        _, want, _ = run(False)
        lowered = swept.lower(lanes, grads, scales).as_text()
        for a, b in np.ndindex(2, 3):  # each lane exactly as the step on that lane alone
            alone = one_lane(*[jax.tree.map(lambda x, i=(a, b): x[i], t) for t in (lanes, grads)], scales[b])
            chex.assert_trees_all_equal(jax.tree.map(lambda x, i=(b, a): x[i], got), alone)
    assert lowered.count("@jaxreg_step") == 2  # one call per step for all six lanes, no loop over them
    assert "stablehlo.while" not in lowered
    # The unfused chain sums the squares of units in another order than the pass.
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: optax.chain(jaxreg.adam(1e-2)), "not a jaxreg.chain"),
        (lambda: jaxreg.chain(optax.adam(1e-2)), "member 0 of the chain has no element-wise form"),
        (lambda: jaxreg.chain(jaxreg.adam(1e-2), jaxreg.clip_by_global_norm(1.0)), "must come first"),
        (lambda: jaxreg.chain(jaxreg.clip(1.0), jaxreg.clip_by_leaf_norm(1.0)), "must come first"),
        (lambda: jaxreg.chain(jaxreg.clip_by_leaf_norm(1.0, norm_type="inf")), "member 0"),
        (lambda: jaxreg.chain(jaxreg.clip_by_global_norm(1.0, norm_type=1)), "member 0"),
        (lambda: jaxreg.chain(jaxreg.project_box({"p0": -1.0, "p1": -1.0}, 1.0)), "member 0"),
        (lambda: jaxreg.chain(jaxreg.project_l1_ball(1.0, scope="leaf")), "member 0"),
        (
            lambda: jaxreg.chain(jaxreg.max_norm(1.0), jaxreg.decoupled_weight_decay(0.1)),
            "member 1 of the chain reads the parameters before the step and comes after member 0",
        ),
        (
            lambda: jaxreg.chain(
                jaxreg.project_l2_ball(1.0, scope="leaf", mask={"p0": True, "p1": False}), jaxreg.project_l2_ball(1.0)
            ),
            "member 1 of the chain scales all the leaves it selects together",
        ),
        (
            lambda: jaxreg.chain(jaxreg.max_norm(1.0), jaxreg.pruning.keep_pruned({"p0": True, "p1": False})),
            "member 1 of the chain reads a per-leaf mask (keep_pruned) and comes after member 0",
        ),
        (
            lambda: jaxreg.chain(jaxreg.pruning.keep_pruned({"p0": True, "p1": False}, inner=jaxreg.adam(0.1))),
            "member 0 of the chain has no element-wise form",
        ),
        (
            lambda: jaxreg.chain(
                jaxreg.max_norm(1.0, axis=0), jaxreg.group_lasso_prox(0.1, mask={"p0": True, "p1": False})
            ),
            "members of the chain rescale different units of params['p0']",
        ),
    ],
)
def test_what_has_no_single_pass_says_why_and_runs_unfused(make, reason):
    tx = make()
    params, g = {"p0": jnp.ones((3, 2)), "p1": jnp.ones(2)}, {"p0": jnp.full((3, 2), 0.5), "p1": jnp.ones(2)}
    assert reason in fused.fast_path(tx, g, params)
    _assert_apply_step_is_update_then_apply(tx, g, params)


def test_an_axis_out_of_range_gets_the_unfused_chains_error():
    tx = jaxreg.chain(jaxreg.max_norm(1.0, axis=1))
    params = {"p0": jnp.ones((3, 2)), "p1": jnp.ones(2)}
    assert "axis 1 is out of range for params['p1']" in fused.fast_path(tx, params, params)
    state = tx.init({"p0": params["p0"]})  # the step count only; init would reject params
    with pytest.raises(ValueError, match="max_norm"):
        jaxreg.apply_step(tx, params, state, params)


def _assert_apply_step_is_update_then_apply(tx, grads, params):
    with jax.numpy_dtype_promotion("standard"):
        new, _ = jaxreg.apply_step(tx, grads, tx.init(params), params)
        updates, _ = tx.update(grads, tx.init(params), params)
    chex.assert_trees_all_close(new, optax.apply_updates(params, updates), rtol=1e-6, atol=1e-7)


def test_bfloat16_params_run_the_unfused_chain():
    tx = jaxreg.chain(jaxreg.adam(1e-2))
    params = {"w": jnp.ones(4, jnp.bfloat16)}
    assert "float32" in fused.fast_path(tx, params, params)
    with jax.numpy_dtype_promotion("standard"):
        new, _ = jaxreg.apply_step(tx, params, tx.init(params), params)
    assert new["w"].dtype == jnp.bfloat16


def test_without_the_native_kernels_apply_step_falls_back(monkeypatch):
    monkeypatch.setattr(_native, "available", lambda: False)
    monkeypatch.setattr(_native, "why_unavailable", lambda: "disabled for the test")
    tx = jaxreg.chain(jaxreg.adam(1e-2))
    params = _tree(4)
    assert "disabled for the test" in fused.fast_path(tx, params, params)
    _assert_apply_step_is_update_then_apply(tx, params, params)


def test_the_state_of_another_chain_is_refused():
    tx = jaxreg.chain(jaxreg.adam(1e-2), jaxreg.max_norm(1.0))
    params = _tree(5)
    with pytest.raises(ValueError, match="not the state of this chain of 2 transforms"):
        jaxreg.apply_step(tx, params, jaxreg.chain(jaxreg.adam(1e-2)).init(params), params)


def test_grads_that_do_not_fit_the_params_name_the_leaf():
    tx = jaxreg.chain(jaxreg.adam(1e-2))
    params = _tree(5)
    grads = {k: v for k, v in params.items() if k != "p2"}
    with pytest.raises(ValueError, match=r"apply_step: grads has no entry for params\['p2'\]"):
        jaxreg.apply_step(tx, grads, tx.init(params), params)


@settings(max_examples=8, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(1, 70), min_size=0, max_size=2).map(tuple), min_size=1, max_size=4),
    scale=st.floats(1e-3, 1e3),
    lr=st.floats(1e-4, 1.0),
    bound=st.floats(1e-3, 10.0),
    seed=st.integers(0, 2**16),
)
def test_any_shapes_and_scales_match_the_unfused_chain(shapes, scale, lr, bound, seed):
    def members():
        return (
            jaxreg.clip_by_global_norm(1.0),
            jaxreg.adam(lr),
            jaxreg.decoupled_weight_decay(0.1, learning_rate=lr),
            jaxreg.l1_prox(0.1, learning_rate=lr),
            jaxreg.project_box(-bound, bound),
        )

    params, grads = _tree(seed, 1.0, shapes), [_tree(seed + 1, scale, shapes)]
    tx = jaxreg.chain(*members())
    with jax.numpy_dtype_promotion("standard"):
        new, _ = jax.jit(lambda p, s, g: jaxreg.apply_step(tx, g, s, p))(params, tx.init(params), grads[0])
        ref = optax.chain(*members())
        updates, _ = jax.jit(ref.update)(grads[0], ref.init(params), params)
    want = optax.apply_updates(params, updates)
    for k in params:  # to 1e-6 of the params' scale: w + (x - w) is x up to an ulp of w
        np.testing.assert_allclose(new[k], want[k], rtol=1e-6, atol=1e-6)
        assert np.all(np.abs(new[k]) <= bound)


@settings(max_examples=5, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(1, 70), min_size=0, max_size=2).map(tuple), min_size=1, max_size=4),
    scale=st.floats(1e-3, 1e3),
    delta=st.floats(1e-3, 10.0),
    sparsity=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_any_counted_clip_and_pruning_mask_match_the_unfused_chain(shapes, scale, delta, sparsity, seed):
    # The other mechanisms of the pass: a counter (the value clip's clipped share), a
    # per-leaf scalar (the leaf-norm clip) and a per-leaf mask (pruned weights held at 0).
    def members():
        return (
            jaxreg.clip_by_leaf_norm(1.0),
            jaxreg.clip(delta / 100),
            jaxreg.sgd(0.1, momentum=0.9),
            jaxreg.pruning.keep_pruned(lambda p: jaxreg.pruning.magnitude_mask(p, sparsity)),
        )

    params, grads = _tree(seed, 1.0, shapes), _tree(seed + 1, scale, shapes)
    tx, ref = jaxreg.chain(*members()), optax.chain(*members())
    new, state = jax.jit(lambda p, s, g: jaxreg.apply_step(tx, g, s, p))(params, tx.init(params), grads)
    updates, want_state = jax.jit(ref.update)(grads, ref.init(params), params)
    want = optax.apply_updates(params, updates)
    for k in params:
        np.testing.assert_allclose(new[k], want[k], rtol=1e-6, atol=1e-6)
        assert np.all(np.asarray(new[k])[~np.asarray(state[3].keep[k])] == 0.0)
    np.testing.assert_allclose(state[1].clipped_fraction, want_state[1].clipped_fraction, rtol=1e-6)
    for k in params:
        np.testing.assert_allclose(state[0].norm[k], want_state[0].norm[k], rtol=1e-6)


@settings(max_examples=6, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(1, 40), min_size=1, max_size=3).map(tuple), min_size=1, max_size=3),
    axis=st.integers(-1, 0),
    cap=st.floats(1e-2, 10.0),
    seed=st.integers(0, 2**16),
)
def test_any_units_match_the_unfused_chain(shapes, axis, cap, seed):
    def members():
        return (jaxreg.adam(0.1), jaxreg.max_norm(cap, axis=axis), jaxreg.group_lasso_prox(0.5, axis=axis))

    params, g = _tree(seed, 1.0, shapes), _tree(seed + 1, 1.0, shapes)
    tx = jaxreg.chain(*members())
    assert fused.fast_path(tx, g, params) is None
    with jax.numpy_dtype_promotion("standard"):
        new, _ = jax.jit(lambda p, s, g: jaxreg.apply_step(tx, g, s, p))(params, tx.init(params), g)
        ref = optax.chain(*members())
        updates, _ = jax.jit(ref.update)(g, ref.init(params), params)
    want = optax.apply_updates(params, updates)
    for k in params:
        np.testing.assert_allclose(new[k], want[k], rtol=1e-6, atol=1e-6)


def test_jaxreg_nn_optimizer_steps_a_model_like_nnx_optimizer():
    def members():
        return (
            jaxreg.clip_by_global_norm(1.0),
            jaxreg.adam(1e-2),
            jaxreg.decoupled_weight_decay(0.1, learning_rate=1e-2, mask=jaxreg.masks.weights_only),
        )

    def train(optimizer_class, tx):
        model = nnx.Sequential(nnx.Linear(3, 8, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(8, 1, rngs=nnx.Rngs(1)))
        optimizer = optimizer_class(model, tx, wrt=nnx.Param)

        @nnx.jit
        def step(model, optimizer, x):
            grads = nnx.grad(lambda m: jnp.mean((m(x) - 1.0) ** 2))(model)
            optimizer.update(model, grads)

        for k in range(3):
            step(model, optimizer, jnp.full((4, 3), 0.5 + k))
        return nnx.state(model, nnx.Param), optimizer

    with jax.numpy_dtype_promotion("standard"):
        got, fused_optimizer = train(jaxreg.nn.Optimizer, jaxreg.chain(*members()))
        want, nnx_optimizer = train(nnx.Optimizer, optax.chain(*members()))
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(
        nnx.state(fused_optimizer.opt_state), nnx.state(nnx_optimizer.opt_state), rtol=1e-6, atol=1e-7
    )
    assert int(fused_optimizer.step[...]) == 3
    pure = nnx.as_pure(got)
    assert fused.fast_path(fused_optimizer.tx, pure, pure) is None  # the single pass was the one compared


def test_a_chain_whose_kernel_cannot_be_built_runs_unfused_with_a_warning(monkeypatch):
    def fail(source, stem, includes=()):
        raise cache.BuildError("compiler exploded")

    monkeypatch.setattr(_native, "_LIBRARIES", {})
    monkeypatch.setattr(_native, "_BROKEN", {})
    monkeypatch.setattr(cache, "build", fail)
    tx = jaxreg.chain(jaxreg.adam(1e-2), jaxreg.l1_prox(0.2, learning_rate=1e-2))
    params = _tree(6)
    with pytest.warns(RuntimeWarning, match="kernel could not be built.*compiler exploded"):
        _assert_apply_step_is_update_then_apply(tx, params, params)
    # With a global-norm clip the norm's custom call is traced before the build fails;
    # the jitted fallback step still runs.
    clipped = jaxreg.chain(jaxreg.clip_by_global_norm(1.0), jaxreg.adam(1e-2))
    with pytest.warns(RuntimeWarning, match="kernel could not be built"), jax.numpy_dtype_promotion("standard"):
        new, _ = jax.jit(lambda p, s, g: jaxreg.apply_step(clipped, g, s, p))(params, clipped.init(params), params)
        updates, _ = clipped.update(params, clipped.init(params), params)
    chex.assert_trees_all_close(new, optax.apply_updates(params, updates), rtol=1e-6, atol=1e-7)
