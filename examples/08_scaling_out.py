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
# # 08 · Scaling out: sharded parameters, the same transforms
#
# A model that outgrows one device is spread over many: the batch is split between
# them (*data parallelism*) and so are the parameters, the gradients and the optimizer
# state (*fully sharded data parallelism*, FSDP, also called ZeRO-3). In JAX this takes
# no new optimizer and no communication code: each array carries a `NamedSharding`
# that says which device holds which block, `jax.jit` compiles one program for all the
# devices, and XLA inserts the collectives (all-reduce, all-gather, reduce-scatter) the
# math needs.
#
# jaxreg is written so that this costs almost nothing. Its transforms do two kinds of
# work:
#
# * **element-wise** math (value clipping, decay, soft-thresholding, box projection,
#   holding pruned weights at zero): each device updates its own block, with **no
#   communication**;
# * **global quantities** (the norm of all gradients, the magnitude threshold that
#   prunes 80 % of all weights): computed as sums of per-leaf partial reductions, so
#   each device reduces its own block and XLA adds the partial results with an
#   **all-reduce of a few scalars**. No parameter is ever gathered onto one device.
#
# In this notebook you will
#
# 1. make 8 simulated devices and a `(data=2, fsdp=4)` mesh;
# 2. shard an MLP's parameters FSDP-style and its batches data-parallel, and look at who
#    holds what;
# 3. train it with the card's chain (global-norm clip → Adam → decoupled weight decay →
#    L1 prox → box) plus gradual magnitude pruning to 80 % sparsity;
# 4. read the compiled program and count its collectives: what the model costs and
#    what jaxreg costs;
# 5. check that the sharded run gives one device's numbers.

# %% [markdown]
# ## 1. Eight devices on one CPU
#
# `--xla_force_host_platform_device_count=8` makes XLA's CPU backend present 8 devices.
# The flag is read once, when JAX starts its backend, so it must be set **before JAX is
# imported** (in Jupyter: in the first cell of a fresh kernel). On a machine with 8
# GPUs or TPU cores nothing below changes except that line, which you then drop.

# %%
import os

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()

import re  # noqa: E402  (after XLA_FLAGS, on purpose)
import time  # noqa: E402
from collections import Counter  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from _common import SMALL, pick, report, save_figure  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxreg  # noqa: E402
from jaxreg import pruning  # noqa: E402

print(f"jax {jax.__version__}, small run: {SMALL}")
print(f"{jax.device_count()} devices: {jax.devices()}")

# %% [markdown]
# A **mesh** arranges the devices in a named grid. Ours is 2 × 4 with axes `data` and
# `fsdp`. A `PartitionSpec` then says, per array dimension, which mesh axes split it:
#
# * the batch `x` of shape `(B, 16)` gets `P(("data", "fsdp"), None)`: its rows are
#   split 8 ways, every device sees `B / 8` examples (data parallelism);
# * each kernel `(in, out)` gets `P("fsdp", None)`: its rows are split 4 ways along
#   `fsdp` and the two `data` groups hold the same copy (FSDP within a group, plain data
#   parallelism across groups, the "hybrid" layout of large training runs);
# * the biases are small and stay replicated, `P()`.
#
# The mesh's axes are `Auto`: we shard the inputs and XLA propagates shardings through
# the program. (`jax.make_mesh` makes `Explicit` axes by default in this JAX, where
# shardings are part of each array's type; `tests/test_sharding.py` runs every jaxreg
# transform on both kinds.)

# %%
mesh = jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(AxisType.Auto, AxisType.Auto))
print(mesh)

N_IN, HIDDEN = 16, 128
BATCH = 256  # global batch: 32 examples per device
STEPS = pick(600, 160)
N_BATCHES = 16  # the data set is 16 batches, cycled

SPECS = {
    "dense1": {"kernel": P("fsdp", None), "bias": P()},
    "dense2": {"kernel": P("fsdp", None), "bias": P()},
    "out": {"kernel": P("fsdp", None), "bias": P()},
}
SHARDINGS = jax.tree.map(lambda spec: NamedSharding(mesh, spec), SPECS, is_leaf=lambda s: isinstance(s, P))
DATA = NamedSharding(mesh, P(None, ("data", "fsdp"), None))  # (batch index, example, feature)

