"""``make bench``: runs every benchmark, writes ``bench/results/<machine>.json`` and ``.md``."""

from __future__ import annotations

import argparse
import json
import pathlib

from bench import compile as compile_bench
from bench import harness, pruning, sweep, train_step, update_step

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
MODULES = {
    "update_step": update_step,
    "sweep": sweep,
    "compile": compile_bench,
    "pruning": pruning,
    "train_step": train_step,
}
TABLES = {
    "update_step": ["params", "impl", "median_s", "speedup_vs_optax", "speedup_vs_torch_fused", "roofline"],
    "sweep": ["runs", "steps", "impl", "median_s", "speedup_vs_sequential"],
    "compile": ["leaves", "impl", "median_s", "ratio_to_adam"],
    "pruning": [
        "params",
        "impl",
        "median_s",
        "speedup_vs_sort",
        "speedup_vs_torch",
        "peak_extra_mb",
        "peak_extra_over_params",
    ],
    "pruning_many_leaves": ["leaves", "impl", "median_s", "trace_s", "compile_s", "ratio_to_adam"],
    "train_step": [
        "model",
        "batch",
        "params",
        "impl",
        "median_s",
        "update_share",
        "ratio_to_sgd",
        "speedup_vs_optax",
        "speedup_vs_optax_q1",
        "speedup_vs_optax_q3",
        "extra_over_sgd_ms",
        "compulsory_ms",
        "page_faults_per_step",
        "note",
    ],
}


def main(argv: list[str] | None = None) -> pathlib.Path:
    """Runs all benchmarks at one size and writes the JSON records and markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", choices=["tiny", "default"], default="default")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    parser.add_argument(
        "--only", nargs="+", choices=sorted(MODULES), help="run these and keep the other results already on file"
    )
    args = parser.parse_args(argv)
    repeats = 1 if args.size == "tiny" else None
    names = args.only or list(MODULES)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / harness.machine_name()
    records = []
    if args.only and stem.with_suffix(".json").exists():
        kept = [json.loads(line) for line in stem.with_suffix(".json").read_text().splitlines()]
        records = [r for r in kept if r["bench"] not in names]
    for name in names:
        extra = ["--repeats", str(repeats)] if repeats else []
        records += MODULES[name].main(["--size", args.size, *extra])
    stem.with_suffix(".json").write_text("\n".join(json.dumps(r, sort_keys=True) for r in records) + "\n")
    sections = [
        f"### {name} ({harness.machine_name()})\n\n"
        + harness.markdown_table([r for r in records if r["bench"] == name], columns)
        for name, columns in TABLES.items()
        if any(r["bench"] == name for r in records)
    ]
    stem.with_suffix(".md").write_text("\n\n".join(sections) + "\n")
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")
    return stem


if __name__ == "__main__":
    main()
