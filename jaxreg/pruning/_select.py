"""Exact selection of the lowest-scoring entries of many arrays, without sorting them.

Every rank-based pruning mask in jaxreg (magnitude, random, saliency, whole units)
comes down to one question: which ``k`` entries of a group of arrays have the lowest
scores? A sort answers it with full-size temporaries (and a concatenation for a global
ranking). On one CPU device, for float32 scores (or int32 keys), :func:`lowest` runs two
native calls (``jaxreg/_native/step.cc``): a radix search on the key finds each group's
threshold in three counting passes, then the marks are written, 128 leaves per call;
nothing but the bool output is allocated, and the compiled program holds a few
instructions per 128 leaves. Elsewhere (a mesh, several devices, GPU and TPU, other
dtypes, no C++ compiler) the answer is found in XLA by bisection on an integer key
that orders like the float scores, counting per array; both give the same marks (the
tests hold them equal bit for bit). The search state is a few scalars per group, the
counts are partial reductions that XLA lowers to all-reduces on sharded arrays, and the
keys are recomputed inside every count instead of being stored. (XLA's CPU backend
materializes the operand of a reduction; :func:`count_rows` makes that one byte per
entry, and XLA reuses the buffer from one array to the next.)

The compiled program grows with the number of stacks, not of leaves: leaves of one
shape are stacked (a copy, at most ``_BATCH`` entries per stack) and every counting
pass and the marks run stack by stack, so that a model with a thousand leaves of a
dozen shapes holds about as many operations as one with a dozen leaves. What remains
per leaf is its place in a concatenation and the copy of its marks out of the stack.

The order is total, which is what makes the counts exact: entries are ranked by
``(score, position)``, where the position of an entry is its row-major (flat) index
within its array and arrays come in the order given (tree order). So among entries with
equal scores the earlier ones are pruned first. NaN scores rank above every number
(never pruned before a number, as with ``torch.topk``), and ``-0.0`` ties with ``+0.0``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxreg import _tree

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
# A group's size and an array's flat index must fit the int32 counters.
MAX_GROUP_SIZE = 2**31 - 1

KeyFn = Callable[[jax.Array], jax.Array]


def order_key(score: jax.Array) -> jax.Array:
    """An int32 key with the order of ``score``: ``a < b`` iff ``key(a) < key(b)``.

    Bools and integers of up to 32 bits are ranked exactly: their values are the keys
    (unsigned 32-bit ones shifted by ``-2**31``). Floats (and 64-bit integers) are
    ranked as float32: non-negative floats order like their bit patterns read as int32;
    negative ones in reverse, so their low 31 bits are flipped (and shifted by one so
    that ``-0.0`` and ``+0.0`` get the same key). NaN gets the largest key.
    """
    dtype = jnp.result_type(score)
    if dtype == jnp.uint32:
        return lax.bitcast_convert_type(score ^ np.uint32(2**31), jnp.int32)
    if dtype == jnp.bool_ or (jnp.issubdtype(dtype, jnp.integer) and dtype.itemsize <= 4):
        return score.astype(jnp.int32)
    s = score.astype(jnp.float32)
    bits = lax.bitcast_convert_type(s, jnp.int32)
    key = jnp.where(bits < 0, (bits ^ INT32_MAX) + 1, bits)
    return jnp.where(jnp.isnan(s), INT32_MAX, key)


_NAN_MAGNITUDE = 0x7F800001  # the bits of +inf, plus one

# Below every key that order_key gives floats and integers of up to 16 bits (32-bit integers
# use the whole int32 range, so only their two lowest values rank at or under it).
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


def _on_mesh(x: jax.Array) -> bool:
    """Whether ``x`` lives on a mesh of several devices (JAX carries the mesh in the type, also under ``jit``)."""
    mesh = _tree.mesh_of(x)
    return mesh is not None and mesh.size > 1


def count_rows(flags: jax.Array) -> jax.Array:
    """The number of True entries in each row ``flags[j]`` of a bool array, as int32 of shape ``(rows,)``.

    On one device: XLA's CPU backend does not fuse a producer into a full reduction,
    so the reduced operand is materialized; summed as uint8 in blocks of 128 of each
    flattened row (which cannot overflow), it takes one byte per entry instead of
    four. On a mesh the flags are summed in their own shape instead: flattening would
    make XLA gather a leaf split on any axis but the first (and is a type error with
    explicit axes), while a reduction is local sums plus one all-reduce.
    """
    rows = flags.shape[0]
    if _on_mesh(flags):
        return jnp.sum(flags, axis=tuple(range(1, flags.ndim)), dtype=jnp.int32)
    flags = flags.reshape(rows, -1)
    block = 128
    pad = (-flags.shape[1]) % block
    if pad:
        flags = jnp.pad(flags, ((0, 0), (0, pad)))
    partial = jnp.sum(flags.reshape(rows, -1, block).astype(jnp.uint8), axis=2, dtype=jnp.uint8)
    return jnp.sum(partial, axis=1, dtype=jnp.int32)


def positions(shape: tuple[int, ...], offsets: jax.Array) -> jax.Array:
    """``offsets[r]`` plus the row-major (flat) index of each entry within row ``r``, as int32 of ``shape``.

    For stacked arrays of ``shape = (rows, *leaf_shape)``. Built from one iota per axis,
    so that it takes the sharding of the array it is compared with instead of forcing a
    1-D layout, and starting from the offsets, so that XLA computes it where it is used
    (the offsets are tied to the counting pass) instead of holding it as a full-size array.
    """
    index = offsets.reshape((-1,) + (1,) * (len(shape) - 1))
    stride = 1
    for axis in reversed(range(1, len(shape))):
        index = index + lax.broadcasted_iota(jnp.int32, shape, axis) * stride
        stride *= shape[axis]
    return jnp.broadcast_to(index, shape)


def runtime_range(n: int) -> list[jax.Array]:
    """The ints ``0 .. n-1`` as ``n`` int32 scalars whose values XLA does not know when it compiles.

    Per-leaf work that reads its leaf's entry of a vector at such an index, instead of
    at a constant one, compiles to the same kernel for every leaf of a shape, and XLA
    compiles that kernel once: the compile time then grows with the number of distinct
    leaf shapes, not of leaves. (A constant index, or a per-leaf constant such as an
    offset, is folded into each leaf's kernel and makes them all different.) The
    values pass through a loop that runs zero times on a counter XLA cannot see
    through (an optimization barrier), so they are not folded back to constants.
    """

    def never(carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        start, *values = carry
        return (start + 1, *[v + start for v in values])

    start = lax.optimization_barrier(jnp.zeros([], jnp.int32))
    _, *values = lax.while_loop(lambda c: c[0] < 0, never, (start, *[jnp.int32(i) for i in range(n)]))
    return values


def entry(vector: jax.Array, index: jax.Array) -> jax.Array:
    """``vector[index]`` for a runtime scalar index (see :func:`runtime_range`)."""
    return lax.dynamic_index_in_dim(vector, index, keepdims=False)


def rows_of(stacks: Sequence[jax.Array], sources: Sequence[Any]) -> list[Any]:
    """Row ``r`` of ``stacks[o]`` reshaped to ``shape``, for each ``(o, r, shape)`` of
    ``sources`` (None stays None), read at runtime indices: one kernel per stack shape."""
    index = runtime_range(max((s[1] for s in sources if s is not None), default=-1) + 1)
    return [None if s is None else entry(stacks[s[0]], index[s[1]]).reshape(s[2]) for s in sources]


def _sample_stride(size: int) -> int:
    return max(1, size // _SAMPLE)


def _batches(leaves: Sequence[jax.Array], groups: Sequence[int], sizes: Sequence[int]) -> list[list[int]]:
    """The leaves counted together, as lists of indices: leaves of one shape, dtype and sample stride.

    A batch is stacked once and counted by one reduction per pass, so that the program
    grows with the number of stacks (about the number of distinct leaf shapes, plus one
    per ``_BATCH`` entries or ``_STACK_LEAVES`` leaves), a fraction of the number of
    leaves. Leaves of fewer than ``_BATCH`` entries are stacked, at most ``_BATCH``
    entries and ``_STACK_LEAVES`` leaves together (the stacks are a copy); a larger
    leaf, and every leaf on a mesh (stacking leaves split differently would move them
    between devices), is a batch of its own.
    """
    batches: list[list[int]] = []
    open_batch: dict[Any, int] = {}
    for i, x in enumerate(leaves):
        if _on_mesh(x) or x.size >= _BATCH:
            batches.append([i])
            continue
        kind = (x.shape, x.dtype, _sample_stride(sizes[groups[i]]))
        b = open_batch.get(kind)
        if b is None or (len(batches[b]) + 1) * x.size > _BATCH or len(batches[b]) == _STACK_LEAVES:
            open_batch[kind] = b = len(batches)
            batches.append([])
        batches[b].append(i)
    return batches


def _stacked(leaves: Sequence[jax.Array], batch: Sequence[int]) -> jax.Array:
    """The leaves of ``batch`` stacked on a new first axis: one concatenation (a leaf alone is not copied)."""
    if len(batch) == 1:
        return leaves[batch[0]][None]
    return jnp.stack([leaves[i] for i in batch])


# Probes before every group's [lo, hi] is one key: 2 from the sample, at most 32
# halvings of the keys after a stalled pair each, and 16 pairs that cut the counts 4-fold.
_MAX_PASSES = 2 + 3 * 32 + 2 * 16
# Groups of at least _DENSE entries get their first two probes from a strided sample of
# at most _SAMPLE keys (all such groups sorted together; not on a mesh, where the sample
# would be gathered), and interpolation probes after: their counts look continuous.
_DENSE = 1 << 20
_SAMPLE = 1 << 16
# Leaves of fewer entries are stacked by shape, at most _BATCH entries and _STACK_LEAVES
# leaves together (see _batches): XLA's CPU compile time grows with the square of the
# number of slices taken out of one array.
_BATCH = 1 << 20
_STACK_LEAVES = 16


def _sample_probes(
    stacks: Sequence[jax.Array],
    batches: Sequence[Sequence[int]],
    key_fn: KeyFn,
    groups: Sequence[int],
    n_groups: int,
    sizes: Sequence[int],
    counts: jax.Array,
    alive: Sequence[jax.Array] | None = None,
) -> tuple[jax.Array, jax.Array] | None:
    """Two probes per large group around its threshold key, read off a sorted sample of its keys.

    In a sorted strided sample of ``m`` keys the threshold sits near index ``q * m``
    (``q = counts / size``), with a binomial spread of ``sqrt(m q (1 - q))``; the keys
    four spreads (plus a few) on either side bracket it unless the sample is very
    atypical, and then the search simply goes on from wherever they landed. Returns
    ``(high, low)`` per group (ignored for groups under ``_DENSE``), or None when no
    group is that large. Entries not ``alive`` (stacked as ``stacks``) are sampled with
    the largest key: sorted last, they leave the ``k``-th alive key near index ``q * m``.
    """
    if any(_on_mesh(x) for x in stacks):
        return None  # a strided sample of a sharded leaf would be gathered
    keys, ids, lengths = [], [], [0] * n_groups
    for j, (stack, batch) in enumerate(zip(stacks, batches)):
        stride = _sample_stride(sizes[groups[batch[0]]])
        if sizes[groups[batch[0]]] >= _DENSE:
            sample = key_fn(stack.reshape(len(batch), -1)[:, ::stride])
            if alive is not None:
                sample = jnp.where(alive[j].reshape(len(batch), -1)[:, ::stride], sample, INT32_MAX)
            keys.append(sample.reshape(-1))
            ids.append(jnp.repeat(jnp.asarray([groups[i] for i in batch], jnp.int32), sample.shape[1]))
            for i in batch:
                lengths[groups[i]] += sample.shape[1]
    if not keys:
        return None
    _, ordered = lax.sort((jnp.concatenate(ids), jnp.concatenate(keys)), num_keys=2)
    starts = jnp.asarray(np.cumsum([0, *lengths[:-1]]), jnp.int32)
    m = jnp.asarray(lengths, jnp.int32)
    mf = m.astype(jnp.float32)
    q = counts.astype(jnp.float32) / jnp.asarray(sizes, jnp.float32)
    spread = 4 * jnp.sqrt(mf * q * (1 - q)) + 4
    top = jnp.ceil(q * mf + spread).astype(jnp.int32)
    bottom = jnp.floor(q * mf - spread).astype(jnp.int32)

    def key_at(index: jax.Array) -> jax.Array:
        return ordered[starts + jnp.clip(index, 0, jnp.maximum(m - 1, 0))]

    high = jnp.where(top >= m, INT32_MAX, key_at(top))
    # A probe at key - 1 leaves that key inside [lo, hi] when too few lie below it.
    low = jnp.where(bottom < 0, INT32_MIN, key_at(bottom) - 1)
    return high, low


# Marks written per native call: XLA's passes take time quadratic in one instruction's outputs.
_MARKS_PER_CALL = 128


def _native_kind(leaves: Sequence[jax.Array], key_fn: KeyFn) -> int | None:
    """The kind of key the native selection computes for ``key_fn`` on these leaves, or
    None where the search below runs instead: on a mesh or several devices, off CPU,
    without the native library, or for other keys and dtypes."""
    if jax.default_backend() != "cpu" or jax.device_count() != 1 or any(_on_mesh(x) for x in leaves):
        return None
    dtypes = {jnp.result_type(x) for x in leaves}
    if dtypes == {jnp.dtype(jnp.float32)} and key_fn in (magnitude_key, order_key):
        kind = 0 if key_fn is magnitude_key else 1
    elif dtypes == {jnp.dtype(jnp.int32)} and key_fn in (given_key, order_key):
        kind = 2
    else:
        return None
    from jaxreg import _native  # builds the CPU library on first use

    return kind if _native.available() else None


def _native_lowest(
    operands: Sequence[jax.Array],
    sources: Sequence[tuple[int, int, tuple[int, ...]]],
    kind: int,
    groups: Sequence[int],
    counts: jax.Array,
    alive: Sequence[jax.Array] | None,
    floor: Sequence[jax.Array] | None,
) -> list[jax.Array]:
    """:func:`lowest` as two native calls: the thresholds, then the marks (see ``step.cc``).

    Leaf ``i`` is row ``r`` of ``operands[o]`` (flattened), with shape ``s``, where
    ``sources[i] = (o, r, s)``: a stack of same-sized leaves is one operand.
    """
    operands = [lax.stop_gradient(jnp.asarray(x)) for x in operands]  # a mask has no derivative
    rows = np.asarray([x.shape[0] for x in operands], np.int64)
    per_leaf_masks = [m for m in (alive, floor) if m is not None]
    n_groups, n_leaves = int(counts.shape[0]), len(sources)
    attributes = dict(
        rows=rows,
        kind=np.int64(kind),
        has_alive=np.int64(alive is not None),
        has_floor=np.int64(floor is not None),
    )

    def source(ids: Sequence[int]) -> np.ndarray:
        return np.asarray([sources[i][:2] for i in ids], np.int64).reshape(-1)

    found = jax.ffi.ffi_call(
        "jaxreg_select_threshold", jax.ShapeDtypeStruct((n_groups + n_leaves,), jnp.int32), vmap_method="sequential"
    )(
        counts.astype(jnp.int32),
        *operands,
        *[x for m in per_leaf_masks for x in m],
        groups=np.asarray(groups, np.int64),
        source=source(range(n_leaves)),
        **attributes,
    )
    out: list[jax.Array] = []
    for start in range(0, n_leaves, _MARKS_PER_CALL):
        ids = list(range(start, min(start + _MARKS_PER_CALL, n_leaves)))
        results = [jax.ShapeDtypeStruct(sources[i][2], jnp.bool_) for i in ids]
        out += jax.ffi.ffi_call("jaxreg_select_mark", results, vmap_method="sequential")(
            found,
            *operands,
            *[m[i] for m in per_leaf_masks for i in ids],
            ids=np.asarray(ids, np.int64),
            groups=np.asarray([groups[i] for i in ids], np.int64),
            source=source(ids),
            n_groups=np.int64(n_groups),
            n_leaves=np.int64(n_leaves),
            **attributes,
        )
    return out


@functools.partial(jax.jit, static_argnames=("sources", "key_fn", "groups"))
def lowest_in_stacks(
    stacks: Sequence[jax.Array],
    sources: tuple[tuple[int, int, tuple[int, ...]], ...],
    key_fn: KeyFn,
    groups: Sequence[int],
    counts: jax.Array,
    alive: Sequence[jax.Array] | None = None,
) -> list[jax.Array]:
    """:func:`lowest` of the leaves given as rows of stacks (see :func:`rows_of`): the
    native calls read them in their stacks; elsewhere they are taken out first."""
    kind = _native_kind(stacks, key_fn)
    if kind is not None:
        return _native_lowest(stacks, sources, kind, groups, counts, alive, None)
    return lowest(rows_of(stacks, sources), key_fn, groups, counts, alive)


@functools.partial(jax.jit, static_argnames=("key_fn", "groups"))
def lowest(
    leaves: Sequence[jax.Array],
    key_fn: KeyFn,
    groups: Sequence[int],
    counts: jax.Array,
    alive: Sequence[jax.Array] | None = None,
    floor: Sequence[jax.Array] | None = None,
) -> list[jax.Array]:
    """Marks, in each group of arrays, the ``counts[g]`` entries of lowest ``(key, position)``.

    An entry's position is its flat index plus the sizes of the arrays before it in its
    group. Counting passes narrow the int32 key range down to the threshold key ``T``
    (the least key with ``count(key <= T) >= counts[g]``). Groups of 2**20 entries or
    more start from two probes read off a sorted sample of their keys and go on with
    probes placed by interpolating the counts (about 10-15 passes for continuous scores);
    smaller ones halve the range, 32 passes. Never more than ``_MAX_PASSES``. Only if ``T``
    takes more entries than asked (ties at ``T``) do up to ``log2(group size)`` more
    passes find the position up to which the ties at ``T`` are taken. Continuous scores
    have no ties, so that second search rarely runs. A last pass writes the marks.

    Leaves of fewer than ``_BATCH`` entries are stacked by shape (at most ``_BATCH``
    entries and ``_STACK_LEAVES`` leaves per stack) and counted stack by stack; the
    others are counted on their own. Every pass, and the marks, run stack by stack: the program holds a fixed
    number of operations per stack and none per leaf but the stacking and the slicing
    of the marks. The extra memory is the stacks (a copy of the stacked leaves), a
    one-byte counting buffer of the largest stack or leaf, the marks of the stacks and
    the bool output.

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
        in ``[0, group size]`` (it may be traced); with ``alive``, in ``[0, alive
        entries of the group]``.
      alive: None, or one bool array per leaf, shaped like it: only its True entries
        take part (are ranked, counted and marked); positions stay those of the whole
        arrays, so the alive entries keep their order.
      floor: None, or one bool array per leaf, shaped like it: its False entries take the
        key ``BOTTOM_KEY`` (below every other), whatever ``key_fn`` gives them.

    Returns:
      One bool array per leaf, True on the marked (lowest) entries; exactly
      ``counts[g]`` are True in group ``g`` (all of them alive).
    """
    groups = list(groups)
    kind = _native_kind(leaves, key_fn)
    if kind is not None:
        sources = [(i, 0, tuple(jnp.shape(x))) for i, x in enumerate(leaves)]
        return _native_lowest([jnp.reshape(x, (1, -1)) for x in leaves], sources, kind, groups, counts, alive, floor)
    if floor is not None:
        leaves = [jnp.where(f, key_fn(x), BOTTOM_KEY) for f, x in zip(floor, leaves)]
        key_fn = given_key
    n_groups = int(counts.shape[0])
    offsets, sizes = [], [0] * n_groups
    for x, g in zip(leaves, groups):
        offsets.append(sizes[g])
        sizes[g] += x.size
    sizes_arr = jnp.asarray(sizes, jnp.int32)

    batches = _batches(leaves, groups, sizes)
    # Behind a barrier, XLA cannot sink the stacking into the loops (once per pass).
    stacks = [_stacked(leaves, batch) for batch in batches]
    alive_stacks = None if alive is None else [_stacked(alive, batch) for batch in batches]
    stacks, alive_stacks = lax.optimization_barrier((stacks, alive_stacks))
    group_of = jnp.asarray(groups, jnp.int32)
    offset_of = jnp.asarray(offsets, jnp.int32)
    segment_ids = jnp.asarray([groups[i] for batch in batches for i in batch], jnp.int32)

    def of_batch(batch: Sequence[int], per_leaf: jax.Array) -> jax.Array:
        # The entries of a per-leaf vector for the leaves of a batch.
        return per_leaf[np.asarray(batch)]

    def below(xs: jax.Array, offsets: jax.Array, key: jax.Array, position: jax.Array) -> jax.Array:
        # (key(x), position) < (key, position), entry by entry, for stacked leaves xs with
        # one offset, key and position each, in the leaves' own shape (and sharding): the
        # position is the flat index, computed, not flattened to.
        column = (-1,) + (1,) * (xs.ndim - 1)
        keys, key = key_fn(xs), key.reshape(column)
        position_of = positions(xs.shape, offsets)
        return (keys < key) | ((keys == key) & (position_of < position.reshape(column)))

    def count(step: jax.Array, predicate: Callable[..., jax.Array], *args: jax.Array) -> jax.Array:
        # Tied to the step by a barrier, the stacks and offsets look loop-variant to XLA,
        # which then computes their keys and positions inside each counting pass instead
        # of hoisting them out of the loop as full-size arrays (that would triple the
        # extra memory).
        tied, tied_alive, tied_offsets, _ = lax.optimization_barrier((stacks, alive_stacks, offset_of, step))
        per_leaf_args = [a[group_of] for a in args]
        rows = []
        for j, (stack, batch) in enumerate(zip(tied, batches)):
            flags = predicate(stack, *[of_batch(batch, v) for v in (tied_offsets, *per_leaf_args)])
            rows.append(count_rows(flags if tied_alive is None else flags & tied_alive[j]))
        return jax.ops.segment_sum(jnp.concatenate(rows), segment_ids, num_segments=n_groups)

    def at_most(xs: jax.Array, offsets: jax.Array, key: jax.Array) -> jax.Array:
        del offsets
        return key_fn(xs) <= key.reshape((-1,) + (1,) * (xs.ndim - 1))

    # The threshold key T of a group: the least key with count(key <= T) >= counts[g].
    # Search state per group: T lies in [lo, hi], with below = count(key < lo) < counts
    # <= count(key <= hi) = at_hi. Each pass counts the keys <= one probe per group.
    sampled = _sample_probes(stacks, batches, key_fn, groups, n_groups, sizes, counts, alive_stacks)
    # count(key <= INT32_MAX): every entry, or every alive one.
    total = sizes_arr if alive is None else count(jnp.zeros([], jnp.int32), lambda xs, offsets: jnp.ones_like(xs, bool))
    dense = jnp.asarray([size >= _DENSE for size in sizes])

    def probe(i: jax.Array, lo: jax.Array, hi: jax.Array, below: jax.Array, at_hi: jax.Array, halve: jax.Array):
        # Aim just below, then just above the target rank, by linear interpolation of the
        # counts between lo and hi (the counts of smooth scores are locally linear in the
        # key): when that holds, each pair of probes cuts the span of counts 16-fold.
        span = (at_hi - below).astype(jnp.float32)
        margin = span / 32 + 1
        target = counts.astype(jnp.float32) + jnp.where(i % 2 == 0, -margin, margin)
        frac = jnp.clip((target - below.astype(jnp.float32)) / span, 0.0, 1.0)
        width = lax.bitcast_convert_type(hi - lo, jnp.uint32)  # exact, as a wrapped difference
        offset = jnp.minimum((frac * width.astype(jnp.float32)).astype(jnp.uint32), width - 1)
        # Halve [lo, hi] instead across binades, where the counts are far from linear in
        # the key (more than 2**24 keys), after a stalled pair, and in groups too small
        # for their counts to look continuous (the keys there are far apart, and probes
        # between them count nothing new).
        halve = halve | (width >= 1 << 24) | ~dense
        guess = jnp.where(halve, _midpoint(lo, hi), lo + lax.bitcast_convert_type(offset, jnp.int32))
        if sampled is not None:
            # First the sample's bracket: two probes that, when the sample is typical, cut
            # [lo, hi] to a sliver of the keys at once.
            high, low = sampled
            guess = jnp.where(dense & (i == 0), high, jnp.where(dense & (i == 1), low, guess))
        return jnp.clip(guess, lo, jnp.maximum(hi - 1, lo)), halve & (i >= 2)

    def narrow(bounds: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        i, lo, hi, below, at_hi, halve, mark = bounds
        open_ = lo < hi
        key, halved = probe(i, lo, hi, below, at_hi, halve)
        found = count(i, at_most, key)
        enough = open_ & (found >= counts)
        short = open_ & (found < counts)
        new_below, new_at_hi = jnp.where(short, found, below), jnp.where(enough, found, at_hi)
        span = new_at_hi - new_below
        # A pair of interpolation probes that did not cut the span of counts 4-fold stalls:
        # the next probe halves [lo, hi] instead.
        pair_end = (i >= 3) & (i % 2 == 1)
        stalled = pair_end & ~halved & (span > mark // 4)
        return (
            i + 1,
            jnp.where(short, key + 1, lo),
            jnp.where(enough, key, hi),
            new_below,
            new_at_hi,
            stalled,
            jnp.where(pair_end | (i == 1), span, mark),
        )

    # A while_loop with a data-dependent end: with a trip count it knows, XLA hoists the
    # keys out of the loop despite the barrier. Each halving halves [lo, hi], and every
    # pair of other probes cuts the span of counts 4-fold or is followed by a halving, so
    # the loop ends within _MAX_PASSES.
    start = (
        jnp.zeros([], jnp.int32),
        jnp.full((n_groups,), INT32_MIN, jnp.int32),
        jnp.full((n_groups,), INT32_MAX, jnp.int32),
        jnp.zeros((n_groups,), jnp.int32),
        total,
        jnp.zeros((n_groups,), jnp.bool_),
        total,
    )
    _, _, threshold, _, at_threshold, _, _ = lax.while_loop(
        lambda bounds: jnp.any(bounds[1] < bounds[2]) & (bounds[0] < _MAX_PASSES), narrow, start
    )

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
    # The marks, stack by stack, then sliced out leaf by leaf. Written in a loop that
    # runs once (a count XLA cannot see through), so that XLA cannot fuse the marks into
    # each slice: every leaf's kernel is then a copy, not a different compare kernel.
    per_leaf = (offset_of, threshold[group_of], cut[group_of])

    def write_marks(carry: tuple[jax.Array, list[jax.Array]]) -> tuple[jax.Array, list[jax.Array]]:
        step, _ = carry
        marks = []
        for j, (stack, batch) in enumerate(zip(stacks, batches)):
            mark = below(stack, *[of_batch(batch, v) for v in per_leaf])
            marks.append(mark if alive_stacks is None else mark & alive_stacks[j])
        return step + 1, marks

    once = lax.optimization_barrier(jnp.zeros([], jnp.int32))
    blank = [jnp.zeros_like(stack, dtype=jnp.bool_) for stack in stacks]  # sharded as the stacks
    _, marks = lax.while_loop(lambda carry: carry[0] < 1, write_marks, (once, blank))
    out: list[Any] = [None] * len(leaves)
    for mark, batch in zip(marks, batches):
        for row, i in enumerate(batch):
            out[i] = mark[row]
    return out
