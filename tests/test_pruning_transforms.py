"""Pruning in optax chains: keep_pruned holds pruned weights at exact zeros whatever runs
before it, sparsity schedules follow Zhu & Gupta, prune_during_training recomputes the
mask inside jit on the schedule (one compilation), under vmap and in nnx.Optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_tree
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jaxreg
from jaxreg import pruning

SHAPES = {"w": (6, 5), "b": (5,)}
FLOATS = st.floats(-10, 10, allow_nan=False, allow_subnormal=False, width=32)
UPDATES = st.floats(allow_subnormal=False, width=32)  # NaN and inf included


def _chain_step(tx, traces=None):
    @jax.jit
    def step(params, state, grads):
        if traces is not None:
            traces.append(1)  # runs once per trace, i.e. per compilation
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def _adamw_like():
    # optax.adamw traces float ** int32, which the suite's strict promotion rejects; this
    # chain has the same parameter-space hazard: decoupled decay moves every weight.
    return optax.chain(optax.sgd(0.1, momentum=0.9), optax.add_decayed_weights(0.1), jaxreg.decoupled_weight_decay(0.5))


# ---------------------------------------------------------------- keep_pruned


KEEP_TX = optax.chain(_adamw_like(), pruning.keep_pruned(lambda p: pruning.magnitude_mask(p, 0.5)))
KEEP_STEP = _chain_step(KEEP_TX)


@settings(max_examples=20, deadline=None)
@given(
    params=st.fixed_dictionaries({k: hnp.arrays(np.float32, s, elements=FLOATS) for k, s in SHAPES.items()}),
    grads=st.lists(
        st.fixed_dictionaries({k: hnp.arrays(np.float32, s, elements=UPDATES) for k, s in SHAPES.items()}),
        min_size=1,
        max_size=3,
    ),
)
def test_keep_pruned_never_revives_a_pruned_weight(params, grads):
    state = KEEP_TX.init(params)
    keep = state[1].keep
    reference = pruning.magnitude_mask(params, 0.5)
    for name in SHAPES:
        np.testing.assert_array_equal(keep[name], reference[name])
    for g in grads:
        params, state = KEEP_STEP(params, state, g)
        for name in SHAPES:
            pruned = np.asarray(params[name])[~np.asarray(keep[name])]
            assert np.all(pruned == 0.0) and not np.any(np.signbit(pruned))  # exact +0.0


def test_keep_pruned_passes_kept_updates_unchanged():
    params, grads = random_tree(0, shapes=SHAPES), random_tree(1, shapes=SHAPES)
    keep = pruning.magnitude_mask(params, 0.4)
    inner = _adamw_like()
    tx = optax.chain(inner, pruning.keep_pruned(keep))
    u_inner, _ = jax.jit(inner.update)(grads, inner.init(params), params)
    u, state = jax.jit(tx.update)(grads, tx.init(params), params)
    for name in SHAPES:
        k = np.asarray(keep[name])
        np.testing.assert_array_equal(np.asarray(u[name])[k], np.asarray(u_inner[name])[k])
        np.testing.assert_array_equal(np.asarray(u[name])[~k], -params[name][~k])
    assert isinstance(state[1], pruning.KeepPrunedState)


@pytest.mark.parametrize("wrap", [False, True], ids=["last", "inner"])
def test_keep_pruned_holds_complex_leaves_at_zero(wrap):
    # A complex weight is pruned like a real one: its update is -p, its gradient hidden.
    params = {"z": jnp.asarray([1 + 2j, 3 - 1j, -2 + 0.5j], jnp.complex64), "w": jnp.ones(3)}
    keep = {"z": np.array([True, False, True]), "w": np.array([False, True, True])}
    tx = pruning.keep_pruned(keep, inner=optax.sgd(1.0) if wrap else None)
    grads = {"z": jnp.full(3, 0.5 - 0.5j, jnp.complex64), "w": jnp.full(3, 0.25)}
    out, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    new = optax.apply_updates(params, out)
    sign = -1.0 if wrap else 1.0  # sgd(1.0) negates the gradient
    np.testing.assert_array_equal(
        new["z"], [params["z"][0] + sign * grads["z"][0], 0.0, params["z"][2] + sign * grads["z"][2]]
    )
    np.testing.assert_array_equal(new["w"], [0.0, 1.0 + sign * 0.25, 1.0 + sign * 0.25])


def test_keep_pruned_skips_integer_leaves_and_needs_params():
    params = {"w": jnp.ones((2, 2)), "count": jnp.arange(3)}
    tx = pruning.keep_pruned({"w": np.array([[True, False], [True, True]]), "count": True})
    state = tx.init(params)
    updates = {"w": jnp.full((2, 2), 0.5), "count": jnp.ones(3, jnp.int32)}
    out, _ = tx.update(updates, state, params)
    np.testing.assert_array_equal(out["w"], [[0.5, -1.0], [0.5, 0.5]])
    np.testing.assert_array_equal(out["count"], [1, 1, 1])
    with pytest.raises(
        ValueError, match="keep_pruned: this transform reads the parameters, but update\\(\\) got params=None"
    ):
        tx.update(updates, state)
    with pytest.raises(ValueError, match=r"keep_pruned: keep has no entry for params\['w'\]"):
        pruning.keep_pruned({"count": True}).init(params)
    with pytest.raises(ValueError, match=r"keep_pruned: keep for params\['w'\] has shape \(3,\)"):
        pruning.keep_pruned({"w": np.ones(3, bool), "count": True}).init(params)


# ---------------------------------------------------------------- schedules


def _zhu_gupta(t, final, t0, t1, initial, frequency, power):
    if t < t0:
        return 0.0
    last = t1 if t >= t1 else min(t0 + (t - t0) // frequency * frequency, t1)
    return final + (initial - final) * (1 - (last - t0) / (t1 - t0)) ** power


@pytest.mark.parametrize(
    "final, t0, t1, initial, frequency, power",
    [(0.9, 0, 10, 0.0, 1, 3), (0.8, 3, 20, 0.1, 4, 3), (0.5, 2, 7, 0.0, 2, 1)],
)
def test_polynomial_sparsity_is_zhu_gupta(final, t0, t1, initial, frequency, power):
    schedule = pruning.polynomial_sparsity(final, t0, t1, initial=initial, frequency=frequency, power=power)
    steps = jnp.arange(t1 + 5)
    values = np.asarray(jax.jit(jax.vmap(schedule))(steps))
    assert values.dtype == np.float32
    want = [_zhu_gupta(int(t), final, t0, t1, initial, frequency, power) for t in steps]
    np.testing.assert_allclose(values, want, rtol=1e-6, atol=1e-7)
    assert values[t1] == np.float32(final) and values[t0] == np.float32(initial)
    assert np.all(np.diff(values[t0:]) >= 0)


def test_constant_sparsity_is_one_shot():
    schedule = pruning.constant_sparsity(0.7, step=3)
    np.testing.assert_array_equal(jax.vmap(schedule)(jnp.arange(6)), np.float32([0, 0, 0, 0.7, 0.7, 0.7]))


SCHEDULE_ERRORS = [
    (
        lambda: pruning.polynomial_sparsity(1.5, 0, 10),
        r"^polynomial_sparsity: final must be a real number in \[0, 1\], got 1\.5\.$",
    ),
    (lambda: pruning.polynomial_sparsity(0.5, 5, 5), r"polynomial_sparsity: end_step must be an int >= 6, got 5"),
    (lambda: pruning.polynomial_sparsity(0.5, -1, 5), r"polynomial_sparsity: begin_step must be an int >= 0, got -1"),
    (lambda: pruning.polynomial_sparsity(0.5, 0, 5, frequency=0), r"frequency must be an int >= 1, got 0"),
    (
        lambda: pruning.polynomial_sparsity(0.5, 0, 5, power=0.0),
        r"polynomial_sparsity: power must be a positive number",
    ),
    (
        lambda: pruning.polynomial_sparsity(0.5, 0, 5, initial=0.6),
        r"initial must be <= final, got initial=0\.6 and final=0\.5",
    ),
    (
        lambda: pruning.constant_sparsity(1.5),
        r"^constant_sparsity: sparsity must be a real number in \[0, 1\], got 1\.5\.$",
    ),
    (lambda: pruning.constant_sparsity(0.5, step=-2), r"constant_sparsity: step must be an int >= 0, got -2"),
    (
        lambda: pruning.prune_during_training(pruning.magnitude_score, 1.2),
        r"sparsity_schedule must be a real number in \[0, 1\], got 1\.2",
    ),
    (
        lambda: pruning.prune_during_training(pruning.magnitude_score, 0.5, scope="layer"),
        r"scope must be 'global' or 'leaf'",
    ),
]


@pytest.mark.parametrize("call, message", SCHEDULE_ERRORS, ids=[m[1][:50] for m in SCHEDULE_ERRORS])
def test_documented_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_prune_during_training_needs_a_callable_score():
    with pytest.raises(TypeError, match="prune_during_training: score must be a callable params -> scores, got 0.5"):
        pruning.prune_during_training(0.5, 0.5)


# ---------------------------------------------------------------- prune_during_training

TRAIN_SHAPES = {"w": (8, 6), "v": (6, 4), "b": (4,), "step": ()}


def _train_tree(seed):
    tree = random_tree(seed, shapes={k: v for k, v in TRAIN_SHAPES.items() if k != "step"})
    return {**tree, "step": np.int32(0)}


@pytest.mark.parametrize("scope", ["leaf", "global"])
def test_prune_during_training_follows_the_schedule_in_one_compilation(scope):
    schedule = pruning.polynomial_sparsity(0.75, begin_step=2, end_step=8, frequency=2)
    where = {"w": True, "v": True, "b": False, "step": True}
    floats = jaxreg.masks.by_path("w|v|b")  # the optimizer leaves the int32 step counter alone
    tx = optax.chain(
        jaxreg.masked(_adamw_like(), floats),
        pruning.prune_during_training(pruning.magnitude_score, schedule, scope, where),
    )
    traces = []
    step = _chain_step(tx, traces)
    params = jax.tree.map(jnp.asarray, _train_tree(0))
    state = tx.init(params)
    grads = jax.tree.map(lambda x: np.ones_like(x, np.float32) if np.ndim(x) else np.int32(0), params)
    pruned_before = np.zeros(48 + 24, bool)
    for t in range(12):
        params, state = step(params, state, grads)
        prune_state = state[1]
        s = float(schedule(t))
        assert float(prune_state.sparsity) == np.float32(s)
        keep = prune_state.keep
        pruned = np.concatenate([~np.asarray(keep["w"]).ravel(), ~np.asarray(keep["v"]).ravel()])
        if scope == "global":
            assert pruned.sum() == round(np.float32(s) * np.float32(72))
        else:
            assert (~np.asarray(keep["w"])).sum() == round(np.float32(s) * np.float32(48))
        assert np.all(np.asarray(keep["b"])) and bool(keep["step"])
        assert np.all(pruned[pruned_before])  # once pruned, pruned for good
        pruned_before = pruned
        for name in ("w", "v"):
            assert np.all(np.asarray(params[name])[~np.asarray(keep[name])] == 0.0)
    assert len(traces) == 1  # recomputing the mask did not retrace or recompile the step


def test_prune_during_training_matches_magnitude_mask_of_the_stepped_params():
    params, grads = random_tree(0, shapes=SHAPES), random_tree(1, shapes=SHAPES)
    tx = optax.chain(optax.sgd(0.1), pruning.prune_during_training(pruning.magnitude_score, 0.5, scope="global"))
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
    stepped = optax.apply_updates(params, optax.sgd(0.1).update(grads, optax.sgd(0.1).init(params))[0])
    want = pruning.magnitude_mask(stepped, 0.5, scope="global")
    for name in SHAPES:
        np.testing.assert_array_equal(state[1].keep[name], want[name])
    new = optax.apply_updates(params, updates)
    for name in SHAPES:
        np.testing.assert_array_equal(np.asarray(new[name]), np.where(want[name], stepped[name], 0.0))


def test_prune_during_training_with_a_custom_score_and_under_vmap():
    # A score that prefers small weights: the opposite of magnitude pruning.
    tx = pruning.prune_during_training(lambda p: jax.tree.map(lambda x: -jnp.abs(x), p), pruning.constant_sparsity(0.5))
    batch = jax.tree.map(lambda a, b: np.stack([a, b]), random_tree(0, shapes=SHAPES), random_tree(1, shapes=SHAPES))
    zeros = jax.tree.map(np.zeros_like, batch)
    states = jax.vmap(tx.init)(batch)
    updates, states = jax.jit(jax.vmap(tx.update))(zeros, states, batch)
    for i in range(2):
        one = jax.tree.map(lambda x, i=i: x[i], batch)
        want = pruning.mask_from_scores(jax.tree.map(lambda x: -np.abs(x), one), 0.5)
        for name in SHAPES:
            np.testing.assert_array_equal(states.keep[name][i], want[name])
            np.testing.assert_array_equal(np.asarray(updates[name][i])[~want[name]], -one[name][~want[name]])


def test_prune_during_training_inside_nnx_optimizer():
    model = nnx.Sequential(nnx.Linear(4, 8, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(8, 2, rngs=nnx.Rngs(1)))
    schedule = pruning.polynomial_sparsity(0.5, begin_step=0, end_step=2)
    tx = optax.chain(
        optax.sgd(1e-2),
        pruning.prune_during_training(pruning.magnitude_score, schedule, "global", where=jaxreg.masks.weights_only),
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x, y = jnp.ones((5, 4)), jnp.zeros((5, 2))

    @nnx.jit
    def train_step(model, optimizer):
        grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)

    for _ in range(3):
        train_step(model, optimizer)
    state = nnx.state(model, nnx.Param)
    report = pruning.sparsity_report(state)
    kernels = [leaf for leaf in report.leaves if "kernel" in leaf.path]
    assert sum(leaf.pruned for leaf in kernels) >= round(0.5 * (32 + 16))
    # The pure mask functions read NNX State too, and apply_mask's result updates the model.
    keep = pruning.magnitude_mask(state, 0.75, scope="global", where=jaxreg.masks.weights_only)
    nnx.update(model, pruning.apply_mask(state, keep))
    after = pruning.sparsity_report(nnx.state(model, nnx.Param))
    assert sum(leaf.pruned for leaf in after.leaves if "kernel" in leaf.path) >= round(0.75 * (32 + 16))


def test_a_pruned_weight_stays_pruned_even_against_a_kept_exact_zero():
    # Step 0 prunes w[1] (0.1). Step 1 drives w[0] to exactly 0 and nudges the sparsity
    # (k stays 1): w[0] now ties with the pruned w[1] at |w| = 0 and comes first, but
    # pruned weights rank below all others, so w[1] stays pruned and w[0] is kept.
    tx = pruning.prune_during_training(
        pruning.magnitude_score, lambda count: jnp.where(count >= 1, 0.26, 0.25).astype(jnp.float32)
    )
    params = {"w": jnp.asarray([3.0, 0.1, 5.0, 6.0])}
    update = jax.jit(tx.update)
    state = tx.init(params)
    u, state = update({"w": jnp.zeros(4)}, state, params)
    params = optax.apply_updates(params, u)
    np.testing.assert_array_equal(state.keep["w"], [True, False, True, True])
    u, state = update({"w": jnp.asarray([-3.0, 0.0, 0.0, 0.0])}, state, params)
    np.testing.assert_array_equal(state.keep["w"], [True, False, True, True])
    np.testing.assert_array_equal(optax.apply_updates(params, u)["w"], [0.0, 0.0, 5.0, 6.0])


# ---------------------------------------------------------------- wrapping the optimizer (inner=)


def _torch_pruned_run(weights, keeps, grads_seq, lr, max_norm):
    """PyTorch's pruned training: weight = weight_orig * mask, clip_grad_norm_, Adam."""
    import torch
    from torch.nn.utils import prune as tprune

    modules = []
    for w, k in zip(weights, keeps):
        module = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        module.weight = torch.nn.Parameter(torch.from_numpy(w.copy()))
        tprune.custom_from_mask(module, "weight", torch.from_numpy(np.array(k)))
        modules.append(module)
    origs = [m.weight_orig for m in modules]
    opt = torch.optim.Adam(origs, lr=lr)
    for grads in grads_seq:
        opt.zero_grad()
        # d(sum(g * weight))/d(weight_orig) = g * mask: the gradient torch's optimizer sees.
        weights = [m.weight_orig * m.weight_mask for m in modules]  # what the forward pre-hook computes
        sum((torch.from_numpy(g) * w).sum() for g, w in zip(grads, weights)).backward()
        torch.nn.utils.clip_grad_norm_(origs, max_norm)
        opt.step()
    return [(m.weight_orig * m.weight_mask).detach().numpy() for m in modules]