# The task: y depends on 4 of the 16 inputs, so most first-layer weights are useless
# and pruning has something to find.
rng = np.random.default_rng(0)
x_np = rng.standard_normal((N_BATCHES, BATCH, N_IN)).astype(np.float32)
y_np = (np.sin(2 * x_np[..., :1]) + x_np[..., 1:2] * x_np[..., 2:3] - 0.5 * x_np[..., 3:4]).astype(np.float32)
y_np += 0.05 * rng.standard_normal(y_np.shape).astype(np.float32)


def init_params(rng):
    def dense(n_in, n_out):
        return {
            "kernel": (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32),
            "bias": np.zeros(n_out, np.float32),
        }

    return {"dense1": dense(N_IN, HIDDEN), "dense2": dense(HIDDEN, HIDDEN), "out": dense(HIDDEN, 1)}


params_np = init_params(np.random.default_rng(1))
params = jax.device_put(params_np, SHARDINGS)
xs, ys = jax.device_put(x_np, DATA), jax.device_put(y_np, DATA)

for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    shard = leaf.addressable_shards[0].data.shape
    print(f"  {jax.tree_util.keystr(path):22s} {str(leaf.shape):11s} {str(leaf.sharding.spec):18s} per device {shard}")
print(f"  {'batch x':22s} {str(xs.shape[1:]):11s} {str(xs.sharding.spec[1:]):18s} per device {(BATCH // 8, N_IN)}")

# %% [markdown]
# JAX can draw a sharding. Each box is a block of the array, labelled with the devices
# that hold it: the second kernel's 128 rows are in 4 blocks of 32, each held by two
# devices (one per `data` group); a batch is in 8 blocks, one per device.

# %%
print("dense2 kernel (128 x 128), P('fsdp', None):")
jax.debug.visualize_array_sharding(params["dense2"]["kernel"])
print("one batch of x (256 x 16), P(('data', 'fsdp'), None):")
jax.debug.visualize_array_sharding(xs[0])

# %% [markdown]
# The same, as a picture of every array: each row block coloured by the `fsdp` shard
# that holds it, with the devices written in.


# %%
def owners(arr):
    """Per row of a sharded array: the sorted ids of the devices that hold it."""
    held = [set() for _ in range(arr.shape[0])]
    for shard in arr.addressable_shards:
        for r in range(arr.shape[0])[shard.index[0]]:
            held[r].add(shard.device.id)
    return [tuple(sorted(h)) for h in held]


panels = [(f"{name} kernel", params[name]["kernel"]) for name in ("dense1", "dense2", "out")]
panels.append(("batch x (one step)", xs[0]))
fig, axes = plt.subplots(1, len(panels), figsize=(11, 3.8))
cmap = plt.get_cmap("tab10")
for ax, (name, arr) in zip(axes, panels):
    rows = owners(arr)
    groups = sorted(set(rows))
    image = np.array([groups.index(r) for r in rows])[:, None]
    ax.imshow(image, cmap=cmap, vmin=0, vmax=9, aspect="auto", interpolation="nearest")
    for devices in groups:
        where = [i for i, r in enumerate(rows) if r == devices]
        label = "all 8" if len(devices) == 8 else ",".join(map(str, devices))
        ax.text(0, (where[0] + where[-1]) / 2, label, ha="center", va="center", fontsize=8)
    ax.set(title=f"{name}\n{tuple(arr.shape)}", xticks=[])
    ax.grid(False)
axes[0].set_ylabel("row")
fig.suptitle(
    "Which devices hold which rows (colour: a block, text: the devices holding it); biases: all 8 devices", y=1.04
)
save_figure(fig, "08_shardings")

