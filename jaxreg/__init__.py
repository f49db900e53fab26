"""jaxreg: composable regularization for JAX.

Gradient-space transforms (before the optimizer) and parameter-space transforms (after
it) that drop into ``optax.chain``, loss penalties, learning-rate schedules and
parameter selectors. See docs/from_pytorch.md for the map from PyTorch to jaxreg.
"""

from importlib import metadata as _metadata

from jaxreg import fused, masks, nn, penalties, pruning, schedules, training
from jaxreg._param_space import StepCountState
from jaxreg.clipping import (
    AdaptiveClipState,
    ClipByNormState,
    ClipState,
    adaptive_grad_clip,
    clip,
    clip_by_block_rms,
    clip_by_global_norm,
    clip_by_leaf_norm,
    global_norm,
)
from jaxreg.decay import coupled_weight_decay, decoupled_weight_decay
from jaxreg.fused import FusedChain, apply_step, chain, write_into
from jaxreg.masks import masked
from jaxreg.noise import AddNoiseState, add_gradient_noise
from jaxreg.optimizers import adam, sgd
from jaxreg.privacy import DPAggregateState, dp_aggregate, per_example_clip
from jaxreg.projections import (
    max_norm,
    min_max_norm,
    project_box,
    project_halfspace,
    project_hyperplane,
    project_l1_ball,
    project_l1_sphere,
    project_l2_ball,
    project_l2_sphere,
    project_linf_ball,
    project_nonnegative,
    project_simplex,
    unit_norm,
)
from jaxreg.proximal import elastic_net_prox, group_lasso_prox, l1_prox, soft_threshold
from jaxreg.pruning import keep_pruned, prune_during_training
from jaxreg.schedules import epoch_decay, inverse_sqrt_decay

# The version lives in pyproject.toml only; this reads it from the installed package.
__version__ = _metadata.version("jaxreg")

__all__ = [
    "AdaptiveClipState",
    "AddNoiseState",
    "ClipByNormState",
    "ClipState",
    "DPAggregateState",
    "FusedChain",
    "StepCountState",
    "adam",
    "add_gradient_noise",
    "adaptive_grad_clip",
    "apply_step",
    "chain",
    "clip",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "clip_by_leaf_norm",
    "coupled_weight_decay",
    "decoupled_weight_decay",
    "dp_aggregate",
    "elastic_net_prox",
    "epoch_decay",
    "fused",
    "global_norm",
    "group_lasso_prox",
    "inverse_sqrt_decay",
    "keep_pruned",
    "l1_prox",
    "masked",
    "masks",
    "max_norm",
    "min_max_norm",
    "nn",
    "penalties",
    "per_example_clip",
    "project_box",
    "project_halfspace",
    "project_hyperplane",
    "project_l1_ball",
    "project_l1_sphere",
    "project_l2_ball",
    "project_l2_sphere",
    "project_linf_ball",
    "project_nonnegative",
    "project_simplex",
    "prune_during_training",
    "pruning",
    "schedules",
    "sgd",
    "soft_threshold",
    "training",
    "unit_norm",
    "write_into",
]
