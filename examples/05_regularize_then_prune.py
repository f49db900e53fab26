# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Regularize, then prune
#
# The fourth source article puts regularization and pruning side by side. Both make a
# network "smaller", in different senses:
#
# * **regularization** (L1, L2) changes the *training objective*, so that the weights
#   the optimizer finds are small, or exactly zero;
# * **pruning** removes weights *after the fact*: unstructured pruning zeroes every
#   weight with $|w| < \theta$; structured pruning scores whole neurons and keeps only
#   the top fraction.
#
# Its recipe is to do both: regularize first, then prune, then evaluate. Its questions
# are the ones this notebook answers with numbers, on a multilayer perceptron that
# classifies scikit-learn's 8x8 digits:
#
# 1. What do L1 and L2 do to the weights? (L1 through a proximal step, L2 as weight
#    decay, both as jaxreg transforms in the optax chain of an `nnx.Optimizer`.)
# 2. How much can each network be pruned before its accuracy falls, and does
#    regularizing first help? (`jaxreg.pruning.magnitude_mask`, per layer and global.)
# 3. What do structured (whole neurons) and N:M (2 of every 4) pruning cost, compared
#    with free-form pruning at the same sparsity? (`structured_mask`, `n_m_mask`.)
# 4. Is it better to prune gradually while training or once after it, at the same final
#    sparsity and the same number of steps? (`prune_during_training` with
#    `polynomial_sparsity`, against `magnitude_mask` followed by fine-tuning under
#    `keep_pruned`.)

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from _common import SMALL, pick, report, save_figure
from flax import nnx
from sklearn.datasets import load_digits

import jaxreg
from jaxreg import pruning

STEPS = pick(3000, 1200)  # minibatch steps of every training run (a multiple of EVERY)
BATCH = 64
LR = 0.05  # SGD with momentum 0.9
EVERY = 50  # steps between two evaluations of the test accuracy
print(f"{STEPS} steps of SGD (lr {LR}, momentum 0.9, batch {BATCH}); small run: {SMALL}")

# %% [markdown]
# ## The data, the model and the training loop
#
# The digits are 1,797 grey-level images of 8x8 pixels (values 0-16, scaled to [0, 1]),
# ten classes. We train on 1,200 and test on the other 597. The model is
# `jaxreg.nn.MLP(64, [128, 128], 10)`: 64 inputs, two hidden layers of 128 ReLU units and
# 10 logits, 25,856 weights in three kernels and 266 biases. Pruning acts on the kernels
# only; a bias is one number per unit and removing it saves nothing.
#
# The training loop is the one of notebook 04: `nnx.split` separates the model and its
# `nnx.Optimizer` into a static graph and a pytree of arrays, and a whole run is one
# `jax.lax.scan` under `jax.jit` that merges them back at every step. Every `EVERY`
# steps it records the test accuracy, so each run also gives its learning curve.

# %%
digits = load_digits()
X_all = (digits.data / 16.0).astype(np.float32)
y_all = digits.target.astype(np.int32)
perm = np.random.default_rng(0).permutation(len(y_all))
train_idx, test_idx = perm[:1200], perm[1200:]
x_train, y_train = jnp.asarray(X_all[train_idx]), jnp.asarray(y_all[train_idx])
x_test, y_test = jnp.asarray(X_all[test_idx]), jnp.asarray(y_all[test_idx])
KERNELS = jaxreg.masks.weights_only  # selector: the leaves with ndim >= 2, i.e. the kernels