# %% [markdown]
# ## 2. The chain, with gradual pruning
#
# The optimizer is the design card's chain, with Zhu & Gupta's gradual magnitude
# pruning last: the sparsity of the kernels rises from 0 to 80 % as a cubic between
# 20 % and 60 % of training, re-pruning every few steps, with the 80 % ranked over all
# kernels together (`scope="global"`).
#
# Which pieces need communication? With $g^{(k)}$ the block of leaf $k$ on device $d$:
#
# * `clip_by_global_norm` needs $\|g\|^2 = \sum_k \sum_d \|g^{(k)}_d\|^2$: each device
#   sums its own blocks, and **one all-reduce** adds the partial sums (XLA groups the
#   scalars of all leaves into one message per set of devices);
# * the global pruning threshold is the $k$-th smallest $|w|$ over all kernels. jaxreg
#   finds it without sorting, by a search over the bit patterns of the floats: each
#   step of the search **counts** how many weights lie below a candidate threshold. A
#   count is a sum of per-device counts: **one all-reduce of a few integers per search
#   step**, a few dozen steps, only when the mask is recomputed (every `frequency`
#   steps);
# * Adam, the decay, the prox, the box and holding pruned weights at zero are
#   element-wise: **no communication**, each device updates its own rows.

# %%
LR = 1e-2
BEGIN, FREQUENCY = STEPS // 5, max(STEPS // 40, 1)  # pruning starts at 20 % of training, re-prunes this often
schedule = pruning.polynomial_sparsity(0.8, begin_step=BEGIN, end_step=3 * STEPS // 5, frequency=FREQUENCY)
tx = optax.chain(
    jaxreg.clip_by_global_norm(1.0),
    optax.adam(LR),
    jaxreg.decoupled_weight_decay(1e-4, learning_rate=LR, mask=jaxreg.masks.weights_only),
    jaxreg.l1_prox(1e-4, learning_rate=LR, mask=jaxreg.masks.weights_only),
    jaxreg.project_box(-2.0, 2.0),
    pruning.prune_during_training(pruning.magnitude_score, schedule, scope="global", where=jaxreg.masks.weights_only),
)


def loss_fn(params, x, y):
    h = jax.nn.relu(x @ params["dense1"]["kernel"] + params["dense1"]["bias"])
    h = jax.nn.relu(h @ params["dense2"]["kernel"] + params["dense2"]["bias"])
    return jnp.mean((h @ params["out"]["kernel"] + params["out"]["bias"] - y) ** 2)


def train_step(params, state, xs, ys, i):
    x, y = xs[i % N_BATCHES], ys[i % N_BATCHES]
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss


def update_only(grads, state, params):
    """Just the optimizer: what jaxreg (and Adam) add to a step."""
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


with jax.numpy_dtype_promotion("standard"):  # optax.adam mixes weak types
    state = tx.init(params)
print("Adam's first moment is sharded like the params:", state[1][0].mu["dense2"]["kernel"].sharding.spec)

# %% [markdown]
# ## 3. What the compiled program communicates
#
# `jax.jit(f).lower(*args).compile().as_text()` is the program XLA will run on each
# device, after it has split the computation (SPMD partitioning). Every communication
# appears there as a collective op, with the shape of what it moves. We count them in
# two programs: the whole training step, and the optimizer update alone.

# %%
COLLECTIVE = re.compile(
    r"=\s+(\([^=]*?\)|[a-z0-9]+\[[0-9,]*\](?:\{[^}]*\})?)\s+"
    r"(all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)(?:-start)?\("
)


def collectives(compiled):
    """(op, result shapes) of every collective in a compiled program."""
    found = []
    for shape, op in COLLECTIVE.findall(compiled.as_text()):
        found.append((op, re.findall(r"[a-z][a-z0-9]*\[[0-9,]*\]", shape)))
    return found


def describe(name, found):
    counts = Counter(op for op, _ in found)
    print(f"{name}: {dict(counts) or 'no collectives'}")
    for op, shapes in found:
        shown = ", ".join(shapes[:6]) + (", ..." if len(shapes) > 6 else "")
        print(f"    {op:18s} {shown}")
    return counts


i0 = jnp.zeros([], jnp.int32)
with jax.numpy_dtype_promotion("standard"):
    t0 = time.perf_counter()
    step_compiled = jax.jit(train_step).lower(params, state, xs, ys, i0).compile()
    compile_s = time.perf_counter() - t0
    grads = jax.tree.map(jnp.zeros_like, params)
    update_compiled = jax.jit(update_only).lower(grads, state, params).compile()

print(f"compiled the training step in {compile_s:.1f} s\n")
step_ops = collectives(step_compiled)
update_ops = collectives(update_compiled)
step_counts = describe("training step (model + optimizer)", step_ops)
print()
update_counts = describe("optimizer update alone (clip, Adam, decay, prox, box, pruning)", update_ops)

param_sizes = {int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params)}


