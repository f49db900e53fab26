"""jaxreg on parameters sharded over 8 simulated CPU devices: every check, in one process.

``tests/test_sharding.py`` runs this script in a subprocess, so that the rest of the
suite keeps one device, and asserts on the JSON it writes: one record per check,
``{"ok": bool, "detail": str}``. Compilation dominates the run time on a small CPU, so
the checks share programs: all transforms are one jitted program and all mask
functions another, compiled once on the sharded parameters per mesh; the one-device
references are compiled once for both meshes.

Every check runs on two meshes of shape ``(data=2, model=4)``: one whose axes are
``Auto`` (GSPMD propagates the shardings through the program) and one whose axes are
``Explicit`` (shardings are part of the array types; the default of ``jax.make_mesh``
in this JAX), each entered with ``jax.set_mesh`` as JAX recommends.

Run by hand: ``python tests/sharded/checks.py [out.json]`` (it prints the records).
"""

from __future__ import annotations

import os

# Before JAX is imported: the host platform gets 8 devices, in this process only.
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()

import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any, NamedTuple  # noqa: E402

import chex  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxreg  # noqa: E402
from jaxreg import pruning  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")  # as tests/conftest.py

MODES = ("auto", "explicit")
MESH_SHAPE = (2, 4)
MESH_AXES = ("data", "model")

# FSDP-style: kernels split over both axes or over one, on different dimensions; an
# embedding split 8 ways on its rows; biases split or replicated; a replicated scalar.
LAYOUT = {
    "dense1": {"kernel": ((64, 128), P("data", "model")), "bias": ((128,), P("model"))},
    "dense2": {"kernel": ((128, 32), P("model", None)), "bias": ((32,), P())},
    "conv": {"kernel": ((3, 3, 8, 16), P(None, None, "data", "model"))},
    "embed": {"table": ((256, 16), P(("data", "model"), None))},
    "temperature": ((), P()),
}


def _is_layout(x: Any) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], P)


def _is_spec(x: Any) -> bool:
    return isinstance(x, P)


SHAPES = jax.tree.map(lambda t: t[0], LAYOUT, is_leaf=_is_layout)
SPECS = jax.tree.map(lambda t: t[1], LAYOUT, is_leaf=_is_layout)


