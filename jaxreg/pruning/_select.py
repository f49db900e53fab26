"""Exact selection of the lowest-scoring entries of many arrays, without sorting them.

Every rank-based pruning mask in jaxreg (magnitude, random, saliency, whole units)
comes down to one question: which ``k`` entries of a group of arrays have the lowest
scores? A sort answers it with full-size temporaries (and a concatenation for a global
ranking); here the answer is found by bisection on an integer key that orders like the
float scores, counting per array. The search state is a few scalars per group, the
counts are partial reductions that XLA lowers to all-reduces on sharded arrays, and the
keys are recomputed inside every count instead of being stored. (XLA's CPU backend
materializes the operand of a full reduction; :func:`count_true` makes that one byte
per entry, and XLA reuses the buffer from one array to the next.)

The order is total, which is what makes the counts exact: entries are ranked by
``(score, position)``, where the position of an entry is its row-major (flat) index
within its array and arrays come in the order given (tree order). So among entries with
equal scores the earlier ones are pruned first. NaN scores rank above every number
(never pruned before a number, as with ``torch.topk``), and ``-0.0`` ties with ``+0.0``.
"""

from __future__ import annotations

import functools
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


_NAN_MAGNITUDE = 0x7F800001  # the bits of +inf, plus one

# Below every key that order_key gives: ranks an entry under all others (and above none).
BOTTOM_KEY = INT32_MIN + 1


def given_key(keys: jax.Array) -> jax.Array:
    """The identity, for arrays that already hold int32 keys."""
    return keys


def magnitude_key(w: jax.Array) -> jax.Array:
    """A key with the order of ``order_key(|w|)``, cheap enough for every counting pass.

    Clearing the sign bit is ``|w|``; every NaN then lies above ``inf``'s bits, and is
    clamped to one key just above it so that NaNs tie (and go by position).
    """
    bits = lax.bitcast_convert_type(w.astype(jnp.float32), jnp.int32)
    return jnp.minimum(bits & INT32_MAX, _NAN_MAGNITUDE)


def _midpoint(lo: jax.Array, hi: jax.Array) -> jax.Array:
    # floor((lo + hi) / 2) without the int32 overflow of lo + hi.
    return (lo >> 1) + (hi >> 1) + (lo & hi & 1)


def count_true(flags: jax.Array) -> jax.Array:
    """The number of True entries of a 1-D bool array, as int32.

    XLA's CPU backend does not fuse a producer into a full reduction: the reduced
    operand is materialized. Summed as uint8 in blocks of 128 (which cannot overflow),
    that operand takes one byte per entry instead of the four of an int32 sum.
    """
    block = 128
    pad = (-flags.shape[0]) % block
    if pad:
        flags = jnp.pad(flags, (0, pad))
    partial = jnp.sum(flags.reshape(-1, block).astype(jnp.uint8), axis=1, dtype=jnp.uint8)
    return jnp.sum(partial, dtype=jnp.int32)


def _group_sums(per_leaf: Sequence[jax.Array], groups: Sequence[int], n_groups: int) -> jax.Array:
    sums: list[jax.Array] = [jnp.zeros([], jnp.int32)] * n_groups
    for value, g in zip(per_leaf, groups):
        sums[g] = sums[g] + value
    return jnp.stack(sums)