def size(shape):
    dims = re.search(r"\[([0-9,]*)\]", shape).group(1)
    return int(np.prod([int(d) for d in dims.split(",") if d]))


update_gathers = [s for op, shapes in update_ops if op == "all-gather" for s in shapes]
update_nonscalar = [s for op, shapes in update_ops for s in shapes if size(s) != 1 or op != "all-reduce"]
step_gathered = [s for op, shapes in step_ops if op == "all-gather" for s in shapes]

# %% [markdown]
# Read the two lists side by side:
#
# * The **training step** gathers each kernel's rows for its matmul (`all-gather` of
#   the kernel) and sums the gradients over the devices that share a block
#   (`all-reduce`s or `reduce-scatter`s of kernel-sized arrays). That is the price of
#   FSDP and data parallelism, set by the model and the layout, and the same with any
#   optimizer.
# * The **optimizer update** holds only all-reduces of scalars. There are a few ops, not
#   one per leaf, because XLA merges the partial sums of all leaves that live on the
#   same devices into one message. Those in the body of a `while` loop (the search for
#   the pruning threshold) run once per search step, and only on the steps where the
#   mask is recomputed (`lax.cond`).
#
# What it costs: a global norm adds one round trip of a few bytes per step, latency
# bound (microseconds over NVLink or ICI, tens to hundreds over Ethernet), against the
# gradient synchronization, which moves the whole gradient. A global threshold adds a
# few dozen such round trips, one after the other, but only when the mask changes. Every other transform is
# free: each device touches only its own rows, so the update's memory traffic per
# device falls with the number of devices.

# %% [markdown]
# ## 4. Training on 8 devices
#
# The loop calls the compiled step. At a few steps (the first, every pruning step of
# the ramp's first half, the last) it also keeps a host copy of the step's inputs and
# outputs, to replay that step on one device below.

# %%
CHECK_AT = sorted({0, BEGIN, BEGIN + FREQUENCY, BEGIN + 4 * FREQUENCY, STEPS - 1})
losses, sparsities, snapshots = [], [], {}
t0 = time.perf_counter()
for i in range(STEPS):
    before = jax.device_get((params, state)) if i in CHECK_AT else None
    params, state, loss = step_compiled(params, state, xs, ys, jnp.asarray(i, jnp.int32))
    if before is not None:
        snapshots[i] = (before, jax.device_get((params, state)))
    losses.append(float(loss))
    sparsities.append(float(state[-1].sparsity))
train_s = time.perf_counter() - t0
keep = state[-1].keep
print(f"{STEPS} steps in {train_s:.1f} s; loss {losses[0]:.3f} -> {np.mean(losses[-10:]):.3f}")
print(pruning.sparsity_report(keep).table())
print("the mask is sharded like the params:", keep["dense2"]["kernel"].sharding.spec)

# %% [markdown]
# ## 5. The same steps on one device
#
# Sharding must not change what a step computes. We compile the same `train_step` for
# arrays on a single device and replay the saved steps from the same inputs. The sums
# run in a different order (each device adds its own block first, then the all-reduce
# adds the blocks), so the numbers may differ in the last bits, and no more; the masks
# must be identical.

# %%
one = jax.devices()[0]
params1 = jax.device_put(params_np, one)
with jax.numpy_dtype_promotion("standard"):
    state1 = tx.init(params1)
    step1 = jax.jit(train_step).lower(params1, state1, x_np, y_np, i0).compile()
xs1, ys1 = jax.device_put(x_np, one), jax.device_put(y_np, one)


def max_abs_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)), initial=0)) for x, y in zip(a, b))


