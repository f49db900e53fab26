"""Benchmark: the card's regularized update step, jaxreg vs optax vs PyTorch vs bandwidth.

The chain is global-norm clip -> Adam -> decoupled weight decay -> L1 prox -> box
projection on float32 parameters in 50 leaves of uneven sizes. Every implementation runs
the same math on the same sizes in the same process:

* ``jaxreg``: ``jaxreg.chain`` of jaxreg's transforms run by ``jaxreg.apply_step``, jitted
  with donated buffers: one pass over the memory on CPU.
* ``jaxreg_update``: the same chain through ``tx.update`` + ``optax.apply_updates`` (what
  ``nnx.Optimizer`` calls), i.e. the unfused optax chain of jaxreg's transforms.
* ``optax``: the same chain from optax's own pieces (``optax.clip_by_global_norm``,
  ``optax.adamw``, a soft-threshold transform and ``optax.projections.projection_box``).
* ``torch_foreach`` / ``torch_fused``: ``clip_grad_norm_`` + ``torch.optim.AdamW`` then the
  same prox and clamp in torch ops.
* ``xla_one_expression``: the same math hand-written as one expression per leaf, the
  best layout XLA emits for it (a reference, not an API).
* ``bandwidth``: an in-place scale of one flat buffer of the same size: the machine's
  read+write bandwidth, which bounds every memory-bound step.

``roofline`` is the time the step's compulsory traffic would take at that bandwidth
(8 transfers of 4 bytes per parameter: read g for the norm, read g, m, v, w, write m, v,
w) divided by the measured time, at the better of the probe's two measurements (alone,
and in turns with the others). The implementations are timed in turns (one step of each
per round), so drift on a shared machine moves them all alike.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

import jaxreg
from bench import harness

LR, WD, L1, BOX, MAX_NORM = 1e-3, 1e-2, 1e-5, 1.0, 1.0
BYTES_PER_PARAM = 8 * 4
SIZES = {"tiny": [20_000], "default": [1_000_000, 10_000_000, 50_000_000]}


def jaxreg_chain() -> jaxreg.FusedChain:
    """The card's chain from jaxreg's transforms."""
    return jaxreg.chain(
        jaxreg.clip_by_global_norm(MAX_NORM),
        jaxreg.adam(LR),
        jaxreg.decoupled_weight_decay(WD, learning_rate=LR),
        jaxreg.l1_prox(L1, learning_rate=LR),
        jaxreg.project_box(-BOX, BOX),
    )


def _optax_params_map(fn) -> optax.GradientTransformation:
    """A parameter-space step ``u <- fn(p + u) - p`` written as a plain optax transform."""

    def update(updates, state, params=None):
        new = jax.tree.map(lambda p, u: fn(p + u) - p, params, updates)
        return new, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def optax_chain() -> optax.GradientTransformation:
    """The same chain from optax's own pieces, as a user would hand-chain it."""
    threshold = LR * L1
    return optax.chain(
        optax.clip_by_global_norm(MAX_NORM),
        optax.adamw(LR, weight_decay=WD),
        _optax_params_map(lambda w: jnp.sign(w) * jnp.maximum(jnp.abs(w) - threshold, 0)),
        _optax_params_map(lambda w: optax.projections.projection_box(w, -BOX, BOX)),
    )


