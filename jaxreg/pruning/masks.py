"""Pruning masks: pure functions ``params -> pytree of bools``, True = *keep* the weight.

A pruning mask has the params' structure and, leaf by leaf, their shapes; True keeps a
weight and False prunes it, as PyTorch's ``weight_mask`` buffers (which hold 1.0/0.0).
It is the opposite kind of tree from a selector (``where=`` here, ``mask=`` in the
rest of jaxreg), where True means "this function acts here".

Which leaves are pruned: those that ``where`` selects (all by default) and that hold
floating-point arrays with at least one dimension. Integer leaves, scalars and leaves
that ``where`` leaves out get all-True masks; they are skipped, never crashed on.

Counts are exact. A fraction ``s`` of ``n`` weights prunes ``k = round(s * n)`` of
them, rounding half to even as Python's ``round`` and ``torch.nn.utils.prune`` do.
(When ``s`` is traced, ``s * n`` is formed in float32 before rounding, so a product
within a float32 rounding of a half may round the other way.) The
weights are ranked by ``(score, position)``: among equal scores the one that comes
first in row-major order within its leaf, and in tree order between leaves (global
scope), is pruned first. NaN scores rank above every number, as in ``torch.topk``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxreg import _checks, _tree
from jaxreg.masks import Mask
from jaxreg.pruning import _select
from jaxreg.pruning.scores import Score, magnitude_score, uniform_stacks, unit_norm

__all__ = [
    "apply_mask",
    "magnitude_mask",
    "mask_from_scores",
    "n_m_mask",
    "random_mask",
    "structured_mask",
    "threshold_mask",
]


def _prunable(leaf: Any) -> bool:
    return jnp.ndim(leaf) >= 1 and jnp.issubdtype(jnp.result_type(leaf), jnp.floating)


def _rankable(score: Any) -> bool:
    return jnp.ndim(score) >= 1 and jnp.result_type(score).kind in "biuf"


def _candidates(
    fn: str, where: Mask, params: Any, leaves: Sequence[Any], kind: Callable[[Any], bool] = _prunable
) -> list[bool]:
    """Leaves to prune: selected by ``where`` and of the ``kind`` (default floating point), not scalars."""
    selected = _tree.resolve_mask(fn, where, params, arg="where")
    return [s and kind(x) for s, x in zip(selected, leaves)]


def check_sparsity(fn: str, value: Any, path: _tree.KeyPath | None = None, name: str = "sparsity") -> None:
    """Raises unless ``value`` is a scalar in ``[0, 1]``; a tracer is accepted unchecked."""
    _check_amount(fn, name, value, path, _AMOUNTS["sparsity"])


class _Rule(NamedTuple):
    kinds: str  # NumPy dtype kinds accepted
    allowed: str  # "a real number in [0, 1]", for the messages
    ok: Callable[[np.ndarray], bool]


# How much to prune: exactly one of these three names is given.
_AMOUNTS = {
    "sparsity": _Rule("biuf", "a real number in [0, 1]", lambda a: 0 <= a <= 1),  # the fraction pruned
    "keep_ratio": _Rule("biuf", "a real number in (0, 1]", lambda a: 0 < a <= 1),  # the fraction kept
    "num_pruned": _Rule("iu", "an int >= 0", lambda a: a >= 0),  # the count pruned, as torch's int amount
}


def _check_amount(fn: str, name: str, value: Any, path: _tree.KeyPath | None, rule: _Rule) -> None:
    where = "" if path is None else f" for params{jax.tree_util.keystr(path)}"
    if callable(value):
        raise TypeError(f"{fn}: {name}{where} must be {rule.allowed}, got the callable {value!r}.")
    if jnp.ndim(value) != 0:
        raise ValueError(f"{fn}: {name}{where} must be a scalar, {rule.allowed}, got shape {jnp.shape(value)}.")
    arr = _checks.concrete(value)
    if arr is None:
        if jnp.result_type(value).kind not in rule.kinds:
            raise TypeError(f"{fn}: {name}{where} must be {rule.allowed}, got a traced {jnp.result_type(value)}.")
        return
    if arr.dtype.kind not in rule.kinds or isinstance(value, bool):
        raise TypeError(f"{fn}: {name}{where} must be {rule.allowed}, got {value!r}.")
    if not rule.ok(arr):
        raise ValueError(f"{fn}: {name}{where} must be {rule.allowed}, got {value!r}.")


def amount_of(fn: str, sparsity: Any, keep_ratio: Any = None, num_pruned: Any = None) -> tuple[str, Any]:
    """The one amount given, as ``(name, value)``; anything else raises a TypeError."""
    given = {k: v for k, v in zip(_AMOUNTS, (sparsity, keep_ratio, num_pruned)) if v is not None}
    if len(given) != 1:
        names = ", ".join(given) or "none"
        raise TypeError(f"{fn}: give exactly one of sparsity, keep_ratio and num_pruned, got {names}.")
    return next(iter(given.items()))


def prune_count(
    amount: tuple[str, Any], n: int | jax.Array, fn: str = "", path: _tree.KeyPath | None = None, alive: bool = False
) -> jax.Array:
    """How many of ``n`` to prune, as int32: ``round(s * n)``, ``n - round(r * n)`` or the count.

    ``n`` is an int, or a traced int32 count (of the weights still kept by a traced
    ``previous``; ``alive`` says that ``n`` counts those, for the messages). Rounds half
    to even with Python's ``round`` when the amount and ``n`` are known, else in
    float32. A known ``num_pruned`` above a known ``n`` raises; else it is clipped to ``n``.
    """
    name, value = amount
    arr = _checks.concrete(value)
    known = isinstance(n, int)
    if name == "num_pruned":
        if arr is not None and known and int(arr) > n:
            where = "the selected tree" if path is None else f"params{jax.tree_util.keystr(path)}"
            still = " still kept in previous" if alive else ""
            raise ValueError(f"{fn}: num_pruned={int(arr)} exceeds the {n} weights of {where}{still}.")
        return jnp.clip(jnp.asarray(value), 0, n).astype(jnp.int32)
    if arr is not None and known:
        kept = round(float(arr) * n)
        return jnp.asarray(min(n - kept if name == "keep_ratio" else kept, n), jnp.int32)
    n_float = jnp.asarray(n).astype(jnp.float32)
    rounded = jnp.clip(jnp.round(jnp.asarray(value).astype(jnp.float32) * n_float), 0, n_float).astype(jnp.int32)
    return n - rounded if name == "keep_ratio" else rounded


def leaf_counts(
    fn: str,
    per_leaf: Sequence[tuple[str, Any]],
    ns: Sequence[int | jax.Array],
    paths: Sequence[_tree.KeyPath],
    alive: bool = False,
) -> jax.Array:
    """:func:`prune_count` of each leaf's amount and size, as one int32 vector.

    One traced amount shared by leaves of known sizes is one vector operation, not one
    per leaf (a model has hundreds of leaves); known counts make a constant.
    """
    shared = all(a is per_leaf[0] for a in per_leaf)
    if per_leaf and shared and _checks.concrete(per_leaf[0][1]) is None and all(isinstance(n, int) for n in ns):
        return prune_count(per_leaf[0], np.asarray(ns, np.int32), fn)
    counts = [prune_count(a, n, fn, path, alive) for a, n, path in zip(per_leaf, ns, paths)]
    known = [_checks.concrete(c) for c in counts]
    if all(k is not None for k in known):
        return jnp.asarray(np.asarray(known, np.int32).reshape(-1))
    return jnp.stack(counts)


def _per_leaf_amount(fn: str, amount: tuple[str, Any], params: Any, paths: Sequence[_tree.KeyPath]) -> list[Any]:
    """One checked amount per leaf, from one number or a pytree of them."""
    name, value = amount
    if jax.tree.structure(_tree.unbox(value)).num_nodes == 1:
        _check_amount(fn, name, value, None, _AMOUNTS[name])
        return [(name, value)] * len(paths)
    per_leaf = _tree.match_tree(fn, name, value, params)
    for path, v in zip(paths, per_leaf):
        _check_amount(fn, name, v, path, _AMOUNTS[name])
    return [(name, v) for v in per_leaf]


def _check_size(fn: str, what: str, size: int) -> None:
    if size > _select.MAX_GROUP_SIZE:
        raise ValueError(
            f"{fn}: {what} holds {size} weights; pruning counts are int32, so a ranked group "
            f"must hold fewer than 2**31. Split it with where= or use scope='leaf'."
        )


def previous_leaves(fn: str, previous: Any, params: Any) -> list[jax.Array] | None:
    """The leaves of the mask ``previous`` as bool arrays aligned with the params' leaves; None if not given.

    Each must have its leaf's shape and hold bools, or numbers that are all 0 or 1
    (PyTorch's masks; checked when they are known, read as ``!= 0`` when traced).
    Anything else raises an error naming the leaf.
    """
    if previous is None:
        return None
    paths, leaves, _ = _tree.leaves_with_paths(params)
    out = []
    for path, x, k in zip(paths, leaves, match_keep(fn, previous, params, arg="previous", broadcast=False)):
        what = f"{fn}: previous for params{jax.tree_util.keystr(path)}"
        if jnp.shape(k) != jnp.shape(x):
            raise ValueError(
                f"{what} has shape {jnp.shape(k)}, but the parameter has shape {jnp.shape(x)}; give the mask "
                "that the previous round returned for these params."
            )
        dtype = jnp.result_type(k)
        if dtype.kind not in "biuf":
            raise TypeError(f"{what} has dtype {dtype}; a pruning mask holds bools (or 1/0, as PyTorch's).")
        arr = _checks.concrete(k)
        if arr is not None and dtype.kind != "b" and not np.isin(arr, (0, 1)).all():
            bad = arr[~np.isin(arr, (0, 1))].flat[0].item()
            raise ValueError(f"{what} holds {bad!r}; a pruning mask holds only True/False or 1/0.")
        out.append(jnp.asarray(k) if dtype.kind == "b" else jnp.asarray(k) != 0)
    return out


def alive_count(keep: jax.Array) -> int | jax.Array:
    """How many True entries ``keep`` holds: an int when it is known, else a traced int32."""
    arr = _checks.concrete(keep)
    return int(np.count_nonzero(arr)) if arr is not None else jnp.sum(keep, dtype=jnp.int32)


def rank_keep(
    fn: str,
    params: Any,
    amount: tuple[str, Any],
    scope: str,
    where: Mask,
    key_fn: _select.KeyFn,
    prepare: Callable[[int, jax.Array], jax.Array] | None = None,
    kind: Callable[[Any], bool] = _prunable,
    previous: Any = None,
    floor: Sequence[jax.Array] | None = None,
    stacked: tuple[list[jax.Array], list[Any]] | None = None,
) -> Any:
    """Keeps all but the lowest-ranked weights, per leaf or over the tree.

    ``amount`` is ``(name, value)`` from :func:`amount_of`. ``prepare(i, leaf)`` gives
    the array to rank for leaf ``i`` (default: the leaf), and ``key_fn`` maps it to
    int32 keys inside each counting pass. ``kind(leaf)`` says which leaves may be
    pruned (default: floating-point arrays with at least one dimension). With a mask
    ``previous``, only the weights it keeps are ranked and the amount is of those; the
    result keeps a subset of them (all of them on the leaves not pruned). ``floor`` (one
    bool array per leaf) ranks its False entries below all others, whatever their keys.
    ``stacked`` (``(stacks, sources)`` of :func:`~jaxreg.pruning.scores.uniform_stacks`)
    gives the arrays to rank as rows of stacks instead of ``prepare``.
    """
    _checks.check_scope(fn, scope)
    paths, leaves, treedef = _tree.leaves_with_paths(params)
    picked = [i for i, c in enumerate(_candidates(fn, where, params, leaves, kind)) if c]
    sizes = [int(np.prod(jnp.shape(leaves[i]), dtype=np.int64)) for i in picked]
    old = previous_leaves(fn, previous, params)
    alive = sizes if old is None else [alive_count(old[i]) for i in picked]
    if scope == "global":
        name, value = amount
        if jax.tree.structure(_tree.unbox(value)).num_nodes != 1:
            raise ValueError(f"{fn}: with scope='global' {name} must be one number, got a tree {value!r}.")
        _check_amount(fn, name, value, None, _AMOUNTS[name])
        _check_size(fn, "the selected tree", sum(sizes))
        groups = [0] * len(picked)
        counts = prune_count(amount, sum(alive), fn, alive=old is not None).reshape(1)
    else:
        per_leaf = _per_leaf_amount(fn, amount, params, paths)
        for i, size in zip(picked, sizes):
            _check_size(fn, f"params{jax.tree_util.keystr(paths[i])}", size)
        groups = list(range(len(picked)))
        counts = leaf_counts(fn, [per_leaf[i] for i in picked], alive, [paths[i] for i in picked], old is not None)
    keep = [jnp.ones_like(x, dtype=jnp.bool_) for x in leaves] if old is None else list(old)
    if picked:
        ranked_alive = None if old is None else [old[i] for i in picked]
        if stacked is not None:
            stacks, sources = stacked
            pruned = _select.lowest_in_stacks(
                stacks, tuple(sources[i] for i in picked), key_fn, tuple(groups), counts, ranked_alive
            )
        else:
            prepare = prepare or (lambda i, x: jnp.asarray(x))
            pruned = _select.lowest(
                [prepare(i, leaves[i]) for i in picked],
                key_fn=key_fn,
                groups=tuple(groups),
                counts=counts,
                alive=ranked_alive,
                floor=None if floor is None else [floor[i] for i in picked],
            )
        for i, p in zip(picked, pruned):
            keep[i] = ~p if old is None else old[i] & ~p
    return treedef.unflatten(keep)


def magnitude_mask(
    params: optax.Params,
    sparsity: chex.Numeric | Any = None,
    scope: str = "leaf",
    where: Mask = None,
    *,
    keep_ratio: chex.Numeric | Any = None,
    num_pruned: int | Any = None,
    previous: Any = None,
) -> Any:
    """Prunes the weights of smallest magnitude ``|w|``, exactly ``round(s * n)`` of them.

    With ``scope="leaf"`` each leaf of ``n`` weights loses its ``round(s * n)``
    smallest (``torch.nn.utils.prune.l1_unstructured`` on every layer); with
    ``scope="global"`` the ``n`` weights of all pruned leaves are ranked together
    (``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``). Formally,
    ``keep_i = [rank_i >= k]`` where ``rank_i`` is the position of weight ``i`` in the
    order ``(|w|, position)``; see the module docstring for the tie rule, which makes
    the count exact where ``torch.topk`` leaves ties to chance.

    Unlike both, the ranking never sorts the parameters. On one CPU device it is two
    native calls: a radix search on the float bit pattern (three counting passes) and
    the marks; the extra memory is the bool output, and 1000 leaves compile in about a
    second (docs/pruning.md). Elsewhere (meshes, GPU/TPU) the threshold is searched in
    XLA on the float bit pattern, with one count per stack of same-shaped leaves per pass (32
    halvings for a small tree; for 2**20 weights or more, a start from a sorted sample
    of 2**16 of them and interpolation, typically 10-15 passes; more only for ties at
    the threshold; a few scalars of search state per leaf; partial sums that become
    all-reduces on sharded arrays). Leaves of fewer than 2**20 weights are stacked by
    shape, up to 16 together, so that the compiled program grows with the number of
    stacks, not of leaves (docs/pruning.md gives compile times); larger leaves are
    counted in place. Besides the bool output, the extra memory is those stacks (a
    copy of the small leaves), their marks and a counting buffer, one byte per weight
    each. ``sparsity`` may be traced (``jit``/``vmap`` over it compile once).

    Iterative pruning: with ``previous=mask`` (a mask an earlier round returned) only
    the weights ``mask`` keeps are ranked, and the amount is of those: ``sparsity=s``
    prunes ``round(s * m)`` of the ``m`` weights still kept (per leaf, or in the tree
    with ``scope="global"``), ``num_pruned=k`` prunes ``k`` of them. The result keeps a
    subset of ``mask`` (leaves not pruned keep ``mask``'s entries). This is what
    repeated ``torch.nn.utils.prune.l1_unstructured`` (or ``global_unstructured``)
    calls on one module compute through their ``PruningContainer``. When ``previous``
    is traced, ``m`` is known only at run time and ``s * m`` is formed in float32.

    Args:
      params: a pytree of arrays (NNX ``Variable`` boxes are unwrapped).
      sparsity: fraction to prune, in ``[0, 1]``: a number or a traced scalar; with
        ``scope="leaf"`` also a pytree with one number per leaf.
      scope: ``"leaf"`` (each leaf on its own) or ``"global"`` (all pruned leaves
        ranked together).
      where: selector (pytree of bools or callable ``params -> selector``); True where
        pruning is considered. Integer leaves and scalars are skipped either way.
      keep_ratio: instead of ``sparsity``, the fraction to keep, in ``(0, 1]``:
        ``n - round(r * n)`` are pruned.
      num_pruned: instead of ``sparsity``, how many to prune, an int in ``[0, n]``
        (``torch.nn.utils.prune``'s int ``amount``).
      previous: a pruning mask from an earlier round (True = keep): prune only among
        the weights it keeps, ``sparsity``/``keep_ratio`` as a fraction and
        ``num_pruned`` as a count of those (see *Iterative pruning* above).

    Returns:
      A pytree of bool arrays with the params' structure and shapes, True = keep.

    Example:
      >>> import jax.numpy as jnp, jaxreg
      >>> jaxreg.pruning.magnitude_mask({"w": jnp.array([0.1, -2.0, 0.5, 3.0])}, 0.5)
      {'w': Array([False,  True, False,  True], dtype=bool)}
    """
    amount = amount_of("magnitude_mask", sparsity, keep_ratio, num_pruned)
    return rank_keep("magnitude_mask", params, amount, scope, where, _select.magnitude_key, previous=previous)


def mask_from_scores(
    scores: Any,
    sparsity: chex.Numeric | Any = None,
    scope: str = "leaf",
    where: Mask = None,
    *,
    keep_ratio: chex.Numeric | Any = None,
    num_pruned: int | Any = None,
    previous: Any = None,
) -> Any:
    """Prunes the weights of lowest score, exactly ``round(s * n)`` of them.

    The allocation behind every unstructured mask: ``keep_i = [rank_i >= k]`` with
    weights ranked by ``(score, position)`` per leaf or over the tree, as in
    :func:`magnitude_mask`. Use it with :mod:`jaxreg.pruning.scores` (SNIP, random) or
    any array of the params' shapes. jaxpruner pairs each score with its own updater
    class; here a score is just a pytree.

    Args:
      scores: a pytree of arrays of real numbers with the params' structure and shapes:
        float, int or bool (ints and bools of up to 32 bits are ranked exactly, floats
        as float32). Negative scores are allowed (they rank below zero). Scalars are
        never pruned.
      sparsity: fraction to prune, in ``[0, 1]``: a number, a traced scalar or, with
        ``scope="leaf"``, a pytree with one number per leaf.
      scope: ``"leaf"`` or ``"global"``.
      where: selector with the scores' structure; True where pruning is considered.
      keep_ratio: instead of ``sparsity``, the fraction to keep, in ``(0, 1]``:
        ``n - round(r * n)`` are pruned.
      num_pruned: instead of ``sparsity``, how many to prune, an int in ``[0, n]``
        (``torch.nn.utils.prune``'s int ``amount``).
      previous: a pruning mask from an earlier round (True = keep): prune only among
        the weights it keeps, ``sparsity``/``keep_ratio`` as a fraction and
        ``num_pruned`` as a count of those (as in :func:`magnitude_mask`).

    Returns:
      A pytree of bool arrays with the scores' structure and shapes, True = keep.
    """
    fn = "mask_from_scores"
    amount = amount_of(fn, sparsity, keep_ratio, num_pruned)
    paths, leaves, _ = _tree.leaves_with_paths(scores)
    for path, x in zip(paths, leaves):
        if jnp.result_type(x).kind not in "biuf":
            raise TypeError(
                f"{fn}: the scores at scores{jax.tree_util.keystr(path)} are {jnp.result_type(x)}; scores are "
                "real numbers (float, int or bool), so rank e.g. their absolute values."
            )
    return rank_keep(fn, scores, amount, scope, where, _select.order_key, kind=_rankable, previous=previous)


def random_mask(
    key: jax.Array,
    params: optax.Params,
    sparsity: chex.Numeric | Any = None,
    scope: str = "leaf",
    where: Mask = None,
    *,
    keep_ratio: chex.Numeric | Any = None,
    num_pruned: int | Any = None,
    previous: Any = None,
) -> Any:
    """Prunes weights chosen uniformly at random, exactly ``round(s * n)`` of them.

    The weights are ranked by :func:`~jaxreg.pruning.scores.random_score` (one uniform
    draw per weight, leaf ``i`` drawing from ``fold_in(key, i)``), so the count is exact
    as for :func:`magnitude_mask`. ``torch.nn.utils.prune.random_unstructured`` prunes
    the same number per layer from torch's own generator. On params sharded with
    explicit mesh axes the draws are made on the params' devices, sharded as them (no
    ``jax.set_mesh`` needed), and are the same numbers as on one device.

    Args:
      key: a JAX PRNG key.
      params: a pytree of arrays (NNX ``Variable`` boxes are unwrapped).
      sparsity: fraction to prune, in ``[0, 1]`` (number, traced scalar, or per-leaf
        pytree with ``scope="leaf"``).
      scope: ``"leaf"`` or ``"global"``.
      where: selector; True where pruning is considered.
      keep_ratio: instead of ``sparsity``, the fraction to keep, in ``(0, 1]``:
        ``n - round(r * n)`` are pruned.
      num_pruned: instead of ``sparsity``, how many to prune, an int in ``[0, n]``
        (``torch.nn.utils.prune``'s int ``amount``).
      previous: a pruning mask from an earlier round (True = keep): prune only among
        the weights it keeps, ``sparsity``/``keep_ratio`` as a fraction and
        ``num_pruned`` as a count of those (as in :func:`magnitude_mask`).

    Returns:
      A pytree of bool arrays with the params' structure and shapes, True = keep.
    """
    # Draws only for the pruned leaves, exactly what random_score(key) draws for them.
    fn = "random_mask"
    amount = amount_of(fn, sparsity, keep_ratio, num_pruned)
    leaves = jax.tree.leaves(_tree.unbox(params))
    stacked = uniform_stacks(key, leaves, _candidates(fn, where, params, leaves))
    return rank_keep(fn, params, amount, scope, where, _select.order_key, previous=previous, stacked=stacked)


def threshold_mask(params: optax.Params, threshold: chex.Numeric | Any, where: Mask = None) -> Any:
    """Prunes every weight with ``|w| < threshold``: ``keep = not (|w| < theta)``.

    The count follows from the weights; NaN weights are kept (``|NaN| < theta`` is
    false), as in the rank-based masks. No PyTorch counterpart; jaxpruner has none
    either (its magnitude pruning takes a sparsity).

    Args:
      params: a pytree of arrays (NNX ``Variable`` boxes are unwrapped).
      threshold: theta >= 0: a number, a traced scalar, or a pytree with one per leaf.
      where: selector; True where pruning is considered.

    Returns:
      A pytree of bool arrays with the params' structure and shapes, True = keep.
    """
    fn = "threshold_mask"
    paths, leaves, treedef = _tree.leaves_with_paths(params)
    thresholds = _tree.match_tree(fn, "threshold", threshold, params)
    for value in thresholds:
        _checks.check_nonnegative(fn, "threshold", value)
    keep = []
    for leaf, theta, pick in zip(leaves, thresholds, _candidates(fn, where, params, leaves)):
        if pick:
            w = _tree.wide(jnp.asarray(leaf))
            keep.append(~(jnp.abs(w) < jnp.asarray(theta).astype(w.dtype)))
        else:
            keep.append(jnp.ones_like(leaf, dtype=jnp.bool_))
    return treedef.unflatten(keep)


def scores_for(fn: str, score: Score, params: Any, paths: Sequence[_tree.KeyPath], leaves: Sequence[Any]) -> list:
    """The per-weight scores ``score(params)`` as a leaf list, each checked against its leaf.

    Args:
      fn: the calling function's name, for errors.
      score: a callable ``params -> pytree of per-weight scores``.
      params: the parameters.
      paths: the params' leaf paths.
      leaves: the params' leaves.

    Returns:
      One score array per leaf, shaped like the leaf; a mismatch raises a ValueError
      naming the leaf.
    """
    scores = _tree.match_tree(fn, "the score", score(_tree.unbox(params)), params, broadcast=False)
    for path, s, x in zip(paths, scores, leaves):
        if jnp.shape(s) != jnp.shape(x):
            raise ValueError(
                f"{fn}: the score of params{jax.tree_util.keystr(path)} has shape {jnp.shape(s)}, but the "
                f"parameter has shape {jnp.shape(x)}; a score gives one number per weight."
            )
    return scores


def structured_mask(
    params: optax.Params,
    sparsity: chex.Numeric | Any = None,
    axis: int = -1,
    ord: float = 2.0,
    score: Score = magnitude_score,
    where: Mask = None,
    *,
    keep_ratio: chex.Numeric | Any = None,
    num_pruned: int | Any = None,
    previous: Any = None,
) -> Any:
    """Prunes whole units (neurons, filters, channels): those of smallest Ln norm.

    A unit is a slice along ``axis``; its score is ``||s_unit||_ord`` over all other
    axes (:func:`~jaxreg.pruning.scores.unit_norm_score`), with ``s = |w|`` by default.
    Each leaf with ``u`` units along ``axis`` loses its ``round(s * u)`` lowest units,
    ties going to the lower unit index first. This is
    ``torch.nn.utils.prune.ln_structured(module, name, amount=s, n=ord, dim=axis)``,
    with jaxreg's (and that ``dim``'s) convention that ``axis`` indexes the units: for
    output neurons use ``axis=-1`` on a Flax kernel ``(in, out)`` and ``dim=0`` on a
    PyTorch weight ``(out, in)``. Any per-weight score may replace ``|w|`` (e.g.
    ``snip_score``: ``ord=1`` then sums the saliencies of a unit).

    Args:
      params: a pytree of arrays (NNX ``Variable`` boxes are unwrapped).
      sparsity: fraction of units to prune per leaf, in ``[0, 1]``: a number, a traced
        scalar or a pytree with one number per leaf.
      axis: the axis that indexes the units (default ``-1``: the output units of a
        Flax kernel). Every pruned leaf must have it; leave out biases and other
        vectors with ``where=`` when ``axis`` is not ``0``/``-1``.
      ord: the norm order of a unit's score, ``p >= 1`` or ``inf`` (torch's ``n``).
      score: a function ``params -> per-weight scores``; default ``|w|``.
      where: selector; True where pruning is considered.
      keep_ratio: instead of ``sparsity``, the fraction of units to keep, in ``(0, 1]``:
        ``u - round(r * u)`` of a leaf's ``u`` units are pruned.
      num_pruned: instead of ``sparsity``, how many units to prune per leaf, an int in ``[0, u]``
        (``torch.nn.utils.prune``'s int ``amount``).
      previous: a pruning mask from an earlier round (True = keep): prune only among
        the units it keeps (a unit with any kept weight), ``sparsity``/``keep_ratio``
        as a fraction and ``num_pruned`` as a count of those.

    Returns:
      A pytree of bool arrays with the params' structure and shapes, True = keep;
      each unit is all True or all False.
    """
    fn = "structured_mask"
    axis = _checks.check_axis_arg(fn, axis)
    ord = _checks.check_norm_type(fn, ord, name="ord")
    paths, leaves, treedef = _tree.leaves_with_paths(params)
    picked = [i for i, c in enumerate(_candidates(fn, where, params, leaves)) if c]
    _tree.check_axis(fn, axis, [paths[i] for i in picked], [leaves[i] for i in picked], selector="where")
    per_leaf = _per_leaf_amount(fn, amount_of(fn, sparsity, keep_ratio, num_pruned), params, paths)
    old = previous_leaves(fn, previous, params)
    keep = [jnp.ones_like(x, dtype=jnp.bool_) for x in leaves] if old is None else list(old)
    if not picked:
        return treedef.unflatten(keep)
    scores = scores_for(fn, score, params, paths, leaves)
    if old is None:
        units = [unit_norm(jnp.asarray(scores[i]), axis=axis, ord=ord) for i in picked]
        counts = leaf_counts(
            fn, [per_leaf[i] for i in picked], [jnp.shape(leaves[i])[axis] for i in picked], [paths[i] for i in picked]
        )
        alive = None
    else:
        # As torch's masked weight: the weights already pruned score zero in their unit.
        zero = [jnp.zeros((), jnp.result_type(scores[i])) for i in picked]
        units = [unit_norm(jnp.where(old[i], scores[i], z), axis=axis, ord=ord) for i, z in zip(picked, zero)]
        alive = [_any_but(old[i], axis).reshape(-1) for i in picked]
        counts = leaf_counts(
            fn, [per_leaf[i] for i in picked], [alive_count(a) for a in alive], [paths[i] for i in picked], True
        )
    pruned = _select.lowest(
        [u.reshape(-1) for u in units],
        key_fn=_select.order_key,
        groups=tuple(range(len(picked))),
        counts=counts,
        alive=alive,
    )
    for i, u, p in zip(picked, units, pruned):
        keep[i] = ~p.reshape(u.shape) & keep[i]  # the leaf's shape and sharding
    return treedef.unflatten(keep)


def _any_but(keep: jax.Array, axis: int) -> jax.Array:
    """Whether each unit along ``axis`` keeps any weight, with every other axis of length 1."""
    axis = axis % keep.ndim
    return jnp.any(keep, axis=tuple(a for a in range(keep.ndim) if a != axis), keepdims=True)


def _check_n_m(fn: str, n: Any, m: Any) -> tuple[int, int]:
    def is_int(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not is_int(m) or m < 1:
        raise ValueError(f"{fn}: m must be a positive int, got {m!r}.")
    if not is_int(n) or not 1 <= n <= m:
        raise ValueError(f"{fn}: n must be an int in [1, m], got n={n!r} with m={m!r}.")
    return int(n), int(m)


def n_m_mask(
    params: optax.Params,
    n: int = 2,
    m: int = 4,
    axis: int = -1,
    score: Score = magnitude_score,
    where: Mask = None,
    *,
    previous: Any = None,
) -> Any:
    """N:M semi-structured sparsity: keeps the ``n`` highest scores of every ``m`` in a row.

    Along ``axis``, each block of ``m`` consecutive weights keeps its ``n`` weights of
    largest score (``|w|`` by default) and prunes the other ``m - n``, ranked by
    ``(score, position)`` within the block (among equal scores the earlier weight is
    pruned first). 2:4 is the pattern NVIDIA sparse tensor cores accelerate, with the
    blocks along the contraction (input) dimension: ``axis=0`` for a Flax ``Dense``
    kernel ``(in, out)``, ``axis=-1`` for PyTorch's ``(out, in)``. jaxpruner's N:M
    updater does the same with ``jax.lax.top_k`` over the last axis only; PyTorch's
    ``torch.nn.utils.prune`` has no N:M method.

    Args:
      params: a pytree of arrays (NNX ``Variable`` boxes are unwrapped).
      n: weights kept per block, ``1 <= n <= m``.
      m: block length; it must divide the length of ``axis`` in every pruned leaf
        and, with explicit mesh axes, the length of each of its shards along ``axis``.
      axis: the axis along which blocks run.
      score: a function ``params -> per-weight scores``; default ``|w|``.
      where: selector; True where pruning is considered.
      previous: a pruning mask from an earlier round (True = keep): each block keeps
        the ``n`` highest scores among the weights ``previous`` keeps there (all of them
        if fewer), so that the result keeps a subset of ``previous``.

    Returns:
      A pytree of bool arrays with the params' structure and shapes, True = keep;
      exactly ``n`` of every ``m`` are True in each pruned leaf (at most ``n`` with
      ``previous``).
    """
    fn = "n_m_mask"
    n, m = _check_n_m(fn, n, m)
    axis = _checks.check_axis_arg(fn, axis)
    paths, leaves, treedef = _tree.leaves_with_paths(params)
    picked = [i for i, c in enumerate(_candidates(fn, where, params, leaves)) if c]
    _tree.check_axis(fn, axis, [paths[i] for i in picked], [leaves[i] for i in picked], selector="where")
    for i in picked:
        length = jnp.shape(leaves[i])[axis]
        if length % m:
            raise ValueError(
                f"{fn}: m={m} does not divide the length {length} of axis {axis} of "
                f"params{jax.tree_util.keystr(paths[i])} with shape {jnp.shape(leaves[i])}; "
                "leave that leaf out with where= or choose another m or axis."
            )
    old = previous_leaves(fn, previous, params)
    keep = [jnp.ones_like(x, dtype=jnp.bool_) for x in leaves] if old is None else list(old)
    if picked:
        scores = scores_for(fn, score, params, paths, leaves)
        for i in picked:
            _check_blocks_within_shards(fn, m, axis, paths[i], scores[i])
            keep[i] = _keep_n_of_m(jnp.asarray(scores[i]), keep[i], n=n, m=m, axis=axis)
    return treedef.unflatten(keep)


def _check_blocks_within_shards(fn: str, m: int, axis: int, path: _tree.KeyPath, score: Any) -> None:
    """Raises a ValueError naming the leaf when blocks of ``m`` would straddle the shards of ``axis``.

    Only with explicit mesh axes, where the blocks are formed within each shard (JAX
    refuses the reshape otherwise); with automatic axes XLA moves what the blocks need.
    """
    sharding = _tree.explicit_sharding(score)
    if sharding is None:
        return
    spec = tuple(sharding.spec) + (None,) * (jnp.ndim(score) - len(sharding.spec))
    names = spec[axis]
    if names is None:
        return
    names = names if isinstance(names, tuple) else (names,)
    shards = int(np.prod([sharding.mesh.shape[name] for name in names]))
    shard_length = jnp.shape(score)[axis] // shards
    if shard_length % m:
        raise ValueError(
            f"{fn}: blocks of m={m} along axis {axis} of params{jax.tree_util.keystr(path)} with shape "
            f"{jnp.shape(score)} would straddle its shards: that axis is split over the mesh axes {names} into "
            f"{shards} shards of {shard_length}. Choose an m that divides {shard_length}, split that axis so "
            "that each shard holds a multiple of m entries (or not at all), or leave the leaf out with where=."
        )


@functools.partial(jax.jit, static_argnames=("n", "m", "axis"))
def _keep_n_of_m(score: jax.Array, alive: jax.Array, n: int, m: int, axis: int) -> jax.Array:
    # Ranked by (alive, score, position): the weights pruned before rank lowest.
    moved = jnp.moveaxis(score, axis, -1)
    blocks = (*moved.shape[:-1], moved.shape[-1] // m, m)
    keys = _select.order_key(moved).reshape(blocks)
    live = jnp.moveaxis(alive, axis, -1).reshape(blocks)
    position = jax.lax.broadcasted_iota(jnp.int32, keys.shape, keys.ndim - 1)
    # below[i]: how many of its block rank under weight i; the m - n lowest are pruned.
    below = jnp.zeros(keys.shape, jnp.int32)
    for j in range(m):
        kj, lj = keys[..., j : j + 1], live[..., j : j + 1]
        same = lj == live
        under = (lj < live) | (same & (kj < keys)) | (same & (kj == keys) & (position > j))
        below = below + under.astype(jnp.int32)
    keep = ((below >= m - n) & live).reshape(moved.shape)
    return jnp.moveaxis(keep, -1, axis)


def apply_mask(params: optax.Params, keep: Any) -> Any:
    """Zeroes the pruned weights: ``w * keep``, as ``torch.nn.utils.prune`` computes ``weight``.

    Pruned entries become ``+0.0`` in the leaf's dtype (not ``w * 0``, which would
    keep ``-0.0``, or NaN for an infinite weight).

    Args:
      params: a pytree of arrays (NNX ``Variable`` boxes are unwrapped).
      keep: a pruning mask with the params' structure, True = keep; each leaf of the
        leaf's shape or broadcastable to it (a Python ``True`` keeps the whole leaf).
        Non-bool leaves (PyTorch's 1.0/0.0 masks) are read as ``keep != 0``.

    Returns:
      The params with the pruned weights set to zero, same structure and dtypes.
    """
    fn = "apply_mask"
    paths, leaves, treedef = _tree.leaves_with_paths(params)
    keeps = match_keep(fn, keep, params)
    check_keep_shapes(fn, paths, leaves, keeps)
    out = [
        jnp.where(jnp.asarray(k).astype(jnp.bool_), x, jnp.zeros((), jnp.result_type(x))) for x, k in zip(leaves, keeps)
    ]
    return treedef.unflatten(out)


def match_keep(fn: str, keep: Any, params: Any, arg: str = "keep", broadcast: bool = True) -> list[Any]:
    """The leaves of the pruning mask ``keep`` (the argument ``arg``), aligned with the params' leaves.

    A mismatch raises the ``ValueError`` of the other tree arguments; when the mask has
    the params' leaf paths but is a pure dict where the params are an NNX ``State`` (or
    the reverse), the message also says how to convert it.
    """
    try:
        return _tree.match_tree(fn, arg, keep, params, broadcast=broadcast)
    except ValueError as error:
        convert = _state_conversion(keep, params, arg)
        if convert is None:
            raise
        raise ValueError(f"{error} {convert}") from None


def _state_conversion(keep: Any, params: Any, arg: str) -> str | None:
    """How to turn a pure-dict mask into the params' ``nnx.State`` (or the reverse); None if that is not the fix."""
    keep_is_state, params_is_state = isinstance(keep, nnx.State), isinstance(params, nnx.State)
    same_paths = _tree.leaves_with_paths(keep)[0] == _tree.leaves_with_paths(params)[0]
    if keep_is_state == params_is_state or not same_paths:
        return None
    if keep_is_state:
        return f"Convert the mask with {arg} = nnx.to_pure_dict({arg})."
    return (
        "Convert the mask into a copy of the params' State: state = jax.tree.map(lambda x: x, params); "
        f"nnx.replace_by_pure_dict(state, {arg}); then give state as {arg}."
    )


def check_keep_shapes(fn: str, paths: Sequence[_tree.KeyPath], leaves: Sequence[Any], keeps: Sequence[Any]) -> None:
    """Raises a ValueError naming the first leaf whose pruning mask does not fit it."""
    for path, x, k in zip(paths, leaves, keeps):
        try:
            fits = np.broadcast_shapes(jnp.shape(k), jnp.shape(x)) == jnp.shape(x)
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(
                f"{fn}: keep for params{jax.tree_util.keystr(path)} has shape {jnp.shape(k)}, which does "
                f"not broadcast to the parameter's shape {jnp.shape(x)}."
            )