step_diffs, step_masks_equal = [], []
for i, ((p_in, s_in), (p_out, s_out)) in snapshots.items():
    p1, s1, _ = step1(jax.device_put(p_in, one), jax.device_put(s_in, one), xs1, ys1, jnp.asarray(i, jnp.int32))
    step_diffs.append(max_abs_diff(jax.tree.leaves(p1), jax.tree.leaves(p_out)))
    step_masks_equal.append(
        all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(s1[-1].keep), jax.tree.leaves(s_out[-1].keep)))
    )
    print(f"step {i:4d}: max |8 devices - 1 device| = {step_diffs[-1]:.1e}, masks identical: {step_masks_equal[-1]}")

# %% [markdown]
# A whole run on one device starts from the same parameters but then follows its own
# rounding. Training is chaotic: a last-bit difference grows step by step, and a weight
# whose magnitude sits at the pruning threshold can fall on either side of it. The two
# curves therefore agree closely at first and may part later, with the same final
# quality; what must hold, and held above, is that each step is the same computation.

# %%
losses1 = []
for i in range(STEPS):
    params1, state1, loss = step1(params1, state1, xs1, ys1, jnp.asarray(i, jnp.int32))
    losses1.append(float(loss))
print(f"final loss: 8 devices {np.mean(losses[-10:]):.4f}, 1 device {np.mean(losses1[-10:]):.4f}")
first_apart = next((i for i, (a, b) in enumerate(zip(losses, losses1)) if abs(a - b) > 1e-4 * abs(b)), None)
agree = "throughout" if first_apart is None else f"up to step {first_apart}"
print(f"the two loss curves agree to 1e-4 (relative) {agree}")

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
ax1.plot(losses, label="8 devices (data parallel + FSDP)")
ax1.plot(losses1, "--", label="1 device")
ax1.set(yscale="log", xlabel="step", ylabel="training loss (MSE)", title="Loss on 8 devices and on one")
ax1.legend()
ax2.plot(sparsities, color="C2")
ax2.axhline(0.8, color="grey", ls=":", label="target 80 %")
ax2.set(xlabel="step", ylabel="kernel sparsity", title="Gradual pruning (Zhu & Gupta), global threshold")
ax2.legend()
save_figure(fig, "08_training")

# %% [markdown]
# ## 6. Across hosts
#
# Nothing above depends on the devices being in one process. On several hosts, each
# process calls `jax.distributed.initialize(...)` first (coordinator address, number of
# processes, its index); `jax.devices()` then lists the devices of all hosts, the mesh
# spans them, and each process feeds its own shards of the batch
# (`jax.make_array_from_process_local_data`). The same `tx`, the same `train_step`: the
# all-reduces above simply cross the network. `tests/test_multiprocess.py` runs two
# processes with 4 CPU devices each (collectives over gloo) and checks that global-norm
# clipping and global magnitude pruning agree with one process bit for bit.
#
# Takeaways:
#
# * shard with `NamedSharding` and let `jit` compile one program: jaxreg needs no
#   mesh, no axis names and no flags;
# * element-wise transforms communicate nothing; a global norm costs one all-reduce of
#   scalars per step; a global pruning threshold a few dozen, when the mask changes;
# * check what a program moves by reading `compile().as_text()`, as we did here.

# %%
kept_fraction = float(sum(int(k.sum()) for k in jax.tree.leaves(keep)) / sum(k.size for k in jax.tree.leaves(keep)))
report(
    devices=jax.device_count(),
    initial_loss=np.mean(losses[:5]),
    final_loss=np.mean(losses[-10:]),
    final_kernel_sparsity=sparsities[-1],
    update_all_gathers=len(update_gathers),
    update_non_scalar_collectives=len(update_nonscalar),
    update_all_reduces=update_counts.get("all-reduce", 0),
    step_all_gathers=len(step_gathered),
    step_all_reduces=step_counts.get("all-reduce", 0),
    steps_replayed_on_one_device=len(step_diffs),
    max_step_diff_vs_one_device=max(step_diffs),
    step_masks_identical_to_one_device=int(all(step_masks_equal)),
    final_loss_one_device=np.mean(losses1[-10:]),
    kept_fraction_all_leaves=kept_fraction,
    train_seconds=train_s,
)
