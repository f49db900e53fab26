"""Benchmark: a whole training step (forward, backward, update) with the card's chain.

Three models on synthetic float32 data, on CPU, each step jitted with donated buffers:
an MLP of about 10M parameters (batch 32 and 256), a small CNN (about 1M parameters,
32x32x3 images, batch 64) and a decoder-only transformer LM written with Flax NNX (about
10M parameters, sequence 128, batch 8). The update is, in turns:

* ``sgd``: plain ``optax.sgd`` (the baseline: the cheapest update there is);
* ``optax``: the card's chain (global-norm clip -> Adam -> decoupled weight decay -> L1
  prox -> box) from optax's pieces, unfused (``bench.update_step.optax_chain``);
* ``jaxreg``: the same chain as a ``jaxreg.chain`` run by ``jaxreg.apply_step`` (one pass);
* ``jaxreg_pruned``: the same plus ``jaxreg.pruning.keep_pruned`` at 90% sparsity (the
  pass reads the mask);
* ``optax_keep_grads`` / ``jaxreg_keep_grads``: ``optax`` and ``jaxreg`` with the step
  returning its gradients into a donated buffer (``jaxreg.write_into``, what
  ``jaxreg.nn.Optimizer(..., keep_grads=True)`` does), so that they are not among the
  call's temporaries;
* ``torch_eager``: the same model and data in PyTorch, ``clip_grad_norm_`` +
  ``AdamW(fused=True)`` + the same prox and clamp (``bench.update_step.torch_update``);
* ``torch_compile``: the same with the model under ``torch.compile`` (the update eager).

``fwd_bwd`` is the step without its update (the gradients only, written into a donated
buffer; ``torch_fwd_bwd`` for PyTorch), so ``update_share = (step - fwd_bwd) / step``. ``extra_over_sgd_ms`` is the
step's time over ``sgd``'s, against ``compulsory_ms``: the chain's compulsory extra
traffic over SGD (20 bytes per parameter: the norm's read of g, and reading and writing
the two moments) at the copy bandwidth measured in the same run. All rows of one model
are timed in turns, so drift on a shared machine moves them alike, and the ratios and
differences are taken round by round (their medians; ``speedup_vs_optax_q1``/``_q3``
are the quartiles). ``speedup_vs_optax`` compares with the optax row that handles its
gradients alike: ``optax_keep_grads`` for the ``_keep_grads`` rows, ``optax`` for the
others.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx

import jaxreg
from bench import harness, update_step

EXTRA_BYTES_PER_PARAM = 20  # the chain's compulsory traffic (32 B) minus SGD's (12 B)
SPARSITY = 0.9
# Per size, the configurations: (model, batches, shape arguments).
SIZES: dict[str, list[tuple[str, tuple[int, ...], dict[str, Any]]]] = {
    "tiny": [
        ("mlp", (8,), dict(inputs=32, hidden=(64, 64))),
        ("cnn", (4,), dict(image=8, features=(4, 8))),
        ("lm", (2,), dict(vocab=32, seq=8, dim=16, layers=1, heads=2)),
    ],
    "default": [
        ("mlp", (32, 256), dict(inputs=1024, hidden=(2048, 2048, 2048))),
        ("cnn", (64,), dict(image=32, features=(64, 128, 256, 256))),
        ("lm", (8,), dict(vocab=8192, seq=128, dim=256, layers=8, heads=4)),
    ],
}
CLASSES = 10


class Block(nnx.Module):
    """A pre-norm transformer block: causal self-attention, then a GELU MLP."""

    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
        self.heads = heads
        self.norm1, self.norm2 = nnx.LayerNorm(dim, rngs=rngs), nnx.LayerNorm(dim, rngs=rngs)
        self.qkv, self.proj = nnx.Linear(dim, 3 * dim, rngs=rngs), nnx.Linear(dim, dim, rngs=rngs)
        self.fc1, self.fc2 = nnx.Linear(dim, 4 * dim, rngs=rngs), nnx.Linear(4 * dim, dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        q, k, v = jnp.split(self.qkv(self.norm1(x)).reshape(b, t, 3 * self.heads, d // self.heads), 3, axis=2)
        x = x + self.proj(jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(b, t, d))
        return x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x))))


class LM(nnx.Module):
    """A decoder-only transformer language model: token and position embeddings, blocks, head."""

    def __init__(self, vocab: int, seq: int, dim: int, layers: int, heads: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, dim, rngs=rngs)
        self.position = nnx.Param(0.02 * jax.random.normal(rngs.params(), (seq, dim)))
        self.blocks = nnx.List([Block(dim, heads, rngs=rngs) for _ in range(layers)])
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.head = nnx.Linear(dim, vocab, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.embed(tokens) + self.position[...]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class TorchBlock(torch.nn.Module):
    """:class:`Block` in PyTorch."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.qkv, self.proj = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.fc1, self.fc2 = torch.nn.Linear(dim, 4 * dim), torch.nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, t, 3 * self.heads, d // self.heads).transpose(1, 2)
        q, k, v = qkv.split(self.heads, dim=1)
        attended = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x)), approximate="tanh"))


