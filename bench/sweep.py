"""Benchmark: a sweep over 16 L1 strengths as one vmap against 16 sequential runs.

Each run trains a small MLP-sized regression for a fixed number of steps with
``optax.sgd`` followed by ``jaxreg.l1_prox(lam)``. The vmapped sweep is one compiled
program over a traced ``lam``; the baseline calls one jitted run 16 times with ``lam`` as
an argument (no recompilation, the fairest sequential baseline). The ``_fused`` rows
run the same sweep with ``jaxreg.chain(jaxreg.sgd, jaxreg.l1_prox)`` through
``jaxreg.apply_step``: under ``vmap`` the one-pass custom call runs once per lane.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg
from bench import harness, update_step

SIZES = {"tiny": (64, 8, 20), "default": (2048, 256, 200)}  # (samples, features, steps)
LAMBDAS = np.geomspace(1e-4, 1e-1, 16).astype(np.float32)


def make_run(samples: int, features: int, steps: int, fused: bool = False):
    """A training run ``lam -> final params`` on fixed synthetic data (with ``fused``,
    the update is one pass of ``jaxreg.apply_step``)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((samples, features)), jnp.float32)
    w_true = rng.standard_normal((features, 1)) * (rng.random((features, 1)) < 0.2)
    y = x @ jnp.asarray(w_true, jnp.float32)

    def run(lam):
        prox = jaxreg.l1_prox(lam, learning_rate=0.05)
        tx = jaxreg.chain(jaxreg.sgd(0.05), prox) if fused else optax.chain(optax.sgd(0.05), prox)
        update = update_step.update_fn(tx, fused)
        params = {"w": jnp.zeros((features, 1), jnp.float32)}

        def step(carry, _):
            p, s = carry
            g = jax.grad(lambda q: jnp.mean((x @ q["w"] - y) ** 2))(p)
            return update(p, s, g), None

        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), length=steps)
        return params["w"]

    return run


def _timed(samples: int, features: int, steps: int, repeats: int, fused: bool) -> tuple[float, float]:
    """Median seconds of the vmapped sweep and of the 16 sequential runs."""
    one = make_run(samples, features, steps, fused)
    swept, single = jax.jit(jax.vmap(one)), jax.jit(one)
    lams = jnp.asarray(LAMBDAS)
    vmapped_s = harness.median_seconds(lambda: jax.block_until_ready(swept(lams)), repeats)
    sequential_s = harness.median_seconds(lambda: jax.block_until_ready([single(lam) for lam in lams]), repeats)
    return vmapped_s, sequential_s


def run(size: str, repeats: int) -> list[dict]:
    """Times both ways of sweeping, unfused and fused; prints and returns the records."""
    samples, features, steps = SIZES[size]
    base = dict(bench="sweep", runs=len(LAMBDAS), samples=samples, features=features, steps=steps)
    base["machine"] = harness.machine_name()
    records = []
    for suffix, fused in (("", False), ("_fused", True)):
        vmapped_s, sequential_s = _timed(samples, features, steps, repeats, fused)
        records += [
            harness.emit(dict(base, impl="sequential" + suffix, median_s=sequential_s, speedup_vs_sequential=1.0)),
            harness.emit(
                dict(base, impl="vmap" + suffix, median_s=vmapped_s, speedup_vs_sequential=sequential_s / vmapped_s)
            ),
        ]
    return records


def main(argv: list[str] | None = None) -> list[dict]:
    """Command line: ``python -m bench.sweep [--size tiny|default] [--repeats N]``."""
    return harness.command_line(__doc__, SIZES, 5, run, argv)


if __name__ == "__main__":
    main()
