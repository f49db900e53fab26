# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · One pass over the memory: the update step as a roofline problem
#
# A training step has two halves. The forward and backward passes do many
# floating-point operations per byte they load (a matrix multiply reuses each weight
# for every example of the batch): they are **compute-bound**. The optimizer update
# that follows does a handful of additions and multiplications per parameter, and then
# moves on to the next one: it is **memory-bound**. Its speed is set by how many bytes
# it moves between memory and the cores, not by how much it computes.
#
# That changes what "fast" means. For the card's chain,
#
# $$\text{clip by global norm} \to \text{Adam} \to \text{decoupled weight decay}
#   \to \text{L1 prox} \to \text{box},$$
#
# each parameter $w$ has a gradient $g$ and two Adam moments $\mu, \nu$, all float32
# (4 bytes). The least any implementation can do is
#
# * read $g$ once, for the global norm (the scale of the clip must be known before any
#   update is written), and then
# * read $g, w, \mu, \nu$ and write $w, \mu, \nu$ once each:
#
# **8 transfers of 4 bytes = 32 bytes per parameter**. Divide by the memory bandwidth
# and you get the *roofline time*, the floor under every implementation. The question
# of this notebook is how close a step comes to it, and why a plain jitted
# `optax.chain` does not.
#
# In this notebook you will
#
# 1. build the chain twice, as an `optax.chain` and as a `jaxreg.chain` (the same
#    `init`, `update` and state);
# 2. read what XLA compiles for the plain step, count its loops and the bytes they move,
#    and do the same for `jaxreg.apply_step`, which runs the whole chain as one loop;
# 3. check that both give the same numbers;
# 4. time both against a bandwidth probe and place them under the roofline;
# 5. see what can be fused, and use the one-pass step from Flax NNX.

# %%
import re
import statistics
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from _common import SMALL, pick, report, save_figure
from flax import nnx

import jaxreg
from jaxreg import _native

NATIVE = _native.available()  # builds the C++ kernels on first use (cached in ~/.cache/jaxreg)
print(f"jax {jax.__version__}, optax {optax.__version__}, backend {jax.default_backend()}, small run: {SMALL}")
print(f"native one-pass kernels available: {NATIVE}" + ("" if NATIVE else f" ({_native.why_unavailable()})"))

# %% [markdown]
# ## 1. The parameters and the chain
#
# The parameters are shaped like a small transformer's: an embedding table, two blocks
# of attention and MLP kernels with their biases and norm scales, a final norm: 16
# float32 leaves of very different sizes (the biases are a few hundred numbers, the
# kernels up to millions). The full run has about 7 M parameters, the quick run of the
# test suite about 190 K.
#
# The chain is built twice from the same five members. `optax.chain` is the plain
# composition; `jaxreg.chain` *is* an `optax.chain` (same `init`, same `update`, same
# state, so it drops into any optax code) that also remembers its members, so that
# `jaxreg.apply_step` can run them as one pass. `jaxreg.adam` is `optax.adam` itself,
# carrying the element-wise form that the pass needs.

# %%
D, VOCAB, BLOCKS = pick(512, 64), pick(2048, 1536), 2
SHAPES = {"embed": (VOCAB, D)}
for b in range(BLOCKS):
    SHAPES[f"block{b}"] = {
        "attn": {"kernel": (D, 3 * D), "bias": (3 * D,)},
        "mlp_in": {"kernel": (D, 4 * D), "bias": (4 * D,)},
        "mlp_out": {"kernel": (4 * D, D), "bias": (D,)},
        "norm": {"scale": (D,)},
    }
SHAPES["final_norm"] = {"scale": (D,)}


def random_tree(seed, scale):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(scale * rng.standard_normal(s), jnp.float32),
        SHAPES,
        is_leaf=lambda s: isinstance(s, tuple),
    )


params = random_tree(0, 0.05)
LEAVES = len(jax.tree.leaves(params))
N = sum(x.size for x in jax.tree.leaves(params))
print(f"{LEAVES} leaves, {N:,} parameters ({N * 4 / 2**20:.1f} MiB per float32 copy)")

LR = 1e-3


