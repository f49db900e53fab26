"""Iterative pruning with ``previous=``: each round prunes among the weights still kept,
as repeated ``torch.nn.utils.prune`` calls do through their ``PruningContainer``.

Oracles: torch's masks after two and three rounds (per layer and global, float and int
amounts) under ``jax.jit``, a numpy stable sort over the kept weights, and hypothesis
properties (the new mask is a subset of the old one, the count is exact); the negative
control is the one-shot mask, which torch's second round must not match."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch.nn.utils import prune as tprune

from jaxreg import pruning

SETTINGS = settings(max_examples=15, deadline=None)
SHAPES = [(16, 9), (5, 3, 3, 2), (31,)]

# One compilation each: the amount and the previous mask are traced.
FRACTION = {
    scope: jax.jit(lambda p, s, prev, scope=scope: pruning.magnitude_mask(p, s, scope, previous=prev))
    for scope in ("leaf", "global")
}
COUNT = {
    scope: jax.jit(lambda p, k, prev, scope=scope: pruning.magnitude_mask(p, num_pruned=k, scope=scope, previous=prev))
    for scope in ("leaf", "global")
}


def _weights(seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) * (i + 1) for i, s in enumerate(SHAPES)]


def _modules(weights):
    modules = []
    for w in weights:
        module = torch.nn.Linear(1, 1, bias=False)
        module.weight = torch.nn.Parameter(torch.from_numpy(w.copy()))
        modules.append(module)
    return modules


def _torch_rounds(weights, amounts, scope):
    """The masks of every module after each of the rounds of ``torch.nn.utils.prune``."""
    modules = _modules(weights)
    rounds = []
    for amount in amounts:
        if scope == "leaf":
            for module in modules:
                tprune.l1_unstructured(module, "weight", amount=amount)
        else:
            tprune.global_unstructured([(m, "weight") for m in modules], tprune.L1Unstructured, amount=amount)
        rounds.append([m.weight_mask.numpy().astype(bool) for m in modules])
    return rounds


def _tree(leaves):
    return {f"layer{i}": x for i, x in enumerate(leaves)}  # keys sort in the same order as the list


@pytest.mark.parametrize("scope", ["leaf", "global"])
@pytest.mark.parametrize("amounts", [(0.3, 0.5), (0.2, 0.4, 0.6), (40, 25), (30, 20, 10)], ids=str)
def test_rounds_match_torch_under_jit(scope, amounts):
    weights = _weights(1)
    params = _tree(weights)
    keep = jax.tree.map(lambda x: np.ones(x.shape, bool), params)
    if isinstance(amounts[0], int) and scope == "leaf":
        amounts = tuple(a // 8 for a in amounts)  # within the 31 weights of the smallest layer
    for amount, want in zip(amounts, _torch_rounds(weights, amounts, scope)):
        if isinstance(amount, int):
            keep = COUNT[scope](params, jnp.int32(amount), keep)
        else:
            keep = FRACTION[scope](params, jnp.float32(amount), keep)
        for i, w in enumerate(want):
            np.testing.assert_array_equal(keep[f"layer{i}"], w)
    # Negative control: pruning the last amount of all the weights, not of those still
    # kept, is not what torch's rounds give.
    last = amounts[-1]
    amount = {"num_pruned": last} if isinstance(last, int) else {"sparsity": last}
    one_shot = pruning.magnitude_mask(params, scope=scope, **amount)
    assert any((np.asarray(one_shot[f"layer{i}"]) != w).any() for i, w in enumerate(want))


def test_known_previous_rounds_as_python_as_torch():
    # 15 weights still kept: 0.3 * 15 is 4.5 in float64 (Python's round gives 4, as torch),
    # but 4.50000018 in float32. A known previous counts in Python.
    w = np.random.default_rng(2).standard_normal((4, 5)).astype(np.float32)
    first = pruning.magnitude_mask({"w": w}, num_pruned=5)
    second = pruning.magnitude_mask({"w": w}, 0.3, previous=first)
    (want,) = _torch_rounds([w], [5, 0.3], "leaf")[1]
    np.testing.assert_array_equal(second["w"], want)
    assert int(np.asarray(second["w"]).sum()) == 11


def test_random_and_structured_rounds_match_torch():
    w = np.random.default_rng(3).standard_normal((10, 7)).astype(np.float32)
    # ln_structured: the second round prunes among the rows still kept, by the norms of the masked weight.
    (module,) = _modules([w])
    keep = None
    for amount in [0.3, 0.5]:
        tprune.ln_structured(module, "weight", amount=amount, n=2, dim=0)
        keep = pruning.structured_mask({"w": w}, amount, axis=0, previous=keep)
        np.testing.assert_array_equal(keep["w"], module.weight_mask.numpy().astype(bool))
    # random_unstructured: as many pruned among the weights still kept.
    (module,) = _modules([w])
    keep = None
    for amount, key in [(0.4, 0), (0.5, 1)]:
        tprune.random_unstructured(module, "weight", amount=amount)
        new = pruning.random_mask(jax.random.key(key), {"w": w}, amount, previous=keep)
        assert int(np.asarray(new["w"]).sum()) == int(module.weight_mask.sum())
        assert keep is None or not (np.asarray(new["w"]) & ~np.asarray(keep["w"])).any()
        keep = new


# ---------------------------------------------------------------- properties


def _f32_count(sparsity, n):
    return int(np.clip(np.round(np.float32(sparsity) * np.float32(n)), 0, n))


def _reference(leaves, old, sparsity, scope, score=np.abs):
    """Keep masks from a numpy stable sort of the scores of the weights still kept."""
    keep = [o.copy() for o in old]
    if scope == "leaf":
        for x, k in zip(leaves, keep):
            alive = np.flatnonzero(k.ravel())
            order = alive[np.argsort(score(x.ravel()[alive]), kind="stable")]
            k.ravel()[order[: _f32_count(sparsity, alive.size)]] = False
        return keep
    flat_scores = np.concatenate([score(x).ravel() for x in leaves])
    flat = np.concatenate([k.ravel() for k in keep])
    alive = np.flatnonzero(flat)
    order = alive[np.argsort(flat_scores[alive], kind="stable")]
    flat[order[: _f32_count(sparsity, alive.size)]] = False
    return np.split(flat, np.cumsum([x.size for x in leaves])[:-1])


# Few distinct values, signed zeros and NaN: ties everywhere, also between kept and
# pruned weights. The shapes are the parity tests', so that the compiled masks are reused.
TIED = st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, 0.5, np.nan])
TREES = st.tuples(
    st.tuples(*[hnp.arrays(np.float32, s, elements=TIED) for s in SHAPES]),
    st.tuples(*[hnp.arrays(np.bool_, s) for s in SHAPES]),
)


@SETTINGS
@given(tree=TREES, sparsity=st.floats(0.0, 1.0, width=32), scope=st.sampled_from(["leaf", "global"]))
def test_prunes_the_lowest_of_the_weights_still_kept(tree, sparsity, scope):
    weights, old = tree
    new = FRACTION[scope](_tree(weights), jnp.float32(sparsity), _tree(old))
    got = [np.asarray(x) for x in jax.tree.leaves(new)]
    for g, k in zip(got, old):
        assert not (g & ~k).any()  # a subset of the previous mask
    for g, w in zip(got, _reference(list(weights), list(old), sparsity, scope)):
        np.testing.assert_array_equal(g.ravel(), w.ravel())


SCORES = jax.jit(lambda s, sp, prev: pruning.mask_from_scores(s, sp, "global", previous=prev))
RANDOM = jax.jit(lambda key, p, sp, prev: pruning.random_mask(key, p, sp, previous=prev))


@SETTINGS
@given(tree=TREES, sparsity=st.floats(0.0, 1.0, width=32), seed=st.integers(0, 2**31 - 1))
def test_scores_and_random_rounds_are_exact_subsets(tree, sparsity, seed):
    weights, old = tree
    new = SCORES(_tree(weights), jnp.float32(sparsity), _tree(old))
    want = _reference(list(weights), list(old), sparsity, "global", score=lambda x: x)
    for g, w in zip(jax.tree.leaves(new), want):
        np.testing.assert_array_equal(np.asarray(g).ravel(), w.ravel())
    new = RANDOM(jax.random.key(seed), _tree(weights), jnp.float32(sparsity), _tree(old))
    for g, k in zip(jax.tree.leaves(new), old):
        g = np.asarray(g)
        assert not (g & ~k).any()
        assert int(k.sum()) - int(g.sum()) == _f32_count(sparsity, int(k.sum()))


def test_n_m_keeps_the_best_n_of_the_weights_still_kept():
    w = np.random.default_rng(4).standard_normal((6, 8)).astype(np.float32)
    old = np.random.default_rng(5).random((6, 8)) < 0.6
    new = np.asarray(pruning.n_m_mask({"w": w}, 2, 4, previous={"w": old})["w"])
    assert not (new & ~old).any()
    for row_w, row_old, row_new in zip(w.reshape(-1, 4), old.reshape(-1, 4), new.reshape(-1, 4)):
        alive = np.flatnonzero(row_old)
        best = alive[np.argsort(-np.abs(row_w[alive]), kind="stable")[:2]]
        np.testing.assert_array_equal(np.flatnonzero(row_new), np.sort(best))
    everything = np.ones_like(old)
    np.testing.assert_array_equal(
        pruning.n_m_mask({"w": w}, 2, 4, previous={"w": everything})["w"], pruning.n_m_mask({"w": w}, 2, 4)["w"]
    )


def test_leaves_not_pruned_keep_the_previous_mask_and_torch_masks_are_read():
    params = {"w": np.ones((2, 3), np.float32), "steps": np.int32(3), "b": np.arange(3, dtype=np.float32)}
    old = {"w": np.float32([[1, 0, 1], [1, 1, 0]]), "steps": np.True_, "b": np.float32([0, 1, 1])}
    new = pruning.magnitude_mask(params, num_pruned=1, where={"w": False, "steps": True, "b": True}, previous=old)
    np.testing.assert_array_equal(new["w"], old["w"] != 0)
    np.testing.assert_array_equal(new["b"], [False, False, True])
    assert new["steps"].dtype == np.bool_ and bool(new["steps"])


PARAMS = {"dense": {"kernel": np.ones((3, 4), np.float32), "bias": np.ones(4, np.float32)}}
KEEP = {"dense": {"kernel": np.ones((3, 4), bool), "bias": np.bool_([1, 1, 0, 0])}}

ERRORS = [
    (
        lambda: pruning.magnitude_mask(PARAMS, 0.5, previous={"dense": {"kernel": KEEP["dense"]["kernel"]}}),
        ValueError,
        r"^magnitude_mask: previous has no entry for params\['dense'\]\['bias'\]",
    ),
    (
        lambda: pruning.magnitude_mask(PARAMS, 0.5, previous={"dense": {**KEEP["dense"], "bias": np.ones(3, bool)}}),
        ValueError,
        r"^magnitude_mask: previous for params\['dense'\]\['bias'\] has shape \(3,\), but the parameter has "
        r"shape \(4,\); give the mask that the previous round returned",
    ),
    (
        lambda: pruning.random_mask(
            jax.random.key(0), PARAMS, 0.5, previous={"dense": {**KEEP["dense"], "bias": np.float32([1, 0.5, 0, 1])}}
        ),
        ValueError,
        r"^random_mask: previous for params\['dense'\]\['bias'\] holds 0\.5; a pruning mask holds only "
        r"True/False or 1/0\.$",
    ),
    (
        lambda: pruning.structured_mask(
            PARAMS, 0.5, axis=0, previous={"dense": {**KEEP["dense"], "kernel": np.ones((3, 4), np.complex64)}}
        ),
        TypeError,
        r"^structured_mask: previous for params\['dense'\]\['kernel'\] has dtype complex64; a pruning mask holds",
    ),
    (
        lambda: pruning.magnitude_mask(PARAMS, num_pruned=3, previous=KEEP),
        ValueError,
        r"^magnitude_mask: num_pruned=3 exceeds the 2 weights of params\['dense'\]\['bias'\] still kept in "
        r"previous\.$",
    ),
    (
        lambda: pruning.n_m_mask(PARAMS, 2, 4, previous=True),
        ValueError,
        r"^n_m_mask: previous has no entry for params\['dense'\]\['bias'\]",
    ),
]


@pytest.mark.parametrize("call, error, message", ERRORS, ids=[m[2][:60] for m in ERRORS])
def test_documented_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()
