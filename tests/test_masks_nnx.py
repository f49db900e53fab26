"""Selectors on plain dicts, Flax linen params and Flax NNX State, and inside nnx.Optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen, nnx

import jaxreg
from jaxreg import masks


class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.dense1 = nnx.Linear(3, 8, rngs=rngs)
        self.norm = nnx.LayerNorm(8, rngs=rngs)
        self.dense2 = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
        return self.dense2(nnx.relu(self.norm(self.dense1(x))))


def _nnx_params():
    return nnx.state(Net(nnx.Rngs(0)), nnx.Param)


def _linen_params():
    return linen.Dense(4).init(jax.random.key(0), jnp.ones((1, 3)))


def _flat(tree):
    return {jaxreg._tree.path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(jaxreg._tree.unbox(tree))[0]}


@pytest.mark.parametrize(
    "params, kernels",
    [
        ({"a": {"kernel": np.ones((2, 3)), "bias": np.ones(3)}, "scale": np.ones(())}, {"a/kernel"}),
        (_linen_params(), {"params/kernel"}),
        (_nnx_params(), {"dense1/kernel", "dense2/kernel"}),
    ],
    ids=["dict", "linen", "nnx"],
)
def test_weights_only_and_by_path_select_kernels(params, kernels):
    chosen = {k for k, v in _flat(masks.weights_only(params)).items() if v}
    assert chosen == kernels
    assert {k for k, v in _flat(masks.by_path("kernel")(params)).items() if v} == kernels
    assert all(_flat(masks.all_params(params)).values())


def test_combinators():
    params = _nnx_params()
    dense1_kernel = masks.mask_and(masks.weights_only, masks.by_path("^dense1/"))
    assert {k for k, v in _flat(dense1_kernel(params)).items() if v} == {"dense1/kernel"}
    either = masks.mask_or(masks.by_path("norm"), masks.by_path("dense2/bias"))
    assert {k for k, v in _flat(either(params)).items() if v} == {"norm/scale", "norm/bias", "dense2/bias"}
    assert {k for k, v in _flat(masks.mask_not(masks.weights_only)(params)).items() if v} == {
        "dense1/bias",
        "dense2/bias",
        "norm/scale",
        "norm/bias",
    }


def _pure_params(model):
    return nnx.as_pure(nnx.state(model, nnx.Param))


STATIC_MASK = "static tree built from the model's pure state"
MASKS = {
    "callable weights_only": masks.weights_only,
    "callable by_path": masks.by_path("kernel"),
    STATIC_MASK: None,
}


def _chain(mask):
    return optax.chain(
        jaxreg.clip_by_global_norm(1.0),
        jaxreg.coupled_weight_decay(1e-2, mask=mask),
        optax.adam(1e-2),
        jaxreg.decoupled_weight_decay(1e-1, learning_rate=1e-2, mask=mask),
        jaxreg.l1_prox(1e-1, learning_rate=1e-2, mask=mask),
        jaxreg.group_lasso_prox(1e-1, learning_rate=1e-2, mask=mask),
        jaxreg.max_norm(1.0, mask=mask),
        jaxreg.masked(optax.add_decayed_weights(1e-3), mask),
        jaxreg.project_box(-0.5, 0.5),
    )


@pytest.mark.parametrize("mask_name", sorted(MASKS))
def test_chain_with_masks_inside_nnx_optimizer_matches_plain_optax(mask_name):
    # optax.adam computes decay ** count (float ** int32), which strict promotion rejects.
    with jax.numpy_dtype_promotion("standard"):
        _run_nnx_and_plain(mask_name)


def _run_nnx_and_plain(mask_name):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((16, 3)), jnp.float32)
    y = jnp.zeros((16, 2), jnp.float32)
    model = Net(nnx.Rngs(0))
    mask = MASKS[mask_name]
    if mask_name == STATIC_MASK:
        mask = jax.tree.map(lambda v: v.ndim >= 2, _pure_params(model))
    optimizer = nnx.Optimizer(model, _chain(mask), wrt=nnx.Param)

    # The same chain on plain arrays, outside NNX, is the reference.
    graphdef, params = nnx.split(Net(nnx.Rngs(0)), nnx.Param)
    tx = _chain(mask)
    state = tx.init(nnx.as_pure(params))

    def loss_of(params):
        return jnp.mean((nnx.merge(graphdef, params)(x) - y) ** 2)

    @nnx.jit
    def nnx_step(model, optimizer):
        optimizer.update(model, nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model))

    @jax.jit
    def plain_step(params, state):
        u, state = tx.update(jax.grad(loss_of)(params), state, params)
        return optax.apply_updates(params, u), state

    params = nnx.as_pure(params)
    for _ in range(5):
        nnx_step(model, optimizer)
        params, state = plain_step(params, state)
    got, want = _flat(_pure_params(model)), _flat(params)
    assert got.keys() == want.keys()
    for key in got:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-7, err_msg=key)
    # The masks really selected: biases and norm parameters were never zeroed by the
    # group lasso, kernels moved under decay.
    assert np.all(np.abs(got["dense1/kernel"]) <= 0.5)


def test_nnx_mask_names_missing_leaf():
    params = _nnx_params()
    bad = {"dense1": {"kernel": True, "bias": False}}
    with pytest.raises(ValueError, match=r"l1_prox: mask has no entry for params\['dense2'\]"):
        jaxreg.l1_prox(0.1, mask=bad).init(params)


def test_a_dict_mask_for_an_nnx_state_names_the_two_containers():
    # Same leaf paths, different containers (a mask built as plain dicts, params from
    # nnx.state): the error says so instead of "a different tree structure".
    params = _nnx_params()
    as_dicts = jax.tree.map(lambda x: np.ones(x.shape, bool), jaxreg._tree.unbox(params).to_pure_dict())
    with pytest.raises(
        ValueError, match=r"keep_pruned: keep has the params' leaf paths but a dict where the params have a State"
    ):
        jaxreg.pruning.keep_pruned(as_dicts).init(params)
    flags = jax.tree.map(lambda x: True, as_dicts)
    with pytest.raises(
        ValueError, match=r"l1_prox: mask has the params' leaf paths but a dict where the params have a State"
    ):
        jaxreg.l1_prox(0.1, mask=flags).init(params)


def test_a_mask_in_the_other_container_gets_an_error_that_says_how_to_convert_it():
    params = _nnx_params()
    pure = jaxreg._tree.unbox(params).to_pure_dict()
    as_dicts = jax.tree.map(lambda x: np.ones(x.shape, bool), pure)
    state_hint = r"Convert the mask into a copy of the params' State: .*nnx\.replace_by_pure_dict\(state, keep\)"
    for call in (
        lambda: jaxreg.pruning.keep_pruned(as_dicts).init(params),
        lambda: jaxreg.pruning.apply_mask(params, as_dicts),
    ):
        with pytest.raises(ValueError, match=r"a dict where the params have a State; .*" + state_hint):
            call()
    # Following the hint works.
    state = jax.tree.map(lambda x: x, params)
    nnx.replace_by_pure_dict(state, as_dicts)
    jaxreg.pruning.apply_mask(params, state)
    # The reverse: a State mask for pure-dict params.
    with pytest.raises(ValueError, match=r"a State where the params have a dict; .*keep = nnx\.to_pure_dict\(keep\)"):
        jaxreg.pruning.apply_mask(pure, state)
    jaxreg.pruning.apply_mask(pure, nnx.to_pure_dict(state))
    # A mask that lacks a leaf gets no conversion hint: converting would not fix it.
    del as_dicts[next(iter(as_dicts))]
    with pytest.raises(ValueError) as info:
        jaxreg.pruning.apply_mask(params, as_dicts)
    assert "Convert" not in str(info.value)


# Every jaxreg transform on an nnx.split state, outside nnx.Optimizer: the updates come
# back in the params' Variable boxes, so optax.apply_updates pairs them.
_BOXED_TRANSFORMS = {
    "clip": lambda: jaxreg.clip(1.0),
    "clip_by_global_norm": lambda: jaxreg.clip_by_global_norm(1.0),
    "clip_by_leaf_norm": lambda: jaxreg.clip_by_leaf_norm(1.0),
    "coupled_weight_decay": lambda: jaxreg.coupled_weight_decay(0.1),
    "decoupled_weight_decay": lambda: jaxreg.decoupled_weight_decay(0.1),
    "l1_prox": lambda: jaxreg.l1_prox(0.1),
    "elastic_net_prox": lambda: jaxreg.elastic_net_prox(0.1, 0.1),
    "group_lasso_prox": lambda: jaxreg.group_lasso_prox(0.1, axis=0),
    "project_box": lambda: jaxreg.project_box(-0.5, 0.5),
    "project_nonnegative": lambda: jaxreg.project_nonnegative(),
    "project_l2_ball": lambda: jaxreg.project_l2_ball(1.0),
    "project_l1_ball": lambda: jaxreg.project_l1_ball(1.0),
    "max_norm": lambda: jaxreg.max_norm(1.0, axis=0),
    "keep_pruned": lambda: jaxreg.pruning.keep_pruned(lambda p: jaxreg.pruning.magnitude_mask(p, 0.5)),
    "prune_during_training": lambda: jaxreg.pruning.prune_during_training(jaxreg.pruning.magnitude_score, 0.5),
    "masked": lambda: jaxreg.masked(optax.sgd(0.1), jaxreg.masks.weights_only),
}


@pytest.mark.parametrize("name", sorted(_BOXED_TRANSFORMS))
def test_updates_keep_the_variable_boxes_of_an_nnx_split_state(name):
    _, params = nnx.split(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Param)
    grads = jax.tree.map(jnp.ones_like, params)
    tx = _BOXED_TRANSFORMS[name]()
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    new = optax.apply_updates(params, updates)
    want = jax.tree.map(lambda p, u: p + u, nnx.to_pure_dict(params), nnx.to_pure_dict(updates))
    for got, w in zip(jax.tree.leaves(nnx.to_pure_dict(new)), jax.tree.leaves(want)):
        np.testing.assert_allclose(got, w, rtol=1e-6)
