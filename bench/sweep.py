"""Benchmark: a sweep over 16 L1 strengths as one vmap against 16 sequential runs.

Each run trains a small MLP-sized regression for a fixed number of steps with
``optax.sgd`` followed by ``jaxreg.l1_prox(lam)``. The vmapped sweep is one compiled
program over a traced ``lam``; the baseline calls one jitted run 16 times with ``lam`` as
an argument (no recompilation, the fairest sequential baseline). The ``_fused`` rows
run the same sweep with ``jaxreg.chain(jaxreg.sgd, jaxreg.l1_prox)`` through
``jaxreg.apply_step``: under ``vmap`` one call of the one-pass step runs all 16 lanes.
The ``step_`` rows sweep the update alone (the same steps on a gradient that moves
with the parameters, no data): what the regression's matrix products leave of the
step's own share. All the rows of one size are timed in turns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg
from bench import harness, update_step

SIZES = {"tiny": (64, 8, 20), "default": (2048, 256, 200)}  # (samples, features, steps)
LAMBDAS = np.geomspace(1e-4, 1e-1, 16).astype(np.float32)


def _lasso_run(features: int, steps: int, fused: bool, gradient: Callable[[dict], dict]):
    """A run ``lam -> final params``: ``steps`` steps of SGD + L1 prox from zero on
    ``gradient(params)`` (with ``fused``, each update one pass of ``jaxreg.apply_step``)."""

    def run(lam):
        prox = jaxreg.l1_prox(lam, learning_rate=0.05)
        tx = jaxreg.chain(jaxreg.sgd(0.05), prox) if fused else optax.chain(optax.sgd(0.05), prox)
        update = update_step.update_fn(tx, fused)
        params = {"w": jnp.zeros((features, 1), jnp.float32)}

        def step(carry, _):
            p, s = carry
            return update(p, s, gradient(p)), None

        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), length=steps)
        return params["w"]

    return run


def make_run(samples: int, features: int, steps: int, fused: bool = False):
    """A training run ``lam -> final params`` of a lasso on fixed synthetic data."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((samples, features)), jnp.float32)
    w_true = rng.standard_normal((features, 1)) * (rng.random((features, 1)) < 0.2)
    y = x @ jnp.asarray(w_true, jnp.float32)
    return _lasso_run(features, steps, fused, jax.grad(lambda q: jnp.mean((x @ q["w"] - y) ** 2)))


def make_step_run(features: int, steps: int, fused: bool):
    """The update alone as a run ``lam -> final params``: the same steps on the gradient
    ``g + 0.01 * w`` (fixed ``g``), no data."""
    g = jnp.asarray(np.random.default_rng(1).standard_normal((features, 1)), jnp.float32)
    return _lasso_run(features, steps, fused, lambda p: {"w": g + 0.01 * p["w"]})


def _runners(one: Callable[[jax.Array], jax.Array]) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """The vmapped sweep and the 16 sequential runs of ``one``, each blocking until done."""
    swept, single = jax.jit(jax.vmap(one)), jax.jit(one)
    lams = jnp.asarray(LAMBDAS)
    return lambda: jax.block_until_ready(swept(lams)), lambda: jax.block_until_ready([single(lam) for lam in lams])


def run(size: str, repeats: int) -> list[dict]:
    """Times both ways of sweeping, unfused and fused, training and update alone, in turns."""
    samples, features, steps = SIZES[size]
    base = dict(bench="sweep", runs=len(LAMBDAS), samples=samples, features=features, steps=steps)
    base["machine"] = harness.machine_name()
    runs = {}
    for prefix, make in (
        ("", lambda fused: make_run(samples, features, steps, fused)),
        ("step_", lambda fused: make_step_run(features, steps, fused)),
    ):
        for suffix, fused in (("", False), ("_fused", True)):
            runs[f"{prefix}vmap{suffix}"], runs[f"{prefix}sequential{suffix}"] = _runners(make(fused))
    times = harness.interleaved_medians(runs, repeats)
    return [
        harness.emit(
            dict(
                base,
                impl=impl,
                median_s=seconds,
                speedup_vs_sequential=times[impl.replace("vmap", "sequential")] / seconds,
            )
        )
        for impl, seconds in times.items()
    ]


def main(argv: list[str] | None = None) -> list[dict]:
    """Command line: ``python -m bench.sweep [--size tiny|default] [--repeats N]``."""
    return harness.command_line(__doc__, SIZES, 5, run, argv)


if __name__ == "__main__":
    main()
