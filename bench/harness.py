"""Timing and reporting shared by the benchmarks: medians after warm-up, JSON lines, tables."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np


def machine_name() -> str:
    """A short name for this machine kind, e.g. ``cpu-2core-x86_64`` or ``gpu-NVIDIA_H100``."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"cpu-{os.cpu_count()}core-{platform.machine()}"
    return f"{device.platform}-{device.device_kind.replace(' ', '_')}"


def median_seconds(run: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``run()`` over ``repeats`` calls after ``warmup`` calls.

    ``run`` must block until its work is done (``jax.block_until_ready`` on its output).
    """
    return interleaved_medians({"run": run}, repeats, warmup)["run"]


def interleaved_times(runs: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Wall times of each ``run()``, timed in turns: one call of each per round.

    On a shared machine the speed drifts over seconds (neighbours, turbo, page cache);
    timing the implementations in turns exposes each to the same drift, so their ratios
    hold even when the absolute times move. Round ``i`` of every list is the same round,
    so ratios can be taken round by round (:func:`paired_ratio`). Each ``run`` must block
    until its work is done.
    """
    for run in runs.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def interleaved_medians(runs: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """The median of each run's :func:`interleaved_times`."""
    return {name: statistics.median(ts) for name, ts in interleaved_times(runs, repeats, warmup).items()}


def paired_ratio(numerator: list[float], denominator: list[float]) -> tuple[float, float, float]:
    """The median and quartiles of the round-by-round ratios of two :func:`interleaved_times` lists.

    Drift moves both times of a round alike, so these ratios scatter less than the ratio
    of two medians; the quartiles say how far they do.
    """
    ratios = np.asarray(numerator) / np.asarray(denominator)
    q1, median, q3 = np.percentile(ratios, [25, 50, 75])
    return float(median), float(q1), float(q3)


def emit(record: dict[str, Any]) -> dict[str, Any]:
    """Prints one measurement as a JSON line and returns it."""
    print(json.dumps(record, sort_keys=True), flush=True)
    return record


def leaf_shapes(total: int, leaves: int = 50, seed: int = 0) -> list[tuple[int, ...]]:
    """``leaves`` shapes of uneven sizes (Dirichlet) summing to about ``total`` elements.

    Large leaves are matrices, small ones vectors, like a model's kernels and biases.
    """
    rng = np.random.default_rng(seed)
    sizes = np.maximum((rng.dirichlet(np.full(leaves, 0.5)) * total).astype(int), 1)
    shapes = []
    for size in sizes:
        if size >= 4096:
            cols = 256
            shapes.append((int(size) // cols, cols))
        else:
            shapes.append((int(size),))
    return shapes


def markdown_table(records: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A markdown table of ``records`` with the given columns (floats to 3 significant digits)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in records]
    return "\n".join(lines)


def command_line(
    doc: str,
    sizes: Sequence[str],
    repeats: int,
    run: Callable[[str, int], list[dict[str, Any]]],
    argv: list[str] | None,
) -> list[dict[str, Any]]:
    """The shared ``--size`` / ``--repeats`` command line of a benchmark script."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--size", choices=sorted(sizes), default="default")
    parser.add_argument("--repeats", type=int, default=repeats)
    args = parser.parse_args(argv)
    return run(args.size, args.repeats)