def test_wrapping_the_optimizer_hides_pruned_gradients_as_pytorch_does():
    rng = np.random.default_rng(3)
    weights = [rng.standard_normal(s).astype(np.float32) for s in [(6, 4), (3, 6)]]
    params = {"a": weights[0], "b": weights[1]}
    keep = pruning.magnitude_mask(params, 0.5, scope="global")
    grads_seq = [[rng.standard_normal(w.shape).astype(np.float32) * 3 for w in weights] for _ in range(5)]
    want = _torch_pruned_run(weights, [keep["a"], keep["b"]], grads_seq, lr=0.05, max_norm=1.0)

    def run(tx):
        with jax.numpy_dtype_promotion("standard"):  # optax.adam is not strict-clean
            p, state = params, tx.init(params)
            for g in grads_seq:
                p, state = _chain_step(tx)(p, state, {"a": g[0], "b": g[1]})
        return p, state

    inner = optax.chain(jaxreg.clip_by_global_norm(1.0), optax.adam(0.05))
    wrapped, state = run(pruning.keep_pruned(keep, inner=inner))
    for name, w in zip("ab", want):
        np.testing.assert_allclose(wrapped[name], w, rtol=1e-5, atol=1e-6)
    # Adam's moments never saw a pruned gradient.
    mu = state.inner[1][0].mu
    for name in "ab":
        assert not np.asarray(mu[name])[~np.asarray(keep[name])].any()
    # Placed after the optimizer instead, the clip's norm counts the pruned gradients.
    after, _ = run(optax.chain(inner, pruning.keep_pruned(keep)))
    assert max(float(np.abs(after[n] - w).max()) for n, w in zip("ab", want)) > 1e-3