def members():
    """The card's chain: a fresh set of transforms (each chain gets its own)."""
    return (
        jaxreg.clip_by_global_norm(1.0),
        jaxreg.adam(LR),
        jaxreg.decoupled_weight_decay(1e-2, learning_rate=LR),
        jaxreg.l1_prox(1e-4, learning_rate=LR),
        jaxreg.project_box(-1.0, 1.0),
    )


plain_tx = optax.chain(*members())
fused_tx = jaxreg.chain(*members())
with jax.numpy_dtype_promotion("standard"):  # optax.adam mixes weak types
    state = plain_tx.init(params)
    same_state = jax.tree.structure(state) == jax.tree.structure(fused_tx.init(params))
print("optax.chain and jaxreg.chain have the same state structure:", same_state)
print("Adam's moments live at state[1][0].mu / .nu, shaped like the params:", state[1][0].mu["embed"].shape)

# %% [markdown]
# ## 2. What XLA compiles for the plain step
#
# The plain step is what every optax user writes: `tx.update` gives the updates,
# `optax.apply_updates` adds them to the parameters. We jit it with
# `donate_argnums=(0, 1)`: the old parameters and state are handed over to XLA, which
# may then write the new ones into the same buffers instead of allocating fresh ones.
#
# `jax.jit(step).lower(...).compile().as_text()` is the program XLA will actually run.
# On CPU, XLA groups element-wise operations into **fusions**: one fusion is one loop
# over the elements of its output, reading each input once. Counting the fusions that
# write a parameter-sized array tells us how many loops the step makes; adding up the
# sizes of what each one reads and writes tells us how many bytes it moves.

