"""Benchmark: a sweep over 16 L1 strengths as one vmap against 16 sequential runs.

Each run trains a small MLP-sized regression for a fixed number of steps with
``optax.sgd`` followed by ``jaxreg.l1_prox(lam)``. The vmapped sweep is one compiled
program over a traced ``lam``; the baseline calls one jitted run 16 times with ``lam`` as
an argument (no recompilation, the fairest sequential baseline).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg
from bench import harness

SIZES = {"tiny": (64, 8, 20), "default": (2048, 256, 200)}  # (samples, features, steps)
LAMBDAS = np.geomspace(1e-4, 1e-1, 16).astype(np.float32)


def make_run(samples: int, features: int, steps: int):
    """A training run ``lam -> final params`` on fixed synthetic data."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((samples, features)), jnp.float32)
    w_true = rng.standard_normal((features, 1)) * (rng.random((features, 1)) < 0.2)
    y = x @ jnp.asarray(w_true, jnp.float32)

    def run(lam):
        tx = optax.chain(optax.sgd(0.05), jaxreg.l1_prox(lam, learning_rate=0.05))
        params = {"w": jnp.zeros((features, 1), jnp.float32)}

        def step(carry, _):
            p, s = carry
            g = jax.grad(lambda q: jnp.mean((x @ q["w"] - y) ** 2))(p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), length=steps)
        return params["w"]

    return run


def run(size: str, repeats: int) -> list[dict]:
    """Times both ways of sweeping; prints and returns the records."""
    samples, features, steps = SIZES[size]
    one = make_run(samples, features, steps)
    swept = jax.jit(jax.vmap(one))
    single = jax.jit(one)
    lams = jnp.asarray(LAMBDAS)
    vmapped_s = harness.median_seconds(lambda: jax.block_until_ready(swept(lams)), repeats)
    sequential_s = harness.median_seconds(lambda: jax.block_until_ready([single(lam) for lam in lams]), repeats)
    base = dict(bench="sweep", runs=len(LAMBDAS), samples=samples, features=features, steps=steps)
    base["machine"] = harness.machine_name()
    return [
        harness.emit(dict(base, impl="sequential", median_s=sequential_s, speedup_vs_sequential=1.0)),
        harness.emit(dict(base, impl="vmap", median_s=vmapped_s, speedup_vs_sequential=sequential_s / vmapped_s)),
    ]


def main(argv: list[str] | None = None) -> list[dict]:
    """Command line: ``python -m bench.sweep [--size tiny|default] [--repeats N]``."""
    return harness.command_line(__doc__, SIZES, 5, run, argv)


if __name__ == "__main__":
    main()