def cross_entropy(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def accuracy(model):
    return jnp.mean(jnp.argmax(model(x_test), axis=-1) == y_test)


def train(model, tx, steps, seed=0):
    """Trains ``model`` in place with ``nnx.Optimizer(model, tx)``; returns the test accuracy every EVERY steps."""
    assert steps % EVERY == 0, f"train: steps must be a multiple of {EVERY}, got {steps}"
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    rows = np.random.default_rng(seed).integers(0, len(x_train), (steps // EVERY, EVERY, BATCH))

    def step(state, rows):
        model, optimizer = nnx.merge(graphdef, state)
        optimizer.update(model, nnx.grad(cross_entropy)(model, x_train[rows], y_train[rows]))
        return nnx.state((model, optimizer)), None

    def chunk(state, rows):
        state, _ = jax.lax.scan(step, state, rows)
        return state, accuracy(nnx.merge(graphdef, state)[0])

    state, history = jax.jit(lambda state, rows: jax.lax.scan(chunk, state, rows))(state, rows)
    nnx.update((model, optimizer), state)
    return np.asarray(history)


def kernel_sparsity(tree):
    """Fraction of kernel entries pruned (in a mask) or exactly zero (in params), from sparsity_report."""
    kernels = [leaf for leaf in pruning.sparsity_report(tree).leaves if "kernel" in leaf.path]
    return sum(leaf.pruned for leaf in kernels) / sum(leaf.size for leaf in kernels)


# %% [markdown]
# ## 1. Regularizing: L2 shrinks, L1 zeroes
#
# Four networks, same initialization, same minibatches, same optimizer (SGD with
# momentum); they differ only in the regularizer, a jaxreg transform in the chain:
#
# * **plain**: `optax.sgd(lr, momentum=0.9)`;
# * **L2**: `chain(coupled_weight_decay(1e-3, mask=KERNELS), sgd)`. Coupled decay adds
#   $\lambda w$ to the gradient, the gradient of the penalty $\frac\lambda2\|w\|^2$
#   (PyTorch's `weight_decay=`);
# * **L1** and **strong L1**: `chain(sgd, l1_prox(lam, learning_rate=lr, mask=KERNELS))`
#   with $\lambda = 10^{-3}$ and $10^{-2}$. After each SGD step the prox soft-thresholds
#   every kernel weight, $w \leftarrow \operatorname{sign}(w)\max(|w| - \eta\lambda, 0)$,
#   the proximal step of $\lambda\|w\|_1$: weights whose gradient cannot hold them away
#   from zero land on *exactly* zero and stay there.
#
# Why SGD and not Adam: Adam's steps are about `lr` long whatever the gradient, so a prox
# threshold of `lr * lam` after Adam zeroes weights only for $\lambda$ near 1, and then
# nearly all of them (notebook 01 shows this switch). After SGD the threshold competes
# with the gradient itself, which is what makes L1 select weights.

# %%
REGULARIZERS = {
    "plain": optax.sgd(LR, momentum=0.9),
    "L2 (1e-3)": optax.chain(jaxreg.coupled_weight_decay(1e-3, mask=KERNELS), optax.sgd(LR, momentum=0.9)),
    "L1 (1e-3)": optax.chain(optax.sgd(LR, momentum=0.9), jaxreg.l1_prox(1e-3, learning_rate=LR, mask=KERNELS)),
    "strong L1 (1e-2)": optax.chain(optax.sgd(LR, momentum=0.9), jaxreg.l1_prox(1e-2, learning_rate=LR, mask=KERNELS)),
}
models, curves = {}, {}
for name, tx in REGULARIZERS.items():
    model = jaxreg.nn.MLP(64, [128, 128], 10, rngs=nnx.Rngs(0))
    curves[name] = train(model, tx, STEPS)
    models[name] = model
    params = nnx.state(model, nnx.Param)
    print(
        f"{name:17s} test accuracy {curves[name][-1]:.3f}   kernel weights exactly zero: {kernel_sparsity(params):.1%}"
    )
dense_acc = {name: float(c[-1]) for name, c in curves.items()}
print("\nthe strongly regularized network, leaf by leaf:")
print(pruning.sparsity_report(nnx.state(models["strong L1 (1e-2)"], nnx.Param)))
report(
    accuracy_plain=dense_acc["plain"],
    accuracy_l2=dense_acc["L2 (1e-3)"],
    accuracy_l1=dense_acc["L1 (1e-3)"],
    accuracy_strong_l1=dense_acc["strong L1 (1e-2)"],
    zeros_plain=kernel_sparsity(nnx.state(models["plain"], nnx.Param)),
    zeros_l2=kernel_sparsity(nnx.state(models["L2 (1e-3)"], nnx.Param)),
    zeros_l1=kernel_sparsity(nnx.state(models["L1 (1e-3)"], nnx.Param)),
    zeros_strong_l1=kernel_sparsity(nnx.state(models["strong L1 (1e-2)"], nnx.Param)),
)

# %%
fig = plt.figure(figsize=(15, 7.5))
grid = fig.add_gridspec(2, len(models), height_ratios=[1.15, 1], hspace=0.4)
ax_hist = fig.add_subplot(grid[0, :])
bins = np.geomspace(1e-6, 2, 70)
for i, (name, model) in enumerate(models.items()):
    w = np.concatenate([np.abs(np.asarray(layer.kernel[...])).ravel() for layer in [*model.layers, model.head]])
    label = f"{name}: {np.mean(w == 0):.0%} exactly 0, accuracy {dense_acc[name]:.1%}"
    ax_hist.hist(w[w > 0], bins=bins, histtype="step", lw=1.8, color=f"C{i}", label=label)
ax_hist.set(
    xscale="log",
    yscale="log",
    xlabel="|w| of the kernel weights (exact zeros not drawn)",
    ylabel="count (of 25,856 kernel weights)",
    title="Kernel weight magnitudes after training: L2 shrinks them a little, L1 sets many of them to exactly 0",
)
ax_hist.legend(fontsize=8, loc="upper left")
for i, (name, model) in enumerate(models.items()):
    ax = fig.add_subplot(grid[1, i])
    first = np.abs(np.asarray(model.layers[0].kernel[...]))  # (64 pixels, 128 units)
    used = (first > 0).sum(axis=1).reshape(8, 8)  # how many units read each pixel
    image = ax.imshow(used, cmap="viridis", vmin=0, vmax=128)
    ax.set_title(f"{name}\npixels read: {(used > 0).sum()} of 64", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
fig.colorbar(image, ax=fig.axes[1:], shrink=0.8, label="first-layer units\nreading the pixel")
save_figure(fig, "05_weights")

# %% [markdown]
# L2 moves the whole distribution of weights towards zero but leaves every weight
# nonzero, as a multiplicative decay must. L1 splits it in two: exact zeros (a quarter
# to a half of the weights with $\lambda = 10^{-3}$, depending on how long it trains;
# over 90% with $10^{-2}$) and a set of weights that the data holds away from zero, with
# a tail of weights still on their way down. The bottom row shows what the first layer
# looks at: every unit of the plain and L2 networks reads every pixel (a few border
# pixels are zero in every image, so their weights never get a gradient and keep their
# initial values), the L1 network reads the border pixels with fewer units, and the
# strongly regularized one drops the left and right border columns altogether and
# reads the middle of the image, where the strokes are. This is feature selection,
# learned.
#
# ## 2. Magnitude pruning, per layer and global
#
# Unstructured magnitude pruning keeps the weights with $|w| \ge \theta$. Rather than
# choosing $\theta$, we choose the **sparsity** $s$, the fraction of weights to remove,
# and `jaxreg.pruning.magnitude_mask(params, s, scope=..., where=KERNELS)` prunes exactly
# $\operatorname{round}(s\,n)$ weights of smallest magnitude:
#
# * `scope="leaf"`: every kernel loses the fraction $s$ of its own weights (PyTorch's
#   `l1_unstructured` on each layer);
# * `scope="global"`: one threshold for all kernels together (PyTorch's
#   `global_unstructured`), so layers with many small weights lose more.
#
# The mask is a pytree of booleans with the parameters' structure, `True` = keep (as
# PyTorch's `weight_mask`); `apply_mask(params, keep)` zeroes the rest, and
# `sparsity_report` counts what was removed. Here is a global 90% mask of the plain
# network, leaf by leaf:

# %%
plain_params = nnx.state(models["plain"], nnx.Param)
keep90 = pruning.magnitude_mask(plain_params, 0.9, scope="global", where=KERNELS)
print(pruning.sparsity_report(keep90))

# %% [markdown]
# The global threshold takes the most from the big 128x128 hidden kernel and the least
# from the small head, where every weight speaks for one class. Everything here is a
# pure function of the parameters, so an accuracy-against-sparsity curve is a `vmap`
# over $s$: one compiled program evaluates all sparsities, and since the four networks
# share their structure, it serves all of them. We prune *without* retraining: this
# measures how much of each network is dispensable as trained.

# %%
SPARSITIES = np.array([0, 0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99], np.float32)
graphdef, _, rest = nnx.split(models["plain"], nnx.Param, ...)  # the same graph for all four networks


def accuracy_of(params):
    return accuracy(nnx.merge(graphdef, params, rest))


def pruned_accuracy(params, sparsity, scope):
    return accuracy_of(pruning.apply_mask(params, pruning.magnitude_mask(params, sparsity, scope=scope, where=KERNELS)))


curve_fn = jax.jit(jax.vmap(pruned_accuracy, in_axes=(None, 0, None)), static_argnums=2)
prune_curves = {
    (name, scope): np.asarray(curve_fn(nnx.state(model, nnx.Param), SPARSITIES, scope))
    for name, model in models.items()
    for scope in ("leaf", "global")
}


def largest_safe_sparsity(acc, dense, tolerance=0.01):
    """The largest sparsity of the grid whose accuracy is within `tolerance` of the dense network's."""
    return float(SPARSITIES[acc >= dense - tolerance].max())


print(f"{'':17s} {'scope':6s} " + " ".join(f"{s:5.2f}" for s in SPARSITIES))
for (name, scope), acc in prune_curves.items():
    print(f"{name:17s} {scope:6s} " + " ".join(f"{a:5.3f}" for a in acc))
safe = {key: largest_safe_sparsity(acc, dense_acc[key[0]]) for key, acc in prune_curves.items()}
i90, i95 = int(np.argmin(np.abs(SPARSITIES - 0.9))), int(np.argmin(np.abs(SPARSITIES - 0.95)))
report(
    pruned90_global_plain=prune_curves["plain", "global"][i90],
    pruned90_global_l2=prune_curves["L2 (1e-3)", "global"][i90],
    pruned90_global_l1=prune_curves["L1 (1e-3)", "global"][i90],
    pruned95_global_strong_l1=prune_curves["strong L1 (1e-2)", "global"][i95],
    pruned90_leaf_plain=prune_curves["plain", "leaf"][i90],
    safe_sparsity_global_plain=safe["plain", "global"],
    safe_sparsity_global_l2=safe["L2 (1e-3)", "global"],
    safe_sparsity_global_l1=safe["L1 (1e-3)", "global"],
    safe_sparsity_global_strong_l1=safe["strong L1 (1e-2)", "global"],
    safe_sparsity_leaf_plain=safe["plain", "leaf"],
)

# %%
fig, axes = plt.subplots(1, 2, figsize=(15, 5), sharey=True)
for ax, scope in zip(axes, ("leaf", "global")):
    for i, name in enumerate(models):
        acc = prune_curves[name, scope]
        ax.plot(
            SPARSITIES, acc, "o-", color=f"C{i}", ms=4, label=f"{name} (within 1 point up to {safe[name, scope]:.0%})"
        )
    ax.axhline(0.1, color="gray", ls=":", lw=1, label="chance (10 classes)")
    ax.set(
        xlabel="sparsity: fraction of kernel weights pruned",
        title=f"magnitude_mask(scope={scope!r}), no retraining",
        xlim=(-0.02, 1.0),
    )
    ax.legend(fontsize=8, loc="lower left")
axes[0].set_ylabel("test accuracy after pruning")
fig.suptitle("Regularize, then prune: accuracy against sparsity for the four networks", y=1.01)
fig.tight_layout()
save_figure(fig, "05_accuracy_vs_sparsity")

# %% [markdown]
# What the curves say:
#
# * **Regularizing first pays.** The plain network starts losing accuracy between 50%
#   and 80% sparsity and has lost most of it by 95%. L1 makes it much more robust: it
#   has already concentrated the function on fewer weights, and pruning the rest, many
#   of them exact zeros already, costs little. The strongly regularized network gives
#   up a point or two of dense accuracy and can then be pruned to 98% with (almost) no
#   further loss. L2 helps less and less reliably: its curve stays above the plain one at the
#   highest sparsities, but small weights are not zero weights.
# * **Global beats per-layer** for the plain and L1 networks, by a wide margin at 90%:
#   layers are not equally redundant, and a single threshold takes more where the
#   weights are small. For the L2 network, whose decay shrinks all layers alike, the
#   two scopes are close.
# * **Pruning hurts** when it removes weights the function depends on: once the
#   sparsity passes what the network has made dispensable, accuracy collapses fast,
#   towards chance. Retraining after pruning (section 4) recovers much of it.
#
# ## 3. Structured and N:M pruning
#
# Zeros scattered through a matrix save memory (in a sparse format) but rarely time on
# dense hardware. Two constrained patterns do:
#
# * **structured pruning** removes whole neurons. Each hidden unit $j$ gets a score, the
#   norm of its incoming weights $\|W_{:,j}\|_2$ (the article also suggests the mean
#   activation; any per-weight score can be passed as `score=`), and the lowest
#   fraction $s$ of units in each layer is removed: the layer becomes narrower.
#   `structured_mask(params, s, axis=-1, where=hidden kernels)` marks the kernels'
#   columns (the `axis` indexes the units, PyTorch's `ln_structured`); a removed unit
#   also loses its bias and its outgoing row in the next kernel, which we add by hand
#   below, so the sparsity counts every weight that a narrower layer no longer has;
# * **N:M sparsity** keeps the $N$ largest of every $M$ consecutive weights along the
#   input axis (2:4 is what NVIDIA's sparse tensor cores accelerate): exactly 50% for
#   2:4, 75% for 1:4, with the zeros spread evenly. `n_m_mask(params, 2, 4, axis=0)`
#   (axis 0 is the input axis of a Flax kernel).
#
# Both are constrained versions of magnitude pruning, so at the same sparsity they can
# only keep less of what matters; the question is how much less.

# %%
HIDDEN_KERNELS = jaxreg.masks.by_path(r"layers/\d+/kernel")
N_HIDDEN = 2


def remove_units(params, sparsity):
    """Structured pruning of the hidden units: a removed unit loses its column, its bias and its outgoing row."""
    keep = pruning.structured_mask(params, sparsity, axis=-1, where=HIDDEN_KERNELS)
    alive = [keep["layers"][i]["kernel"][0] for i in range(N_HIDDEN)]  # (units,) per hidden layer
    for i in range(N_HIDDEN):
        keep["layers"][i]["bias"] = alive[i]
        following = keep["layers"][i + 1] if i + 1 < N_HIDDEN else keep["head"]
        following["kernel"] = following["kernel"] & alive[i][:, None]
    return keep


def structured_point(params, sparsity):
    keep = remove_units(params, sparsity)
    kernels = [k for k in jax.tree.leaves(keep) if k.ndim == 2]
    removed = sum(jnp.sum(~k) for k in kernels) / sum(k.size for k in kernels)
    return removed, accuracy_of(pruning.apply_mask(params, keep))


UNIT_FRACTIONS = np.array([0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95], np.float32)
structured_fn = jax.jit(jax.vmap(structured_point, in_axes=(None, 0)))
structured = {}
nm_points = {}
for name in ("plain", "L1 (1e-3)"):
    params = nnx.state(models[name], nnx.Param)
    removed, acc = structured_fn(params, UNIT_FRACTIONS)
    structured[name] = (np.asarray(removed), np.asarray(acc))
    for n in (2, 1):
        keep = pruning.n_m_mask(params, n, 4, axis=0, where=KERNELS)
        nm_points[name, n] = (kernel_sparsity(keep), float(accuracy_of(pruning.apply_mask(params, keep))))
    at = {s: int(np.argmin(np.abs(SPARSITIES - s))) for s in (0.5, 0.75)}
    print(
        f"{name}: removing {UNIT_FRACTIONS[3]:.0%} of the hidden units removes {removed[3]:.0%} of the kernel weights;"
    )
    print(
        f"   accuracy {acc[3]:.3f}, against {np.interp(removed[3], SPARSITIES, prune_curves[name, 'global']):.3f} "
        "for global magnitude pruning at that sparsity"
    )
    for n, s in ((2, 0.5), (1, 0.75)):
        print(
            f"   {n}:4 ({nm_points[name, n][0]:.0%} sparse): accuracy {nm_points[name, n][1]:.3f}, against "
            f"{prune_curves[name, 'leaf'][at[s]]:.3f} for per-leaf magnitude pruning at {s:.0%}"
        )

report(
    structured_half_units_sparsity_plain=structured["plain"][0][3],
    structured_half_units_accuracy_plain=structured["plain"][1][3],
    structured_half_units_accuracy_l1=structured["L1 (1e-3)"][1][3],
    nm_2_4_sparsity=nm_points["plain", 2][0],
    nm_2_4_accuracy_plain=nm_points["plain", 2][1],
    nm_2_4_accuracy_l1=nm_points["L1 (1e-3)", 2][1],
    nm_1_4_accuracy_plain=nm_points["plain", 1][1],
    nm_1_4_accuracy_l1=nm_points["L1 (1e-3)", 1][1],
    leaf50_accuracy_plain=prune_curves["plain", "leaf"][at[0.5]],
    leaf75_accuracy_plain=prune_curves["plain", "leaf"][at[0.75]],
)

# %%
fig, axes = plt.subplots(1, 2, figsize=(15, 5), sharey=True)
for ax, name in zip(axes, ("plain", "L1 (1e-3)")):
    ax.plot(SPARSITIES, prune_curves[name, "global"], "o-", color="C0", ms=4, label="unstructured, global")
    ax.plot(SPARSITIES, prune_curves[name, "leaf"], "s-", color="C1", ms=4, label="unstructured, per leaf")
    removed, acc = structured[name]
    ax.plot(removed, acc, "^-", color="C3", ms=5, label="structured: whole hidden units")
    for n, marker in ((2, "D"), (1, "P")):
        s, a = nm_points[name, n]
        ax.plot(s, a, marker, color="k", ms=9, label=f"{n}:4 (n_m_mask)")
    for frac, s, a in zip(UNIT_FRACTIONS, removed, acc):
        if frac not in (np.float32(0.2), np.float32(0.5), np.float32(0.7), np.float32(0.85)):
            continue
        ax.annotate(f"{frac:.0%} units", (s, a), textcoords="offset points", xytext=(-8, -14), fontsize=7, color="C3")
    ax.axhline(0.1, color="gray", ls=":", lw=1)
    ax.set(
        xlabel="sparsity: fraction of kernel weights removed", title=f"{name} network, no retraining", xlim=(-0.02, 1)
    )
    ax.legend(fontsize=8, loc="lower left")
axes[0].set_ylabel("test accuracy after pruning")
fig.suptitle("The price of structure: whole neurons and N:M blocks against free-form pruning", y=1.01)
fig.tight_layout()
save_figure(fig, "05_structured_and_nm")

# %% [markdown]
# Structure has a price, and the curves show how much:
#
# * **Whole units** (red) fall below free-form pruning at the same sparsity: a unit's
#   incoming weights go even where some of them matter. Removing half of the units
#   of both hidden layers removes two thirds of the kernel weights (the middle kernel
#   loses rows and columns) and costs a few points of accuracy, without retraining. In
#   exchange the network is simply narrower: a dense 64-64-64-10 network, as fast as
#   its size on any hardware.
# * **2:4** costs about a point at 50%, close to per-leaf pruning at 50%: in most blocks
#   of four inputs two weights are small anyway. **1:4** is far more expensive at 75%
#   than free-form pruning, and even than removing units at that sparsity: a block of
#   four neighbouring pixels that all matter to a unit must still lose three of them.
# * On the **L1 network** every pattern costs less than on the plain one: L1 has already
#   concentrated the function on fewer weights, so the constraints more often remove
#   weights that were near zero anyway.
#
# None of these numbers include retraining; fine-tuning under the mask (next section)
# recovers much of the loss for every pattern.
#
# ## 4. Gradual pruning during training vs one-shot pruning after it
#
# Pruning once at the end removes weights the network was relying on. Two remedies:
#
# * **one-shot then fine-tune**: train dense, prune once with `magnitude_mask`, then
#   keep training the survivors with `keep_pruned(keep)` last in the chain, which holds
#   the pruned weights at exactly zero (its update for a pruned weight is $-w$, so
#   `apply_updates` lands it on $0.0$ whatever the optimizer did);
# * **gradual pruning** (Zhu & Gupta, 2017): prune a little at a time while training,
#   so the network can adapt between steps. The sparsity follows
#
#   $$s_t = s_f + (s_i - s_f)\Big(1 - \frac{t - t_0}{t_1 - t_0}\Big)^3,\qquad t_0 \le t \le t_1,$$
#
#   updated every $\Delta t$ steps: fast at first, while many weights are redundant,
#   then slower. `polynomial_sparsity(s_f, begin_step=t0, end_step=t1, frequency=dt)`
#   is that schedule and `prune_during_training(magnitude_score, schedule,
#   scope="global", where=KERNELS)`, last in the chain, recomputes the mask inside the
#   compiled step whenever the scheduled sparsity changes, and keeps it in the
#   optimizer state. A weight once pruned stays pruned.
#
# A fair comparison: the same final sparsity, 98% of the kernel weights (517 of 25,856
# left), and the same number of steps. One-shot trains dense for two thirds of the
# steps, prunes, and fine-tunes for the last third; gradual prunes from 1/6 to 2/3 of
# the steps, 30 times, and trains at the final sparsity for the last third. Both use the
# plain SGD chain (no L1), so the comparison is about *when* to prune.

# %%
FINAL = 0.98
T_PRUNE = 2 * STEPS // 3 // EVERY * EVERY  # two thirds of the run, in whole evaluation periods
sgd = optax.sgd(LR, momentum=0.9)

schedule = pruning.polynomial_sparsity(FINAL, begin_step=STEPS // 6, end_step=T_PRUNE, frequency=STEPS // 60)
gradual_model = jaxreg.nn.MLP(64, [128, 128], 10, rngs=nnx.Rngs(0))
gradual_tx = optax.chain(sgd, pruning.prune_during_training(pruning.magnitude_score, schedule, "global", where=KERNELS))
gradual_curve = train(gradual_model, gradual_tx, STEPS)
gradual_sparsity = kernel_sparsity(nnx.state(gradual_model, nnx.Param))

oneshot_model = jaxreg.nn.MLP(64, [128, 128], 10, rngs=nnx.Rngs(0))
dense_curve = train(oneshot_model, sgd, T_PRUNE)
params = nnx.state(oneshot_model, nnx.Param)
keep = pruning.magnitude_mask(params, FINAL, scope="global", where=KERNELS)
nnx.update(oneshot_model, pruning.apply_mask(params, keep))
oneshot_no_ft = float(accuracy(oneshot_model))
finetune_curve = train(oneshot_model, optax.chain(sgd, pruning.keep_pruned(keep)), STEPS - T_PRUNE, seed=1)
oneshot_curve = np.concatenate([dense_curve, finetune_curve])
oneshot_sparsity = kernel_sparsity(nnx.state(oneshot_model, nnx.Param))
after_training_no_ft = prune_curves["plain", "global"][int(np.argmin(np.abs(SPARSITIES - FINAL)))]

print(f"final kernel sparsity: gradual {gradual_sparsity:.4f}, one-shot {oneshot_sparsity:.4f}")
print(f"one-shot at step {T_PRUNE}: dense {dense_curve[-1]:.3f} -> pruned {oneshot_no_ft:.3f} -> ", end="")
print(f"fine-tuned {oneshot_curve[-1]:.3f}")
print(f"gradual: {gradual_curve[-1]:.3f}")
print(f"(the plain network pruned to {FINAL:.0%} after all {STEPS} steps, no fine-tuning: {after_training_no_ft:.3f})")
report(
    final_sparsity_gradual=gradual_sparsity,
    final_sparsity_oneshot=oneshot_sparsity,
    accuracy_gradual=gradual_curve[-1],
    accuracy_oneshot_finetuned=oneshot_curve[-1],
    accuracy_oneshot_before_finetuning=oneshot_no_ft,
    accuracy_pruned_after_training_no_finetuning=after_training_no_ft,
)

# %%
steps_axis = np.arange(1, len(gradual_curve) + 1) * EVERY
fig, ax = plt.subplots(figsize=(10, 5.5))
ax.plot(
    steps_axis, gradual_curve, color="C0", lw=1.8, label=f"gradual (prune_during_training): {gradual_curve[-1]:.1%}"
)
oneshot_steps = np.concatenate([steps_axis[: len(dense_curve)], [T_PRUNE], steps_axis[len(dense_curve) :]])
oneshot_values = np.concatenate([dense_curve, [oneshot_no_ft], finetune_curve])  # the drop at the pruning step
ax.plot(
    oneshot_steps,
    oneshot_values,
    color="C3",
    lw=1.8,
    label=f"one-shot, then keep_pruned fine-tuning: {oneshot_curve[-1]:.1%}",
)
ax.plot([T_PRUNE], [oneshot_no_ft], "v", color="C3", ms=9, label=f"one-shot, right after pruning: {oneshot_no_ft:.1%}")
ax.axhline(dense_acc["plain"], color="gray", ls="--", lw=1, label=f"dense network: {dense_acc['plain']:.1%}")
ax.set(
    xlabel="training step",
    ylabel="test accuracy",
    ylim=(0, 1.02),
    title=f"Pruning to {FINAL:.0%} sparsity in {STEPS} steps: gradually, or at once then fine-tuning",
)
ax_s = ax.twinx()
t = np.arange(STEPS)
ax_s.plot(t, jax.vmap(schedule)(t), color="C0", ls=":", lw=1.5, label="gradual: scheduled sparsity (right axis)")
ax_s.plot(t, np.where(t >= T_PRUNE, FINAL, 0.0), color="C3", ls=":", lw=1.5, label="one-shot: sparsity (right axis)")
ax_s.set(ylabel="sparsity of the kernels", ylim=(0, 1.02))
ax_s.grid(False)
handles, labels = ax.get_legend_handles_labels()
handles_s, labels_s = ax_s.get_legend_handles_labels()
ax.legend(handles + handles_s, labels + labels_s, fontsize=8, loc="lower left")
zoom = ax.inset_axes([0.5, 0.14, 0.47, 0.42])
zoom.plot(steps_axis, gradual_curve, color="C0", lw=1.8)
zoom.plot(oneshot_steps, oneshot_values, color="C3", lw=1.8)
zoom.axhline(dense_acc["plain"], color="gray", ls="--", lw=1)
zoom.set(xlim=(T_PRUNE - 2 * EVERY, STEPS + EVERY // 2), ylim=(0.9, 1.0), title="zoom: the last third", xlabel="step")
zoom.title.set_fontsize(9)
zoom.tick_params(labelsize=8)
save_figure(fig, "05_gradual_vs_oneshot")

# %% [markdown]
# Both runs end at exactly the same sparsity. Pruned at once, the dense network falls to
# near chance, and fine-tuning the 2% of weights that survive brings most of the
# accuracy back. The gradual run never falls: each pruning event removes a small
# fraction of what is left, the network adapts before the next, and it ends above
# the one-shot run, by one to two points in our runs at 98% (small and full size, and
# two initializations). When we tried 95%, the two ended within a point of each other:
# there is enough redundancy left that fine-tuning repairs a one-shot cut. And both end
# far above pruning after training with no retraining at all.
#
# ## What the article asked
#
# * **Pruning or regularization?** They are not alternatives. Regularization decides
#   *which* weights the network relies on (L1: few; L2: many small ones); pruning then
#   removes the others. Pruning alone, on an unregularized network, removes weights
#   the network was using.
# * **Both?** Yes: train with L1 (a prox step after SGD), prune by magnitude globally,
#   and a network keeps its accuracy at sparsities where the plain one is at chance.
#   The strength of L1 trades dense accuracy for prunability.
# * **When does pruning hurt?** When it removes more than training made dispensable:
#   at high sparsity without retraining, with structure constraints (whole neurons
#   cost the most), and per layer rather than globally. Gradual pruning during
#   training, or fine-tuning after a one-shot cut, pays most of that cost back.
#
# In jaxreg every piece is a pure function or an optax transform: masks are pytrees of
# booleans, `vmap` sweeps sparsities, and the pruning transforms sit in the same chain
# as the optimizer and the regularizers, checkpointed with the optimizer state.