@functools.partial(jax.jit, static_argnames=("key_fn", "groups"))
def lowest(
    leaves: Sequence[jax.Array],
    key_fn: KeyFn,
    groups: Sequence[int],
    counts: jax.Array,
) -> list[jax.Array]:
    """Marks, in each group of arrays, the ``counts[g]`` entries of lowest ``(key, position)``.

    An entry's position is its flat index plus the sizes of the arrays before it in its
    group. 32 counting passes halve the int32 key range down to the threshold key ``T``
    (the least key with ``count(key <= T) >= counts[g]``); only if that takes more
    entries than asked (ties at ``T``) do up to ``log2(group size)`` more passes find
    the position up to which the ties at ``T`` are taken. Continuous scores have no
    ties, so that second search rarely runs. A last pass writes the marks.

    Args:
      leaves: the arrays.
      key_fn: maps an array to its int32 keys (see :func:`order_key`); it is traced
        inside every counting reduction so that XLA fuses it there instead of holding a
        full-size key array. A module-level function, so that the compiled search is
        cached across calls.
      groups: tuple, the group (``0 .. G-1``) of each array; a group's arrays are
        ranked together, in the order they are given. A group holds fewer than 2**31
        entries.
      counts: int32 array of shape ``(G,)``, the number of entries to mark per group,
        in ``[0, group size]`` (it may be traced).

    Returns:
      One bool array per leaf, True on the marked (lowest) entries; exactly
      ``counts[g]`` are True in group ``g``.
    """
    groups = list(groups)
    n_groups = int(counts.shape[0])
    offsets, sizes = [], [0] * n_groups
    for x, g in zip(leaves, groups):
        offsets.append(sizes[g])
        sizes[g] += x.size
    sizes_arr = jnp.asarray(sizes, jnp.int32)

    def below(x: jax.Array, offset: int | jax.Array, key: jax.Array, position: jax.Array) -> jax.Array:
        # (key(x), position) < (key, position), entry by entry, on the flattened array.
        keys = key_fn(x.reshape(-1))
        index = lax.iota(jnp.int32, x.size) + offset
        return (keys < key) | ((keys == key) & (index < position))

    def count(step: jax.Array, predicate: Callable[..., jax.Array], *args: jax.Array) -> jax.Array:
        # Tied to the step by a barrier, the leaves look loop-variant to XLA, which then
        # recomputes their keys inside each counting pass instead of hoisting them out
        # of the loop as full-size int32 arrays (that would triple the extra memory).
        tied, tied_offsets, _ = lax.optimization_barrier((list(leaves), jnp.asarray(offsets, jnp.int32), step))
        per_leaf = [
            count_true(predicate(x.reshape(-1), tied_offsets[j], *[a[g] for a in args]))
            for j, (x, g) in enumerate(zip(tied, groups))
        ]
        return _group_sums(per_leaf, groups, n_groups)

    def at_most(flat: jax.Array, offset: jax.Array, key: jax.Array) -> jax.Array:
        del offset
        return key_fn(flat) <= key

    # The threshold key T of a group: the least key with count(key <= T) >= counts[g],
    # found by halving the int32 range 32 times.
    def halve_keys(bounds: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        i, lo, hi, at_hi = bounds
        mid = _midpoint(lo, hi)
        found = count(i, at_most, mid)
        enough = found >= counts
        return i + 1, jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi), jnp.where(enough, found, at_hi)

    # A while_loop, not a fori_loop: with a trip count it knows, XLA hoists the keys out
    # of the loop despite the barrier.
    start = (
        jnp.zeros([], jnp.int32),
        jnp.full((n_groups,), INT32_MIN, jnp.int32),
        jnp.full((n_groups,), INT32_MAX, jnp.int32),
        sizes_arr,
    )
    _, _, threshold, at_threshold = lax.while_loop(lambda bounds: bounds[0] < 32, halve_keys, start)

    # count(key <= T) > counts[g] means ties at T, of which only the first ones in
    # position order are taken: the least position P with
    # count((key, position) < (T, P)) >= counts[g]. Continuous scores have no ties, and
    # then this loop stops before its first pass.
    def halve_positions(bounds: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        i, lo, hi = bounds
        mid = _midpoint(lo, hi)
        enough = count(i, below, threshold, mid) >= counts
        return i + 1, jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    def ties_left(bounds: tuple[jax.Array, ...]) -> jax.Array:
        return (bounds[0] < max(sizes, default=0).bit_length()) & jnp.any(at_threshold > counts)

    start = (jnp.zeros([], jnp.int32), jnp.zeros((n_groups,), jnp.int32), sizes_arr)
    _, _, position = lax.while_loop(ties_left, halve_positions, start)
    cut = jnp.where(at_threshold > counts, position, sizes_arr)
    return [below(x, o, threshold[g], cut[g]).reshape(x.shape) for x, g, o in zip(leaves, groups, offsets)]
