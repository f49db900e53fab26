"""Benchmark: compile time of a 6-transform jaxreg chain on 50 leaves.

The chain is global-norm clip -> Adam -> decoupled decay -> L1 prox -> max-norm -> box.
Reported: the time to lower and compile the jitted update step (fresh each repeat, so
no compilation cache is hit), against the same for ``optax.adam`` alone as a baseline:
for the six as an ``optax.chain`` (XLA generates loops for every leaf and transform),
and as a ``jaxreg.chain`` run by ``jaxreg.apply_step``: on CPU one custom call, so XLA
generates no loop per leaf (the chain's kernel itself is compiled once per machine and
cached; ``max_norm`` is a second stage of it).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg
from bench import harness

# (parameters, leaves, leaves of a large model): the compile measurement is on 50 leaves,
# the first call on 1000 (a transformer easily has 500); the tiny run (a test that keeps
# the script from rotting) compiles 5 and calls 20, a fraction of the time.
SIZES = {"tiny": (20_000, 5, 20), "default": (1_000_000, 50, 1000)}


def six_transform_chain_members() -> tuple[optax.GradientTransformation, ...]:
    """The chain whose compile time is measured."""
    return (
        jaxreg.clip_by_global_norm(1.0),
        jaxreg.adam(1e-3),
        jaxreg.decoupled_weight_decay(1e-2, learning_rate=1e-3),
        jaxreg.l1_prox(1e-5, learning_rate=1e-3),
        jaxreg.max_norm(3.0, mask=jaxreg.masks.weights_only),
        jaxreg.project_box(-1.0, 1.0),
    )


def six_transform_chain() -> optax.GradientTransformation:
    """The six transforms as an ``optax.chain``."""
    return optax.chain(*six_transform_chain_members())


def _update_step(tx: optax.GradientTransformation, shapes, fused: bool):
    """``(step, params, state)``: the update step of ``tx`` (with ``fused``:
    :func:`jaxreg.apply_step`, one custom call on CPU instead of loops per leaf) on zero
    parameters of ``shapes``, and its state."""
    params = {f"leaf{i:04d}": jnp.zeros(s, jnp.float32) for i, s in enumerate(shapes)}

    def step(params, state, grads):
        if fused:
            return jaxreg.apply_step(tx, grads, state, params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step, params, tx.init(params)


def compile_seconds(tx: optax.GradientTransformation, shapes, repeats: int, fused: bool = False) -> float:
    """Median seconds to lower and compile the update step of ``tx``."""
    step, params, state = _update_step(tx, shapes, fused)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        # A new function object each time: jax's in-memory caches cannot serve it.
        jax.jit(lambda p, s, g: step(p, s, g)).lower(params, state, params).compile()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def first_call_seconds(tx: optax.GradientTransformation, shapes, fused: bool) -> float:
    """Seconds of the first call of the jitted, donating update step of ``tx`` (trace,
    compile and one run): what a user waits for before training starts."""
    step, params, state = _update_step(tx, shapes, fused)
    grads = jax.tree.map(jnp.ones_like, params)
    start = time.perf_counter()
    jax.block_until_ready(jax.jit(step, donate_argnums=(0, 1))(params, state, grads))
    return time.perf_counter() - start


def run(size: str, repeats: int) -> list[dict]:
    """Measures the compile times and the first calls; prints and returns the records."""
    n_params, n_leaves, many = SIZES[size]
    shapes = harness.leaf_shapes(n_params, leaves=n_leaves)
    chain_s = compile_seconds(six_transform_chain(), shapes, repeats)
    adam_s = compile_seconds(optax.adam(1e-3), shapes, repeats)
    fused_s = compile_seconds(jaxreg.chain(*six_transform_chain_members()), shapes, repeats, True)
    base = dict(bench="compile", leaves=len(shapes), machine=harness.machine_name())
    return [
        harness.emit(dict(base, impl="optax.adam alone", median_s=adam_s, ratio_to_adam=1.0)),
        harness.emit(dict(base, impl="6 transforms, optax.chain", median_s=chain_s, ratio_to_adam=chain_s / adam_s)),
        harness.emit(
            dict(base, impl="6 transforms, jaxreg.chain + apply_step", median_s=fused_s, ratio_to_adam=fused_s / adam_s)
        ),
        *first_calls(n_params, many),
    ]


def first_calls(n_params: int, leaves: int) -> list[dict]:
    """The first call on many leaves: ``optax.adam`` alone (the baseline) and the six
    transforms fused (once each: a first call happens once)."""
    shapes = harness.leaf_shapes(n_params, leaves=leaves)
    adam_s = first_call_seconds(optax.adam(1e-3), shapes, False)
    fused_s = first_call_seconds(jaxreg.chain(*six_transform_chain_members()), shapes, True)
    base = dict(bench="compile", leaves=len(shapes), machine=harness.machine_name())
    return [
        harness.emit(dict(base, impl="first call: optax.adam alone", median_s=adam_s, ratio_to_adam=1.0)),
        harness.emit(
            dict(
                base,
                impl="first call: 6 transforms, jaxreg.chain + apply_step",
                median_s=fused_s,
                ratio_to_adam=fused_s / adam_s,
            )
        ),
    ]


def main(argv: list[str] | None = None) -> list[dict]:
    """Command line: ``python -m bench.compile [--size tiny|default] [--repeats N]``."""
    return harness.command_line(__doc__, SIZES, 5, run, argv)


if __name__ == "__main__":
    main()