def random_tree(seed: int, scale: float = 1.0) -> Any:
    """Numpy arrays with the shapes of ``LAYOUT``."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: (scale * rng.standard_normal(s)).astype(np.float32), SHAPES, is_leaf=lambda s: isinstance(s, tuple)
    )


def make_mesh(mode: str) -> Mesh:
    kind = AxisType.Explicit if mode == "explicit" else AxisType.Auto
    return jax.make_mesh(MESH_SHAPE, MESH_AXES, axis_types=(kind,) * len(MESH_AXES))


def shardings(mesh: Mesh, specs: Any = SPECS) -> Any:
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=_is_spec)


# ----------------------------------------------------------------------------- HLO


class Collective(NamedTuple):
    op: str  # all-gather, all-reduce, all-to-all, collective-permute, reduce-scatter
    shapes: list[tuple[str, tuple[int, ...]]]  # (dtype, dims) of each result


_COLLECTIVE = re.compile(
    r"=\s+(\([^=]*?\)|[a-z0-9]+\[[0-9,]*\](?:\{[^}]*\})?)\s+"
    r"(all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(?:-start)?\("
)
_ARRAY = re.compile(r"([a-z][a-z0-9]*)\[([0-9,]*)\]")


def collectives(hlo: str) -> list[Collective]:
    """Every cross-device collective in a compiled (SPMD-partitioned) HLO module, with its result shapes."""
    found = []
    for shape, op in _COLLECTIVE.findall(hlo):
        arrays = [(dtype, tuple(int(d) for d in dims.split(",") if d)) for dtype, dims in _ARRAY.findall(shape)]
        found.append(Collective(op, arrays))
    return found


def collective_counts(hlo: str) -> dict[str, int]:
    """How many of each collective op the compiled program holds (ops, not executions)."""
    counts: dict[str, int] = {}
    for c in collectives(hlo):
        counts[c.op] = counts.get(c.op, 0) + 1
    return counts


def _record_no_gathers(rec, check: str, compiled, mesh, what: str) -> None:
    """Records that the compiled program of ``what`` all-gathers no parameter-sized array."""
    hlo = compiled.as_text()
    gathers = parameter_gathers(hlo, mesh)
    rec.record(
        check,
        not gathers,
        f"one program of {what}, collectives {collective_counts(hlo)}"
        + (f"; parameter-sized all-gathers {gathers}" if gathers else ""),
    )


def parameter_gathers(hlo: str, mesh: Mesh) -> list[str]:
    """All-gathers whose result is parameter-sized.

    A result counts when it holds at least as many elements as the per-device shard of
    the smallest sharded parameter (what gathering any shard produces). Gathers of a
    few flags per unit (structured masks) stay below that.
    """
    shapes = jax.tree.leaves(SHAPES, is_leaf=lambda s: isinstance(s, tuple))
    specs = jax.tree.leaves(SPECS, is_leaf=_is_spec)
    floor = min(
        math.prod(NamedSharding(mesh, spec).shard_shape(shape))
        for shape, spec in zip(shapes, specs)
        if any(axis is not None for axis in spec)
    )
    return [
        f"{dtype}{list(dims)}"
        for c in collectives(hlo)
        if c.op == "all-gather"
        for dtype, dims in c.shapes
        if math.prod(dims) >= floor
    ]


def non_scalar_collectives(hlo: str) -> list[str]:
    """Collectives other than all-reduces of single numbers (an all-reduce may carry a tuple of them)."""
    return [
        f"{c.op} {[f'{d}{list(s)}' for d, s in c.shapes]}"
        for c in collectives(hlo)
        if c.op != "all-reduce" or any(math.prod(dims) != 1 for _, dims in c.shapes)
    ]


# ----------------------------------------------------------------------------- what runs


def transforms(params: Any) -> dict[str, optax.GradientTransformation]:
    """Every jaxreg transform, set so that it changes something on these params."""
    weights = jaxreg.masks.weights_only
    return {
        "clip": jaxreg.clip(0.5),
        "clip_by_global_norm": jaxreg.clip_by_global_norm(1.0),
        "clip_by_leaf_norm": jaxreg.clip_by_leaf_norm(1.0),
        "coupled_weight_decay": jaxreg.coupled_weight_decay(0.1, mask=weights),
        "decoupled_weight_decay": jaxreg.decoupled_weight_decay(0.1, learning_rate=0.1),
        "l1_prox": jaxreg.l1_prox(2.0, learning_rate=0.1),
        "elastic_net_prox": jaxreg.elastic_net_prox(2.0, 0.5, learning_rate=0.1),
        "group_lasso_prox": jaxreg.group_lasso_prox(20.0, learning_rate=0.1, mask=weights),
        "project_box": jaxreg.project_box(-1.0, 1.0),
        "project_nonnegative": jaxreg.project_nonnegative(),
        "project_l2_ball": jaxreg.project_l2_ball(10.0),
        "project_l1_ball": jaxreg.project_l1_ball(100.0),
        "max_norm": jaxreg.max_norm(0.5, mask=weights),
        "keep_pruned": pruning.keep_pruned(lambda p: pruning.threshold_mask(p, 0.7)),
        "prune_during_training_leaf": pruning.prune_during_training(pruning.magnitude_score, 0.6),
    }


def mask_functions() -> dict[str, Callable[[Any], Any]]:
    """Every mask function, as ``params -> keep`` (global magnitude pruning has its own program)."""
    weights = jaxreg.masks.weights_only
    key = jax.random.key(3)
    return {
        "magnitude_mask_leaf": lambda p: pruning.magnitude_mask(p, 0.7),
        "structured_mask": lambda p: pruning.structured_mask(p, 0.5, where=weights),
        "n_m_mask": lambda p: pruning.n_m_mask(p, 2, 4, where=jaxreg.masks.by_path("dense|embed")),
        "random_mask_global": lambda p: pruning.random_mask(key, p, 0.5, scope="global"),
        "threshold_mask": lambda p: pruning.threshold_mask(p, 0.5),
    }


def card_chain() -> optax.GradientTransformation:
    """The design card's chain: global-norm clip -> Adam -> decoupled decay -> L1 prox -> box."""
    return optax.chain(
        jaxreg.clip_by_global_norm(1.0),
        optax.adam(1e-3),
        jaxreg.decoupled_weight_decay(1e-2, learning_rate=1e-3),
        jaxreg.l1_prox(1e-5, learning_rate=1e-3),
        jaxreg.project_box(-1.0, 1.0),
    )


