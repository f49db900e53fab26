"""Every public transform of jaxreg, once, for the tests that must hold for all of them.

``CATALOG`` maps a name (the public function, with a variant after a space) to an
:class:`Entry` that builds the transform from one hyperparameter value ``h`` (a float,
a traced value or a schedule) and a ``mask``. ``test_catalog`` checks it against
``jaxreg.__all__`` and runs the cross-cutting properties over it (jit, vmap over ``h``,
derivatives, dtypes, empty trees, schedules, ``mask=``, Python scalars, integer leaves),
so a new public transform cannot skip them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import optax

import jaxreg


@dataclasses.dataclass(frozen=True)
class Entry:
    """How to build one transform for the cross-cutting tests.

    Attributes:
      make: ``(h, mask) -> transform``.
      value: a value of ``h`` at which the transform changes the test trees.
      parameter_space: placed after the optimizer and reads ``params``.
      complex_values: takes complex leaves (else refuses them with a ``TypeError``).
      units: rescales slices along the last axis, so every leaf it selects needs one.
      hyper: ``h`` is used (``project_nonnegative`` has no hyperparameter).
      stepwise: the update depends on the step beyond ``h`` (a random key, an
        annealing), so a schedule is compared with a constant over the same steps.
    """

    make: Callable[[Any, Any], optax.GradientTransformation]
    value: float
    parameter_space: bool = True
    complex_values: bool = False
    units: bool = False
    hyper: bool = True
    stepwise: bool = False


LR = 0.5


def negated(h: Any) -> Any:
    """``-h`` for a value or a schedule."""
    return (lambda count: -h(count)) if callable(h) else -h


CATALOG: dict[str, Entry] = {
    "clip": Entry(lambda h, m: jaxreg.clip(h, mask=m), 0.1, parameter_space=False),
    "clip_by_global_norm": Entry(
        lambda h, m: jaxreg.clip_by_global_norm(h, mask=m), 0.5, parameter_space=False, complex_values=True
    ),
    "clip_by_global_norm inf": Entry(
        lambda h, m: jaxreg.clip_by_global_norm(h, norm_type="inf", eps=1e-6, mask=m),
        0.2,
        parameter_space=False,
        complex_values=True,
    ),
    "clip_by_leaf_norm": Entry(
        lambda h, m: jaxreg.clip_by_leaf_norm(h, mask=m), 0.3, parameter_space=False, complex_values=True
    ),
    "clip_by_leaf_norm p=3": Entry(
        lambda h, m: jaxreg.clip_by_leaf_norm(h, norm_type=3, mask=m), 0.3, parameter_space=False, complex_values=True
    ),
    "clip_by_block_rms": Entry(
        lambda h, m: jaxreg.clip_by_block_rms(h, mask=m), 0.1, parameter_space=False, complex_values=True
    ),
    "adaptive_grad_clip": Entry(lambda h, m: jaxreg.adaptive_grad_clip(h, mask=m), 0.1, parameter_space=False),
    "add_gradient_noise": Entry(
        lambda h, m: jaxreg.add_gradient_noise(h, seed=3, mask=m), 0.01, parameter_space=False, stepwise=True
    ),
    "coupled_weight_decay": Entry(lambda h, m: jaxreg.coupled_weight_decay(h, mask=m), 0.1, complex_values=True),
    "decoupled_weight_decay": Entry(
        lambda h, m: jaxreg.decoupled_weight_decay(h, learning_rate=LR, mask=m), 0.1, complex_values=True
    ),
    "decoupled_weight_decay learning_rate": Entry(
        lambda h, m: jaxreg.decoupled_weight_decay(0.1, learning_rate=h, mask=m), 0.5, complex_values=True
    ),
    "l1_prox": Entry(lambda h, m: jaxreg.l1_prox(h, learning_rate=LR, mask=m), 0.4),
    "elastic_net_prox": Entry(lambda h, m: jaxreg.elastic_net_prox(h, 0.5, learning_rate=LR, mask=m), 0.4),
    "elastic_net_prox l2": Entry(lambda h, m: jaxreg.elastic_net_prox(0.4, h, learning_rate=LR, mask=m), 0.5),
    "group_lasso_prox": Entry(
        lambda h, m: jaxreg.group_lasso_prox(h, learning_rate=LR, mask=m), 1.0, complex_values=True, units=True
    ),
    "project_box": Entry(lambda h, m: jaxreg.project_box(negated(h), h, mask=m), 0.5),
    "project_nonnegative": Entry(lambda h, m: jaxreg.project_nonnegative(mask=m), 0.0, hyper=False),
    "project_l2_ball": Entry(lambda h, m: jaxreg.project_l2_ball(h, mask=m), 1.0, complex_values=True),
    "project_l2_ball leaf": Entry(
        lambda h, m: jaxreg.project_l2_ball(h, scope="leaf", mask=m), 1.0, complex_values=True
    ),
    "project_l1_ball": Entry(lambda h, m: jaxreg.project_l1_ball(h, mask=m), 1.5, complex_values=True),
    "project_l1_ball leaf": Entry(
        lambda h, m: jaxreg.project_l1_ball(h, scope="leaf", mask=m), 1.0, complex_values=True
    ),
    "max_norm": Entry(lambda h, m: jaxreg.max_norm(h, mask=m), 0.6, complex_values=True, units=True),
    "project_simplex": Entry(lambda h, m: jaxreg.project_simplex(h, mask=m), 1.0),
    "project_simplex leaf": Entry(lambda h, m: jaxreg.project_simplex(h, scope="leaf", mask=m), 1.0),
    "project_l1_sphere": Entry(lambda h, m: jaxreg.project_l1_sphere(h, mask=m), 1.5, complex_values=True),
    "project_l1_sphere leaf": Entry(
        lambda h, m: jaxreg.project_l1_sphere(h, scope="leaf", mask=m), 1.0, complex_values=True
    ),
    "project_l2_sphere": Entry(lambda h, m: jaxreg.project_l2_sphere(h, mask=m), 1.0, complex_values=True),
    "project_l2_sphere leaf": Entry(
        lambda h, m: jaxreg.project_l2_sphere(h, scope="leaf", mask=m), 1.0, complex_values=True
    ),
    "project_linf_ball": Entry(lambda h, m: jaxreg.project_linf_ball(h, mask=m), 0.5),
    "project_halfspace": Entry(lambda h, m: jaxreg.project_halfspace(1.0, h, mask=m), -4.0),
    "project_halfspace leaf": Entry(lambda h, m: jaxreg.project_halfspace(1.0, h, scope="leaf", mask=m), -2.0),
    "project_hyperplane": Entry(lambda h, m: jaxreg.project_hyperplane(1.0, h, mask=m), 1.0),
    "project_hyperplane leaf": Entry(lambda h, m: jaxreg.project_hyperplane(1.0, h, scope="leaf", mask=m), 1.0),
    "unit_norm": Entry(lambda h, m: jaxreg.unit_norm(mask=m), 0.0, complex_values=True, units=True, hyper=False),
    "min_max_norm": Entry(lambda h, m: jaxreg.min_max_norm(h, 10.0, mask=m), 2.0, complex_values=True, units=True),
    "min_max_norm max, rate": Entry(
        lambda h, m: jaxreg.min_max_norm(0.0, h, rate=0.7, mask=m), 1.0, complex_values=True, units=True
    ),
}

# Public names that are not transforms: types, modules, schedules, functions.
NOT_TRANSFORMS = frozenset(
    {
        "AdaptiveClipState",
        "AddNoiseState",
        "ClipByNormState",
        "ClipState",
        "DPAggregateState",
        "FusedChain",
        "StepCountState",
        "apply_step",
        "chain",
        "epoch_decay",
        "fused",
        "global_norm",
        "inverse_sqrt_decay",
        "masks",
        "nn",
        "penalties",
        "pruning",
        "schedules",
        "soft_threshold",
        "training",
        "write_into",
    }
)

# Public transforms that wrap an optax transformation (whose dtypes, masks and scalars
# are optax's) or keep pruning masks, with the test files that hold them to their own
# references.
TESTED_ELSEWHERE = {
    "adam": "test_fused.py (optax.adam itself)",
    "sgd": "test_fused.py, test_torch_parity.py (optax.sgd itself)",
    "masked": "test_errors.py, test_masks_nnx.py (optax.masked with jaxreg's masks)",
    "keep_pruned": "test_pruning_transforms.py",
    "dp_aggregate": "test_privacy.py (per-example gradients with a batch axis, against optax's DP-SGD aggregate)",
    "per_example_clip": "test_privacy.py (per-example gradients with a batch axis)",
    "prune_during_training": "test_pruning_transforms.py",
}


def public_name(name: str) -> str:
    """The public function a catalog entry builds: its name up to the variant."""
    return name.split(" ")[0]
