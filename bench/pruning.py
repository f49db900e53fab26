"""Benchmark: global 90% magnitude pruning, time and peak extra memory.

Three ways to find which 90% of the float32 parameters (50 leaves of uneven sizes; 10 at
the tiny size, whose time goes to compiling) to prune, over the whole tree at once:

* ``jaxreg``: ``jaxreg.pruning.magnitude_mask(params, 0.9, scope="global")`` under
  ``jit``: bisection on the float bit pattern with per-leaf counts, no sort, no
  concatenation;
* ``jnp_sort``: the textbook JAX way, concatenate ``|w|``, ``jnp.sort``, take the k-th
  value as the threshold, compare (under ``jit``);
* ``torch``: ``torch.nn.utils.prune.global_unstructured(..., L1Unstructured, amount=0.9)``
  on one module per leaf (it concatenates the scores and calls ``torch.topk``).

A second case, ``pruning_many_leaves``, times the first call (trace, compile and run)
of each mask function under ``jit`` on a tree of many small leaves of mixed transformer
shapes (per layer: four ``(d, d)`` attention kernels, an ``(d, 4d)`` and a ``(4d, d)``
MLP kernel, their biases and two layer-norm scales, ``d = 128``; 1000 leaves), against
the first call of a jitted ``optax.adam`` step on the same tree, each in a fresh process:
what the first pruning step of a real model costs before any weight is pruned.

Each implementation runs in its own process, so that its peak memory is its own: the
parameters are made and the program compiled first, then the peak resident set size is
reset (``/proc/self/clear_refs``) and the extra memory is the peak during the first
real call minus the resident size just before it (the mask it returns included); for
the JAX programs, XLA's own count of temporaries plus output when that is larger.
Times are medians of repeats after a warm-up. Ratios are to ``jnp_sort`` and to
``torch`` in the same run, and memory is reported as a multiple of the parameters' bytes.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench import harness

SIZES = {"tiny": [20_000], "default": [10_000_000, 100_000_000]}
LEAVES = {"tiny": 10, "default": 50}
IMPLS = ("jaxreg", "jnp_sort", "torch")
MANY_LEAVES = {"tiny": 20, "default": 1000}
MANY_LEAVES_WIDTH = 128
FIRST_CALL_IMPLS = (
    "optax_adam",
    "magnitude_mask_leaf",
    "magnitude_mask_global",
    "random_mask",
    "structured_mask",
    "prune_during_training",
)
SPARSITY = 0.9
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _status_kib(field: str) -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _peak_extra_bytes(call: Callable[[], Any]) -> int:
    """Peak resident bytes that ``call()`` adds, measured with the kernel's high-water mark."""
    pathlib.Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    before = _status_kib("VmRSS")
    result = call()
    peak = _status_kib("VmHWM")
    del result
    return 1024 * max(peak - before, 0)


def _jax_program(impl: str, shapes: list[tuple[int, ...]]) -> tuple[Callable[[], Any], int]:
    import jax
    import jax.numpy as jnp

    from jaxreg import pruning

    rng = np.random.default_rng(0)
    params = {f"leaf{i:02d}": jnp.asarray(rng.standard_normal(s, np.float32)) for i, s in enumerate(shapes)}
    n = sum(x.size for x in params.values())

    def sort_mask(tree):
        flat = jnp.concatenate([jnp.abs(x).ravel() for x in tree.values()])
        threshold = jnp.sort(flat)[round(SPARSITY * n) - 1]
        return {k: jnp.abs(x) > threshold for k, x in tree.items()}

    def jaxreg_mask(tree):
        return pruning.magnitude_mask(tree, SPARSITY, scope="global")

    compiled = jax.jit(jaxreg_mask if impl == "jaxreg" else sort_mask).lower(params).compile()
    memory = compiled.memory_analysis()
    xla_bytes = memory.temp_size_in_bytes + memory.output_size_in_bytes
    return lambda: jax.block_until_ready(compiled(params)), n, xla_bytes


def _torch_program(shapes: list[tuple[int, ...]]) -> tuple[Callable[[], Any], int]:
    import torch
    from torch.nn.utils import prune

    torch.set_num_threads(os.cpu_count() or 1)
    gen = torch.Generator().manual_seed(0)
    modules = []
    for shape in shapes:
        module = torch.nn.Module()
        module.weight = torch.nn.Parameter(torch.randn(shape, generator=gen))
        modules.append(module)
    originals = [m.weight for m in modules]

    def run():
        prune.global_unstructured([(m, "weight") for m in modules], prune.L1Unstructured, amount=SPARSITY)
        masks = [m.weight_mask for m in modules]
        for m, w in zip(modules, originals):  # undo, so that every call prunes the same weights
            prune.remove(m, "weight")
            m.weight = w
        return masks

    return run, sum(int(np.prod(s)) for s in shapes), None