def global_pruning(tx: optax.GradientTransformation) -> Callable:
    """One update of a pruning transform (it starts from its init state: the mask is computed)."""

    def step(g: Any, p: Any) -> tuple[Any, Any]:
        updates, state = tx.update(g, tx.init(p), p)
        return updates, state.keep

    return step


def _chain_step(tx: optax.GradientTransformation, g: Any, s: Any, p: Any) -> tuple[Any, Any]:
    updates, s = tx.update(g, s, p)
    return optax.apply_updates(p, updates), s


def gradual_run(p: Any) -> tuple[Any, Any]:
    """Five steps of Adam with gradual global pruning (0 -> 80 % over steps 1..4) in a scan."""
    schedule = pruning.polynomial_sparsity(0.8, begin_step=1, end_step=4, frequency=1)
    tx = optax.chain(optax.adam(1e-2), pruning.prune_during_training(pruning.magnitude_score, schedule, scope="global"))

    def body(carry: Any, i: jax.Array) -> tuple[Any, None]:
        p, s = carry
        g = jax.tree.map(lambda x: jnp.sin(x + i.astype(x.dtype)), p)
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (p, s), _ = jax.lax.scan(body, (p, tx.init(p)), jnp.arange(5, dtype=jnp.int32))
    return p, s[1].keep


# ----------------------------------------------------------------------------- checks


