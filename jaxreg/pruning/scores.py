"""Scores: how important each weight is. Higher scores are kept, lower ones pruned.

A score is a function ``params -> pytree of float arrays`` with the params' structure
and shapes (one number per weight). Any score works with any allocation in
:mod:`jaxreg.pruning.masks`: :func:`~jaxreg.pruning.masks.mask_from_scores` for single
weights, ``structured_mask(score=...)`` for whole units, ``n_m_mask(score=...)`` for
N:M groups. This is jaxpruner's split between *scores* and *allocation*, as pure
functions instead of updater objects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax import lax

from jaxreg import _checks, _tree
from jaxreg.pruning import _select

__all__ = ["Score", "activation_score", "magnitude_score", "random_score", "snip_score", "unit_norm_score"]

#: A score function: params -> a pytree of per-weight float scores (higher = more important, kept first).
Score = Callable[[optax.Params], Any]


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
        return treedef.unflatten(uniform_draws(key, leaves))

    return score


def uniform_stacks(
    key: jax.Array, leaves: Sequence[Any], picked: Sequence[bool] | None = None
) -> tuple[list[jax.Array], list[Any]]:
    """The draws of :func:`uniform_draws`, left in their stacks: ``(stacks, sources)``.

    Leaves of one shape are drawn together, one threefry vmapped over their keys (leaf
    ``i`` from ``fold_in(key, i)``, drawn flat: XLA compiles a 1-D threefry much faster
    than one of the leaf's rank), so the program holds one threefry per shape. Leaf
    ``i``'s draws are row ``r`` of ``stacks[o]`` for ``sources[i] = (o, r, shape)``; a
    leaf with explicit mesh axes is drawn on its own devices (:func:`uniform_leaf`) as a
    stack of its own. Leaves not ``picked`` get None.
    """
    stacks: list[jax.Array] = []
    sources: list[Any] = [None] * len(leaves)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, leaf in enumerate(leaves):
        if picked is not None and not picked[i]:
            continue
        if _tree.explicit_sharding(leaf) is not None:
            sources[i] = (len(stacks), 0, tuple(jnp.shape(leaf)))
            stacks.append(uniform_leaf(jax.random.fold_in(key, i), leaf)[None])
        else:
            by_shape.setdefault(tuple(jnp.shape(leaf)), []).append(i)
    for shape, members in by_shape.items():
        size = int(np.prod(shape, dtype=np.int64))
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.asarray(members, jnp.int32))
        for row, i in enumerate(members):
            sources[i] = (len(stacks), row, shape)
        stacks.append(jax.vmap(lambda k, size=size: jax.random.uniform(k, (size,)))(keys))
    return stacks, sources


def uniform_draws(key: jax.Array, leaves: Sequence[Any], picked: Sequence[bool] | None = None) -> list[Any]:
    """The uniform float32 draws of :func:`random_score`: leaf ``i`` from ``fold_in(key, i)``.

    Drawn as :func:`uniform_stacks` does; each leaf then reads its row at a runtime index
    (:func:`~jaxreg.pruning._select.runtime_range`), one kernel per shape that copies a
    row out, not one per leaf.

    Args:
      key: a JAX PRNG key.
      leaves: the arrays to draw for (only their shapes and shardings are read).
      picked: per leaf, whether to draw for it (default all); the others get None.

    Returns:
      One float32 array per leaf, shaped like it, uniform in ``[0, 1)``.
    """
    stacks, sources = uniform_stacks(key, leaves, picked)
    return _select.rows_of(stacks, sources)


@jax.jit
def uniform_leaf(key: jax.Array, leaf: jax.Array) -> jax.Array:
    """Uniform float32 draws from ``key`` shaped and sharded as ``leaf`` (explicit mesh axes), on its devices.

    The partitionable threefry (JAX's default) gives the same bits as the flat draw of
    :func:`uniform_draws`. The draws are tied to the leaf by an optimization barrier: a
    program that reads only the leaf's shape would drop the leaf, and with it the
    devices the draws' sharding names (then JAX asks for ``jax.set_mesh``).
    """
    draws = jax.random.uniform(key, jnp.shape(leaf), out_sharding=jax.typeof(leaf).sharding)
    return lax.optimization_barrier((draws, leaf))[0]


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


def activation_score(
    model: nnx.Module, x: jax.Array, activation: Callable[[jax.Array], jax.Array] | None = None
) -> Score:
    """The mean absolute activation of each unit on a batch: the article's "activation" importance.

    Every submodule's output is recorded on the batch ``x`` (``nnx.capture`` with
    ``method_outputs``), with the model in eval mode (no dropout, no noise). A unit is
    a slice along the output's last axis (a ``Linear``'s output feature, a ``Conv``'s
    channel); its score is ``mean |activation(out)|`` over the batch and every other
    axis. Each parameter of a module whose output has as many units as the
    parameter's last axis (its kernel and bias) gets the score of its unit, broadcast
    along the other axes; every other parameter scores ``+inf`` and is never pruned.

    So ``structured_mask(params, s, axis=-1, ord=inf, score=activation_score(model,
    x))`` prunes the output units that respond least on ``x``, and inside
    ``prune_during_training`` the scores follow the weights as they train. PyTorch
    needs forward hooks for this; ``torch.nn.utils.prune`` has no activation criterion.

    Args:
      model: an NNX module; its ``Param`` variables are the params the score takes.
      x: a batch of inputs for ``model(x)``.
      activation: applied to each module output before ``|.|`` (e.g. ``jax.nn.relu``
        to score a ``Linear`` by its post-ReLU activity); default none, the raw output.

    Returns:
      A callable ``params -> pytree`` of float32 scores with the structure of
      ``nnx.state(model, nnx.Param)`` (or of the pure dict of it that it is given).
    """
    graphdef, param_state, rest = nnx.split(model, nnx.Param, ...)
    paths = [path for path, _ in nnx.to_flat_state(param_state)]
    owners = {path[:-1] for path in paths}  # modules that hold parameters
    param_structure = jax.tree.structure(param_state)
    act = activation or (lambda a: a)

    def score(params: optax.Params) -> Any:
        leaves, treedef = jax.tree.flatten(_tree.unbox(params))
        if len(leaves) != len(paths):
            raise ValueError(
                f"activation_score: got {len(leaves)} parameter arrays, but the model has {len(paths)} "
                "nnx.Param variables; give the params of the model the score was built for."
            )
        bound = nnx.merge(graphdef, jax.tree.unflatten(param_structure, leaves), rest)
        bound.eval()
        _, outputs = nnx.capture(bound, nnx.Intermediate, method_outputs=nnx.Intermediate)(x)
        unit_scores = {}
        for path, recorded in nnx.to_flat_state(outputs):
            if path[-1] == "__call__" and path[:-1] in owners:
                calls = [jnp.abs(act(out)).astype(jnp.float32) for out in recorded.get_value()]
                unit_scores[path[:-1]] = sum(c.reshape(-1, c.shape[-1]).mean(axis=0) for c in calls) / len(calls)
        scores = []
        for path, leaf in zip(paths, leaves):
            units = unit_scores.get(path[:-1])
            if units is not None and jnp.ndim(leaf) >= 1 and jnp.shape(leaf)[-1] == units.shape[0]:
                scores.append(jnp.broadcast_to(units, jnp.shape(leaf)))
            else:
                scores.append(jnp.full(jnp.shape(leaf), jnp.inf, jnp.float32))
        return treedef.unflatten(scores)

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
