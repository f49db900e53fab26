"""Every documented error: raised at construction (or at init for per-leaf checks), with
a message that names the function, the argument, the value and what is allowed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxreg
from jaxreg import masks

PARAMS = {"dense1": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)}, "dense2": {"kernel": jnp.ones((4, 2))}}

CONSTRUCTION_ERRORS = [
    (lambda: jaxreg.clip(-1.0), ValueError, r"clip: max_delta must be a non-negative number, got -1.0"),
    (
        lambda: jaxreg.clip_by_global_norm(-1.0),
        ValueError,
        r"clip_by_global_norm: max_norm must be a positive number, got -1.0",
    ),
    (lambda: jaxreg.clip_by_global_norm(0.0), ValueError, r"max_norm must be a positive number, got 0.0"),
    (lambda: jaxreg.clip_by_leaf_norm(0.0), ValueError, r"clip_by_leaf_norm: max_norm must be a positive"),
    (
        lambda: jaxreg.clip_by_global_norm(1.0, norm_type=0.5),
        ValueError,
        r"norm_type must be a number p >= 1 or inf, got 0.5",
    ),
    (
        lambda: jaxreg.clip_by_global_norm(1.0, norm_type="fro"),
        ValueError,
        r"norm_type must be a number p >= 1 or inf, got 'fro'",
    ),
    (
        lambda: jaxreg.clip_by_global_norm(1.0, norm_type=-1),
        ValueError,
        r"norm_type must be a number p >= 1 or inf, got -1",
    ),
    (lambda: jaxreg.clip_by_global_norm(1.0, eps=-1e-6), ValueError, r"eps must be a non-negative number"),
    (
        lambda: jaxreg.clip("big"),
        TypeError,
        r"clip: max_delta must be a real number, an array of them or a schedule, got 'big'",
    ),
    (
        lambda: jaxreg.coupled_weight_decay(-0.1),
        ValueError,
        r"coupled_weight_decay: rate must be a non-negative number, got -0.1",
    ),
    (lambda: jaxreg.decoupled_weight_decay(-0.1), ValueError, r"decoupled_weight_decay: rate must be a non-negative"),
    (
        lambda: jaxreg.decoupled_weight_decay(0.1, learning_rate=0.0),
        ValueError,
        r"learning_rate must be a positive number, got 0.0",
    ),
    (lambda: jaxreg.l1_prox(-1e-3), ValueError, r"l1_prox: strength must be a non-negative number, got -0.001"),
    (lambda: jaxreg.l1_prox(0.1, learning_rate=-1.0), ValueError, r"l1_prox: learning_rate must be a positive number"),
    (lambda: jaxreg.elastic_net_prox(-1.0, 0.1), ValueError, r"elastic_net_prox: l1 must be a non-negative"),
    (lambda: jaxreg.elastic_net_prox(0.1, -1.0), ValueError, r"elastic_net_prox: l2 must be a non-negative"),
    (lambda: jaxreg.group_lasso_prox(-1.0), ValueError, r"group_lasso_prox: strength must be a non-negative"),
    (lambda: jaxreg.group_lasso_prox(0.1, axis=1.5), TypeError, r"group_lasso_prox: axis must be an int, got 1.5"),
    (
        lambda: jaxreg.project_box(1.0, -1.0),
        ValueError,
        r"project_box: lower must be <= upper, got lower=1.0 and upper=-1.0",
    ),
    (
        lambda: jaxreg.project_box({"w": 0.0, "b": 2.0}, 1.0),
        ValueError,
        r"project_box: lower must be <= upper",
    ),
    (lambda: jaxreg.project_l2_ball(0.0), ValueError, r"project_l2_ball: radius must be a positive number, got 0.0"),
    (
        lambda: jaxreg.project_l2_ball(1.0, scope="layer"),
        ValueError,
        r"project_l2_ball: scope must be 'global' or 'leaf', got 'layer'",
    ),
    (lambda: jaxreg.project_l1_ball(-2.0), ValueError, r"project_l1_ball: radius must be a positive number, got -2.0"),
    (lambda: jaxreg.max_norm(0.0), ValueError, r"max_norm: max_value must be a positive number, got 0.0"),
    (lambda: jaxreg.max_norm(1.0, axis="last"), TypeError, r"max_norm: axis must be an int, got 'last'"),
    (lambda: masks.by_path("(kernel"), ValueError, r"by_path: pattern must be a regular expression, got '\(kernel'"),
    (lambda: masks.mask_and(), ValueError, r"mask_and: give at least one mask"),
    (lambda: jaxreg.inverse_sqrt_decay(0.0, 1.0), ValueError, r"inverse_sqrt_decay: init_value must be a positive"),
    (lambda: jaxreg.inverse_sqrt_decay(0.1, -1.0), ValueError, r"inverse_sqrt_decay: gamma must be a non-negative"),
    (lambda: jaxreg.epoch_decay(0.1, 1.0, 10), ValueError, r"epoch_decay: decay must lie in \[0, 1\), got 1.0"),
    (lambda: jaxreg.epoch_decay(0.1, -0.1, 10), ValueError, r"epoch_decay: decay must lie in \[0, 1\), got -0.1"),
    (
        lambda: jaxreg.epoch_decay(0.1, 0.1, 0),
        ValueError,
        r"epoch_decay: steps_per_epoch must be a positive int, got 0",
    ),
    (lambda: jaxreg.penalties.l1(PARAMS, -1.0), ValueError, r"l1: strength must be a non-negative number, got -1.0"),
    (lambda: jaxreg.penalties.l2(PARAMS, -1.0), ValueError, r"l2: strength must be a non-negative number, got -1.0"),
]


@pytest.mark.parametrize("make, error, message", CONSTRUCTION_ERRORS, ids=[m for _, _, m in CONSTRUCTION_ERRORS])
def test_construction_errors(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize(
    "tx, fn",
    [
        (jaxreg.group_lasso_prox(0.1, axis=1), "group_lasso_prox"),
        (jaxreg.max_norm(1.0, axis=1), "max_norm"),
    ],
)
def test_axis_out_of_range_names_the_leaf(tx, fn):
    with pytest.raises(
        ValueError, match=rf"{fn}: axis 1 is out of range for params\['dense1'\]\['bias'\] with shape \(4,\)"
    ):
        tx.init(PARAMS)


def test_group_lasso_penalty_axis_out_of_range_names_the_leaf():
    with pytest.raises(ValueError, match=r"group_lasso: axis 2 is out of range for params\['dense1'\]\['bias'\]"):
        jaxreg.penalties.group_lasso(PARAMS, 0.1, axis=2)


MASKED = {
    "l1_prox": lambda m: jaxreg.l1_prox(0.1, mask=m),
    "decoupled_weight_decay": lambda m: jaxreg.decoupled_weight_decay(0.1, mask=m),
    "coupled_weight_decay": lambda m: jaxreg.coupled_weight_decay(0.1, mask=m),
    "project_box": lambda m: jaxreg.project_box(-1.0, 1.0, mask=m),
    "masked": lambda m: jaxreg.masked(jaxreg.clip(1.0), m),
}


@pytest.mark.parametrize("fn", sorted(MASKED))
def test_mask_missing_a_leaf_names_the_path(fn):
    bad = {"dense1": {"kernel": True, "bias": False}}
    with pytest.raises(ValueError, match=rf"{fn}: mask has no entry for params\['dense2'\]\['kernel'\]"):
        MASKED[fn](bad).init(PARAMS)


def test_mask_with_an_extra_leaf_names_the_path():
    bad = {"dense1": {"kernel": True, "bias": False}, "dense2": {"kernel": True, "bias": True}}
    with pytest.raises(
        ValueError, match=r"l1_prox: mask has an entry params\['dense2'\]\['bias'\] that the params lack"
    ):
        jaxreg.l1_prox(0.1, mask=bad).init(PARAMS)


def test_mask_leaf_must_be_a_bool_not_an_array():
    bad = jax.tree.map(lambda x: np.ones(x.shape, bool), PARAMS)
    with pytest.raises(TypeError, match=r"l1_prox: mask leaf at params\['dense1'\]\['bias'\] must be a Python bool"):
        jaxreg.l1_prox(0.1, mask=bad).init(PARAMS)


def test_bound_tree_with_other_structure_names_the_path():
    lower = {"dense1": {"kernel": -1.0, "bias": -1.0}}
    tx = jaxreg.project_box(lower, 1.0)
    with pytest.raises(ValueError, match=r"project_box: lower has no entry for params\['dense2'\]\['kernel'\]"):
        tx.update(PARAMS, tx.init(PARAMS), PARAMS)


PARAMETER_SPACE = [
    jaxreg.decoupled_weight_decay(0.1),
    jaxreg.coupled_weight_decay(0.1),
    jaxreg.l1_prox(0.1),
    jaxreg.elastic_net_prox(0.1, 0.1),
    jaxreg.group_lasso_prox(0.1, mask=masks.weights_only),
    jaxreg.project_box(-1.0, 1.0),
    jaxreg.project_nonnegative(),
    jaxreg.project_l2_ball(1.0),
    jaxreg.project_l1_ball(1.0),
    jaxreg.max_norm(1.0, mask=masks.weights_only),
]
NAMES = [
    "decoupled_weight_decay",
    "coupled_weight_decay",
    "l1_prox",
    "elastic_net_prox",
    "group_lasso_prox",
    "project_box",
    "project_nonnegative",
    "project_l2_ball",
    "project_l1_ball",
    "max_norm",
]


@pytest.mark.parametrize("tx, fn", list(zip(PARAMETER_SPACE, NAMES)), ids=NAMES)
def test_transform_that_reads_params_refuses_params_none(tx, fn):
    with pytest.raises(ValueError, match=rf"{fn}: this transform reads the parameters, but update\(\) got params=None"):
        tx.update(PARAMS, tx.init(PARAMS))


def test_traced_hyperparameters_are_accepted_inside_jit():
    @jax.jit
    def build_and_step(strength, radius):
        txs = [
            jaxreg.l1_prox(strength),
            jaxreg.clip_by_global_norm(radius),
            jaxreg.project_box(-radius, radius),
            jaxreg.project_l2_ball(radius),
        ]
        return [tx.update(PARAMS, tx.init(PARAMS), PARAMS)[0] for tx in txs]

    build_and_step(jnp.float32(0.1), jnp.float32(2.0))


def test_schedules_are_accepted_without_evaluation():
    def schedule(count):
        return -1.0 + 0 * count  # would be rejected as a constant; schedules are not checked

    jaxreg.l1_prox(schedule)