class Recorder:
    """Collects one record per check and prints it as it comes."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}

    def record(self, name: str, ok: bool, detail: str = "", **extra: Any) -> None:
        self.records[name] = {"ok": bool(ok), "detail": detail, **extra}
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)

    def error(self, name: str, exc: BaseException) -> None:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if "jaxreg" in f.filename] or [
            traceback.extract_tb(exc.__traceback__)[-1]
        ]
        where = f"{os.path.relpath(frames[-1].filename)}:{frames[-1].lineno}"
        self.record(name, False, f"{type(exc).__name__} (raised under {where}): {str(exc).splitlines()[0][:400]}")


def _max_diff(a: Any, b: Any) -> float:
    def diff(x: Any, y: Any) -> float:
        return float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0.0))

    return max(jax.tree.leaves(jax.tree.map(diff, a, b)), default=0.0)


def _close(a: Any, b: Any) -> bool:
    try:
        chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-6)
    except AssertionError:
        return False
    return True


def _identical(a: Any, b: Any) -> bool:
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(np.asarray(x), np.asarray(y))), a, b)))


def _resharded(out: Any, like: Any) -> list[str]:
    """Leaves of ``out`` not sharded as the matching leaf of ``like``."""
    problems = []
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(out)[0], jax.tree.leaves(like)):
        if not x.sharding.is_equivalent_to(y.sharding, x.ndim):
            have = getattr(x.sharding, "spec", type(x.sharding).__name__)
            problems.append(f"{jax.tree_util.keystr(path)}: {have}, params {y.sharding.spec}")
    return problems


def _state_problems(state: Any, params: Any) -> list[str]:
    """State leaves shaped like a parameter (moments, masks) but not sharded as it."""
    by_shape = {x.shape: x.sharding for x in jax.tree.leaves(params) if x.ndim}
    return [
        f"{jax.tree_util.keystr(path)}: {getattr(x.sharding, 'spec', type(x.sharding).__name__)}"
        for path, x in jax.tree_util.tree_flatten_with_path(state)[0]
        if x.shape in by_shape and not x.sharding.is_equivalent_to(by_shape[x.shape], x.ndim)
    ]


def _traceable(rec: Recorder, prefix: str, fns: dict[str, Callable], *args: Any) -> dict[str, Callable]:
    """The functions that trace on these (sharded) arguments; each other one is recorded as failed."""
    good = {}
    for name, fn in fns.items():
        try:
            jax.eval_shape(fn, *args)
            good[name] = fn
        except Exception as exc:  # noqa: BLE001  (a failure is a finding: record it, go on)
            rec.error(f"{prefix}/{name}", exc)
    return good


def _run_all(fns: dict[str, Callable], *args: Any) -> dict[str, Any]:
    return {name: fn(*args) for name, fn in fns.items()}


def _updates_of(tx: optax.GradientTransformation, name: str, grads: Any, states: Any, params: Any) -> Any:
    return tx.update(grads, states[name], params)[0]


class References:
    """One-device results, computed once and shared by both meshes."""

    def __init__(self, params: Any, grads: Any) -> None:
        self.params, self.grads = params, grads
        txs = transforms(params)
        fns = {name: functools.partial(_updates_of, tx, name) for name, tx in txs.items()}
        states = {name: tx.init(params) for name, tx in txs.items()}
        self.transforms = jax.jit(functools.partial(_run_all, fns))(grads, states, params)
        masks = {name: functools.partial(_masked, fn) for name, fn in mask_functions().items()}
        self.masks = jax.jit(functools.partial(_run_all, masks))(params)
        with jax.numpy_dtype_promotion("standard"):  # optax.adam is not strict-clean
            tx = card_chain()
            self.card_chain = jax.jit(functools.partial(_chain_step, tx))(grads, tx.init(params), params)
            self.gradual = jax.jit(gradual_run)(params)
        self.magnitude_global = pruning.magnitude_mask(params, 0.9, scope="global")
        pdt = pruning.prune_during_training(pruning.magnitude_score, 0.8, scope="global")
        self.pdt_global = jax.jit(global_pruning(pdt))(grads, params)


def check_transforms(rec: Recorder, mode: str, mesh: Mesh, ref: References) -> None:
    """Every transform under jit on sharded params and grads: one device's numbers, the params' shardings."""
    sp, sg = jax.device_put(ref.params, shardings(mesh)), jax.device_put(ref.grads, shardings(mesh))
    txs = transforms(ref.params)
    states = {name: tx.init(sp) for name, tx in txs.items()}  # made the usual way: init on the sharded params
    fns = {name: functools.partial(_updates_of, tx, name) for name, tx in txs.items()}
    fns = _traceable(rec, f"{mode}/transform", fns, sg, states, sp)
    compiled = jax.jit(functools.partial(_run_all, fns)).lower(sg, states, sp).compile()
    out = compiled(sg, states, sp)
    for name in fns:
        moved = _resharded(out[name], sp)
        unspread_state = _state_problems(states[name], sp)
        rec.record(
            f"{mode}/transform/{name}",
            _close(out[name], ref.transforms[name]) and not moved and not unspread_state,
            f"max |sharded - one device| = {_max_diff(out[name], ref.transforms[name]):.3g}"
            + (f"; updates resharded: {moved}" if moved else "")
            + (f"; init state not sharded as the params: {unspread_state}" if unspread_state else ""),
        )
    _record_no_gathers(rec, f"{mode}/hlo/all_transforms", compiled, mesh, f"{len(fns)} transforms")


def _masked(fn: Callable[[Any], Any], p: Any) -> tuple[Any, Any]:
    """A pruning mask and the params it prunes (``apply_mask`` needs the mask sharded as the params)."""
    keep = fn(p)
    return keep, pruning.apply_mask(p, keep)


def _mask_sharding_problems(mode: str, keep: Any, params: Any) -> list[str]:
    """Mask leaves not sharded as their parameter.

    With Auto axes an all-True leaf (one the function leaves alone) is a constant, which
    XLA places where its consumers want it; every other leaf must follow its parameter.
    """
    if mode == "explicit":
        return _resharded(keep, params)
    computed = jax.tree.map(lambda k, p: k if not np.all(np.asarray(k)) else p, keep, params)
    return _resharded(computed, params)


def check_masks(rec: Recorder, mode: str, mesh: Mesh, ref: References) -> None:
    """Every mask function under jit on sharded params: identical masks, sharded as the params."""
    sp = jax.device_put(ref.params, shardings(mesh))
    fns = {name: functools.partial(_masked, fn) for name, fn in mask_functions().items()}
    fns = _traceable(rec, f"{mode}/mask", fns, sp)
    compiled = jax.jit(functools.partial(_run_all, fns)).lower(sp).compile()
    out = compiled(sp)
    value_free = [name for name in fns if name.startswith("random_mask")]
    # Random masks read only the params' shapes: nothing ties them to the params'
    # devices, so the caller says where they go (out_shardings); the draws then run
    # sharded (threefry is partitionable) and give the same bits.
    if value_free:
        placed = jax.jit(
            functools.partial(_run_all, {name: fns[name] for name in value_free}),
            out_shardings={name: (shardings(mesh), shardings(mesh)) for name in value_free},
        )(sp)
    for name in fns:
        keep = out[name][0]
        same = _identical(out[name], ref.masks[name])
        how = "sharded as the params"
        if name in value_free:
            same = same and _identical(placed[name], ref.masks[name])
            keep, how = placed[name][0], "with out_shardings, sharded as the params"
        problems = _mask_sharding_problems(mode, keep, sp)
        rec.record(
            f"{mode}/mask/{name}",
            same and not problems,
            f"mask and pruned params {'identical' if same else 'DIFFERENT'} to one device; {how}: {problems or 'yes'}",
        )
    _record_no_gathers(rec, f"{mode}/hlo/all_masks", compiled, mesh, f"{len(fns)} mask functions and apply_mask")


def check_hlo(rec: Recorder, mode: str, mesh: Mesh, ref: References) -> None:
    """The card's chain and global magnitude pruning communicate scalars only, and give one device's numbers."""
    sp, sg = jax.device_put(ref.params, shardings(mesh)), jax.device_put(ref.grads, shardings(mesh))
    with jax.numpy_dtype_promotion("standard"):  # optax.adam is not strict-clean
        tx = card_chain()
        programs = {
            "card_chain": (functools.partial(_chain_step, tx), (sg, tx.init(sp), sp), ref.card_chain),
            "magnitude_mask_global": (
                lambda p: pruning.magnitude_mask(p, 0.9, scope="global"),
                (sp,),
                ref.magnitude_global,
            ),
            "prune_during_training_global": (
                global_pruning(pruning.prune_during_training(pruning.magnitude_score, 0.8, scope="global")),
                (sg, sp),
                ref.pdt_global,
            ),
        }
        for name, (fn, args, expected) in programs.items():
            try:
                compiled = jax.jit(fn).lower(*args).compile()
                out = compiled(*args)
            except Exception as exc:  # noqa: BLE001
                rec.error(f"{mode}/hlo/{name}", exc)
                rec.error(f"{mode}/sharded/{name}", exc)
                continue
            hlo = compiled.as_text()
            counts = collective_counts(hlo)
            gathers, others = parameter_gathers(hlo, mesh), non_scalar_collectives(hlo)
            detail = f"collectives {counts}" + (f"; parameter-sized all-gathers {gathers}" if gathers else "")
            if others:
                detail += f"; not all-reduces of scalars: {others[:6]}"
            rec.record(f"{mode}/hlo/{name}", not gathers and not others, detail, counts=counts)
            tree = out[0] if name == "card_chain" else out
            moved = _resharded(tree, sp) if name != "prune_during_training_global" else _resharded(out[1], sp)
            same = _close(out, expected) if name == "card_chain" else _identical(out, expected)
            rec.record(
                f"{mode}/sharded/{name}",
                same and not moved,
                f"max |sharded - one device| = {_max_diff(out, expected):.3g}"
                + (f"; resharded: {moved}" if moved else ""),
            )


def check_gradual_pruning(rec: Recorder, mode: str, mesh: Mesh, ref: References) -> None:
    """Five steps of Adam + gradual global pruning in a scan: the same masks and params as on one device."""
    name = f"{mode}/gradual_pruning_5_steps"
    sp = jax.device_put(ref.params, shardings(mesh))
    try:
        with jax.numpy_dtype_promotion("standard"):
            params, keep = jax.jit(gradual_run)(sp)
    except Exception as exc:  # noqa: BLE001
        rec.error(name, exc)
        return
    same = _identical(keep, ref.gradual[1])
    kept = sum(int(np.sum(np.asarray(k))) for k in jax.tree.leaves(keep))
    moved = _resharded(params, sp)
    rec.record(
        name,
        same and _close(params, ref.gradual[0]) and not moved,
        f"masks {'identical' if same else 'DIFFERENT'}, params max diff {_max_diff(params, ref.gradual[0]):.3g}, "
        f"{kept} weights kept" + (f"; params resharded: {moved}" if moved else ""),
    )


def _raises(fn: Callable[[], Any], exc_type: type, needle: str) -> tuple[bool, str]:
    try:
        fn()
    except exc_type as exc:
        return needle in str(exc), str(exc).splitlines()[0][:300]
    except Exception as exc:  # noqa: BLE001
        return False, f"raised {type(exc).__name__} instead: {str(exc).splitlines()[0][:300]}"
    return False, "no error"


def check_bad_input(rec: Recorder, mode: str, mesh: Mesh, ref: References) -> None:
    """Trees that do not match the sharded params raise errors naming the leaf; a missing mesh axis is JAX's error."""
    params = ref.params
    sp = jax.device_put(params, shardings(mesh))
    missing = jax.tree.map(lambda _: True, params)
    del missing["dense2"]["kernel"]
    extra = dict(jax.tree.map(lambda x: np.ones(np.shape(x), np.bool_), params), head={"kernel": True})
    low = jax.tree.map(lambda _: -1.0, params)
    del low["conv"]
    cases = {
        "mask_tree_missing_leaf": (
            lambda: jax.jit(lambda p: jaxreg.l1_prox(0.1, mask=missing).update(p, None, p))(sp),
            "l1_prox: mask has no entry for params['dense2']['kernel']",
        ),
        "bound_tree_missing_leaf": (
            lambda: jaxreg.project_box(low, 1.0).init(sp),
            "project_box: lower has no entry for params['conv']['kernel']",
        ),
        "keep_tree_extra_leaf": (
            lambda: pruning.keep_pruned(extra).init(sp),
            "keep_pruned: keep has an entry params['head']['kernel'] that the params lack",
        ),
        "where_tree_missing_leaf": (
            lambda: jax.jit(lambda p: pruning.magnitude_mask(p, 0.5, scope="global", where=missing))(sp),
            "magnitude_mask: where has no entry for params['dense2']['kernel']",
        ),
        # jaxreg takes no mesh and no axis name (the shardings come with the arrays), so
        # an axis the mesh lacks is caught by JAX where the sharding is made.
        "unknown_mesh_axis": (
            lambda: jax.device_put(params["dense1"]["kernel"], NamedSharding(mesh, P("fsdp", None))),
            "fsdp",
        ),
    }
    for name, (fn, needle) in cases.items():
        ok, message = _raises(fn, ValueError, needle)
        rec.record(f"{mode}/bad_input/{name}", ok, message)

    # A bound or pruning mask shaped like params['dense1']['kernel'] but split the other
    # way round: with Auto axes XLA moves it to the parameter's devices (same numbers);
    # with Explicit axes JAX refuses to mix the two, and jaxreg should say which leaf.
    rng = np.random.default_rng(7)
    lower = jax.tree.map(lambda x: -np.abs(rng.standard_normal(np.shape(x))).astype(np.float32), params)
    keep = pruning.threshold_mask(params, 0.5)
    other = dict(SPECS, dense1=dict(SPECS["dense1"], kernel=P("model", "data")))
    sg = jax.device_put(ref.grads, shardings(mesh))
    cases = {
        "differently_sharded_bounds": ("lower", lambda t: jaxreg.project_box(t, 1.0), lower),
        "differently_sharded_keep": ("keep", pruning.keep_pruned, keep),
    }
    for name, (arg, factory, tree) in cases.items():
        tx = factory(jax.device_put(tree, shardings(mesh, other)))
        step = jax.jit(lambda g, p, tx=tx: tx.update(g, tx.init(p), p)[0])
        if mode == "explicit":
            ok, message = _raises(functools.partial(step, sg, sp), ValueError, f"{arg} for params['dense1']['kernel']")
            rec.record(f"{mode}/bad_input/{name}", ok, message)
            continue
        try:
            out = step(sg, sp)
            tx_ref = factory(tree)
            expected = jax.jit(lambda g, p, tx=tx_ref: tx.update(g, tx.init(p), p)[0])(ref.grads, params)
            moved = _resharded(out, sp)
            rec.record(
                f"{mode}/bad_input/{name}",
                _close(out, expected) and not moved,
                f"max |sharded - one device| = {_max_diff(out, expected):.3g}" + (f"; moved {moved}" if moved else ""),
            )
        except Exception as exc:  # noqa: BLE001
            rec.error(f"{mode}/bad_input/{name}", exc)


