"""The exact selection behind every rank-based mask: the native CPU calls and the XLA
search give the same marks, bit for bit, and the native calls never crash the process."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from isolated import run_python

from jaxreg import _native
from jaxreg.pruning import _select

pytestmark = pytest.mark.skipif(not _native.available(), reason=f"no native kernels: {_native.why_unavailable()}")

SHAPES = [(7, 5), (40,), (3, 4, 2), (1,), (7, 5), (40,), (0,), (130, 3)]
KEYS = {
    "magnitude": (_select.magnitude_key, np.float32),
    "order": (_select.order_key, np.float32),
    "int order": (_select.order_key, np.int32),
    "given": (_select.given_key, np.int32),
}


@functools.cache
def _lowest(native: bool):
    """``_select.lowest`` through the native calls or the XLA search (compiled apart from
    the library's own cache, once per path)."""

    def run(leaves, key_fn, groups, counts, alive, floor=None):
        if native:
            assert _select._native_kind(leaves, key_fn) is not None
            return _select.lowest.__wrapped__(leaves, key_fn, groups, counts, alive, floor)
        kind = _select._native_kind
        _select._native_kind = lambda *_: None
        try:
            return _select.lowest.__wrapped__(leaves, key_fn, groups, counts, alive, floor)
        finally:
            _select._native_kind = kind

    return jax.jit(run, static_argnums=(1, 2))


def _values(rng, shape, dtype, tied):
    if dtype == np.int32:
        pool = np.array([-(2**31), -(2**31) + 1, -5, 0, 3, 2**31 - 1], np.int32)
        return rng.choice(pool, shape) if tied else rng.integers(-(2**31), 2**31 - 1, shape, dtype=np.int32)
    if tied:
        pool = np.array([0.0, -0.0, 1.5, -1.5, np.inf, -np.inf, np.nan, 2.0, -2.0], np.float32)
        return rng.choice(pool, shape)
    return rng.standard_normal(shape).astype(np.float32)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    key=st.sampled_from(sorted(KEYS)),
    tied=st.booleans(),
    scope=st.sampled_from(["leaf", "global", "pairs"]),
    with_alive=st.booleans(),
    with_floor=st.booleans(),
)
def test_native_calls_mark_what_the_search_marks(seed, key, tied, scope, with_alive, with_floor):
    key_fn, dtype = KEYS[key]
    rng = np.random.default_rng(seed)
    leaves = [jnp.asarray(_values(rng, s, dtype, tied)) for s in SHAPES]
    groups = {"leaf": range(len(SHAPES)), "global": [0] * len(SHAPES), "pairs": [i // 2 for i in range(len(SHAPES))]}
    groups = tuple(groups[scope])
    alive = [jnp.asarray(rng.random(s) < 0.7) for s in SHAPES] if with_alive else None
    floor = [jnp.asarray(rng.random(s) < 0.6) for s in SHAPES] if with_floor else None
    n_groups = max(groups) + 1
    room = np.zeros(n_groups, np.int64)
    for g, x, a in zip(groups, leaves, alive or leaves):
        room[g] += int(np.sum(a)) if with_alive else x.size
    counts = jnp.asarray(rng.integers(0, room + 1), jnp.int32)
    got = _lowest(True)(leaves, key_fn, groups, counts, alive, floor)
    want = _lowest(False)(leaves, key_fn, groups, counts, alive, floor)
    for g_mark, w_mark in zip(got, want):
        np.testing.assert_array_equal(g_mark, w_mark)
    marked = np.zeros(n_groups, np.int64)
    for g, m in zip(groups, got):
        marked[g] += int(np.sum(m))
    np.testing.assert_array_equal(marked, counts)  # exactly counts[g] per group


def test_the_native_marks_are_the_lowest_by_key_then_position():
    # One group of two leaves: keys 2, 1, 1 | 1, 0; three lowest: the 0, then the first
    # two 1s in position order (the two in the first leaf).
    leaves = [jnp.asarray([2, 1, 1], jnp.int32), jnp.asarray([1, 0], jnp.int32)]
    for native in (True, False):
        marks = _lowest(native)(leaves, _select.given_key, (0, 0), jnp.asarray([3], jnp.int32), None)
        assert [m.tolist() for m in marks] == [[False, True, True], [False, True]]


def test_many_leaves_are_marked_in_several_calls():
    leaves = [jnp.asarray(np.random.default_rng(i).standard_normal(6), jnp.float32) for i in range(300)]
    groups = tuple([0] * 300)
    run = _lowest(True)
    text = run.lower(leaves, _select.magnitude_key, groups, jnp.asarray([900], jnp.int32), None).as_text()
    assert text.count("@jaxreg_select_mark") == 3 and text.count("@jaxreg_select_threshold") == 1
    marks = run(leaves, _select.magnitude_key, groups, jnp.asarray([900], jnp.int32), None)
    flat = np.abs(np.concatenate([np.asarray(x) for x in leaves]))
    np.testing.assert_array_equal(np.concatenate([np.asarray(m) for m in marks]), flat < np.sort(flat)[900])


def test_native_calls_whose_operands_do_not_fit_raise_instead_of_crashing():
    code = """
        import jax, jax.numpy as jnp, numpy as np
        import jaxreg._native as native
        assert native.available()
        i64 = np.int64

        def rows_of(leaves, rows, source):
            rows = np.asarray(rows or [1] * len(leaves), i64)
            return rows, np.asarray(source or [(i, 0) for i in range(len(leaves))], i64).reshape(-1)

        def threshold(out, counts, leaves, groups, kind=0, alive=(), floor=(), rows=None, source=None):
            rows, source = rows_of(leaves, rows, source)
            call = jax.ffi.ffi_call("jaxreg_select_threshold", jax.ShapeDtypeStruct((out,), jnp.int32))
            return call(counts, *leaves, *alive, *floor, groups=np.asarray(groups, i64), rows=rows, source=source,
                        kind=i64(kind), has_alive=i64(bool(alive)), has_floor=i64(bool(floor)))

        def mark(found, leaves, ids, groups, n_groups, n_leaves, kind=0, sizes=None):
            results = [jax.ShapeDtypeStruct((n,), jnp.bool_) for n in (sizes or [x.size for x in leaves])]
            rows, source = rows_of(leaves, None, None)
            call = jax.ffi.ffi_call("jaxreg_select_mark", results)
            return call(found, *leaves, ids=np.asarray(ids, i64), groups=np.asarray(groups, i64), rows=rows,
                        source=source, n_groups=i64(n_groups), n_leaves=i64(n_leaves), kind=i64(kind),
                        has_alive=i64(0), has_floor=i64(0))

        f, c = jnp.ones(5, jnp.float32), jnp.asarray([2], jnp.int32)
        cases = {
            "result too small": lambda: threshold(1, c, [f], [0]),
            "group out of range": lambda: threshold(2, c, [f], [3]),
            "unknown key kind": lambda: threshold(2, c, [f], [0], kind=7),
            "int keys of floats": lambda: threshold(2, c, [f], [0], kind=2),
            "alive of another size": lambda: threshold(2, c, [f], [0], alive=[jnp.ones(3, bool)]),
            "floor of another size": lambda: threshold(2, c, [f], [0], alive=[jnp.ones(5, bool)],
                                                       floor=[jnp.ones(4, bool)]),
            "counts of floats": lambda: threshold(2, jnp.asarray([2.0]), [f], [0]),
            "rows that do not divide": lambda: threshold(2, c, [f], [0], rows=[2]),
            "row out of range": lambda: threshold(2, c, [f], [0], source=[(0, 1)]),
            "operand out of range": lambda: threshold(2, c, [f], [0], source=[(1, 0)]),
            "thresholds too short": lambda: mark(jnp.zeros(1, jnp.int32), [f], [0], [0], 1, 1),
            "leaf id out of range": lambda: mark(jnp.zeros(2, jnp.int32), [f], [5], [0], 1, 1),
            "result of another size": lambda: mark(jnp.zeros(2, jnp.int32), [f], [0], [0], 1, 1, sizes=[9]),
        }
        for name, call in cases.items():
            try:
                jax.block_until_ready(jax.jit(call)())
                print(name, "ran")
            except Exception as error:
                print(name, type(error).__name__, "jaxreg_select" in str(error))
        """
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 13, lines
    assert all(line.endswith("Error True") for line in lines), lines
