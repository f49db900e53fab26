"""Exact selection of the lowest-scoring entries of many arrays, without sorting them.

Every rank-based pruning mask in jaxreg (magnitude, random, saliency, whole units)
comes down to one question: which ``k`` entries of a group of arrays have the lowest
scores? A sort answers it with a full-size temporary per array (and a concatenation for
a global ranking); here the answer is found by bisection on an integer key that orders
like the float scores, counting per array, so the extra memory is a few scalars per
array and the counts are partial reductions that XLA lowers to all-reduces on sharded
arrays.

The order is total, which is what makes the counts exact: entries are ranked by
``(score, position)``, where the position of an entry is its row-major (flat) index
within its array and arrays come in the order given (tree order). So among entries with
equal scores the earlier ones are pruned first. NaN scores rank above every number
(never pruned before a number, as with ``torch.topk``), and ``-0.0`` ties with ``+0.0``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
# A group's size and an array's flat index must fit the int32 counters.
MAX_GROUP_SIZE = 2**31 - 1

KeyFn = Callable[[jax.Array], jax.Array]


def order_key(score: jax.Array) -> jax.Array:
    """An int32 key with the order of ``score`` as float32: ``a < b`` iff ``key(a) < key(b)``.

    Non-negative floats order like their bit patterns read as int32; negative ones in
    reverse, so their low 31 bits are flipped (and shifted by one so that ``-0.0`` and
    ``+0.0`` get the same key). NaN gets the largest key.
    """
    s = score.astype(jnp.float32)
    bits = lax.bitcast_convert_type(s, jnp.int32)
    key = jnp.where(bits < 0, (bits ^ INT32_MAX) + 1, bits)
    return jnp.where(jnp.isnan(s), INT32_MAX, key)


def magnitude_key(w: jax.Array) -> jax.Array:
    """``order_key(|w|)``, cheap enough to be recomputed inside every counting pass."""
    return order_key(jnp.abs(w))


def _midpoint(lo: jax.Array, hi: jax.Array) -> jax.Array:
    # floor((lo + hi) / 2) without the int32 overflow of lo + hi.
    return (lo >> 1) + (hi >> 1) + (lo & hi & 1)


def _group_sums(per_leaf: Sequence[jax.Array], groups: Sequence[int], n_groups: int) -> jax.Array:
    sums: list[jax.Array] = [jnp.zeros([], jnp.int32)] * n_groups
    for value, g in zip(per_leaf, groups):
        sums[g] = sums[g] + value
    return jnp.stack(sums)


def _count(keys: jax.Array, pred: Callable[[jax.Array], jax.Array]) -> jax.Array:
    return jnp.sum(pred(keys), dtype=jnp.int32)


def lowest(
    leaves: Sequence[jax.Array],
    key_fn: KeyFn,
    groups: Sequence[int],
    counts: jax.Array,
) -> list[jax.Array]:
    """Marks, in each group of arrays, the ``counts[g]`` entries of lowest key.

    Args:
      leaves: the arrays (each of fewer than 2**31 entries).
      key_fn: maps an array to its int32 keys (see :func:`order_key`); it is traced
        inside every counting reduction so that XLA fuses it there instead of holding a
        full-size key array.
      groups: the group (``0 .. G-1``) of each array; a group's arrays are ranked
        together, in the order they are given.
      counts: int32 array of shape ``(G,)``, the number of entries to mark per group,
        already in ``[0, group size]`` (it may be traced).

    Returns:
      One bool array per leaf, True on the marked (lowest) entries; exactly
      ``counts[g]`` are True in group ``g``.
    """
    n_groups = int(counts.shape[0])

    def count_at_most(thresholds: jax.Array) -> jax.Array:
        per_leaf = [_count(key_fn(x), lambda k, t=thresholds[g]: k <= t) for x, g in zip(leaves, groups)]
        return _group_sums(per_leaf, groups, n_groups)

    # The threshold T of a group is its counts[g]-th smallest key: the least key with
    # count(key <= T) >= counts[g]. The int32 range halves 32 times down to one key.
    def bisect(_, bounds):
        lo, hi = bounds
        mid = _midpoint(lo, hi)
        enough = count_at_most(mid) >= counts
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    lo = jnp.full((n_groups,), INT32_MIN, jnp.int32)
    hi = jnp.full((n_groups,), INT32_MAX, jnp.int32)
    _, threshold = lax.fori_loop(0, 32, bisect, (lo, hi))

    below = [_count(key_fn(x), lambda k, t=threshold[g]: k < t) for x, g in zip(leaves, groups)]
    ties = [_count(key_fn(x), lambda k, t=threshold[g]: k == t) for x, g in zip(leaves, groups)]
    # Entries at the threshold still to mark, per group; ties go in tree order, then in
    # flat order within an array, so at most one array per group takes a part of its ties.
    left = counts - _group_sums(below, groups, n_groups)
    before = [jnp.zeros([], jnp.int32)] * n_groups
    out = []
    for x, g, n_ties in zip(leaves, groups, ties):
        take = jnp.clip(left[g] - before[g], 0, n_ties)
        before[g] = before[g] + n_ties
        out.append(_mark(x, key_fn, threshold[g], take, n_ties))
    return out


def _mark(x: jax.Array, key_fn: KeyFn, threshold: jax.Array, take: jax.Array, n_ties: jax.Array) -> jax.Array:
    """Entries of ``x`` below ``threshold``, plus its first ``take`` ties in flat order."""
    flat = x.reshape(-1)
    size = flat.shape[0]

    def first_ties() -> jax.Array:
        # The least flat index I with count(key == T and index < I) >= take.
        def bisect(_, bounds):
            lo, hi = bounds
            mid = _midpoint(lo, hi)
            index = lax.iota(jnp.int32, size)
            enough = _count(key_fn(flat), lambda k: (k == threshold) & (index < mid)) >= take
            return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

        bounds = (jnp.zeros([], jnp.int32), jnp.full([], size, jnp.int32))
        return lax.fori_loop(0, size.bit_length(), bisect, bounds)[1]

    # Only an array that takes some but not all of its ties pays for the index search.
    cut = lax.cond(
        (take > 0) & (take < n_ties),
        first_ties,
        lambda: jnp.where(take > 0, size, 0).astype(jnp.int32),
    )
    keys = key_fn(flat)
    marked = (keys < threshold) | ((keys == threshold) & (lax.iota(jnp.int32, size) < cut))
    return marked.reshape(x.shape)