class TorchLM(torch.nn.Module):
    """:class:`LM` in PyTorch."""

    def __init__(self, vocab: int, seq: int, dim: int, layers: int, heads: int):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.position = torch.nn.Parameter(0.02 * torch.randn(seq, dim))
        self.blocks = torch.nn.Sequential(*[TorchBlock(dim, heads) for _ in range(layers)])
        self.norm, self.head = torch.nn.LayerNorm(dim), torch.nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.embed(tokens) + self.position)))


class TorchCNN(torch.nn.Module):
    """``jaxreg.nn.CNN`` in PyTorch (channels first): conv -> relu -> 2x2 average pool, ..., mean, linear."""

    def __init__(self, features: tuple[int, ...]):
        super().__init__()
        sizes = [3, *features]
        self.convs = torch.nn.ModuleList([torch.nn.Conv2d(a, b, 3, padding=1) for a, b in zip(sizes, sizes[1:])])
        self.head = torch.nn.Linear(sizes[-1], CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = torch.relu(conv(x))
            if min(x.shape[2:]) >= 2:
                x = torch.nn.functional.avg_pool2d(x, 2)
        return self.head(x.mean(dim=(2, 3)))


def jax_model(model: str, shape: dict[str, Any]) -> nnx.Module:
    """The model in Flax NNX, abstract (shapes only: :func:`jax_runners` fills it)."""
    if model == "mlp":
        make = lambda rngs: jaxreg.nn.MLP(shape["inputs"], shape["hidden"], CLASSES, rngs=rngs)  # noqa: E731
    elif model == "cnn":
        make = lambda rngs: jaxreg.nn.CNN(3, CLASSES, features=shape["features"], rngs=rngs)  # noqa: E731
    else:
        make = lambda rngs: LM(**shape, rngs=rngs)  # noqa: E731
    return nnx.eval_shape(lambda: make(nnx.Rngs(0)))


def torch_model(model: str, shape: dict[str, Any]) -> torch.nn.Module:
    """The same model in PyTorch."""
    if model == "mlp":
        widths = [shape["inputs"], *shape["hidden"]]
        layers = [m for a, b in zip(widths, widths[1:]) for m in (torch.nn.Linear(a, b), torch.nn.ReLU())]
        return torch.nn.Sequential(*layers, torch.nn.Linear(widths[-1], CLASSES))
    if model == "cnn":
        return TorchCNN(shape["features"])
    return TorchLM(**shape)


def batch_data(model: str, batch: int, shape: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic batch ``(inputs, labels)``: the same batch every step."""
    rng = np.random.default_rng(0)
    if model == "lm":
        tokens = rng.integers(0, shape["vocab"], (batch, shape["seq"] + 1))
        return tokens[:, :-1], tokens[:, 1:]
    size = (batch, shape["inputs"]) if model == "mlp" else (batch, shape["image"], shape["image"], 3)
    return rng.standard_normal(size, np.float32), rng.integers(0, CLASSES, batch)


def jax_runners(model: nnx.Module, x: np.ndarray, labels: np.ndarray) -> tuple[int, dict[str, Callable[[], None]]]:
    """The parameter count and the runners of the JAX steps: ``fwd_bwd`` and one per update."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    # Random weights drawn in NumPy: NNX's initializers would compile a program per shape.
    rng = np.random.default_rng(1)
    params = jax.tree.map(
        lambda a: jnp.asarray(rng.standard_normal(a.shape, np.float32) / np.sqrt(a.shape[0])), nnx.as_pure(params)
    )
    x, labels = jnp.asarray(x), jnp.asarray(labels)

    def loss(params, x, labels):
        logits = nnx.merge(graphdef, params, rest)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    grad = jax.jit(jax.grad(loss))
    members = update_step.jaxreg_chain().members
    keep = jax.jit(jaxreg.pruning.magnitude_mask)(params, SPARSITY)
    updates = {  # name: (transformation, fused, gradients kept in a donated buffer)
        "sgd": (optax.sgd(update_step.LR), False, False),
        "optax": (update_step.optax_chain(), False, False),
        "jaxreg": (jaxreg.chain(*members), True, False),
        "jaxreg_pruned": (jaxreg.chain(*members, jaxreg.pruning.keep_pruned(keep)), True, False),
        "optax_keep_grads": (update_step.optax_chain(), False, True),
        "jaxreg_keep_grads": (jaxreg.chain(*members), True, True),
    }
    # The gradients alone, written into a donated buffer: fresh output buffers would be
    # faulted in every call and make the step without its update look slower than SGD's.
    fwd_bwd = jax.jit(lambda kept, p, x, labels: [jaxreg.write_into(kept, grad(p, x, labels))], donate_argnums=0)
    runners = {"fwd_bwd": update_step._jax_runner(fwd_bwd, [jax.tree.map(jnp.zeros_like, params)], params, x, labels)}
    for name, (tx, fused, keep_grads) in updates.items():
        update = update_step.update_fn(tx, fused)

        def step(params, state, x, labels, update=update):
            return update(params, state, grad(params, x, labels))

        def step_keeping_grads(params, state, kept, x, labels, update=update):
            grads = jaxreg.write_into(kept, grad(params, x, labels))
            return (*update(params, state, grads), grads)

        carry = jax.jit(lambda p, tx=tx: [jax.tree.map(jnp.copy, p), tx.init(p)])(params)  # one compile
        if keep_grads:
            carry.append(jax.tree.map(jnp.zeros_like, params))
            jitted = jax.jit(step_keeping_grads, donate_argnums=(0, 1, 2))
        else:
            jitted = jax.jit(step, donate_argnums=(0, 1))
        runners[name] = update_step._jax_runner(jitted, carry, x, labels)
    return sum(int(np.size(p)) for p in jax.tree.leaves(params)), runners


def torch_runners(model: torch.nn.Module, x: np.ndarray, labels: np.ndarray, compile_too: bool) -> dict[str, Any]:
    """The PyTorch steps: ``torch_fwd_bwd``, ``torch_eager`` and (with ``compile_too``)
    ``torch_compile``, or in its place the reason it did not run (a string)."""
    x = torch.from_numpy(np.moveaxis(x, -1, 1).copy() if x.ndim == 4 else x)  # images channels first
    labels = torch.from_numpy(labels)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.zeros_like(p)
    update = update_step.torch_update(params, fused=True)

    def backward(forward):
        for p in params:
            p.grad.zero_()
        torch.nn.functional.cross_entropy(forward(x).flatten(0, -2), labels.flatten()).backward()

    runners: dict[str, Any] = {
        "torch_fwd_bwd": lambda: backward(model),
        "torch_eager": lambda: (backward(model), update()),
    }
    if compile_too:
        compiled = torch.compile(model)
        try:
            start = time.perf_counter()
            backward(compiled)
            print(f"torch.compile: first call {time.perf_counter() - start:.1f} s", flush=True)
            runners["torch_compile"] = lambda: (backward(compiled), update())
        except Exception as error:  # any failure of the compiler stack is reported, not fatal
            runners["torch_compile"] = f"torch.compile failed: {type(error).__name__}: {error}"[:200]
    return runners


def run(size: str, repeats: int, models: tuple[str, ...] = ("mlp", "cnn", "lm")) -> list[dict]:
    """Times every update of every model in turns; prints and returns the records."""
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    records = []
    for model, batches, shape in SIZES[size]:
        if model not in models:
            continue
        for batch in batches:
            x, labels = batch_data(model, batch, shape)
            n, runs = jax_runners(jax_model(model, shape), x, labels)
            probe, probe_bytes = update_step.bandwidth_runner(n)
            runs |= torch_runners(torch_model(model, shape), x, labels, compile_too=size != "tiny")
            failed = {name: why for name, why in runs.items() if isinstance(why, str)}
            alone = harness.median_seconds(probe, repeats)
            times = harness.interleaved_times(
                {"bandwidth": probe, **{k: v for k, v in runs.items() if k not in failed}}, repeats
            )
            bandwidth = probe_bytes / min(alone, statistics.median(times.pop("bandwidth")))
            faults = {name: page_faults_per_call(run) for name, run in runs.items() if name not in failed}
            del runs
            records += _records(model, batch, n, times, faults, failed, bandwidth)
    return records


def page_faults_per_call(run: Callable[[], Any], calls: int = 3) -> float:
    """The minor page faults of one call of ``run`` (after a first call), a mean over ``calls``.

    Memory the allocator maps afresh for a call (glibc serves blocks over 32 MB with
    ``mmap`` and unmaps them when freed) is faulted in page by page, 4 KiB at a time.
    """
    run()
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        run()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / calls


def _records(model: str, batch: int, n: int, times: dict, faults: dict, failed: dict, bandwidth: float) -> list[dict]:
    """The records of one model and batch from :func:`harness.interleaved_times` lists."""
    base = dict(bench="train_step", model=model, batch=batch, params=n, machine=harness.machine_name())
    compulsory_ms = 1e3 * EXTRA_BYTES_PER_PARAM * n / bandwidth
    sgd = times["sgd"]
    out = []
    for impl, seconds in times.items():
        median = statistics.median(seconds)
        record = dict(
            base, impl=impl, median_s=median, bandwidth_gb_s=bandwidth / 1e9, page_faults_per_step=faults[impl]
        )
        if "fwd_bwd" not in impl:
            fwd_bwd = statistics.median(times["torch_fwd_bwd" if impl.startswith("torch") else "fwd_bwd"])
            optax_s = times["optax_keep_grads" if impl.endswith("_keep_grads") else "optax"]
            speedup, q1, q3 = harness.paired_ratio(optax_s, seconds)
            record |= dict(
                update_share=(median - fwd_bwd) / median,
                ratio_to_sgd=harness.paired_ratio(seconds, sgd)[0],
                speedup_vs_optax=speedup,
                speedup_vs_optax_q1=q1,
                speedup_vs_optax_q3=q3,
                extra_over_sgd_ms=1e3 * float(np.median(np.subtract(seconds, sgd))),
                compulsory_ms=compulsory_ms,
            )
        out.append(harness.emit(record))
    return out + [harness.emit(dict(base, impl=impl, note=why)) for impl, why in failed.items()]


def main(argv: list[str] | None = None) -> list[dict]:
    """Command line: ``python -m bench.train_step [--size tiny|default] [--repeats N]``."""
    return harness.command_line(__doc__, SIZES, 15, run, argv)


if __name__ == "__main__":
    main()