def check_masks_without_mesh(rec: Recorder, mode: str, mesh: Mesh, ref: References) -> None:
    """Outside ``jax.set_mesh``: random masks and scores work; n_m_mask names a leaf whose shards split its blocks.

    Random masks read only the params' shapes; with Explicit axes their draws are placed
    by the params' shardings, which name the mesh (with Auto axes nothing does).
    """
    sp = jax.device_put(ref.params, shardings(mesh))
    random_global = mask_functions()["random_mask_global"]
    score = pruning.random_score(jax.random.key(3))
    cases = {
        "random_mask": (lambda: random_global(sp), ref.masks["random_mask_global"][0]),
        "random_mask_jit": (lambda: jax.jit(random_global)(sp), ref.masks["random_mask_global"][0]),
        "random_score": (lambda: score(sp), score(ref.params)),
    }
    for name, (fn, expected) in cases.items() if mode == "explicit" else ():
        try:
            out = fn()
            problems = _resharded(out, sp)
            same = _identical(out, expected)
            rec.record(
                f"{mode}/mask_without_mesh/{name}",
                same and not problems,
                f"{'identical' if same else 'DIFFERENT'} to one device; sharded as the params: {problems or 'yes'}",
            )
        except Exception as exc:  # noqa: BLE001
            rec.error(f"{mode}/mask_without_mesh/{name}", exc)
    # dense1's kernel (64, 128) is split 4 ways along its last axis: shards of 32, so
    # blocks of 64 would straddle two shards.
    name = f"{mode}/bad_input/n_m_mask_blocks_across_shards"
    across = jaxreg.masks.by_path("dense1/kernel")
    if mode == "explicit":
        needle = (
            "n_m_mask: blocks of m=64 along axis -1 of params['dense1']['kernel'] with shape (64, 128) would straddle"
        )
        ok, message = _raises(lambda: pruning.n_m_mask(sp, 2, 64, where=across), ValueError, needle)
        rec.record(name, ok and "would straddle its shards" in message and "shards of 32" in message, message)
        return
    try:
        same = _identical(pruning.n_m_mask(sp, 2, 64, where=across), pruning.n_m_mask(ref.params, 2, 64, where=across))
        rec.record(
            name, same, f"{'identical' if same else 'DIFFERENT'} to one device (Auto axes: XLA moves the blocks)"
        )
    except Exception as exc:  # noqa: BLE001
        rec.error(name, exc)