# %%
grads = random_tree(1, 1.0)
SKIP = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast"}  # no data moved
INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.+?) ([a-z][a-z0-9-]*)\(([^)]*)\)")
ARRAY = re.compile(r"\b(f32|s32|u32|pred|bf16|f16|s64|u8|s8)\[([0-9,]*)\]")
ITEMSIZE = {"f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "s64": 8, "pred": 1, "u8": 1, "s8": 1}
LEAF_SHAPES = {tuple(x.shape) for x in jax.tree.leaves(params)}


def arrays(shape_text):
    """(dtype, dims) of every array in an HLO shape (an array, or a tuple of them)."""
    return [(t, tuple(int(d) for d in dims.split(",") if d)) for t, dims in ARRAY.findall(shape_text)]


def nbytes(shape_text):
    return sum(ITEMSIZE[t] * int(np.prod(dims)) for t, dims in arrays(shape_text))


def entry_instructions(hlo):
    """(name, result shape, op, operand names) of the main computation's instructions."""
    body = hlo[hlo.index("\nENTRY ") :]
    found = []
    for line in body.splitlines()[1:]:
        match = INSTRUCTION.match(line)
        if match:
            name, shape, op, operands = match.groups()
            found.append((name, shape, op, re.findall(r"%([^\s,]+)", operands)))
    return found


def analyse(hlo):
    """Loops writing a parameter-shaped array, custom calls, and bytes moved per parameter."""
    instructions = entry_instructions(hlo)
    shapes = {name: shape for name, shape, _, _ in instructions}
    moved, loops, custom = 0, [], []
    for name, shape, op, operands in instructions:
        if op in SKIP:
            continue
        moved += nbytes(shape) + sum(nbytes(shapes[o]) for o in operands)
        if op == "fusion" and any(dims in LEAF_SHAPES for _, dims in arrays(shape)):
            loops.append(name)
        if op == "custom-call":
            custom.append(re.search(r'custom_call_target="([^"]+)"', hlo[hlo.index(f"%{name} = ") :]).group(1))
    return {"bytes_per_param": moved / N, "loops": loops, "custom_calls": custom, "instructions": instructions}


def plain_step(params, state, grads):
    updates, state = plain_tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


t0 = time.perf_counter()
with jax.numpy_dtype_promotion("standard"):
    plain_compiled = jax.jit(plain_step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
print(f"compiled the plain step in {time.perf_counter() - t0:.1f} s")
plain_hlo = plain_compiled.as_text()
plain = analyse(plain_hlo)
print(
    f"{len(plain['loops'])} loops write a parameter-sized array, for {LEAVES} leaves: "
    f"{len(plain['loops']) / LEAVES:.1f} per leaf"
)
print(f"custom calls: {plain['custom_calls'] or 'none'}")
print(
    f"bytes moved per parameter: {plain['bytes_per_param']:.1f} "
    f"({plain['bytes_per_param'] / 4:.1f} float32 transfers; the floor is 8)"
)

# %% [markdown]
# Here are the loops that touch two leaves, the first MLP kernel and its bias, with
# XLA's metadata cut off. Each line is `%result = shape fusion(inputs...)`: one pass
# that reads every input and writes the result (leaf-sized inputs show their shape).
# The names of the inputs say what they are: `params...`, `state_1__0__mu...` (Adam's
# $\mu$), `grads...`; the other lines' results feed the later ones.


# %%
def show_leaf(analysis, path):
    """The instructions that read the leaf at ``path`` or what was computed from it."""
    tag = re.sub(r"\W", "_", jax.tree_util.keystr(path))  # how the HLO names that leaf's arguments
    shapes = {name: shape for name, shape, _, _ in analysis["instructions"]}
    leaf_shape = shapes[next(name for name in shapes if tag in name)].split("{")[0]
    touched = {name for name in shapes if tag in name}
    for name, result, op, operands in analysis["instructions"]:
        if op in SKIP or not touched.intersection(operands):
            continue
        if result.split("{")[0] == leaf_shape:
            touched.add(name)
        inputs = ", ".join(f"%{o}" + (f" {leaf_shape}" if o in touched else "") for o in operands)
        print(f"  %{name} = {result.split('{')[0]} {op}({inputs})")


for path in [("block0", "mlp_in", "kernel"), ("block0", "mlp_in", "bias")]:
    print(f"{'/'.join(path)}:")
    show_leaf(plain, tuple(jax.tree_util.DictKey(k) for k in path))

# %% [markdown]
# Read the kernel's lines as a budget, in units of one leaf (4 bytes per element):
#
# * the **global norm** reads $g$ and returns a scalar (1 transfer);
# * one loop computes the new first moment $\mu' = b_1\mu + (1-b_1)\,c\,g$ (with $c$
#   the clip's scale): it reads $g$ and $\mu$, writes $\mu'$ (3);
# * one loop computes the new second moment $\nu'$: it reads $g$ and $\nu$ again,
#   writes $\nu'$ (3);
# * one loop computes the new parameter (Adam's step, the decay, the prox and the box,
#   plus `apply_updates`, all fused together): it reads $w, \mu', \nu'$ and writes
#   $w'$ (4).
#
# That is **11 transfers** where 8 would do: $g$ is read three times, $\mu'$ and $\nu'$
# are written and then read back. XLA fused everything it could, but its CPU backend
# does not make one loop with several outputs, and this step has three ($w', \mu',
# \nu'$) per leaf: three loops per leaf, and ~40 % more traffic than needed. For the
# bias it does a little worse still: it writes $g^2$ to a temporary and reads it back
# to split the norm's sum into pieces, a fourth loop (in this run, that is where the
# loops beyond $3 \times 16$ come from; the small leaves hardly change the bytes).

# %% [markdown]
# ## 3. The same step as one pass: `jaxreg.apply_step`
#
# `jaxreg.apply_step(tx, grads, state, params)` replaces `tx.update` +
# `optax.apply_updates`. For a `jaxreg.chain` whose members all have an element-wise
# form, it writes their rules (a few C++ statements each) one after the other into a
# single loop, compiles it once per machine, and calls it through XLA custom calls:
#
# * `jaxreg_sumsq` reads every gradient once and returns the sums of squares (the norm);
# * `jaxreg_step` then runs, for every element of every leaf, clip → Adam → decay →
#   prox → box, reading $g, w, \mu, \nu$ and writing $w', \mu', \nu'$ **in place**
#   (the buffers are aliased: donate params and state so that XLA need not copy them).
#
# `jaxreg.fused.fast_path(tx, grads, params)` says whether this pass will be taken:
# `None` means yes, a string says why not.

# %%
print("fast_path:", jaxreg.fused.fast_path(fused_tx, grads, params))


def fused_step(params, state, grads):
    return jaxreg.apply_step(fused_tx, grads, state, params)


t0 = time.perf_counter()
with jax.numpy_dtype_promotion("standard"):
    fused_compiled = jax.jit(fused_step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
print(f"compiled the one-pass step in {time.perf_counter() - t0:.1f} s")
fused = analyse(fused_compiled.as_text())
print(f"loops writing a parameter-sized array: {len(fused['loops'])}")
print(f"custom calls: {fused['custom_calls'] or 'none'}")
print(f"bytes moved per parameter: {fused['bytes_per_param']:.1f} ({fused['bytes_per_param'] / 4:.1f} transfers)")
for name, result, op, operands in fused["instructions"]:
    if op == "custom-call":
        print(f"  %{name} = {result.split('{')[0][:70]}... custom-call({len(operands)} operands)")

# %% [markdown]
# With the native kernels, the program is two custom calls and a few scalar
# operations: the per-leaf loops are gone, and the count of bytes comes to the
# compulsory 32 per parameter. The step's custom call takes a vector of this step's
# scalars (the clip's scale, Adam's bias corrections, the learning rate, ...) and then
# $g, w, \mu, \nu$ of every leaf, and returns $w', \mu', \nu'$ in the same buffers.
# (Where the kernels are not available, the lines above say so and the step is the
# plain one: same numbers, more traffic.)
#
# When the pass cannot be taken, `apply_step` does exactly what the plain step does,
# `tx.update` then `optax.apply_updates`, so it is always safe to call. Three chains
# it cannot fuse, and why:

# %%
tiny = {"w": jnp.ones((4, 3), jnp.float32), "b": jnp.zeros(3, jnp.float32)}
cases = {
    "an optax.chain (it does not remember its members)": (optax.chain(*members()), tiny),
    "optax.adam in place of jaxreg.adam (no element-wise form)": (
        jaxreg.chain(jaxreg.clip_by_global_norm(1.0), optax.adam(LR), jaxreg.project_box(-1.0, 1.0)),
        tiny,
    ),
    "bfloat16 parameters": (jaxreg.chain(*members()), jax.tree.map(lambda x: x.astype(jnp.bfloat16), tiny)),
}
reasons = {}
for what, (tx, p) in cases.items():
    reasons[what] = jaxreg.fused.fast_path(tx, p, p)
    print(f"{what}:\n    {reasons[what]}")

# %% [markdown]
# For the first of them, the compiled `apply_step` is indeed the plain step: loops and
# no custom call, and the same result as `tx.update` + `optax.apply_updates`.

# %%
fallback_tx = cases["an optax.chain (it does not remember its members)"][0]
with jax.numpy_dtype_promotion("standard"):
    tiny_state = fallback_tx.init(tiny)
    fallback_hlo = (
        jax.jit(lambda p, s, g: jaxreg.apply_step(fallback_tx, g, s, p))
        .lower(tiny, tiny_state, tiny)
        .compile()
        .as_text()
    )
    by_apply_step, _ = jax.jit(lambda p, s, g: jaxreg.apply_step(fallback_tx, g, s, p))(tiny, tiny_state, tiny)
    updates, _ = fallback_tx.update(tiny, tiny_state, tiny)
    by_hand = optax.apply_updates(tiny, updates)
fallback_custom_calls = fallback_hlo.count("custom-call(")
fallback_diff = max(
    float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(by_apply_step), jax.tree.leaves(by_hand))
)
print(
    f"apply_step on an optax.chain: {fallback_custom_calls} custom calls, "
    f"max |apply_step - (update + apply_updates)| = {fallback_diff:.1e}"
)

# %% [markdown]
# ## 4. Same numbers
#
# The fused loop follows the unfused chain's arithmetic operation by operation (no
# `-ffast-math`, no fused multiply-adds that XLA would not make), so the two should
# agree to float32 rounding. We run a few steps both ways from the same start, with a
# fresh gradient each step, and compare the parameters and the whole optimizer state.
#
# Both compiled steps **donate** their inputs: after a call, the arrays passed in are
# deleted (their buffers now hold the outputs). So each run starts from its own copy.

# %%
STEPS = pick(5, 3)
step_grads = [random_tree(10 + k, 1.0) for k in range(STEPS)]


def run(compiled, start_state=state):
    p = jax.tree.map(jnp.copy, params)
    s = jax.tree.map(jnp.copy, start_state)
    for g in step_grads:
        p, s = compiled(p, s, g)
    return p, s


def max_abs_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


plain_params, plain_state = run(plain_compiled)
fused_params, fused_state = run(fused_compiled)
params_diff = max_abs_diff(plain_params, fused_params)
state_diff = max_abs_diff(plain_state, fused_state)
moved = max_abs_diff(plain_params, params)
print(f"after {STEPS} steps: max |plain - one pass| params {params_diff:.1e}, whole state {state_diff:.1e}")
print(f"(the steps moved the parameters by up to {moved:.1e}, so the agreement is not trivial)")
print("Adam step counts:", int(plain_state[1][0].count), int(fused_state[1][0].count))

# %% [markdown]
# ## 5. Time against the roofline
#
# A **bandwidth probe** measures what the machine can move: an in-place scale of one
# flat float32 buffer with as many elements as there are parameters, jitted and
# donated. It reads and writes each element once, 8 bytes per parameter, so its time
# $t_\text{probe}$ gives the bandwidth $B = 8N / t_\text{probe}$, and the roofline time
# of the update step is $32N / B = 4\,t_\text{probe}$.
#
# We time each step as the median of several calls after a warm-up, waiting for the
# result (`block_until_ready`: JAX dispatches asynchronously, and without it we would
# time the dispatch only). Timings on a shared machine vary from run to run, so treat
# the numbers as indicative; in the quick run (about 190 K parameters, under a
# millisecond a step) fixed costs such as the dispatch and waking the threads weigh as
# much as the memory traffic, and the arrays fit in the CPU's caches: the probe then
# measures overheads more than bandwidth, and a "fraction of the roofline" above 1 is
# possible. Run the notebook at full size for numbers that mean more.

# %%
REPEATS = pick(30, 10)


def median_seconds(compiled, *carry_and_args, carried=2):
    """Median time of ``compiled(*carry, *args)`` whose first ``carried`` results feed the next call."""
    carry, args = list(carry_and_args[:carried]), carry_and_args[carried:]
    times = []
    for k in range(REPEATS + 2):  # two warm-up calls
        t0 = time.perf_counter()
        out = compiled(*carry, *args)
        jax.block_until_ready(out)
        if k >= 2:
            times.append(time.perf_counter() - t0)
        carry = list(out)[:carried]
    return statistics.median(times)


rows = -(-N // 256)  # (rows, 256): XLA's CPU loops run slower on an odd-length 1-D buffer
probe = (
    jax.jit(lambda x: (x * jnp.float32(1.0000001),), donate_argnums=0)
    .lower(jnp.ones((rows, 256), jnp.float32))
    .compile()
)
t_probe = median_seconds(probe, jnp.ones((rows, 256), jnp.float32), carried=1)
t_plain = median_seconds(plain_compiled, jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, state), grads)
t_fused = median_seconds(fused_compiled, jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, state), grads)
bandwidth = 8 * rows * 256 / t_probe
t_roofline = 32 * N / bandwidth
print(f"bandwidth probe: {t_probe * 1e3:.3f} ms -> {bandwidth / 1e9:.1f} GB/s; roofline step {t_roofline * 1e3:.3f} ms")
for name, t in [("optax.chain, jitted", t_plain), ("jaxreg.apply_step", t_fused)]:
    print(f"{name:22s} {t * 1e3:8.3f} ms   {t_roofline / t:5.2f} of the roofline")
print(f"one pass vs plain: {t_plain / t_fused:.2f}x")

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
names = ["optax.chain\n(plain, jitted)", "jaxreg.apply_step\n(one pass)"]
traffic = [plain["bytes_per_param"], fused["bytes_per_param"]]
bars = ax1.bar(names, traffic, color=["C0", "C1"])
ax1.bar_label(bars, fmt="%.1f")
ax1.axhline(32, color="k", ls="--", label="compulsory: 8 x 4 bytes")
ax1.set(ylabel="bytes moved per parameter", title="Traffic, counted in the compiled HLO", ylim=(0, 1.3 * max(traffic)))
ax1.legend(loc="upper right")
times_ms = [1e3 * t_plain, 1e3 * t_fused, 1e3 * t_probe]
bars = ax2.bar([*names, "bandwidth probe\n(read + write once)"], times_ms, color=["C0", "C1", "C7"])
ax2.bar_label(bars, fmt="%.3g")
ax2.axhline(1e3 * t_roofline, color="k", ls="--", label=f"roofline: 32 bytes/param at {bandwidth / 1e9:.0f} GB/s")
ax2.set(
    ylabel="median time per step (ms)",
    title=f"Measured, {N / 1e6:.2f} M parameters",
    ylim=(0, 1.3 * max(*times_ms, 1e3 * t_roofline)),
)
ax2.legend(loc="upper right")
fig.suptitle("The update step is memory-bound: fewer bytes, less time", y=1.02)
save_figure(fig, "09_traffic_and_time")

# %% [markdown]
# For a reference at a size where memory dominates, `bench/update_step.py` measures the
# same chain at 1 M, 10 M and 50 M parameters (`bench/results/cpu-2core-x86_64.md`).
# On the 2-core x86-64 CPU at 50 M parameters, `jaxreg.apply_step` took 61 ms per step
# against 147 ms for the jitted optax chain, **2.43x** faster and at **0.85 of the
# roofline**, while the plain chain is at 0.35. At 1 M parameters the two were level
# (3.7 ms each): there the fixed costs of a step weigh as much as its traffic.

# %% [markdown]
# ## 6. What fuses
#
# A chain is fused when **every** member has a fused form (the module docstring of
# `jaxreg/fused.py` keeps the list): an element-wise one for `jaxreg.adam`,
# `jaxreg.sgd`, `clip_by_global_norm` and `clip_by_leaf_norm` (2-norm, first in the
# chain), `clip`, `coupled_weight_decay`, `decoupled_weight_decay`, `l1_prox`,
# `elastic_net_prox`, `project_box`, `project_nonnegative` and
# `pruning.keep_pruned`; the parameters and gradients must be float32 on one CPU
# device. Anything else (optax's own transforms, bf16 parameters, several devices)
# makes `apply_step` run the plain chain, as above.
#
# * **Members that rescale units by their norms** (`max_norm`, `group_lasso_prox`,
#   `project_l2_ball`, whose unit is a leaf or all its leaves) are not element-wise: a unit's factor needs its
#   whole norm first. Each one starts a *stage* on the leaves it selects. The pass
#   sums every unit's squares from the rows it has just written (still in cache); then
#   one more read and write of those leaves multiplies each unit by its factor and runs
#   the members after it, which may only be projections or proximal steps (they read
#   the new value alone). That is 8 more bytes per parameter it rescales: 40 instead of
#   32 for the card's chain with `max_norm`, still one custom call.
#
# * **Masks** (`mask=jaxreg.masks.weights_only`: decay the kernels, not the biases)
#   make *variants*: one loop per distinct pattern of which members act on a leaf. A
#   chain with one masked member has two variants; each leaf runs the one that fits.
# * **Schedules and traced hyperparameters** (a learning-rate schedule, a strength
#   swept by `vmap`) are not baked into the C++: each rule turns its hyperparameters
#   into a few scalars, computed in JAX at every step and passed to the loop. The
#   loop is compiled once, whatever their values.
# * **On GPU and TPU** `apply_step` takes the plain path: there XLA's own fusion emits
#   loops with several outputs and does well; the one-pass kernels are for CPU.
#
# Here is the card's chain with a max-norm cap of 0.3 on the units (columns) of every
# kernel, between the prox and the box: one custom call still, and the plain chain's
# numbers.


# %%
def with_max_norm():
    """The card's chain with max_norm on the kernels' units before the box."""
    card = members()
    return (*card[:4], jaxreg.max_norm(0.3, mask=jaxreg.masks.weights_only), card[4])


def compiled_step(tx, state):
    """``apply_step`` jitted for ``tx``: the one pass for a jaxreg.chain, update +
    apply_updates for an optax.chain (section 3)."""
    with jax.numpy_dtype_promotion("standard"):
        step = jax.jit(lambda p, s, g: jaxreg.apply_step(tx, g, s, p), donate_argnums=(0, 1))
        return step.lower(params, state, grads).compile()


staged_tx, staged_plain_tx = jaxreg.chain(*with_max_norm()), optax.chain(*with_max_norm())
print("fast_path:", jaxreg.fused.fast_path(staged_tx, grads, params))
staged_state = staged_tx.init(params)
staged_compiled = compiled_step(staged_tx, staged_state)
staged_plain_compiled = compiled_step(staged_plain_tx, staged_state)
staged = analyse(staged_compiled.as_text())
print(
    f"custom calls: {staged['custom_calls'] or 'none'}; loops writing a parameter-sized array: {len(staged['loops'])}"
)
staged_params, _ = run(staged_compiled, staged_state)
staged_diff = max_abs_diff(staged_params, run(staged_plain_compiled, staged_state)[0])
kernel = np.asarray(staged_params["block0"]["mlp_in"]["kernel"])
largest_unit_norm = float(np.linalg.norm(kernel, axis=0).max())
print(f"max |plain - one pass| params {staged_diff:.1e}; largest column norm of a kernel: {largest_unit_norm:.4f}")

# %% [markdown]
# Nothing here is special to Adam or to the global norm. PyTorch's
# `clip_grad_value_(1.0)` + `SGD(lr, momentum=0.9, nesterov=True, weight_decay=1e-4)`,
# with the L1 prox after it, is `jaxreg.clip`, `coupled_weight_decay` and `jaxreg.sgd`
# (which *is* `optax.sgd`) in a `jaxreg.chain`: one custom call again, with no norm to
# read first, and the value clip's share of clipped entries, which its state keeps for
# logging, is counted inside the pass.


# %%
def sgd_members():
    """clip_grad_value_ + SGD with Nesterov momentum and coupled weight decay, then the prox."""
    return (
        jaxreg.clip(1.0),
        jaxreg.coupled_weight_decay(1e-4),
        jaxreg.sgd(LR, momentum=0.9, nesterov=True),
        jaxreg.l1_prox(1e-4, learning_rate=LR),
    )


sgd_tx = jaxreg.chain(*sgd_members())
print("fast_path:", jaxreg.fused.fast_path(sgd_tx, grads, params))
sgd_state = sgd_tx.init(params)
sgd_compiled = compiled_step(sgd_tx, sgd_state)
sgd = analyse(sgd_compiled.as_text())
sgd_params, sgd_new_state = run(sgd_compiled, sgd_state)
sgd_plain_params, sgd_plain_state = run(compiled_step(optax.chain(*sgd_members()), sgd_state), sgd_state)
sgd_diff = max(max_abs_diff(sgd_params, sgd_plain_params), max_abs_diff(sgd_new_state, sgd_plain_state))
clipped = float(sgd_new_state[0].clipped_fraction)
print(f"custom calls: {sgd['custom_calls'] or 'none'}; loops writing a parameter-sized array: {len(sgd['loops'])}")
print(f"max |plain - one pass| params and state {sgd_diff:.1e}; entries clipped on the last step: {clipped:.1%}")

# %% [markdown]
# ## 7. In Flax NNX
#
# `nnx.Optimizer.update` calls `tx.update`, i.e. the plain chain. `jaxreg.nn.Optimizer`
# is an `nnx.Optimizer` whose `update(model, grads)` runs `apply_step`:
#
# ```python
# optimizer = jaxreg.nn.Optimizer(model, jaxreg.chain(...), wrt=nnx.Param)
# grads = nnx.grad(loss_fn)(model)
# optimizer.update(model, grads)  # one pass over the parameters and the state
# ```
#
# We train a tiny `nnx.Linear` a few steps with each and compare.


# %%
def train_nnx(optimizer_class, tx, steps=3):
    model = nnx.Linear(8, 4, rngs=nnx.Rngs(0))
    optimizer = optimizer_class(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x):
        grads = nnx.grad(lambda m: jnp.mean((m(x) - 1.0) ** 2))(model)
        optimizer.update(model, grads)

    x = jnp.asarray(np.random.default_rng(2).standard_normal((16, 8)), jnp.float32)
    for _ in range(steps):
        train_step(model, optimizer, x)
    return nnx.state(model, nnx.Param), nnx.state(optimizer.opt_state)


with jax.numpy_dtype_promotion("standard"):
    nnx_params, nnx_state = train_nnx(nnx.Optimizer, optax.chain(*members()))
    ours_params, ours_state = train_nnx(jaxreg.nn.Optimizer, jaxreg.chain(*members()))
nnx_diff = max(max_abs_diff(nnx_params, ours_params), max_abs_diff(nnx_state, ours_state))
print(f"jaxreg.nn.Optimizer vs nnx.Optimizer after 3 steps: max abs diff {nnx_diff:.1e}")

# %% [markdown]
# ## Summary
#
# * The optimizer update is **memory-bound**: its time is bytes moved divided by
#   bandwidth. For clip → Adam → decay → prox → box the floor is 8 float32 transfers,
#   **32 bytes per parameter**.
# * `compile().as_text()` shows what XLA really runs. For the jitted `optax.chain` on
#   CPU that is **three loops per leaf** (new $\mu$, new $\nu$, new $w$), because XLA's
#   CPU backend does not fuse loops with several outputs: about **11 transfers** per
#   parameter.
# * `jaxreg.chain` is an `optax.chain` that remembers its members;
#   `jaxreg.apply_step` runs it as **one loop over all leaves** (two custom calls:
#   the norm, then the step), in place when params and state are donated, with the
#   **same numbers** as the plain chain.
# * `jaxreg.fused.fast_path` says why a chain is not fused; `apply_step` then simply
#   runs `tx.update` + `optax.apply_updates`, so it is always safe to call.
# * Measured against a bandwidth probe, the one-pass step reached 0.85 of the roofline
#   and 2.43x the optax chain at 50 M parameters on 2 CPU cores.
# * The same holds beyond Adam: an SGD chain with a value clip (whose clipped share is
#   counted inside the pass) is one custom call too.
# * In Flax NNX, `jaxreg.nn.Optimizer(model, tx, wrt=nnx.Param)` gives the same
#   training as `nnx.Optimizer` through the one-pass step.

# %%
report(
    native=int(NATIVE),
    leaves=LEAVES,
    params=N,
    max_abs_diff_params=params_diff,
    max_abs_diff_state=state_diff,
    params_moved=moved,
    nnx_optimizer_max_abs_diff=nnx_diff,
    fused_step_custom_calls=fused["custom_calls"].count("jaxreg_step"),
    fused_sumsq_custom_calls=fused["custom_calls"].count("jaxreg_sumsq"),
    fused_param_loops=len(fused["loops"]),
    unfused_param_loops=len(plain["loops"]),
    unfused_custom_calls=len(plain["custom_calls"]),
    unfused_bytes_per_param=plain["bytes_per_param"],
    fused_bytes_per_param=fused["bytes_per_param"],
    fallback_reasons=sum(r is not None for r in reasons.values()),
    max_norm_step_custom_calls=staged["custom_calls"].count("jaxreg_step"),
    max_norm_max_abs_diff=staged_diff,
    max_norm_largest_unit_norm=largest_unit_norm,
    sgd_step_custom_calls=sgd["custom_calls"].count("jaxreg_step"),
    sgd_sumsq_custom_calls=sgd["custom_calls"].count("jaxreg_sumsq"),
    sgd_max_abs_diff=sgd_diff,
    sgd_clipped_fraction=clipped,
    fallback_custom_calls=fallback_custom_calls,
    fallback_max_abs_diff=fallback_diff,
    seconds_optax_chain=t_plain,
    seconds_apply_step=t_fused,
    seconds_bandwidth_probe=t_probe,
    bandwidth_gb_s=bandwidth / 1e9,
    roofline_fraction_optax_chain=t_roofline / t_plain,
    roofline_fraction_apply_step=t_roofline / t_fused,
)