def _random_tree(shapes, seed: int, scale: float = 1.0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {f"leaf{i:02d}": jnp.asarray(scale * rng.standard_normal(s), jnp.float32) for i, s in enumerate(shapes)}


def _jax_runner(step, carry: list, *args) -> Callable[[], None]:
    """One call of the jitted, donating ``step`` on the carried state, blocking.

    ``step(*carry, *args)`` returns the new carry as a sequence of the same length.
    """

    def run():
        carry[:] = step(*carry, *args)
        jax.block_until_ready(carry)

    return run


def update_fn(tx: optax.GradientTransformation, fused: bool = False) -> Callable:
    """``(params, state, grads) -> (params, state)``: ``tx.update`` then
    ``optax.apply_updates``, or with ``fused`` :func:`jaxreg.apply_step` (one pass when
    ``tx`` is a ``jaxreg.chain``)."""

    def step(params, state, grads):
        if fused:
            return jaxreg.apply_step(tx, grads, state, params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def jax_chain_runner(tx: optax.GradientTransformation, shapes, fused: bool = False) -> Callable[[], None]:
    """:func:`update_fn` of ``tx`` jitted with donated buffers, on random trees of ``shapes``."""
    params, grads = _random_tree(shapes, 0, 0.1), _random_tree(shapes, 1)
    step = jax.jit(update_fn(tx, fused), donate_argnums=(0, 1))
    return _jax_runner(step, [params, tx.init(params)], grads)


def one_expression_step(params, mu, nu, count, grads):
    """The chain's math hand-written as one expression per leaf: the best layout XLA gets.

    Not a jaxreg API: a reference for how close the composed chain comes to what XLA
    can emit for the same arithmetic (on CPU, XLA does not fuse the three outputs
    ``w, mu, nu`` of a leaf into one loop, so this too reads ``g`` and ``mu, nu`` twice).
    Returns ``[params, mu, nu, count]`` after one step.
    """
    b1, b2, eps = 0.9, 0.999, 1e-8
    count = count + 1
    t = count.astype(jnp.float32)
    norm = jnp.sqrt(sum(jnp.sum(g * g) for g in grads.values()))
    scale = jnp.minimum(1.0, MAX_NORM / (norm + 1e-6))

    def leaf(g, w, m, v):
        g = g * scale
        m = (1 - b1) * g + b1 * m
        v = (1 - b2) * (g * g) + b2 * v
        u = (m / (1 - b1**t)) / (jnp.sqrt(v / (1 - b2**t)) + eps)
        x = w - LR * u - (LR * WD) * w
        x = jnp.clip(x - jnp.clip(x, -LR * L1, LR * L1), -BOX, BOX)
        return x, m, v

    out = {k: leaf(grads[k], params[k], mu[k], nu[k]) for k in params}
    return [{k: o[i] for k, o in out.items()} for i in range(3)] + [count]


def one_expression_runner(shapes) -> Callable[[], None]:
    """:func:`one_expression_step`, jitted with donated buffers."""
    params, grads = _random_tree(shapes, 0, 0.1), _random_tree(shapes, 1)
    zeros = jax.tree.map(jnp.zeros_like, params)
    carry = [params, zeros, jax.tree.map(jnp.zeros_like, params), jnp.zeros([], jnp.int32)]
    return _jax_runner(jax.jit(one_expression_step, donate_argnums=(0, 1, 2)), carry, grads)


def torch_update(params: list[torch.nn.Parameter], fused: bool) -> Callable[[], None]:
    """The chain in PyTorch on ``params`` (their ``.grad`` set): clip_grad_norm_ +
    AdamW (``fused=True``, or ``foreach``) + prox + clamp, in place."""
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WD, foreach=not fused, fused=fused)
    threshold = LR * L1

    def run():
        torch.nn.utils.clip_grad_norm_(params, MAX_NORM)
        opt.step()
        with torch.no_grad():
            for p in params:
                p.sub_(p.clamp(-threshold, threshold))
                p.clamp_(-BOX, BOX)

    return run


def torch_runner(shapes, fused: bool) -> Callable[[], None]:
    """:func:`torch_update` on random parameters of ``shapes`` with random gradients."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(0.1 * torch.randn(s, generator=gen)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    return torch_update(params, fused)


def bandwidth_runner(size: int) -> tuple[Callable[[], None], int]:
    """An in-place scale of one flat float32 buffer, and the bytes it reads and writes.

    The buffer holds ``size`` elements rounded up to a multiple of 256 and is shaped
    ``(rows, 256)``: XLA's CPU loops run several times slower on an odd-length 1-D
    buffer, which would understate the machine.
    """
    rows = -(-size // 256)
    scale = jax.jit(lambda x: [x * jnp.float32(1.0000001)], donate_argnums=0)
    return _jax_runner(scale, [jnp.ones((rows, 256), jnp.float32)]), 2 * 4 * rows * 256


def run(size_name: str, repeats: int) -> list[dict]:
    """Measures every implementation at every size, in turns; prints and returns the records."""
    torch.set_num_threads(os.cpu_count() or 1)
    records = []
    for size in SIZES[size_name]:
        shapes = harness.leaf_shapes(size)
        n = int(sum(np.prod(s) for s in shapes))
        probe, probe_bytes = bandwidth_runner(n)
        runs = {
            "bandwidth": probe,
            "jaxreg": jax_chain_runner(jaxreg_chain(), shapes, fused=True),
            "jaxreg_update": jax_chain_runner(jaxreg_chain(), shapes),
            "optax": jax_chain_runner(optax_chain(), shapes),
            "xla_one_expression": one_expression_runner(shapes),
            "torch_foreach": torch_runner(shapes, fused=False),
            "torch_fused": torch_runner(shapes, fused=True),
        }
        # The probe alone first: the roofline uses the machine's best measured bandwidth,
        # so drift that slows every implementation never flatters their fractions.
        alone = harness.median_seconds(probe, repeats)
        times = harness.interleaved_medians(runs, repeats)
        bandwidth = probe_bytes / min(alone, times.pop("bandwidth"))
        del runs  # free this size's buffers before the next
        base = dict(bench="update_step", params=n, leaves=len(shapes), machine=harness.machine_name())
        records.append(
            harness.emit(dict(base, impl="bandwidth", median_s=2 * 4 * n / bandwidth, bandwidth_gb_s=bandwidth / 1e9))
        )
        for impl, seconds in times.items():
            records.append(
                harness.emit(
                    dict(
                        base,
                        impl=impl,
                        median_s=seconds,
                        speedup_vs_optax=times["optax"] / seconds,
                        speedup_vs_torch_fused=times["torch_fused"] / seconds,
                        roofline=BYTES_PER_PARAM * n / bandwidth / seconds,
                    )
                )
            )
    return records


def main(argv: list[str] | None = None) -> list[dict]:
    """Command line: ``python -m bench.update_step [--size tiny|default] [--repeats N]``."""
    return harness.command_line(__doc__, SIZES, 15, run, argv)


if __name__ == "__main__":
    main()
