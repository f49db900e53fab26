"""Scores: how important each weight is. Higher scores are kept, lower ones pruned.

A score is a function ``params -> pytree of float arrays`` with the params' structure
and shapes (one number per weight). Any score works with any allocation in
:mod:`jaxreg.pruning.masks`: :func:`~jaxreg.pruning.masks.mask_from_scores` for single
weights, ``structured_mask(score=...)`` for whole units, ``n_m_mask(score=...)`` for
N:M groups. This is jaxpruner's split between *scores* and *allocation*, as pure
functions instead of updater objects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg import _checks, _tree

__all__ = ["Score", "magnitude_score", "random_score", "snip_score", "unit_norm_score"]

Score = Callable[[optax.Params], Any]  # params -> pytree of per-weight float scores


def magnitude_score(params: optax.Params) -> Any:
    """The magnitude score ``|w|`` of every weight.

    Args:
      params: a pytree of arrays (NNX ``Variable`` boxes are unwrapped).

    Returns:
      A pytree of ``|w|`` with the params' structure, shapes and dtypes.
    """
    return jax.tree.map(jnp.abs, _tree.unbox(params))


def random_score(key: jax.Array) -> Score:
    """A score drawn uniformly at random: random pruning.

    Each leaf gets its own stream ``jax.random.fold_in(key, i)`` (``i`` its index in
    tree order), so the score of a leaf does not change when other leaves are added.

    Args:
      key: a JAX PRNG key.

    Returns:
      A callable ``params -> pytree`` of float32 scores uniform in ``[0, 1)``.
    """

    def score(params: optax.Params) -> Any:
        leaves, treedef = jax.tree.flatten(_tree.unbox(params))
        return treedef.unflatten([uniform_leaf(key, i, x) for i, x in enumerate(leaves)])

    return score


def uniform_leaf(key: jax.Array, index: int, leaf: Any) -> jax.Array:
    """The uniform float32 draws of :func:`random_score` for the leaf at ``index``."""
    # Drawn flat: XLA compiles a 1-D threefry much faster than one of the leaf's rank.
    size = int(np.prod(jnp.shape(leaf), dtype=np.int64))
    return jax.random.uniform(jax.random.fold_in(key, index), (size,)).reshape(jnp.shape(leaf))


def snip_score(loss_fn: Callable[..., jax.Array], *args: Any, **kwargs: Any) -> Score:
    """The connection sensitivity of SNIP: ``|dL/dw * w|`` on one batch.

    With ``g = grad(loss_fn)(params, *args, **kwargs)`` the score of a weight is
    ``|g * w|``, the first-order change of the loss when that weight is removed. Lee et
    al. normalize it by its sum over the network; the normalization does not change
    the ranking, so it is left out. Same score as jaxpruner's ``SNIP`` updater.

    Args:
      loss_fn: ``loss_fn(params, *args, **kwargs) -> scalar`` (e.g. args = a batch).
      *args: positional arguments after ``params``.
      **kwargs: keyword arguments of ``loss_fn``.

    Returns:
      A callable ``params -> pytree`` of float32 saliencies.

    References:
      Lee, Ajanthan & Torr, *SNIP: Single-shot network pruning based on connection
      sensitivity*, ICLR 2019.
    """

    def score(params: optax.Params) -> Any:
        params = _tree.unbox(params)
        grads = jax.grad(loss_fn)(params, *args, **kwargs)
        return jax.tree.map(lambda g, w: jnp.abs(g.astype(jnp.float32) * w.astype(jnp.float32)), grads, params)

    return score


# Jitted so that structured masks over many leaves do not pay eager dispatch per op.
unit_norm = jax.jit(_tree.unit_norms, static_argnames=("axis", "ord"))


def unit_norm_score(scores: Any, axis: int, ord: float = 2.0) -> Any:
    """The ``ord``-norm of each unit of each leaf: the score of a whole unit.

    A unit is a slice along ``axis`` (an output neuron of a Flax ``Dense`` kernel
    ``(in, out)`` with ``axis=-1``, a filter of a ``Conv`` kernel ``(h, w, in, out)``);
    its score is ``||s_unit||_ord`` over all the other axes, as ``torch.nn.utils.prune``
    computes it in ``ln_structured`` (whose ``dim`` is this ``axis``). Applied to the
    params (or their magnitudes) it is the Ln norm of each unit.

    Args:
      scores: a pytree of per-weight scores or of the params themselves.
      axis: the axis that indexes the units, in range for every leaf.
      ord: the norm order, ``p >= 1`` or ``inf``.

    Returns:
      A pytree of float32 arrays shaped like the leaves but with every axis except
      ``axis`` of length 1 (so they broadcast against the leaves).
    """
    fn = "unit_norm_score"
    axis = _checks.check_axis_arg(fn, axis)
    ord = _checks.check_norm_type(fn, ord, name="ord")
    paths, leaves, treedef = _tree.leaves_with_paths(scores)
    _tree.check_axis(fn, axis, paths, leaves, selector="where")
    return treedef.unflatten([unit_norm(jnp.asarray(x), axis=axis, ord=ord) for x in leaves])
