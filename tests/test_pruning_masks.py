"""Pruning masks: exact counts, a sort-based numpy reference, torch.nn.utils.prune parity,
the tie rule, jit/vmap with a traced sparsity, skipped leaves and every documented error."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import random_tree
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch.nn.utils import prune as tprune

import jaxreg
from jaxreg import masks, pruning
from jaxreg.pruning import _select

SETTINGS = settings(max_examples=15, deadline=None)
# XLA's CPU backend flushes subnormals to zero, so they are left out of the inputs.
FLOATS = st.floats(-10, 10, allow_nan=False, allow_subnormal=False, width=32)
# Few distinct values, signed zeros, infinities and NaN: ties everywhere.
TIED = st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, 0.5, np.inf, -np.inf, np.nan])
SPARSITY = st.floats(0.0, 0.9375, width=32)

# One compilation per scope: the sparsity is traced.
MAGNITUDE = {
    scope: jax.jit(lambda p, s, scope=scope: pruning.magnitude_mask(p, s, scope)) for scope in ("leaf", "global")
}
FROM_SCORES = {
    scope: jax.jit(lambda p, s, scope=scope: pruning.mask_from_scores(p, s, scope)) for scope in ("leaf", "global")
}


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _f32_count(sparsity, n):
    """round(s * n) in float32, half to even: what a traced sparsity prunes."""
    return int(np.clip(np.round(np.float32(sparsity) * np.float32(n)), 0, n))


def _reference_pruned(scores, k):
    """Flat indices of the k lowest scores, ties in position order (a stable sort)."""
    return np.argsort(scores, kind="stable")[:k]


def _reference_keep(tree, sparsity, scope, score=np.abs, count=_f32_count, kinds="f"):
    """Keep masks from a numpy stable sort of the scores (leaves of dtype ``kinds``), per leaf or concatenated."""
    leaves = [np.asarray(x) for x in jax.tree.leaves(tree)]
    prunable = [x.ndim >= 1 and x.dtype.kind in kinds for x in leaves]
    keep = [np.ones(x.shape, bool) for x in leaves]
    if scope == "leaf":
        for i, x in enumerate(leaves):
            if prunable[i]:
                flat = np.ones(x.size, bool)
                flat[_reference_pruned(score(x).ravel(), count(sparsity, x.size))] = False
                keep[i] = flat.reshape(x.shape)
    else:
        picked = [i for i, p in enumerate(prunable) if p]
        scores = np.concatenate([score(leaves[i]).ravel() for i in picked])
        flat = np.ones(scores.size, bool)
        flat[_reference_pruned(scores, count(sparsity, scores.size))] = False
        start = 0
        for i in picked:
            keep[i] = flat[start : start + leaves[i].size].reshape(leaves[i].shape)
            start += leaves[i].size
    return keep


def _assert_same(keep, reference):
    for got, want in zip(_leaves(keep), reference):
        assert got.dtype == np.bool_ and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- exact counts, references


@pytest.mark.parametrize("scope", ["leaf", "global"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.99])
def test_magnitude_mask_prunes_round_s_n_and_matches_a_sort(scope, sparsity):
    params = random_tree(0)
    keep = MAGNITUDE[scope](params, jnp.float32(sparsity))
    _assert_same(keep, _reference_keep(params, sparsity, scope))
    sizes = [x.size for x in jax.tree.leaves(params) if x.ndim >= 1]
    pruned = [int((~k).sum()) for k in _leaves(keep)]
    if scope == "leaf":
        assert sorted(pruned) == sorted([_f32_count(sparsity, n) for n in sizes] + [0])
    else:
        assert sum(pruned) == _f32_count(sparsity, sum(sizes))


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), sparsity=SPARSITY, scope=st.sampled_from(["leaf", "global"]))
def test_bisection_equals_a_sort_on_random_trees(seed, sparsity, scope):
    params = random_tree(seed, scale=10.0 ** (seed % 7 - 3))
    _assert_same(MAGNITUDE[scope](params, jnp.float32(sparsity)), _reference_keep(params, sparsity, scope))


TIED_TREES = st.fixed_dictionaries(
    {name: hnp.arrays(np.float32, shape, elements=TIED) for name, shape in [("a", (5, 7)), ("b", (7,)), ("c", (3, 4))]}
)


@SETTINGS
@given(tree=TIED_TREES, sparsity=SPARSITY, scope=st.sampled_from(["leaf", "global"]))
def test_ties_are_broken_by_position_and_the_count_is_exact(tree, sparsity, scope):
    # The documented rule is a stable sort by |w| (NaN last, -0.0 == +0.0), leaves in
    # tree order: the numpy reference is exactly that.
    _assert_same(MAGNITUDE[scope](tree, jnp.float32(sparsity)), _reference_keep(tree, sparsity, scope))


@SETTINGS
@given(tree=TIED_TREES, sparsity=SPARSITY, scope=st.sampled_from(["leaf", "global"]))
def test_mask_from_scores_ranks_signed_scores(tree, sparsity, scope):
    # Negative scores rank below zero; the sign is not dropped as in magnitude_mask.
    _assert_same(
        FROM_SCORES[scope](tree, jnp.float32(sparsity)), _reference_keep(tree, sparsity, scope, score=lambda x: x)
    )


@pytest.mark.parametrize("scope", ["leaf", "global"])
@pytest.mark.parametrize("dtype", [np.bool_, np.int8, np.uint8, np.int32, np.uint32])
def test_mask_from_scores_ranks_integer_and_bool_scores(dtype, scope):
    # Scores are scores, whatever their dtype: ints (exactly, also beyond float32's 2**24)
    # and bools are ranked as their values, ties in position order.
    rng = np.random.default_rng(5)
    info = np.iinfo(dtype) if dtype is not np.bool_ else None
    low, high = (0, 2) if info is None else (info.min, info.max + 1)
    tree = {"a": rng.integers(low, high, (6, 7), dtype=np.int64).astype(dtype), "b": np.zeros(9, dtype)}
    if info is not None and info.bits == 32:
        tree["b"] = (np.arange(9) + info.max - 8).astype(dtype)  # 9 distinct values, equal in float32
    keep = pruning.mask_from_scores(tree, 0.4, scope)
    _assert_same(
        keep, _reference_keep(tree, 0.4, scope, score=lambda x: x, count=lambda s, n: round(s * n), kinds="biu")
    )
    assert sum(int((~k).sum()) for k in _leaves(keep)) > 0


def _large_trees():
    """Over 2**20 weights, so the search starts from a sample and interpolates: smooth,
    bimodal (where interpolating the counts is far off) and heavily tied scores."""
    rng = np.random.default_rng(12)
    smooth = {"a": rng.standard_normal((700, 1024), np.float32), "b": rng.standard_normal(400_000, np.float32)}
    bimodal = {
        "a": np.where(rng.random((600, 1024)) < 0.5, 1e-6, 1e3).astype(np.float32)
        * rng.random((600, 1024), np.float32),
        "b": rng.standard_normal(500_000, np.float32) * 1e-3,
    }
    tied = {"a": np.round(rng.standard_normal((1100, 1000)) * 2).astype(np.float32), "b": np.zeros(7, np.float32)}
    return {"smooth": smooth, "bimodal": bimodal, "tied": tied}


@pytest.mark.parametrize("name", ["smooth", "bimodal", "tied"])
def test_large_trees_prune_exactly_what_a_sort_prunes(name):
    params = _large_trees()[name]
    for sparsity in [0.0, 3e-6, 0.37, 0.9, 0.999999, 1.0]:
        keep = MAGNITUDE["global"](params, jnp.float32(sparsity))
        _assert_same(keep, _reference_keep(params, sparsity, "global"))
    keep = pruning.magnitude_mask(params, 0.75)  # per leaf: one large group, one small
    _assert_same(keep, _reference_keep(params, 0.75, "leaf", count=lambda s, n: round(s * n)))


def _many_leaves(seed, n_layers, rng_values):
    """A transformer-like tree: many leaves of few shapes, so that same-shaped leaves are stacked."""
    rng = np.random.default_rng(seed)
    shapes = {"q": (8, 8), "k": (8, 8), "bias": (8,), "up": (8, 32), "up_bias": (32,), "down": (32, 8)}
    return {f"layer{i}": {k: rng_values(rng, s) for k, s in shapes.items()} for i in range(n_layers)}


@pytest.mark.parametrize("scope", ["leaf", "global"])
@pytest.mark.parametrize("values", ["normal", "tied"])
def test_many_leaves_of_few_shapes_prune_exactly_what_a_sort_prunes(scope, values, monkeypatch):
    # Leaves of one shape are counted stacked; ties span leaves in tree order, and a
    # batch limit smaller than the tree splits a shape's leaves over several stacks.
    draw = {
        "normal": lambda rng, s: rng.standard_normal(s).astype(np.float32),
        "tied": lambda rng, s: rng.choice(np.float32([0.0, -0.5, 0.5, 1.0]), s),
    }[values]
    for n_layers, batch in [(12, _select._BATCH), (13, 700)]:  # another tree: compiled anew
        monkeypatch.setattr(_select, "_BATCH", batch)
        params = _many_leaves(3, n_layers, draw)
        leaves = jax.tree.leaves(params)
        assert any(len(batch) > 1 for batch in _select._batches(leaves, [0] * len(leaves), [10**4]))
        keep = MAGNITUDE[scope](params, jnp.float32(0.77))
        _assert_same(keep, _reference_keep(params, 0.77, scope))


def test_all_equal_weights_prune_the_first_ones():
    keep = pruning.magnitude_mask({"a": np.ones((2, 3), np.float32), "b": np.ones(4, np.float32)}, 0.5, "global")
    np.testing.assert_array_equal(keep["a"], [[False, False, False], [False, False, True]])
    np.testing.assert_array_equal(keep["b"], [True] * 4)


def test_concrete_sparsity_rounds_half_to_even_as_python():
    params = {"w": np.arange(1, 11, dtype=np.float32)}
    for s, k in [(0.25, 2), (0.35, 4), (0.45, 4), (0.05, 0), (0.15, 2)]:
        assert int((~np.asarray(pruning.magnitude_mask(params, s)["w"])).sum()) == k == round(s * 10)


def test_vmap_over_sparsity_is_the_separate_calls():
    params = random_tree(3)
    sparsities = jnp.asarray([0.1, 0.5, 0.8], jnp.float32)
    batched = jax.vmap(MAGNITUDE["global"], in_axes=(None, 0))(params, sparsities)
    for i, s in enumerate(sparsities):
        _assert_same(jax.tree.map(lambda x, i=i: x[i], batched), _leaves(MAGNITUDE["global"](params, s)))


def test_bfloat16_params_rank_like_their_float32_values():
    params = random_tree(4, shapes={"w": (6, 5), "b": (5,)})
    low = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), params)
    wide = jax.tree.map(lambda x: np.asarray(x, np.float32), low)
    for scope in ("leaf", "global"):
        _assert_same(pruning.magnitude_mask(low, 0.4, scope), _leaves(pruning.magnitude_mask(wide, 0.4, scope)))
    keep = pruning.threshold_mask(low, 0.5)
    np.testing.assert_array_equal(keep["w"], ~(np.abs(wide["w"]) < 0.5))


def test_leaf_sparsities_as_a_tree():
    params = {"a": np.arange(1, 11, dtype=np.float32), "b": np.arange(1, 5, dtype=np.float32)}
    keep = pruning.magnitude_mask(params, {"a": 0.5, "b": 0.25})
    assert int((~keep["a"]).sum()) == 5 and int((~keep["b"]).sum()) == 1


def test_integer_scalar_and_unselected_leaves_are_kept():
    params = {
        "w": np.ones((4, 4), np.float32),
        "step": np.arange(5),
        "scale": np.float32(0.1),
        "b": np.ones(4, np.float32),
    }
    keep = pruning.magnitude_mask(params, 0.5, where={"w": True, "step": True, "scale": True, "b": False})
    assert int((~keep["w"]).sum()) == 8
    for name in ("step", "scale", "b"):
        assert np.all(keep[name]) and keep[name].shape == np.shape(params[name])
    keep = pruning.magnitude_mask(params, 0.5, where=masks.weights_only, scope="global")
    assert int((~keep["w"]).sum()) == 8 and np.all(keep["b"])


def test_random_mask_exact_count_and_deterministic():
    params = random_tree(0, shapes={"w": (5, 7), "b": (7,), "scale": ()})

    @jax.jit
    def draw(key):
        # random_mask is mask_from_scores on random_score: the same draws for the same key.
        scores = pruning.random_score(key)(params)
        return pruning.random_mask(key, params, 0.5), pruning.mask_from_scores(scores, 0.5)

    one, from_scores = draw(jax.random.key(1))
    _assert_same(one, _leaves(from_scores))
    _assert_same(one, _leaves(draw(jax.random.key(1))[0]))
    assert any(np.any(a != b) for a, b in zip(_leaves(one), _leaves(draw(jax.random.key(2))[0])))
    for x, k in zip(jax.tree.leaves(params), _leaves(one)):
        assert int((~k).sum()) == (round(0.5 * x.size) if x.ndim else 0)


def test_threshold_mask():
    params = random_tree(1)
    keep = jax.jit(pruning.threshold_mask)(params, jnp.float32(0.5))
    for x, k in zip(jax.tree.leaves(params), _leaves(keep)):
        np.testing.assert_array_equal(k, ~(np.abs(x) < 0.5) if x.ndim else True)
    keep = pruning.threshold_mask({"w": np.array([np.nan, -0.2, 0.2, 3.0], np.float32)}, {"w": 0.2})
    np.testing.assert_array_equal(keep["w"], [True, True, True, True])
    keep = pruning.threshold_mask({"w": np.array([np.nan, -0.1, 0.3], np.float32)}, 0.2)
    np.testing.assert_array_equal(keep["w"], [True, False, True])


# ---------------------------------------------------------------- structured and N:M


@pytest.mark.parametrize("axis", [0, -1, 2])
def test_structured_mask_prunes_whole_units_by_norm(axis):
    w = np.random.default_rng(0).standard_normal((4, 6, 5)).astype(np.float32)
    keep = np.asarray(pruning.structured_mask({"w": w}, 0.4, axis=axis, ord=1)["w"])
    units = np.moveaxis(keep, axis, 0).reshape(w.shape[axis], -1)
    assert np.all(units.all(1) | ~units.any(1))  # all or nothing per unit
    norms = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).sum(1)
    pruned = np.sort(np.argsort(norms, kind="stable")[: round(0.4 * w.shape[axis])])
    np.testing.assert_array_equal(np.flatnonzero(~units.all(1)), pruned)


def test_structured_mask_with_a_custom_score_and_ties():
    w = np.ones((3, 4), np.float32)
    keep = pruning.structured_mask({"w": w}, 0.5, axis=-1)["w"]
    np.testing.assert_array_equal(keep[0], [False, False, True, True])  # ties: lower units first
    snip_like = pruning.structured_mask({"w": w}, 0.25, axis=-1, score=lambda p: {"w": jnp.arange(12.0).reshape(3, 4)})
    np.testing.assert_array_equal(snip_like["w"][0], [False, True, True, True])


def _reference_n_m(score, n, m, axis):
    moved = np.moveaxis(score, axis, -1)
    blocks = moved.reshape(-1, m)
    keep = np.ones(blocks.shape, bool)
    for row, block in zip(keep, blocks):
        row[np.argsort(block, kind="stable")[: m - n]] = False
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


@pytest.mark.parametrize("n, m, axis", [(2, 4, -1), (2, 4, 0), (3, 8, 1)])
def test_n_m_mask_keeps_n_of_every_m(n, m, axis):
    rng = np.random.default_rng(n + m)
    w = rng.standard_normal((8, 16)).astype(np.float32)
    w[0, :4] = 1.0  # ties within a block: the later weights are kept
    keep = np.asarray(pruning.n_m_mask({"w": w}, n, m, axis=axis)["w"])
    np.testing.assert_array_equal(keep, _reference_n_m(np.abs(w), n, m, axis))
    assert np.all(np.moveaxis(keep, axis, -1).reshape(-1, m).sum(1) == n)


def _pruned_counts(params, keep):
    """Pruned count per leaf that a mask may prune (scalars are skipped by every mask)."""
    return [int((~np.asarray(k)).sum()) for x, k in zip(jax.tree.leaves(params), jax.tree.leaves(keep)) if x.ndim]


def test_three_ways_to_say_how_much_agree():
    params = random_tree(4)
    sizes = [x.size for x in jax.tree.leaves(params) if x.ndim]
    # keep_ratio r prunes n - round(r * n); num_pruned prunes that many in every leaf.
    assert _pruned_counts(params, pruning.magnitude_mask(params, keep_ratio=0.7)) == [n - round(0.7 * n) for n in sizes]
    smallest = min(sizes)
    assert _pruned_counts(params, pruning.magnitude_mask(params, num_pruned=smallest)) == [smallest] * len(sizes)
    by_count = pruning.magnitude_mask(params, num_pruned=round(0.3 * sum(sizes)), scope="global")
    _assert_same(by_count, _leaves(pruning.magnitude_mask(params, 0.3, scope="global")))


def test_sparsity_one_prunes_everything_and_keep_ratio_one_nothing():
    params = random_tree(5)
    sizes = [x.size for x in jax.tree.leaves(params) if x.ndim]
    assert _pruned_counts(params, pruning.magnitude_mask(params, 1.0, "global")) == sizes
    assert _pruned_counts(params, pruning.magnitude_mask(params, keep_ratio=1.0)) == [0] * len(sizes)


def test_traced_num_pruned_and_keep_ratio_compile_once():
    params = {"w": np.random.default_rng(1).standard_normal(40).astype(np.float32)}
    by_count = jax.jit(lambda k: pruning.magnitude_mask(params, num_pruned=k)["w"])
    by_ratio = jax.jit(lambda r: pruning.magnitude_mask(params, keep_ratio=r)["w"])
    for k in [0, 7, 40]:
        assert int((~by_count(jnp.int32(k))).sum()) == k
    assert int((~by_count(jnp.int32(99))).sum()) == 40  # a traced count is clipped to the size
    for r in [0.25, 0.5, 1.0]:
        assert int(by_ratio(jnp.float32(r)).sum()) == round(r * 40)


def test_structured_keep_ratio_keeps_that_fraction_of_units():
    kernel = np.random.default_rng(2).standard_normal((6, 10)).astype(np.float32)
    keep = np.asarray(pruning.structured_mask({"k": kernel}, keep_ratio=0.3)["k"])  # axis=-1: output units
    assert keep.all(axis=0).sum() == 3 and (keep.any(axis=0) == keep.all(axis=0)).all()
    norms = np.linalg.norm(kernel, axis=0)
    assert set(np.flatnonzero(keep.all(axis=0))) == set(np.argsort(norms)[-3:])


# ---------------------------------------------------------------- PyTorch parity


def _torch_mask(weight, method, **kwargs):
    module = torch.nn.Linear(1, 1, bias=False)
    module.weight = torch.nn.Parameter(torch.from_numpy(weight.copy()))
    method(module, "weight", **kwargs)
    return module.weight_mask.numpy().astype(bool)


@pytest.mark.parametrize("amount", [0.1, 0.33, 0.5, 0.77, 0.9])
def test_l1_unstructured_parity(amount):
    rng = np.random.default_rng(7)
    for shape in [(16, 9), (5, 3, 3, 2), (31,)]:
        w = rng.standard_normal(shape).astype(np.float32)
        keep = pruning.magnitude_mask({"w": w}, amount)["w"]
        np.testing.assert_array_equal(keep, _torch_mask(w, tprune.l1_unstructured, amount=amount))


@pytest.mark.parametrize("amount", [0, 1, 17, 144])
def test_l1_unstructured_int_amount_parity(amount):
    w = np.random.default_rng(8).standard_normal((16, 9)).astype(np.float32)
    keep = pruning.magnitude_mask({"w": w}, num_pruned=amount)["w"]
    np.testing.assert_array_equal(keep, _torch_mask(w, tprune.l1_unstructured, amount=amount))


@pytest.mark.parametrize("amount", [3, 6])
def test_ln_structured_int_amount_parity(amount):
    weight = np.random.default_rng(9).standard_normal((10, 7)).astype(np.float32)
    want = _torch_mask(weight, tprune.ln_structured, amount=amount, n=2, dim=0)
    np.testing.assert_array_equal(pruning.structured_mask({"w": weight}, num_pruned=amount, axis=0)["w"], want)


@pytest.mark.parametrize("amount", [0.2, 0.5, 0.9])
def test_random_unstructured_prunes_the_same_count(amount):
    w = np.random.default_rng(0).standard_normal((12, 7)).astype(np.float32)
    torch.manual_seed(0)
    want = _torch_mask(w, tprune.random_unstructured, amount=amount)
    keep = pruning.random_mask(jax.random.key(0), {"w": w}, amount)["w"]
    assert int((~np.asarray(keep)).sum()) == int((~want).sum())


@pytest.mark.parametrize("n", [1, 2, np.inf])
@pytest.mark.parametrize("dim", [0, 1])
def test_ln_structured_parity(n, dim):
    rng = np.random.default_rng(11)
    weight = rng.standard_normal((10, 7)).astype(np.float32)  # torch Linear layout (out, in)
    for amount in [0.3, 0.5]:
        want = _torch_mask(weight, tprune.ln_structured, amount=amount, n=n, dim=dim)
        # Same layout, same axis ...
        same = pruning.structured_mask({"w": weight}, amount, axis=dim, ord=n)["w"]
        np.testing.assert_array_equal(same, want)
        # ... and the Flax layout (in, out) = weight.T, where torch's dim d is axis 1 - d.
        flax = pruning.structured_mask({"kernel": weight.T}, amount, axis=1 - dim, ord=n)["kernel"]
        np.testing.assert_array_equal(np.asarray(flax).T, want)
    conv = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)  # torch Conv2d (out, in, kh, kw)
    want = _torch_mask(conv, tprune.ln_structured, amount=0.5, n=n, dim=dim)
    np.testing.assert_array_equal(pruning.structured_mask({"w": conv}, 0.5, axis=dim, ord=n)["w"], want)


@pytest.mark.parametrize("amount", [0.2, 0.6, 0.95])
def test_global_unstructured_parity(amount):
    rng = np.random.default_rng(5)
    shapes = [(8, 5), (12, 8), (3, 12), (7,)]
    weights = [rng.standard_normal(s).astype(np.float32) * (i + 1) for i, s in enumerate(shapes)]
    modules = []
    for w in weights:
        module = torch.nn.Linear(1, 1, bias=False)
        module.weight = torch.nn.Parameter(torch.from_numpy(w.copy()))
        modules.append(module)
    tprune.global_unstructured([(m, "weight") for m in modules], tprune.L1Unstructured, amount=amount)
    params = {f"layer{i}": w for i, w in enumerate(weights)}  # keys sort in the same order
    keep = pruning.magnitude_mask(params, amount, scope="global")
    for i, module in enumerate(modules):
        np.testing.assert_array_equal(keep[f"layer{i}"], module.weight_mask.numpy().astype(bool))


# ---------------------------------------------------------------- scores, apply, report, NNX


def test_snip_score_is_abs_grad_times_weight():
    rng = np.random.default_rng(0)
    params = {
        "w": jnp.asarray(rng.standard_normal((3, 2)), jnp.float32),
        "b": jnp.asarray(rng.standard_normal(2), jnp.float32),
    }
    x = jnp.asarray(rng.standard_normal((4, 3)), jnp.float32)

    def loss(p, x):
        return jnp.sum((x @ p["w"] + p["b"]) ** 2)

    scores = jax.jit(pruning.snip_score(loss, x))(params)
    grads = jax.grad(loss)(params, x)
    for name in params:
        np.testing.assert_allclose(scores[name], np.abs(grads[name] * params[name]), rtol=1e-6)
    keep = pruning.mask_from_scores(scores, 0.5)
    np.testing.assert_array_equal(keep["w"], _reference_keep(scores, 0.5, "leaf", count=lambda s, n: round(s * n))[1])


def test_activation_score_is_the_mean_absolute_output_of_each_unit():
    model = jaxreg.nn.MLP(5, [8, 6], 3, dropout_rate=0.5, hidden_noise_std=1.0, rngs=nnx.Rngs(0))
    model.train()  # the score measures in eval mode all the same: no dropout, no noise
    x = jax.random.normal(jax.random.key(1), (64, 5))
    params = nnx.state(model, nnx.Param)
    scores = jax.jit(pruning.activation_score(model, x))(params)
    p = nnx.to_pure_dict(params)
    h1 = x @ p["layers"][0]["kernel"] + p["layers"][0]["bias"]
    h2 = jax.nn.relu(h1) @ p["layers"][1]["kernel"] + p["layers"][1]["bias"]
    logits = jax.nn.relu(h2) @ p["head"]["kernel"] + p["head"]["bias"]
    for path, out in [(("layers", 0), h1), (("layers", 1), h2), (("head",), logits)]:
        leaf = functools.reduce(lambda t, k: t[k], path, scores)
        for name in ("kernel", "bias"):
            want = np.broadcast_to(np.abs(np.asarray(out)).mean(axis=0), leaf[name].shape)
            np.testing.assert_allclose(leaf[name], want, rtol=1e-5)
    # Post-ReLU activity instead, and the pure dict of the state gives the same scores.
    relu = jax.jit(pruning.activation_score(model, x, activation=jax.nn.relu))(p)
    np.testing.assert_allclose(relu["layers"][0]["bias"], np.maximum(np.asarray(h1), 0).mean(axis=0), rtol=1e-5)


def test_activation_score_prunes_the_least_active_units_and_channels():
    model = jaxreg.nn.CNN(1, 10, features=(4, 6), rngs=nnx.Rngs(2))
    x = jax.random.normal(jax.random.key(3), (8, 12, 12, 1))
    params = nnx.state(model, nnx.Param)
    score = pruning.activation_score(model, x)
    # Under jit: the model's forward pass and the mask compile once, not op by op.
    keep = jax.jit(
        lambda p: pruning.structured_mask(p, 0.5, axis=-1, ord=np.inf, score=score, where=jaxreg.masks.weights_only)
    )(params)
    conv = nnx.to_pure_dict(params)["convs"][0]
    out = (
        jax.lax.conv_general_dilated(x, conv["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        + conv["bias"]
    )
    activity = np.abs(np.asarray(out)).mean(axis=(0, 1, 2))
    kept = np.asarray(keep["convs"][0]["kernel"][...]).all(axis=(0, 1, 2))
    assert set(np.flatnonzero(kept)) == set(np.argsort(activity)[2:])


class _Tempered(nnx.Module):
    def __init__(self):
        self.linear = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
        self.temperature = nnx.Param(jnp.ones(()))

    def __call__(self, x):
        return self.linear(x) / self.temperature


def test_activation_score_gives_inf_where_no_unit_matches():
    model = _Tempered()
    scores = pruning.activation_score(model, jnp.ones((2, 3)))(nnx.state(model, nnx.Param))
    assert np.isinf(scores["temperature"]) and np.isfinite(scores["linear"]["kernel"]).all()


def test_activation_score_rejects_params_of_another_model():
    score = pruning.activation_score(jaxreg.nn.MLP(2, [3], 1, rngs=nnx.Rngs(0)), jnp.ones((4, 2)))
    with pytest.raises(ValueError, match=r"^activation_score: got 2 parameter arrays, but the model has 4 nnx.Param"):
        score({"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)})


def test_unit_norm_score_shapes():
    norms = pruning.unit_norm_score({"k": jnp.ones((3, 4))}, axis=-1, ord=np.inf)
    assert norms["k"].shape == (1, 4) and np.all(norms["k"] == 1.0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_apply_mask_zeroes_exactly_and_keeps_dtype(dtype):
    params = {"w": jnp.asarray([[-1.0, 2.0], [-0.0, np.inf]], dtype), "b": jnp.asarray([-3.0, 4.0], dtype)}
    keep = {"w": np.array([[False, True], [False, False]]), "b": True}
    out = pruning.apply_mask(params, keep)
    assert out["w"].dtype == dtype
    w = np.asarray(out["w"], np.float32)
    np.testing.assert_array_equal(w, [[0.0, 2.0], [0.0, 0.0]])
    assert not np.any(np.signbit(w[[0, 1, 1], [0, 0, 1]]))  # +0.0, not -0.0 or NaN
    np.testing.assert_array_equal(np.asarray(out["b"], np.float32), [-3.0, 4.0])
    torch_like = pruning.apply_mask(params, {"w": np.array([[0.0, 1.0], [1.0, 1.0]], np.float32), "b": True})
    assert float(torch_like["w"][0, 0]) == 0.0


def test_sparsity_report_counts_and_table():
    params = {"a": np.array([[0.0, 1.0], [2.0, -0.0]], np.float32), "b": np.ones(3, np.float32)}
    report = pruning.sparsity_report(params)
    assert [(x.path, x.shape, x.size, x.pruned) for x in report.leaves] == [
        ("['a']", (2, 2), 4, 2),
        ("['b']", (3,), 3, 0),
    ]
    assert (report.size, report.pruned) == (7, 2) and report.sparsity == pytest.approx(2 / 7)
    keep = MAGNITUDE["global"](random_tree(0), jnp.float32(0.5))
    report = pruning.sparsity_report(keep)
    assert report.pruned == _f32_count(0.5, sum(x.size for x in jax.tree.leaves(random_tree(0)) if x.ndim))
    table = str(report)
    assert "['dense1']['kernel']" in table and "total" in table.splitlines()[-1] and "%" in table
    assert pruning.sparsity_report(pruning.apply_mask(random_tree(0), keep)).pruned == report.pruned


def test_sparsity_report_skips_rng_keys_and_counters_of_nnx_models():
    model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.Dropout(0.5, rngs=nnx.Rngs(1)))
    for tree in (model, nnx.state(model)):
        report = pruning.sparsity_report(tree)
        assert [(x.shape, x.pruned) for x in report.leaves] == [((4,), 4), ((3, 4), 0)]  # zero biases
        assert [dtype for _, dtype in report.skipped] == ["uint32", "key<fry>"]
        assert all("rngs" in path for path, _ in report.skipped)
        assert "skipped (neither bool nor float):" in str(report) and "key<fry>" in str(report)
    assert pruning.sparsity_report({"step": np.arange(3, dtype=np.int32)}).skipped == (("['step']", "int32"),)


# ---------------------------------------------------------------- documented errors

PARAMS = {"dense": {"kernel": np.ones((3, 4), np.float32), "bias": np.ones(4, np.float32)}}

ERRORS = [
    (
        lambda: pruning.magnitude_mask(PARAMS, 1.2),
        ValueError,
        r"^magnitude_mask: sparsity must be a real number in \[0, 1\], got 1\.2\.$",
    ),
    (
        lambda: pruning.magnitude_mask(PARAMS, -0.1),
        ValueError,
        r"magnitude_mask: sparsity must be a real number in \[0, 1\], got -0\.1",
    ),
    (
        lambda: pruning.magnitude_mask(PARAMS, float("nan")),
        ValueError,
        r"sparsity must be a real number in \[0, 1\], got nan",
    ),
    (lambda: pruning.magnitude_mask(PARAMS, "half"), TypeError, r"magnitude_mask: sparsity must be a real number"),
    (
        lambda: pruning.magnitude_mask(PARAMS, np.ones(2) * 0.5),
        ValueError,
        r"sparsity must be a scalar, a real number in \[0, 1\], got shape \(2,\)",
    ),
    (
        lambda: pruning.magnitude_mask(PARAMS, {"dense": {"kernel": 0.5, "bias": 2.0}}),
        ValueError,
        r"magnitude_mask: sparsity for params\['dense'\]\['bias'\] must be a real number in \[0, 1\], got 2\.0",
    ),
    (
        lambda: pruning.magnitude_mask(PARAMS, {"dense": {"kernel": 0.5}}),
        ValueError,
        r"magnitude_mask: sparsity has no entry for params\['dense'\]\['bias'\]",
    ),
    (
        lambda: pruning.magnitude_mask(PARAMS, {"dense": {"kernel": 0.5, "bias": 0.1}}, scope="global"),
        ValueError,
        r"magnitude_mask: with scope='global' sparsity must be one number",
    ),
    (
        lambda: pruning.magnitude_mask(PARAMS, 0.5, scope="layer"),
        ValueError,
        r"magnitude_mask: scope must be 'global' or 'leaf', got 'layer'",
    ),
    (
        lambda: pruning.magnitude_mask(PARAMS, 0.5, where={"dense": {"kernel": True}}),
        ValueError,
        r"magnitude_mask: where has no entry for params\['dense'\]\['bias'\]",
    ),
    (
        lambda: pruning.random_mask(jax.random.key(0), PARAMS, 1.5),
        ValueError,
        r"^random_mask: sparsity must be a real number in \[0, 1\], got 1\.5\.$",
    ),
    (
        lambda: pruning.mask_from_scores(PARAMS, 1.5),
        ValueError,
        r"^mask_from_scores: sparsity must be a real number in",
    ),
    (
        lambda: pruning.magnitude_mask(PARAMS),
        TypeError,
        r"^magnitude_mask: give exactly one of sparsity, keep_ratio and num_pruned, got none\.$",
    ),
    (
        lambda: pruning.magnitude_mask(PARAMS, 0.5, keep_ratio=0.5),
        TypeError,
        r"^magnitude_mask: give exactly one of sparsity, keep_ratio and num_pruned, got sparsity, keep_ratio\.$",
    ),
    (
        lambda: pruning.magnitude_mask(PARAMS, keep_ratio=0.0),
        ValueError,
        r"^magnitude_mask: keep_ratio must be a real number in \(0, 1\], got 0\.0\.$",
    ),
    (
        lambda: pruning.structured_mask(PARAMS, keep_ratio=-0.5, axis=0),
        ValueError,
        r"^structured_mask: keep_ratio must be a real number in \(0, 1\], got -0\.5\.$",
    ),
    (
        lambda: pruning.magnitude_mask(PARAMS, num_pruned=2.5),
        TypeError,
        r"^magnitude_mask: num_pruned must be an int >= 0, got 2\.5\.$",
    ),
    (
        lambda: pruning.magnitude_mask(PARAMS, num_pruned=-1),
        ValueError,
        r"^magnitude_mask: num_pruned must be an int >= 0, got -1\.$",
    ),
    (
        lambda: pruning.magnitude_mask(PARAMS, num_pruned=5),
        ValueError,
        r"^magnitude_mask: num_pruned=5 exceeds the 4 weights of params\['dense'\]\['bias'\]\.$",
    ),
    (
        lambda: pruning.magnitude_mask(PARAMS, num_pruned=17, scope="global"),
        ValueError,
        r"^magnitude_mask: num_pruned=17 exceeds the 16 weights of the selected tree\.$",
    ),
    (
        lambda: pruning.threshold_mask(PARAMS, -1.0),
        ValueError,
        r"threshold_mask: threshold must be a non-negative number, got -1\.0",
    ),
    (
        lambda: pruning.structured_mask(PARAMS, 1.01, axis=0),
        ValueError,
        r"^structured_mask: sparsity must be a real number in \[0, 1\], got 1\.01\.$",
    ),
    (
        lambda: pruning.structured_mask(PARAMS, 0.5, axis=1),
        ValueError,
        r"structured_mask: axis 1 is out of range for params\['dense'\]\['bias'\] with shape \(4,\)",
    ),
    (
        lambda: pruning.structured_mask(PARAMS, 0.5, axis=1.0),
        TypeError,
        r"structured_mask: axis must be an int, got 1\.0",
    ),
    (
        lambda: pruning.structured_mask(PARAMS, 0.5, axis=0, ord=0.5),
        ValueError,
        r"structured_mask: ord must be a number p >= 1 or inf, got 0\.5",
    ),
    (
        lambda: pruning.structured_mask(
            PARAMS, 0.5, axis=0, score=lambda p: {"dense": {"kernel": jnp.ones(3), "bias": jnp.ones(4)}}
        ),
        ValueError,
        r"structured_mask: the score of params\['dense'\]\['kernel'\] has shape \(3,\), but the parameter "
        r"has shape \(3, 4\)",
    ),
    (lambda: pruning.n_m_mask(PARAMS, 5, 4), ValueError, r"n_m_mask: n must be an int in \[1, m\], got n=5 with m=4"),
    (lambda: pruning.n_m_mask(PARAMS, 0, 4), ValueError, r"n_m_mask: n must be an int in \[1, m\], got n=0"),
    (lambda: pruning.n_m_mask(PARAMS, 2, 0), ValueError, r"n_m_mask: m must be a positive int, got 0"),
    (
        lambda: pruning.n_m_mask(PARAMS, 2, 4, axis=0),
        ValueError,
        r"n_m_mask: m=4 does not divide the length 3 of axis 0 of params\['dense'\]\['kernel'\] with shape \(3, 4\)",
    ),
    (
        lambda: pruning.n_m_mask(PARAMS, 2, 4, axis=2),
        ValueError,
        r"n_m_mask: axis 2 is out of range for params\['dense'\]\['bias'\]",
    ),
    (
        lambda: pruning.apply_mask(PARAMS, {"dense": {"kernel": True}}),
        ValueError,
        r"apply_mask: keep has no entry for params\['dense'\]\['bias'\]",
    ),
    (
        lambda: pruning.apply_mask(PARAMS, {"dense": {"kernel": np.ones(3, bool), "bias": True}}),
        ValueError,
        r"apply_mask: keep for params\['dense'\]\['kernel'\] has shape \(3,\), which does not broadcast to "
        r"the parameter's shape \(3, 4\)",
    ),
    (lambda: pruning.unit_norm_score(PARAMS, axis=2), ValueError, r"unit_norm_score: axis 2 is out of range"),
    (
        lambda: pruning.mask_from_scores({"w": np.ones(3, np.complex64)}, 0.5),
        TypeError,
        r"^mask_from_scores: the scores at scores\['w'\] are complex64; scores are real numbers",
    ),
]


@pytest.mark.parametrize("call, error, message", ERRORS, ids=[m[2][:60] for m in ERRORS])
def test_documented_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_sparsity_report_refuses_tracers():
    with pytest.raises(TypeError, match="sparsity_report: got traced values; call it outside jit"):
        jax.jit(lambda p: pruning.sparsity_report(p).pruned)(PARAMS)


def _ops_per_leaf(fn, n_layers):
    """StableHLO operations the lowered ``fn`` adds per leaf, from trees of n and 2n layers (no compile)."""

    def count(layers):
        params = _many_leaves(0, layers, lambda rng, s: rng.standard_normal(s).astype(np.float32))
        text = jax.jit(fn).lower(params).as_text()
        return sum(1 for line in text.splitlines() if " = " in line), len(jax.tree.leaves(params))

    (small, n_small), (large, n_large) = count(n_layers), count(2 * n_layers)
    return (large - small) / (n_large - n_small)


@pytest.mark.parametrize(
    "fn",
    [
        lambda p: pruning.magnitude_mask(p, 0.5, scope="global"),
        lambda p: pruning.magnitude_mask(p, 0.5),
        lambda p: pruning.random_mask(jax.random.key(0), p, 0.5),
        lambda p: pruning.structured_mask(p, 0.5, where=lambda t: jax.tree.map(lambda x: x.ndim == 2, t)),
    ],
    ids=["magnitude_global", "magnitude_leaf", "random", "structured"],
)
def test_the_program_grows_by_a_few_operations_per_leaf(fn):
    # Same-shaped leaves are stacked and searched stack by stack: what a leaf adds is its
    # place in a concatenation and the copy of its marks (a few operations), not a
    # counting kernel per pass (the program once grew by 65 to 95 per leaf).
    assert _ops_per_leaf(fn, 8) < 20