def test_prune_during_training_wraps_an_optimizer_inside_nnx():
    model = nnx.Sequential(nnx.Linear(4, 8, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(8, 2, rngs=nnx.Rngs(1)))
    tx = pruning.prune_during_training(
        pruning.magnitude_score,
        pruning.constant_sparsity(0.5),
        where=jaxreg.masks.weights_only,
        inner=optax.sgd(0.05, momentum=0.9),
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x, y = jnp.ones((5, 4)), jnp.zeros((5, 2))

    @nnx.jit
    def train_step(model, optimizer):
        optimizer.update(model, nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model))

    def momentum(layer):
        return np.asarray(optimizer.opt_state.inner[0].trace["layers"][layer]["kernel"][...])

    train_step(model, optimizer)  # prunes half of each kernel (the momentum saw the full gradient)
    first = {layer: momentum(layer) for layer in (0, 2)}
    train_step(model, optimizer)
    train_step(model, optimizer)
    for layer in (0, 2):
        kept = np.asarray(optimizer.opt_state.keep["layers"][layer]["kernel"][...])
        assert (~kept).sum() == kept.size // 2
        assert not np.asarray(model.layers[layer].kernel[...])[~kept].any()
        # Since then the momentum of a pruned weight saw only zero gradients: it decays.
        np.testing.assert_allclose(momentum(layer)[~kept], 0.81 * first[layer][~kept], rtol=1e-5)
        assert np.abs(momentum(layer)[kept] - 0.81 * first[layer][kept]).max() > 1e-4


def test_inner_must_be_a_gradient_transformation():
    with pytest.raises(TypeError, match=r"^keep_pruned: inner must be an optax.GradientTransformation, got 'adam'"):
        pruning.keep_pruned({"w": True}, inner="adam")
    with pytest.raises(TypeError, match=r"^prune_during_training: inner must be an optax.GradientTransformation"):
        pruning.prune_during_training(pruning.magnitude_score, 0.5, inner=0.1)
