"""Every benchmark runs at a tiny size, so none rots. No timing is asserted here."""

import json

import jax
import pytest

from bench import run_all


@pytest.mark.slow
def test_all_benchmarks_run_at_tiny_size(tmp_path):
    with jax.numpy_dtype_promotion("standard"):  # optax.adam is not strict-promotion clean
        stem = run_all.main(["--size", "tiny", "--out", str(tmp_path)])
    records = [json.loads(line) for line in stem.with_suffix(".json").read_text().splitlines()]
    impls = {(r["bench"], r["impl"]) for r in records}
    assert {("update_step", i) for i in ("jaxreg", "optax", "torch_fused", "torch_foreach", "bandwidth")} <= impls
    assert {("sweep", "vmap"), ("sweep", "sequential")} <= impls
    assert {("pruning", i) for i in ("jaxreg", "jnp_sort", "torch")} <= impls
    assert all(r["peak_extra_mb"] >= 0 for r in records if r["bench"] == "pruning")
    assert all(r["median_s"] > 0 for r in records)
    table = stem.with_suffix(".md").read_text()
    assert "| params | impl |" in table and "### sweep" in table and "### pruning" in table