CHECKS = (check_transforms, check_masks, check_hlo, check_gradual_pruning, check_bad_input)


def main(path: str | None) -> dict[str, dict[str, Any]]:
    assert jax.device_count() == 8, f"expected 8 simulated CPU devices, got {jax.devices()}"
    rec = Recorder()
    params, grads = random_tree(0), random_tree(1, scale=0.3)
    params["dense2"]["kernel"][:16] = 0.25  # ties at a threshold
    start = time.perf_counter()
    ref = References(params, grads)
    timings = {"references": time.perf_counter() - start}
    for mode in MODES:
        mesh = make_mesh(mode)
        with jax.set_mesh(mesh):
            for check in CHECKS:
                start = time.perf_counter()
                try:
                    check(rec, mode, mesh, ref)
                except Exception as exc:  # noqa: BLE001
                    rec.error(f"{mode}/{check.__name__}", exc)
                timings[f"{mode}/{check.__name__}"] = time.perf_counter() - start
        start = time.perf_counter()
        try:
            check_masks_without_mesh(rec, mode, mesh, ref)
        except Exception as exc:  # noqa: BLE001
            rec.error(f"{mode}/check_masks_without_mesh", exc)
        timings[f"{mode}/check_masks_without_mesh"] = time.perf_counter() - start
    print("seconds:", {k: round(v, 1) for k, v in timings.items()}, flush=True)
    if path:
        with open(path, "w") as f:
            json.dump(rec.records, f, indent=1)
    return rec.records


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
