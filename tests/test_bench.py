"""Every benchmark runs at a tiny size, so none rots. No timing is asserted here."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import run_all


@pytest.mark.slow
def test_all_benchmarks_run_at_tiny_size(tmp_path):
    with jax.numpy_dtype_promotion("standard"):  # optax.adam is not strict-promotion clean
        others = sorted(set(run_all.MODULES) - {"train_step"})  # train_step: its own test below, one model
        stem = run_all.main(["--size", "tiny", "--out", str(tmp_path), "--only", *others])
    records = [json.loads(line) for line in stem.with_suffix(".json").read_text().splitlines()]
    impls = {(r["bench"], r["impl"]) for r in records}
    assert {("update_step", i) for i in ("jaxreg", "optax", "torch_fused", "torch_foreach", "bandwidth")} <= impls
    sweeps = ("vmap", "sequential", "vmap_fused", "sequential_fused")
    assert {("sweep", prefix + i) for i in sweeps for prefix in ("", "step_")} <= impls
    assert {("pruning", i) for i in ("jaxreg", "jnp_sort", "torch")} <= impls
    assert all(r["peak_extra_mb"] >= 0 for r in records if r["bench"] == "pruning")
    assert all(r["median_s"] > 0 for r in records)
    table = stem.with_suffix(".md").read_text()
    assert "| params | impl |" in table and "### sweep" in table and "### pruning" in table


def test_sweep_rows_compute_the_same_runs():
    # The fused rows run the unfused rows' runs, and the vmapped sweep each run's lanes.
    from bench import sweep

    lams = jnp.asarray(sweep.LAMBDAS[::5])
    with jax.numpy_dtype_promotion("standard"):
        for make in (lambda fused: sweep.make_run(64, 8, 20, fused), lambda fused: sweep.make_step_run(8, 20, fused)):
            unfused, fused = make(False), make(True)
            swept = jax.jit(jax.vmap(fused))(lams)
            np.testing.assert_allclose(swept, jax.jit(jax.vmap(unfused))(lams), rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(swept[1], jax.jit(fused)(lams[1]), rtol=1e-6, atol=1e-7)
            assert not np.allclose(swept[0], swept[-1])  # the strengths matter


def test_update_step_implementations_compute_the_same_step():
    # The timings compare like with like: jaxreg's chain, optax's and the hand-written
    # one-expression reference give the same params after three steps.
    import optax

    from bench import harness, update_step

    shapes = harness.leaf_shapes(5_000, leaves=6)
    params = update_step._random_tree(shapes, 0, 0.1)
    grads = [update_step._random_tree(shapes, 10 + k) for k in range(3)]

    def run_chain(tx):
        @jax.jit
        def step(p, state, g):
            updates, state = tx.update(g, state, p)
            return optax.apply_updates(p, updates), state

        p, state = params, tx.init(params)
        for g in grads:
            p, state = step(p, state, g)
        return p

    with jax.numpy_dtype_promotion("standard"):
        results = [run_chain(update_step.jaxreg_chain()), run_chain(update_step.optax_chain())]
    p, mu, nu, count = params, *[jax.tree.map(jnp.zeros_like, params)] * 2, jnp.zeros([], jnp.int32)
    step = jax.jit(update_step.one_expression_step)
    for g in grads:
        p, mu, nu, count = step(p, mu, nu, count, g)
    results.append(p)
    for other in results[1:]:
        for key in params:
            np.testing.assert_allclose(other[key], results[0][key], rtol=1e-6, atol=1e-7)


def test_train_step_runs_at_tiny_size():
    from bench import train_step

    with jax.numpy_dtype_promotion("standard"):
        records = train_step.run("tiny", 1, models=("mlp",))
    impls = {r["impl"] for r in records}
    jax_rows = {"fwd_bwd", "sgd", "optax", "jaxreg", "jaxreg_pruned", "optax_keep_grads", "jaxreg_keep_grads"}
    assert jax_rows | {"torch_fwd_bwd", "torch_eager"} == impls
    assert all(r["median_s"] > 0 and r["params"] == records[0]["params"] for r in records)
    steps = [r for r in records if "fwd_bwd" not in r["impl"]]
    assert all(r["compulsory_ms"] > 0 and "update_share" in r for r in steps)
    assert all(r["speedup_vs_optax_q1"] <= r["speedup_vs_optax"] <= r["speedup_vs_optax_q3"] for r in steps)
    assert all(r["page_faults_per_step"] >= 0 for r in records)