def transformer_shapes(leaves: int, d: int = MANY_LEAVES_WIDTH) -> list[tuple[int, ...]]:
    """``leaves`` shapes of a transformer's layers, in their order, the last layer cut short."""
    layer = [(d, d), (d,)] * 4 + [(d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return [layer[i % len(layer)] for i in range(leaves)]


def first_call_child(impl: str, leaves: int) -> dict[str, Any]:
    """The first call of one jitted function on ``leaves`` leaves, in this (fresh) process."""
    import jax
    import jax.numpy as jnp
    import optax

    from jaxreg import pruning

    rng = np.random.default_rng(0)
    params = {
        f"leaf{i:04d}": jnp.asarray(rng.standard_normal(s, np.float32))
        for i, s in enumerate(transformer_shapes(leaves))
    }
    key = jax.random.key(0)
    adam = optax.adam(1e-3)
    pdt = pruning.prune_during_training(pruning.magnitude_score, 0.5)

    def adam_step(p):
        updates, _ = adam.update(p, adam.init(p), p)
        return optax.apply_updates(p, updates)

    fns = {
        "optax_adam": adam_step,
        "magnitude_mask_leaf": lambda p: pruning.magnitude_mask(p, 0.5),
        "magnitude_mask_global": lambda p: pruning.magnitude_mask(p, 0.5, scope="global"),
        "random_mask": lambda p: pruning.random_mask(key, p, 0.5),
        "structured_mask": lambda p: pruning.structured_mask(
            p, 0.5, where=lambda t: jax.tree.map(lambda x: x.ndim == 2, t)
        ),
        "prune_during_training": lambda p: pdt.update(p, pdt.init(p), p)[0],
    }
    with jax.numpy_dtype_promotion("standard"):  # optax.adam is not strict-promotion clean
        start = time.perf_counter()
        lowered = jax.jit(fns[impl]).lower(params)
        traced = time.perf_counter()
        compiled = lowered.compile()
        done = time.perf_counter()
        jax.block_until_ready(compiled(params))
        ran = time.perf_counter()
    n = sum(int(np.prod(s)) for s in transformer_shapes(leaves))
    return dict(
        impl=impl, leaves=leaves, params=n, trace_s=traced - start, compile_s=done - traced, first_call_s=ran - start
    )


def run_many_leaves(size_name: str) -> list[dict]:
    """The first call of every mask function and of ``optax.adam`` on many leaves, each in a fresh process."""
    measured = {}
    # At the tiny size (the test suite's), one mask function is enough to keep the case running.
    for impl in FIRST_CALL_IMPLS if size_name == "default" else FIRST_CALL_IMPLS[:1] + ("magnitude_mask_global",):
        cmd = [sys.executable, "-m", "bench.pruning", "--first-call", impl, str(MANY_LEAVES[size_name])]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
        measured[impl] = json.loads(out.strip().splitlines()[-1])
    adam = measured["optax_adam"]["first_call_s"]
    return [
        harness.emit(
            dict(
                bench="pruning_many_leaves",
                machine=harness.machine_name(),
                impl=impl,
                leaves=m["leaves"],
                params=m["params"],
                median_s=m["first_call_s"],
                trace_s=m["trace_s"],
                compile_s=m["compile_s"],
                ratio_to_adam=m["first_call_s"] / adam,
            )
        )
        for impl, m in measured.items()
    ]


def child(impl: str, size: int, repeats: int, leaves: int) -> dict[str, Any]:
    """Measures one implementation at one size (on ``leaves`` leaves) in this process."""
    shapes = harness.leaf_shapes(size, leaves=leaves)
    start = time.perf_counter()
    run, n, xla_bytes = _torch_program(shapes) if impl == "torch" else _jax_program(impl, shapes)
    setup_s = time.perf_counter() - start
    rss = _peak_extra_bytes(run)
    median = harness.median_seconds(run, repeats, warmup=0)
    # XLA's own account of its temporaries and output is exact; the resident-set growth can
    # miss buffers that reuse memory the allocator already holds. Report the larger.
    peak = max(rss, xla_bytes or 0)
    return dict(impl=impl, params=n, median_s=median, peak_extra_bytes=peak, rss_extra_bytes=rss, setup_s=setup_s)


def run(size_name: str, repeats: int) -> list[dict]:
    """Measures every implementation at every size, each in a fresh process."""
    records = []
    for size in SIZES[size_name]:
        measured = {}
        for impl in IMPLS:
            cmd = [sys.executable, "-m", "bench.pruning", "--child", impl, str(size), str(repeats)]
            cmd.append(str(LEAVES[size_name]))
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
            measured[impl] = json.loads(out.strip().splitlines()[-1])
        for impl in IMPLS:
            m = measured[impl]
            records.append(
                harness.emit(
                    dict(
                        bench="pruning",
                        machine=harness.machine_name(),
                        impl=impl,
                        params=m["params"],
                        sparsity=SPARSITY,
                        median_s=m["median_s"],
                        speedup_vs_sort=measured["jnp_sort"]["median_s"] / m["median_s"],
                        speedup_vs_torch=measured["torch"]["median_s"] / m["median_s"],
                        peak_extra_mb=m["peak_extra_bytes"] / 2**20,
                        peak_extra_over_params=m["peak_extra_bytes"] / (4 * m["params"]),
                    )
                )
            )
    return records + run_many_leaves(size_name)


def main(argv: list[str] | None = None) -> list[dict]:
    """Command line: ``python -m bench.pruning [--size tiny|default] [--repeats N]``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--first-call"]:
        print(json.dumps(first_call_child(argv[1], int(argv[2]))), flush=True)
        return []
    if argv[:1] == ["--child"]:
        impl, size, repeats, leaves = argv[1], int(argv[2]), int(argv[3]), int(argv[4])
        print(json.dumps(child(impl, size, repeats, leaves)), flush=True)
        return []
    return harness.command_line(__doc__, SIZES, 2, run, argv)


if __name__ == "__main__":
    main()
