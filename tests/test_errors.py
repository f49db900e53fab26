"""Every documented error: raised at the documented time, with a message that names the
function, the argument, the value given and what is allowed (docs/architecture.md, "Errors"), and
the leaf path for params/mask/updates mismatches. Also the converse: hyperparameters
that are traced (inside ``jit``/``vmap``) are accepted, since they cannot be checked.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from catalog import CATALOG, public_name
from conftest import random_tree

import jaxreg
from jaxreg import masks, penalties


def _params():
    return jax.tree.map(jnp.asarray, random_tree(0))


def msg(text: str) -> str:
    """A literal message fragment as a regex."""
    return re.escape(text)


# ---- construction time: hyperparameters ---------------------------------------------

NONNEGATIVE = "must be a non-negative number, got"
POSITIVE = "must be a positive number, got"

# id -> (zero-argument constructor, exception type, message fragment)
CONSTRUCTION_ERRORS = {
    # negative strengths and rates, each transform
    "clip max_delta<0": (lambda: jaxreg.clip(-1.0), ValueError, f"clip: max_delta {NONNEGATIVE} -1.0."),
    "sgd momentum<0": (lambda: jaxreg.sgd(0.1, momentum=-0.9), ValueError, f"sgd: momentum {NONNEGATIVE} -0.9."),
    "sgd nesterov without momentum": (
        lambda: jaxreg.sgd(0.1, nesterov=True),
        ValueError,
        "sgd: nesterov=True needs a momentum (got momentum=None)",
    ),
    "clip_by_global_norm max_norm=0": (
        lambda: jaxreg.clip_by_global_norm(0.0),
        ValueError,
        f"clip_by_global_norm: max_norm {POSITIVE} 0.0.",
    ),
    "clip_by_global_norm max_norm<0": (
        lambda: jaxreg.clip_by_global_norm(-1.0),
        ValueError,
        f"clip_by_global_norm: max_norm {POSITIVE} -1.0.",
    ),
    "clip_by_global_norm eps<0": (
        lambda: jaxreg.clip_by_global_norm(1.0, eps=-1e-6),
        ValueError,
        f"clip_by_global_norm: eps {NONNEGATIVE} -1e-06.",
    ),
    "clip_by_leaf_norm max_norm=0": (
        lambda: jaxreg.clip_by_leaf_norm(0.0),
        ValueError,
        f"clip_by_leaf_norm: max_norm {POSITIVE} 0.0.",
    ),
    "clip_by_leaf_norm max_norm<0": (
        lambda: jaxreg.clip_by_leaf_norm(-2.0),
        ValueError,
        f"clip_by_leaf_norm: max_norm {POSITIVE} -2.0.",
    ),
    "clip_by_leaf_norm eps<0": (
        lambda: jaxreg.clip_by_leaf_norm(1.0, eps=-1.0),
        ValueError,
        f"clip_by_leaf_norm: eps {NONNEGATIVE} -1.0.",
    ),
    "coupled_weight_decay rate<0": (
        lambda: jaxreg.coupled_weight_decay(-0.1),
        ValueError,
        f"coupled_weight_decay: rate {NONNEGATIVE} -0.1.",
    ),
    "decoupled_weight_decay rate<0": (
        lambda: jaxreg.decoupled_weight_decay(-0.1),
        ValueError,
        f"decoupled_weight_decay: rate {NONNEGATIVE} -0.1.",
    ),
    "decoupled_weight_decay lr=0": (
        lambda: jaxreg.decoupled_weight_decay(0.1, learning_rate=0.0),
        ValueError,
        f"decoupled_weight_decay: learning_rate {POSITIVE} 0.0.",
    ),
    "l1_prox strength<0": (lambda: jaxreg.l1_prox(-0.5), ValueError, f"l1_prox: strength {NONNEGATIVE} -0.5."),
    "l1_prox lr<0": (
        lambda: jaxreg.l1_prox(0.5, learning_rate=-1e-3),
        ValueError,
        f"l1_prox: learning_rate {POSITIVE} -0.001.",
    ),
    "l1_prox strength jax array<0": (
        lambda: jaxreg.l1_prox(jnp.asarray(-0.5)),
        ValueError,
        f"l1_prox: strength {NONNEGATIVE}",
    ),
    "l1_prox strength array with a negative entry": (
        lambda: jaxreg.l1_prox(np.array([0.1, -0.1])),
        ValueError,
        f"l1_prox: strength {NONNEGATIVE}",
    ),
    "l1_prox strength str": (
        lambda: jaxreg.l1_prox("0.1"),
        TypeError,
        "l1_prox: strength must be a real number, an array of them or a schedule, got '0.1' of type str.",
    ),
    "elastic_net_prox l1<0": (
        lambda: jaxreg.elastic_net_prox(-1.0, 0.1),
        ValueError,
        f"elastic_net_prox: l1 {NONNEGATIVE} -1.0.",
    ),
    "elastic_net_prox l2<0": (
        lambda: jaxreg.elastic_net_prox(0.1, -1.0),
        ValueError,
        f"elastic_net_prox: l2 {NONNEGATIVE} -1.0.",
    ),
    "elastic_net_prox lr=0": (
        lambda: jaxreg.elastic_net_prox(0.1, 0.1, learning_rate=0),
        ValueError,
        f"elastic_net_prox: learning_rate {POSITIVE} 0.",
    ),
    "group_lasso_prox strength<0": (
        lambda: jaxreg.group_lasso_prox(-1.0),
        ValueError,
        f"group_lasso_prox: strength {NONNEGATIVE} -1.0.",
    ),
    "group_lasso_prox lr<0": (
        lambda: jaxreg.group_lasso_prox(1.0, learning_rate=-0.1),
        ValueError,
        f"group_lasso_prox: learning_rate {POSITIVE} -0.1.",
    ),
    # project_box: lower > upper
    "project_box lower>upper": (
        lambda: jaxreg.project_box(1.0, 0.0),
        ValueError,
        "project_box: lower must be <= upper, got lower=1.0 and upper=0.0.",
    ),
    "project_box lower>upper in one leaf of a tree": (
        lambda: jaxreg.project_box({"a": -1.0, "b": 0.5}, {"a": 1.0, "b": 0.2}),
        ValueError,
        "project_box: lower must be <= upper, got lower={'a': -1.0, 'b': 0.5}",
    ),
    "project_box lower>upper in one element": (
        lambda: jaxreg.project_box(np.array([0.0, 0.3]), 0.2),
        ValueError,
        "project_box: lower must be <= upper",
    ),
    # radius <= 0 and bad scope
    "project_l2_ball radius=0": (
        lambda: jaxreg.project_l2_ball(0.0),
        ValueError,
        f"project_l2_ball: radius {POSITIVE} 0.0.",
    ),
    "project_l2_ball radius<0": (
        lambda: jaxreg.project_l2_ball(-1.0),
        ValueError,
        f"project_l2_ball: radius {POSITIVE} -1.0.",
    ),
    "project_l1_ball radius=0": (
        lambda: jaxreg.project_l1_ball(0),
        ValueError,
        f"project_l1_ball: radius {POSITIVE} 0.",
    ),
    "project_l1_ball radius<0": (
        lambda: jaxreg.project_l1_ball(-3.0),
        ValueError,
        f"project_l1_ball: radius {POSITIVE} -3.0.",
    ),
    "max_norm max_value=0": (lambda: jaxreg.max_norm(0.0), ValueError, f"max_norm: max_value {POSITIVE} 0.0."),
    "max_norm max_value<0": (lambda: jaxreg.max_norm(-1.0), ValueError, f"max_norm: max_value {POSITIVE} -1.0."),
    "project_l2_ball scope": (
        lambda: jaxreg.project_l2_ball(1.0, scope="tree"),
        ValueError,
        "project_l2_ball: scope must be 'global' or 'leaf', got 'tree'.",
    ),
    "project_l1_ball scope": (
        lambda: jaxreg.project_l1_ball(1.0, scope="Global"),
        ValueError,
        "project_l1_ball: scope must be 'global' or 'leaf', got 'Global'.",
    ),
    "project_l1_ball scope None": (
        lambda: jaxreg.project_l1_ball(1.0, scope=None),
        ValueError,
        "project_l1_ball: scope must be 'global' or 'leaf', got None.",
    ),
    # schedules
    "inverse_sqrt_decay init_value=0": (
        lambda: jaxreg.inverse_sqrt_decay(0.0, 1.0),
        ValueError,
        f"inverse_sqrt_decay: init_value {POSITIVE} 0.0.",
    ),
    "inverse_sqrt_decay gamma<0": (
        lambda: jaxreg.inverse_sqrt_decay(1.0, -1.0),
        ValueError,
        f"inverse_sqrt_decay: gamma {NONNEGATIVE} -1.0.",
    ),
    "epoch_decay init_value<0": (
        lambda: jaxreg.epoch_decay(-1.0, 0.1, 10),
        ValueError,
        f"epoch_decay: init_value {POSITIVE} -1.0.",
    ),
    **{
        f"epoch_decay decay={d}": (
            lambda d=d: jaxreg.epoch_decay(1.0, d, 10),
            ValueError,
            f"epoch_decay: decay must lie in [0, 1), got {d!r}.",
        )
        for d in (-0.1, 1.0, 1.5)
    },
    **{
        f"epoch_decay steps_per_epoch={s!r}": (
            lambda s=s: jaxreg.epoch_decay(1.0, 0.1, s),
            ValueError,
            f"epoch_decay: steps_per_epoch must be a positive int, got {s!r}.",
        )
        for s in (0, -3, 2.5, True, "10", None)
    },
    # penalties
    "penalties.l1 strength<0": (
        lambda: penalties.l1(_params(), -1.0),
        ValueError,
        f"l1: strength {NONNEGATIVE} -1.0.",
    ),
    "penalties.l2 strength<0": (
        lambda: penalties.l2(_params(), -1.0),
        ValueError,
        f"l2: strength {NONNEGATIVE} -1.0.",
    ),
    "penalties.group_lasso strength<0": (
        lambda: penalties.group_lasso(_params(), -1.0, mask=masks.weights_only),
        ValueError,
        f"group_lasso: strength {NONNEGATIVE} -1.0.",
    ),
    # masks
    "by_path bad regex": (
        lambda: masks.by_path("dense(["),
        ValueError,
        "by_path: pattern must be a regular expression, got 'dense(['",
    ),
    "by_path not a pattern": (
        lambda: masks.by_path(3),
        ValueError,
        "by_path: pattern must be a regular expression, got 3",
    ),
    "mask_and of nothing": (lambda: masks.mask_and(), ValueError, "mask_and: give at least one mask."),
}

# Unknown norm types, in both clip functions.
for _fn in ("clip_by_global_norm", "clip_by_leaf_norm"):
    for _bad in (0.5, "fro", -1, 0, math.nan, None, True, "l2"):
        CONSTRUCTION_ERRORS[f"{_fn} norm_type={_bad!r}"] = (
            lambda fn=_fn, bad=_bad: getattr(jaxreg, fn)(1.0, norm_type=bad),
            ValueError,
            f"{_fn}: norm_type must be a number p >= 1 or inf, got {_bad!r}.",
        )

# Non-int axes, in every function that takes one.
for _name, _make in {
    "group_lasso_prox": lambda axis: jaxreg.group_lasso_prox(1.0, axis=axis),
    "max_norm": lambda axis: jaxreg.max_norm(1.0, axis=axis),
    "group_lasso": lambda axis: penalties.group_lasso(_params(), 1.0, axis=axis, mask=masks.weights_only),
}.items():
    for _bad in (1.0, "0", None, True, (0, 1)):
        CONSTRUCTION_ERRORS[f"{_name} axis={_bad!r}"] = (
            lambda make=_make, bad=_bad: make(bad),
            TypeError,
            f"{_name}: axis must be an int, got {_bad!r}.",
        )


@pytest.mark.parametrize("case", list(CONSTRUCTION_ERRORS))
def test_construction_error(case):
    build, error, text = CONSTRUCTION_ERRORS[case]
    with pytest.raises(error, match=msg(text)):
        build()


@pytest.mark.parametrize("l1, l2, arg", [(-1.0, 0.1, "l1_strength"), (0.1, -1.0, "l2_strength")])
def test_elastic_net_penalty_error_names_its_own_function_and_argument(l1, l2, arg):
    with pytest.raises(ValueError, match=msg(f"elastic_net: {arg} {NONNEGATIVE}")):
        penalties.elastic_net(_params(), l1, l2)


@pytest.mark.parametrize("norm_type", [1, 1.5, 2, 3, math.inf, "inf", "INF", "infinity", np.float32(2), np.int64(4)])
def test_valid_norm_types_are_accepted(norm_type):
    jaxreg.clip_by_global_norm(1.0, norm_type)
    jaxreg.clip_by_leaf_norm(1.0, norm_type)


# ---- init time: axes out of range, masks that do not fit ----------------------------

# id -> (transform, leaf named in the message, its shape, the allowed range)
AXIS_ERRORS = {
    "group_lasso_prox axis=1 on a bias": (
        jaxreg.group_lasso_prox(1.0, axis=1),
        "params['dense1']['bias']",
        "(7,)",
        "[-1, 1)",
    ),
    "group_lasso_prox axis=4 on a conv kernel": (
        jaxreg.group_lasso_prox(1.0, axis=4, mask=masks.weights_only),
        "params['conv']['kernel']",
        "(3, 3, 2, 4)",
        "[-4, 4)",
    ),
    "group_lasso_prox axis=-3 on a dense kernel": (
        jaxreg.group_lasso_prox(1.0, axis=-3, mask=masks.weights_only),
        "params['dense1']['kernel']",
        "(5, 7)",
        "[-2, 2)",
    ),
    "max_norm axis=-1 on a scalar": (jaxreg.max_norm(1.0), "params['scale']", "()", "[0, 0)"),
    "max_norm axis=2 on a dense kernel": (
        jaxreg.max_norm(1.0, axis=2, mask=masks.by_path("dense1/kernel")),
        "params['dense1']['kernel']",
        "(5, 7)",
        "[-2, 2)",
    ),
}


@pytest.mark.parametrize("case", list(AXIS_ERRORS))
def test_axis_out_of_range_raises_at_init_naming_the_leaf(case):
    tx, path, shape, allowed = AXIS_ERRORS[case]
    fn = case.split()[0]
    axis = re.search(r"axis=(-?\d+)", case).group(1)
    text = f"{fn}: axis {axis} is out of range for {path} with shape {shape}; the axis must lie in {allowed}."
    with pytest.raises(ValueError, match=msg(text)):
        tx.init(_params())


def test_group_lasso_penalty_axis_out_of_range_names_the_leaf():
    with pytest.raises(ValueError, match=msg("group_lasso: axis 1 is out of range for params['dense1']['bias']")):
        penalties.group_lasso(_params(), 1.0, axis=1)


def _full_mask(value=True):
    return jax.tree.map(lambda _: value, random_tree(0))


def _without(tree, *path):
    tree = jax.tree.map(lambda x: x, tree)  # a copy
    node = tree
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return tree


MASK_MISSING_OUT_BIAS = _without(_full_mask(), "out", "bias")
MASK_MISSING_DENSE1 = _without(_full_mask(), "dense1")
MASK_EXTRA = {**_full_mask(), "extra": True}
MASK_BOOL = "must be a bool known now (Python, NumPy or a 0-d bool array; not traced)"

# Every transform that takes mask=, as a factory of the mask.
MASKED = {name: (lambda m, e=entry: e.make(e.value, m)) for name, entry in CATALOG.items() if name == public_name(name)}
MASKED["masked"] = lambda m: jaxreg.masked(optax.sgd(0.1), m)

MASK_ERRORS = {
    "missing leaf": (MASK_MISSING_OUT_BIAS, ValueError, "mask has no entry for params['out']['bias']; give mask="),
    "missing subtree": (MASK_MISSING_DENSE1, ValueError, "mask has no entry for params['dense1']['bias']; give mask="),
    "extra entry": (MASK_EXTRA, ValueError, "mask has an entry params['extra'] that the params lack"),
    "callable returning a wrong tree": (
        lambda params: MASK_MISSING_OUT_BIAS,
        ValueError,
        "mask has no entry for params['out']['bias']",
    ),
    "array leaf": (
        {**_full_mask(False), "dense1": {"bias": False, "kernel": np.ones((5, 7), bool)}},
        TypeError,
        f"mask leaf at params['dense1']['kernel'] {MASK_BOOL}, got ndarray of dtype bool and shape (5, 7).",
    ),
    "jax array leaf (an optax-style per-element mask)": (
        lambda params: jax.tree.map(lambda x: jnp.ones(x.shape, bool), params),
        TypeError,
        f"mask leaf at params['conv']['kernel'] {MASK_BOOL}, got ArrayImpl of dtype bool and shape (3, 3, 2, 4).",
    ),
    "string leaf": (
        {**_full_mask(), "scale": "no"},
        TypeError,
        f"mask leaf at params['scale'] {MASK_BOOL}, got 'no' of type str.",
    ),
    "int leaf": (
        {**_full_mask(), "scale": 0},
        TypeError,
        f"mask leaf at params['scale'] {MASK_BOOL}, got 0 of type int.",
    ),
    "0-d float array leaf": (
        lambda params: {**_full_mask(), "scale": np.float32(1.0)},
        TypeError,
        f"mask leaf at params['scale'] {MASK_BOOL}, got float32 of dtype float32 and shape ().",
    ),
}


@pytest.mark.parametrize("case", list(MASK_ERRORS))
@pytest.mark.parametrize("fn", list(MASKED))
def test_bad_mask_raises_at_init_naming_the_leaf(fn, case):
    mask, error, text = MASK_ERRORS[case]
    # (The mask is checked before the axis: group_lasso_prox and max_norm report the mask.)
    with pytest.raises(error, match=msg(f"{fn}: {text}")):
        MASKED[fn](mask).init(_params())


def test_bool_scalars_of_every_kind_are_accepted_as_mask_leaves():
    params = {"a": jnp.ones(2), "b": jnp.ones(2), "c": jnp.ones(2), "d": jnp.ones(2)}
    mask = {"a": True, "b": np.bool_(False), "c": np.asarray(True), "d": jnp.asarray(False)}
    tx = jaxreg.l1_prox(0.5, mask=mask)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    assert [float(updates[k][0]) for k in "abcd"] == [-0.5, 0.0, -0.5, 0.0]


def test_data_dependent_mask_is_refused_under_jit():
    # A mask computed from traced values is not static structure.
    tx = jaxreg.l1_prox(0.1, mask=lambda p: jax.tree.map(lambda x: jnp.all(x > 0), p))
    params = _params()
    message = f"l1_prox: mask leaf at params['conv']['kernel'] {MASK_BOOL}"
    with pytest.raises(TypeError, match=msg(message)):
        jax.jit(tx.update)(params, tx.init(params), params)


# ---- update time: params=None, updates/bounds that do not fit the params --------------

PARAM_SPACE = {
    name: entry.make(entry.value, masks.weights_only if entry.units else None)
    for name, entry in CATALOG.items()
    if entry.parameter_space and name == public_name(name)
}


@pytest.mark.parametrize("fn", list(PARAM_SPACE))
def test_params_none_raises_naming_the_transform(fn):
    tx, params = PARAM_SPACE[fn], _params()
    text = f"{fn}: this transform reads the parameters, but update() got params=None"
    with pytest.raises(ValueError, match=msg(text)):
        tx.update(params, tx.init(params))
    with pytest.raises(ValueError, match=msg(text)):  # inside a chain, as optax passes it on
        chain = optax.chain(optax.sgd(0.1), tx)
        chain.update(params, chain.init(params))


@pytest.mark.parametrize("fn", [f for f in PARAM_SPACE if f != "coupled_weight_decay"])
def test_updates_that_do_not_fit_the_params_name_the_leaf(fn):
    tx, params = PARAM_SPACE[fn], _params()
    updates = _without(params, "scale")
    with pytest.raises(ValueError, match=msg(f"{fn}: updates has no entry for params['scale']")):
        tx.update(updates, tx.init(params), params)


def test_box_bounds_tree_that_does_not_fit_the_params_names_the_leaf():
    params = _params()
    lower = _without(jax.tree.map(lambda _: -1.0, random_tree(0)), "out", "kernel")
    tx = jaxreg.project_box(lower, 1.0)
    # The bounds are matched against the params at init, before any step is taken.
    with pytest.raises(ValueError, match=msg("project_box: lower has no entry for params['out']['kernel']")):
        tx.init(params)


# ---- traced hyperparameters are accepted -------------------------------------------------

# Every hyperparameter-taking constructor, from one traced value h > 0.
TRACED = {name: (lambda h, e=entry: e.make(h, None)) for name, entry in CATALOG.items() if entry.hyper}


@pytest.mark.parametrize("fn", list(TRACED))
def test_traced_hyperparameter_is_accepted(fn):
    params = {"w": jnp.ones((2, 3)), "v": jnp.full((3, 2), -2.0)}

    @jax.jit
    def run(h):
        tx = TRACED[fn](h)
        return tx.update(params, tx.init(params), params)[0]

    out = run(jnp.float32(0.5))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(out))
    # A negative traced value cannot be checked either: no error at construction (tracing).
    jax.eval_shape(run, jnp.float32(-0.5))


def test_traced_hyperparameters_of_schedules_and_penalties_are_accepted():
    params = {"w": jnp.ones((2, 3))}

    @jax.jit
    def run(h):
        inv = jaxreg.inverse_sqrt_decay(h, h)(3)
        ep = jaxreg.epoch_decay(h, 0.1, steps_per_epoch=2)(3)  # a traced init_value
        pen = penalties.l1(params, h) + penalties.l2(params, h) + penalties.group_lasso(params, h)
        return inv + ep + pen + penalties.elastic_net(params, h, h)

    assert bool(jnp.isfinite(run(jnp.float32(0.5))))


def test_epoch_decay_accepts_a_traced_decay():
    value = jax.jit(lambda d: jaxreg.epoch_decay(1.0, d, steps_per_epoch=2)(5))(jnp.float32(0.5))
    np.testing.assert_allclose(float(value), 0.25, rtol=1e-6)


def test_a_vmapped_sweep_over_strengths_is_accepted():
    params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)}

    def new_params(strength):
        tx = jaxreg.l1_prox(strength)
        return optax.apply_updates(params, tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)[0])

    sweep = jax.jit(jax.vmap(new_params))(jnp.array([0.0, 0.5, 2.0], jnp.float32))
    np.testing.assert_array_equal(sweep["w"][0], params["w"])
    assert int(jnp.sum(sweep["w"][1] == 0)) == 2 and bool(jnp.all(sweep["w"][2] == 0))
