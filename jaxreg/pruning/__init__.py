"""Pruning: scores, pure mask functions, sparsity schedules and transforms for optax chains.

Kept apart so that any piece works with any other (jaxpruner's split, as pure
functions):

* **scores** (how important is each weight): :func:`magnitude_score`,
  :func:`random_score`, :func:`snip_score`, :func:`activation_score`, :func:`unit_norm_score`, or any callable
  ``params -> per-weight scores``;
* **masks** (how much to prune where): :func:`magnitude_mask`, :func:`mask_from_scores`,
  :func:`random_mask`, :func:`threshold_mask`, :func:`structured_mask`,
  :func:`n_m_mask`, all returning a pytree of bools with True = *keep* (as PyTorch's
  ``weight_mask``), and :func:`apply_mask`, :func:`sparsity_report`;
* **schedules** (when): :func:`polynomial_sparsity` (Zhu & Gupta), :func:`constant_sparsity`;
* **transforms** (inside ``optax.chain``, last): :func:`keep_pruned` holds a fixed mask,
  :func:`prune_during_training` recomputes it on a schedule inside ``jit``.

A pruning mask is never passed as ``mask=``: in jaxreg that name is a selector (True =
the transform acts here); pruning functions take their selector as ``where=``.
"""

from jaxreg.pruning.masks import (
    apply_mask,
    magnitude_mask,
    mask_from_scores,
    n_m_mask,
    random_mask,
    structured_mask,
    threshold_mask,
)
from jaxreg.pruning.report import LeafSparsity, SparsityReport, sparsity_report
from jaxreg.pruning.schedules import constant_sparsity, polynomial_sparsity
from jaxreg.pruning.scores import Score, activation_score, magnitude_score, random_score, snip_score, unit_norm_score
from jaxreg.pruning.transforms import KeepPrunedState, PruneState, keep_pruned, prune_during_training

__all__ = [
    "KeepPrunedState",
    "LeafSparsity",
    "PruneState",
    "Score",
    "SparsityReport",
    "activation_score",
    "apply_mask",
    "constant_sparsity",
    "keep_pruned",
    "magnitude_mask",
    "magnitude_score",
    "mask_from_scores",
    "n_m_mask",
    "polynomial_sparsity",
    "prune_during_training",
    "random_mask",
    "random_score",
    "snip_score",
    "sparsity_report",
    "structured_mask",
    "threshold_mask",
    "unit_norm_score",
]
