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
# # 06 · From PyTorch to jaxreg: weight decay, clipping, bias initialization, choosing λ
#
# The fifth source article is PyTorch practice: put `weight_decay=` in the optimizer, call
# `torch.nn.utils.clip_grad_norm_` between `backward()` and `step()`, start the biases at
# zero, and choose the regularization strength by grid search, random search or
# cross-validation. Each of those is one argument or one line in PyTorch, and each hides
# a choice that changes the numbers. This notebook writes every one of them as a jaxreg
# chain and **checks it against PyTorch itself**: the same model, the same data, the
# same initial weights, trained in both frameworks, compared parameter by parameter.
#
# | PyTorch | jaxreg |
# |---|---|
# | `SGD(..., weight_decay=wd)`, `Adam(..., weight_decay=wd)` | `chain(coupled_weight_decay(wd), sgd / adam)` |
# | `AdamW(..., weight_decay=wd)` | `chain(adam(lr), decoupled_weight_decay(wd, learning_rate=lr))` |
# | param groups, `weight_decay=0` for biases | `mask=jaxreg.masks.weights_only` |
# | `clip_grad_norm_(params, max_norm)`, returns the norm | `clip_by_global_norm(max_norm, eps=1e-6)`; norm in state |
# | `nn.init.zeros_(layer.bias)` | what `jaxreg.nn` models already do |
# | a loop over λ values and folds | `training.grid_search` / `random_search` / `kfold_weights`: one `vmap` |
#
# In this notebook you will
#
# 1. see the three meanings of "weight decay" (coupled in SGD, coupled in Adam,
#    decoupled in AdamW), decay on weights only, and the one default that differs
#    between PyTorch and optax;
# 2. clip by the global norm and log the norm, as `clip_grad_norm_` returns it;
# 3. see why biases may start at zero (and weights may not);
# 4. choose λ by grid search, random search and 5-fold cross-validation, all vmapped.

# %%
import inspect

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
import torch
from _common import SMALL, pick, report, save_figure
from flax import nnx

import jaxreg
from jaxreg.training import grid_search, kfold_weights, random_search

torch.set_num_threads(1)
print(f"jax {jax.__version__}, optax {optax.__version__}, torch {torch.__version__}, small run: {SMALL}")

# %% [markdown]
# ## The test bench: one small network, trained twice
#
# A multilayer perceptron 8 → 32 → 3 with a tanh hidden layer, fitted by full-batch
# mean squared error to 64 points. PyTorch makes it (`torch.manual_seed(0)`), and JAX
# receives a copy of its initial parameters in PyTorch's layout, a dict
# `{"fc1": {"weight": (out, in), "bias": (out,)}, ...}` with $y = x W^\top + b$.
# Every comparison below trains this network in both frameworks from the same start and
# reports the largest absolute difference over all parameters.
#
# Why tanh and not ReLU? Two frameworks sum in different orders, so their numbers differ
# in the last bit. With ReLU, a pre-activation that lands within a rounding of zero
# switches a unit on in one framework and off in the other, and the runs part for a
# reason that has nothing to do with the optimizer. tanh is smooth, so rounding stays
# rounding.

# %%
DIMS = (8, 32, 3)
NAMES = ("fc1", "out")
STEPS = pick(200, 100)
SGD_LR, MOMENTUM, ADAM_LR = 0.05, 0.9, 3e-3

rng = np.random.default_rng(1)
x_np = rng.standard_normal((64, DIMS[0])).astype(np.float32)
teacher = rng.standard_normal((DIMS[0], DIMS[-1])).astype(np.float32) / np.sqrt(DIMS[0])
y_np = (np.tanh(2 * x_np @ teacher) + 0.1 * rng.standard_normal((64, DIMS[-1]))).astype(np.float32)
x_t, y_t = torch.from_numpy(x_np), torch.from_numpy(y_np)
x_j, y_j = jnp.asarray(x_np), jnp.asarray(y_np)


def make_torch_model():
    torch.manual_seed(0)
    return torch.nn.ModuleDict({n: torch.nn.Linear(a, b) for n, a, b in zip(NAMES, DIMS[:-1], DIMS[1:])})


def torch_forward(model, x):
    h = x
    for name in NAMES[:-1]:
        h = torch.tanh(model[name](h))
    return model[NAMES[-1]](h)


def torch_params(model):
    """The model's parameters as a JAX-side dict of NumPy arrays (PyTorch's layout)."""
    return {
        n: {"weight": model[n].weight.detach().numpy().copy(), "bias": model[n].bias.detach().numpy().copy()}
        for n in NAMES
    }


def jax_forward(params, x):
    h = x
    for name in NAMES[:-1]:
        h = jnp.tanh(h @ params[name]["weight"].T + params[name]["bias"])
    return h @ params[NAMES[-1]]["weight"].T + params[NAMES[-1]]["bias"]


def jax_loss(params):
    return jnp.mean((jax_forward(params, x_j) - y_j) ** 2)


params0 = jax.tree.map(jnp.asarray, torch_params(make_torch_model()))
for name, layer in params0.items():
    print(f"{name}: weight {layer['weight'].shape}, bias {layer['bias'].shape}")

# %% [markdown]
# The two training loops. PyTorch's is the familiar one; the clip, when asked for, sits
# where `clip_grad_norm_` always sits, between `backward()` and `step()`. The JAX loop is
# one `jax.lax.scan` over a pure step. It takes a function `make_tx(h)` that builds the
# chain from one hyperparameter `h` (a decay strength, a clipping bound) and trains one
# copy of the model per value of `h`, all as lanes of one `jax.vmap`: we always run a
# recipe twice, with its `h` and with the value that turns it off, to measure how much
# the piece under test moves the parameters. That is the scale against which an
# agreement with PyTorch means something.

# %%


def train_torch(make_optimizer, clip=None, steps=STEPS):
    """Trains a fresh copy of the bench model; returns the params after each step and the logged norms."""
    model = make_torch_model()
    optimizer = make_optimizer(model)
    path, norms = [], []
    for _ in range(steps):
        optimizer.zero_grad()
        torch.mean((torch_forward(model, x_t) - y_t) ** 2).backward()
        if clip is not None:
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
        optimizer.step()
        path.append(torch_params(model))
    return path, np.array(norms)


def train_jax(make_tx, values, steps=STEPS, logs_norm=False):
    """One run of ``make_tx(h)`` per ``h`` in ``values``, in one vmap.

    Returns the params after each step (leading axes: value, step) and, with
    ``logs_norm``, the pre-clip norm the chain's first transform keeps in its state.
    """

    def run(h):
        tx = make_tx(h)

        def step(carry, _):
            params, state = carry
            updates, state = tx.update(jax.grad(jax_loss)(params), state, params)
            params = optax.apply_updates(params, updates)
            return (params, state), (params, state[0].norm if logs_norm else jnp.zeros([]))

        return jax.lax.scan(step, (params0, tx.init(params0)), length=steps)[1]

    return jax.device_get(jax.jit(jax.vmap(run))(jnp.asarray(values, jnp.float32)))


def lane(path, i, step=None):
    """Run ``i`` of a vmapped result: its whole path, or its params after ``step``."""
    return jax.tree.map(lambda leaf: leaf[i] if step is None else leaf[i, step], path)


def max_abs_diff(a, b):
    return max(float(np.max(np.abs(u - v))) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def step_diffs(torch_path, jax_path):
    """max |torch - jax| over all parameters, after each step (``jax_path``: one run)."""
    return np.array([max_abs_diff(t, lane(jax_path, i)) for i, t in enumerate(torch_path)])


# %% [markdown]
# ## 1. Three meanings of `weight_decay`
#
# PyTorch's optimizers all take `weight_decay=`, but the word covers two different
# update rules.
#
# **Coupled** decay (`SGD`, `Adam`) adds $\lambda w$ to the gradient *before* the
# optimizer: it is the gradient of the penalty $\frac{\lambda}{2}\|w\|^2$. For SGD with
# momentum $\mu$,
#
# $$g \leftarrow \nabla\mathcal{L}(w) + \lambda w,\qquad v \leftarrow \mu v + g,\qquad w \leftarrow w - \eta v .$$
#
# For Adam the same $g$ feeds the moment estimates, so the decay term is divided by
# $\sqrt{\hat v}$ with everything else: a weight whose gradients have been large is
# decayed *less*,
#
# $$w \leftarrow w - \eta\,\frac{\hat m}{\sqrt{\hat v} + \epsilon},
# \qquad m, v \text{ built from } g = \nabla\mathcal{L}(w) + \lambda w .$$
#
# **Decoupled** decay (`AdamW`, Loshchilov & Hutter) shrinks the weights directly and
# lets Adam see the data gradient only:
#
# $$w \leftarrow w - \eta\lambda\,w - \eta\,\frac{\hat m}{\sqrt{\hat v} + \epsilon},
# \qquad m, v \text{ built from } \nabla\mathcal{L}(w).$$
#
# In jaxreg the two are two transforms, placed where their math says: `coupled_weight_decay`
# in gradient space, *before* the optimizer; `decoupled_weight_decay` in parameter space,
# *after* it, with the optimizer's learning rate (it applies $\eta\lambda w$ itself).
#
# **Weights only.** PyTorch applies `weight_decay` to every parameter it is given,
# biases included. To spare the biases you split the parameters into two *param groups*,
# one with `weight_decay=0`. In jaxreg the same choice is a mask,
# `mask=jaxreg.masks.weights_only` (every leaf with two or more dimensions).
#
# Each recipe below is a pair: the PyTorch optimizer and the jaxreg chain that should
# give the same numbers.

# %%
WD = 0.1  # large enough to move the parameters visibly in STEPS steps


def groups(model, wd):
    """PyTorch's way to decay the weights only: two param groups."""
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return [{"params": weights, "weight_decay": wd}, {"params": biases, "weight_decay": 0.0}]


W_ONLY = jaxreg.masks.weights_only
# name: (PyTorch optimizer for a model, jaxreg chain for a decay strength)
RECIPES = {
    "SGD(weight_decay)": (
        lambda m: torch.optim.SGD(m.parameters(), lr=SGD_LR, momentum=MOMENTUM, weight_decay=WD),
        lambda wd: optax.chain(jaxreg.coupled_weight_decay(wd), optax.sgd(SGD_LR, momentum=MOMENTUM)),
    ),
    "Adam(weight_decay)": (
        lambda m: torch.optim.Adam(m.parameters(), lr=ADAM_LR, weight_decay=WD),
        lambda wd: optax.chain(jaxreg.coupled_weight_decay(wd), optax.adam(ADAM_LR)),
    ),
    "Adam, weights only": (
        lambda m: torch.optim.Adam(groups(m, WD), lr=ADAM_LR),
        lambda wd: optax.chain(jaxreg.coupled_weight_decay(wd, mask=W_ONLY), optax.adam(ADAM_LR)),
    ),
    "AdamW(weight_decay)": (
        lambda m: torch.optim.AdamW(m.parameters(), lr=ADAM_LR, weight_decay=WD),
        lambda wd: optax.chain(optax.adam(ADAM_LR), jaxreg.decoupled_weight_decay(wd, learning_rate=ADAM_LR)),
    ),
    "AdamW, weights only": (
        lambda m: torch.optim.AdamW(groups(m, WD), lr=ADAM_LR),
        lambda wd: optax.chain(
            optax.adam(ADAM_LR), jaxreg.decoupled_weight_decay(wd, learning_rate=ADAM_LR, mask=W_ONLY)
        ),
    ),
}

results = {}
for name, (make_torch_optimizer, make_tx) in RECIPES.items():
    torch_path, _ = train_torch(make_torch_optimizer)
    jax_paths, _ = train_jax(make_tx, [WD, 0.0])  # lane 0: the recipe, lane 1: no decay
    results[name] = {
        "vs_torch": max_abs_diff(torch_path[-1], lane(jax_paths, 0, -1)),
        "decay_effect": max_abs_diff(lane(jax_paths, 0, -1), lane(jax_paths, 1, -1)),
        "path": lane(jax_paths, 0),
        "no_decay": lane(jax_paths, 1),
    }
    print(
        f"{name:20s}  max |jaxreg - PyTorch| after {STEPS} steps: {results[name]['vs_torch']:.1e}"
        f"   (the decay itself moved the parameters by {results[name]['decay_effect']:.1e})"
    )

# %% [markdown]
# Every recipe matches PyTorch to a few float32 roundings, while the decay itself moves
# the parameters by thousands of times more: the agreement says something.
#
# ### The one default that differs
#
# `torch.optim.AdamW` and `optax.adamw` are the same algorithm with the same
# `lr`, `betas` and `eps` defaults, and one default that is not the same:

# %%
torch_default = torch.optim.AdamW(make_torch_model().parameters(), lr=ADAM_LR).defaults["weight_decay"]
optax_default = inspect.signature(optax.adamw).parameters["weight_decay"].default
print(f"default weight_decay: torch.optim.AdamW {torch_default}, optax.adamw {optax_default}")

torch_path, _ = train_torch(lambda m: torch.optim.AdamW(m.parameters(), lr=ADAM_LR))
# optax.adamw(lr) is optax.adamw(lr, weight_decay=optax_default): both runs in one vmap.
adamw_paths, _ = train_jax(lambda wd: optax.adamw(ADAM_LR, weight_decay=wd), [optax_default, torch_default])
defaults_diff = max_abs_diff(torch_path[-1], lane(adamw_paths, 0, -1))
matched_diff = max_abs_diff(torch_path[-1], lane(adamw_paths, 1, -1))
print(f"torch.optim.AdamW(p, lr) vs optax.adamw(lr):                    {defaults_diff:.1e}")
print(f"torch.optim.AdamW(p, lr) vs optax.adamw(lr, weight_decay=1e-2): {matched_diff:.1e}")
report(
    torch_adamw_default_wd=torch_default,
    optax_adamw_default_wd=optax_default,
    adamw_defaults_max_abs_diff=defaults_diff,
    adamw_matched_max_abs_diff=matched_diff,
)

# %% [markdown]
# Moving a recipe from PyTorch to optax with `optax.adamw(lr)` silently divides its
# weight decay by 100. Spell `weight_decay` out, in both. (Like `torch.optim.AdamW`
# with a single param group, `optax.adamw` decays the biases too; it takes a `mask=`
# for the weights-only variant.)
#
# Now the picture: the left panel is the parity (and what the decay does, for scale);
# the right panel shows the norms of the weights and of the biases along the Adam runs,
# which make the difference between the recipes visible.

# %%


def norms_along(path, kind):
    """Euclidean norm of all weights (or all biases) after each step."""
    leaves = [path[n][kind] for n in NAMES]
    return np.sqrt(sum(np.sum(leaf.reshape(len(leaf), -1) ** 2, axis=1) for leaf in leaves))


fig, (ax_bar, ax_w, ax_b) = plt.subplots(1, 3, figsize=(17, 4.3), gridspec_kw={"width_ratios": [1.3, 1, 1]})
names = [*RECIPES, "AdamW defaults:\noptax vs torch"]
vs_torch = [results[n]["vs_torch"] for n in RECIPES] + [defaults_diff]
effects = [results[n]["decay_effect"] for n in RECIPES] + [np.nan]
ypos = np.arange(len(names))
ax_bar.barh(ypos + 0.2, vs_torch, height=0.4, color=["C0"] * len(RECIPES) + ["C3"], label="|jaxreg - PyTorch|")
ax_bar.barh(ypos - 0.2, effects, height=0.4, color="lightgray", label="|with decay - without| (scale)")
ax_bar.axvline(1e-5, color="black", ls=":", lw=1, label="1e-5")
ax_bar.set_xscale("log")
ax_bar.set_yticks(ypos, names)
ax_bar.invert_yaxis()
ax_bar.set(xlabel=f"max abs parameter difference after {STEPS} steps", title="Same recipe, same numbers")
ax_bar.legend(loc="upper center", bbox_to_anchor=(0.45, -0.17), ncol=3, fontsize=8)

adam_runs = {
    "Adam, no decay": results["Adam(weight_decay)"]["no_decay"],
    "Adam(weight_decay): coupled": results["Adam(weight_decay)"]["path"],
    "Adam, weights only": results["Adam, weights only"]["path"],
    "AdamW(weight_decay): decoupled": results["AdamW(weight_decay)"]["path"],
    "AdamW, weights only": results["AdamW, weights only"]["path"],
}
for (label, path), style in zip(adam_runs.items(), ["k-", "C1-", "C1--", "C0-", "C0--"]):
    ax_w.plot(norms_along(path, "weight"), style, lw=2, label=label)
    ax_b.plot(norms_along(path, "bias"), style, lw=2, label=label)
ax_w.set(xlabel="step", ylabel="$\\|W\\|$ (all weights)", title=f"Weight norm along the Adam runs ($\\lambda$ = {WD})")
ax_b.set(xlabel="step", ylabel="$\\|b\\|$ (all biases)", title="Bias norm (dashed: biases not decayed)")
ax_w.legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "06_weight_decay_vs_torch")

final_norm = {
    (label, kind): norms_along(path, kind)[-1] for label, path in adam_runs.items() for kind in ("weight", "bias")
}
report(
    recipes_max_abs_diff=max(results[n]["vs_torch"] for n in RECIPES),
    decay_effect_min=min(results[n]["decay_effect"] for n in RECIPES),
    adam_coupled_vs_adamw_max_abs_diff=max_abs_diff(
        lane(results["Adam(weight_decay)"]["path"], -1), lane(results["AdamW(weight_decay)"]["path"], -1)
    ),
    weight_norm_no_decay=final_norm["Adam, no decay", "weight"],
    weight_norm_adam_coupled=final_norm["Adam(weight_decay): coupled", "weight"],
    weight_norm_adamw=final_norm["AdamW(weight_decay): decoupled", "weight"],
    bias_norm_no_decay=final_norm["Adam, no decay", "bias"],
    bias_norm_adam_coupled=final_norm["Adam(weight_decay): coupled", "bias"],
    bias_norm_adam_coupled_weights_only=final_norm["Adam, weights only", "bias"],
)

# %% [markdown]
# Three things to read off:
#
# * **Parity.** Each blue bar is a few float32 roundings ($10^{-7}$ to a few $10^{-6}$
#   after these steps), each gray bar the effect of the decay. The red bar is the defaults
#   trap: the same-looking `AdamW(lr)` in the two libraries ends far apart.
# * **The same λ, two different regularizers.** With $\lambda = 0.1$, `AdamW` takes
#   $\eta\lambda w = 3\cdot10^{-4}\,w$ off each weight per step: over these steps the
#   weights end a few percent smaller than without decay. `Adam(weight_decay)` with the
#   same number shrinks them by half or more. The reason is Adam's normalization: for a weight
#   whose data gradient is small next to $\lambda w$, the normalized step
#   $\hat m / \sqrt{\hat v}$ is about $\mathrm{sign}(w)$, so the weight walks towards zero
#   by about $\eta$ per step, whatever $\lambda$ is. Coupled decay under Adam is strong
#   on the weights the data do not use, and weak on the ones it does (their large
#   gradients dominate $\hat v$); AdamW decays every weight by the same factor. So a
#   λ tuned for one does not carry over to the other. (For plain SGD the two are the
#   same update; notebook 03 shows it.)
# * **Param groups = masks.** The weights-only runs (dashed) never decay a bias, as
#   PyTorch's second param group with `weight_decay=0`. Their biases still move
#   differently from the no-decay run's, because the weights they work with shrink.
#
# ## 2. `clip_grad_norm_` and the logged norm
#
# PyTorch clips by the global 2-norm of all gradients together, in place, and returns
# the norm it measured *before* clipping, which training scripts log to spot exploding
# gradients:
#
# $$n = \Big(\sum_{\text{leaves}}\sum_i g_i^2\Big)^{1/2},\qquad
# g \leftarrow g\cdot\min\Big(1,\ \frac{M}{n + 10^{-6}}\Big).$$
#
# `jaxreg.clip_by_global_norm(M, eps=1e-6)` is the same formula; put it first in the
# chain (gradient space). It cannot *return* the norm, since a transform returns
# updates and state, so it keeps the norm in its state: `state[0].norm` after each
# update. (optax's own `clip_by_global_norm` computes the same norm and forgets it;
# its `eps` is 0, jaxreg's default too, and $10^{-6}$ matches PyTorch's hard-coded one.)
#
# We clip at $M = 0.1$ and train with SGD and momentum, so that the gradient norm starts
# an order of magnitude above the bound and falls below it after a few dozen steps.

# %%
MAX_NORM, CLIP_LR = 0.1, 0.2
torch_path, torch_norms = train_torch(
    lambda m: torch.optim.SGD(m.parameters(), lr=CLIP_LR, momentum=MOMENTUM), clip=MAX_NORM
)
clip_paths, clip_norms = train_jax(
    lambda max_norm: optax.chain(jaxreg.clip_by_global_norm(max_norm, eps=1e-6), optax.sgd(CLIP_LR, momentum=MOMENTUM)),
    [MAX_NORM, 1e9],  # lane 1: a bound never reached, i.e. no clipping
    logs_norm=True,
)
jax_norms = clip_norms[0]
clip_diffs = step_diffs(torch_path, lane(clip_paths, 0))
norm_rel_diff = np.max(np.abs(jax_norms - torch_norms) / torch_norms)
clipped_steps = np.mean(torch_norms > MAX_NORM)
clip_effect = max_abs_diff(lane(clip_paths, 0, -1), lane(clip_paths, 1, -1))
print(
    f"pre-clip norm: first step {torch_norms[0]:.3f}, last step {torch_norms[-1]:.4f}; clipped on {clipped_steps:.0%}"
)
print(f"max relative difference of the logged norms (torch return value vs state[0].norm): {norm_rel_diff:.1e}")
print(f"max |jaxreg - PyTorch| over the parameters: {clip_diffs.max():.1e}; clipping moved them by {clip_effect:.1e}")
report(
    clip_norm_max_rel_diff=norm_rel_diff,
    clip_max_abs_diff=clip_diffs.max(),
    clip_effect=clip_effect,
    clipped_step_fraction=clipped_steps,
)

# %%
fig, (ax_n, ax_d) = plt.subplots(1, 2, figsize=(13, 4))
steps = np.arange(1, STEPS + 1)
ax_n.semilogy(steps, jax_norms, lw=2.5, label="jaxreg: state[0].norm")
ax_n.semilogy(steps, torch_norms, "k.", ms=4, label="PyTorch: clip_grad_norm_(...) return value")
ax_n.semilogy(steps, clip_norms[1], color="gray", lw=1, label="jaxreg, no clipping (max_norm = 1e9)")
ax_n.axhline(MAX_NORM, color="C3", ls="--", label=f"max_norm = {MAX_NORM}")
ax_n.fill_between(
    steps, 0, 1, where=torch_norms > MAX_NORM, color="C3", alpha=0.1, transform=ax_n.get_xaxis_transform()
)
ax_n.set(xlabel="step", ylabel="global gradient norm before clipping", title="The logged norm (red band: clipped)")
ax_n.legend()
ax_d.semilogy(steps, np.maximum(clip_diffs, 1e-9), color="C0", label="max |jaxreg - PyTorch| (parameters)")
ax_d.semilogy(
    steps,
    np.maximum(np.abs(jax_norms - torch_norms) / torch_norms, 1e-9),
    color="C1",
    label="relative difference of the logged norms (1e-9: equal)",
)
ax_d.axhline(np.finfo(np.float32).eps, color="gray", ls=":", label="float32 epsilon")
ax_d.set(xlabel="step", ylabel="difference", title="Clip + SGD with momentum: PyTorch vs jaxreg")
ax_d.set_ylim(5e-10, 1e-4)  # room for the legend above the curves
ax_d.legend(loc="upper right")
fig.tight_layout()
save_figure(fig, "06_clip_grad_norm")

# %% [markdown]
# The logged norms agree at every step to about $10^{-6}$ (relative), a few float32
# roundings of a sum taken in a different order, clipped or not, and so do the
# parameters. Note what the norm curve says: clipping binds in the first steps, where
# the gradient is large, and then lets go. It changes the *path*: after these steps the
# clipped run is still far from the unclipped one. On a convex problem it would not
# change the end point (notebook 02 shows it on a line). It guards against exploding
# gradients; it is not a regularizer.
#
# ## 3. Zero bias initialization
#
# `torch.nn.Linear` and `torch.nn.Conv2d` start their biases uniform in
# $\pm 1/\sqrt{\text{fan-in}}$; the article advises setting them to zero
# (`nn.init.zeros_(layer.bias)`). Flax's default is zero, and every `jaxreg.nn` model
# (`MLP`, `CNN`, `MultiTaskMLP`) sets it explicitly. Is that safe, and does it matter?
#
# **Safe: the weights break the symmetry.** Two hidden units with the same incoming and
# outgoing weights compute the same thing and receive the same gradient, so they stay
# twins forever, whatever the biases. Random *weights* make every unit different; the
# biases then only shift each unit's input, and zero is a fine place to start. Zero
# (or constant) *weights* are what must be avoided.
#
# We check both claims on a 1-D problem, fitting $y = \sin(1.5x) + \text{noise}$ on
# $[-3, 3]$ (50 points, noise of standard deviation 0.5) with
# `jaxreg.nn.MLP(1, [32, 32], 1)`, ReLU units: the same random weights with zero biases
# (jaxreg's default) or PyTorch-style random biases, and, for contrast, all weights
# equal. Five seeds each, all fifteen runs in one `vmap`.

# %%
N_FIT, NOISE = 50, 0.5
fit_rng = np.random.default_rng(0)
x_fit = fit_rng.uniform(-3, 3, N_FIT).astype(np.float32)  # already in random order: folds can be contiguous


def target(x):
    return np.sin(1.5 * x)


y_fit = (target(x_fit) + NOISE * fit_rng.standard_normal(N_FIT)).astype(np.float32)
x_grid = np.linspace(-3, 3, 300).astype(np.float32)
X_FIT, Y_FIT, X_GRID = jnp.asarray(x_fit[:, None]), jnp.asarray(y_fit), jnp.asarray(x_grid[:, None])

model = jaxreg.nn.MLP(1, [32, 32], 1, rngs=nnx.Rngs(0))
print(
    "jaxreg.nn.MLP biases at init:",
    {f"layers[{i}]": float(jnp.abs(layer.bias[...]).max()) for i, layer in enumerate(model.layers)},
)


def as_function(model):
    """A model as a pure function of a plain dict of its parameters, and that dict.

    Split once into structure and state; the forward pass merges them back. Plain dicts
    (not NNX ``State``) keep the optax chains below free of NNX's Variable boxes.
    """
    graph, params, rest = nnx.split(model, nnx.Param, ...)

    def forward(params, x):
        return nnx.merge(graph, params, rest)(x)[:, 0]

    return forward, nnx.to_pure_dict(params)


relu_mlp, _ = as_function(model)


def with_torch_biases(params, key):
    """The same weights; biases uniform in +-1/sqrt(fan_in), as torch.nn.Linear draws them."""
    params = jax.tree.map(lambda leaf: leaf, params)  # a fresh copy of the dicts, to edit
    layers = [params["layers"][0], params["layers"][1], params["head"]]
    for layer, k in zip(layers, jax.random.split(key, len(layers))):
        bound = 1 / np.sqrt(layer["kernel"].shape[0])
        layer["bias"] = jax.random.uniform(k, layer["bias"].shape, minval=-bound, maxval=bound)
    return params


def initial_params(seed):
    """Three initializations for one seed, as plain dicts of arrays."""
    model = jaxreg.nn.MLP(1, [32, 32], 1, rngs=nnx.Rngs(seed))
    zero_biases = as_function(model)[1]
    torch_biases = with_torch_biases(zero_biases, jax.random.key(1000 + seed))
    equal = jax.tree.map(lambda v: jnp.full_like(v, 0.1) if v.ndim == 2 else jnp.zeros_like(v), zero_biases)
    return zero_biases, torch_biases, equal


INITS = ("random weights, zero biases (jaxreg.nn)", "random weights, PyTorch-style biases", "equal weights")
SEEDS = 5
INIT_STEPS = pick(1500, 1000)
# 3 initializations x 5 seeds, stacked into one batch of 15 runs (initialization-major).
runs = [params for group in zip(*[initial_params(seed) for seed in range(SEEDS)]) for params in group]
stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *runs)


def fit_curve(params, steps=INIT_STEPS, lr=1e-2):
    tx = optax.adam(lr)

    def loss(p):
        return jnp.mean((relu_mlp(p, X_FIT) - Y_FIT) ** 2)

    def step(carry, _):
        p, state = carry
        value, grads = jax.value_and_grad(loss)(p)
        updates, state = tx.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), value

    (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), length=steps)
    return params, losses


fitted, init_losses = jax.device_get(jax.jit(jax.vmap(fit_curve))(stacked))
init_losses = init_losses.reshape(len(INITS), SEEDS, INIT_STEPS)
final = init_losses[:, :, -1]


def distinct_units(run):
    """How many different (weight, bias) pairs the first hidden layer of one run holds."""
    layer = fitted["layers"][0]
    return len(np.unique(np.round(np.stack([layer["kernel"][run, 0], layer["bias"][run]], axis=1), 5), axis=0))


for label, losses in zip(INITS, final):
    print(f"{label:42s} final training MSE over {SEEDS} seeds: {np.round(losses, 4)}")
distinct = [distinct_units(i * SEEDS) for i in range(len(INITS))]
print(f"distinct first-layer units (of 32) after training, first seed of each: {distinct}")
report(
    bias_init_zero_final_mse=final[0].mean(),
    bias_init_torch_final_mse=final[1].mean(),
    bias_init_equal_weights_final_mse=final[2].mean(),
    zero_bias_distinct_units=distinct[0],
    equal_weights_distinct_units=distinct[2],
)

# %% [markdown]
# The 1-D input lets us *look* at what the units compute: each first-layer unit is a
# ReLU ramp $\max(0, w x + b)$ with its kink at $x = -b/w$. With zero biases every kink
# starts at $x = 0$, and training has to move them out; with random biases they start
# spread. Below: the loss curves, the first hidden layer of a zero-bias and a
# random-bias run after training, and the functions the three kinds of network learned.

# %%
fig, axes = plt.subplots(1, 4, figsize=(19, 4))
colors = ["C0", "C1", "C3"]
for label, losses, color in zip(INITS, init_losses, colors):
    for i, curve in enumerate(losses):
        axes[0].semilogy(curve, color=color, alpha=0.7, lw=1.2, label=label if i == 0 else None)
axes[0].axhline(NOISE**2, color="gray", ls=":", label=f"noise variance {NOISE**2:g} (below: fitting noise)")
axes[0].set(xlabel="Adam step", ylabel="training MSE", title=f"Training loss, {SEEDS} seeds per initialization")
axes[0].legend(fontsize=7.5, loc="upper right")
for ax, label, run, color in zip(axes[1:3], INITS, [0, SEEDS], colors):
    layer = fitted["layers"][0]
    units = np.maximum(0, x_grid[:, None] * layer["kernel"][run, 0][None, :] + layer["bias"][run][None, :])
    ax.plot(x_grid, units, color=color, lw=1, alpha=0.6)
    kinks = -layer["bias"][run] / np.where(layer["kernel"][run, 0] == 0, np.nan, layer["kernel"][run, 0])
    ax.plot(kinks[np.abs(kinks) < 3], np.zeros(np.sum(np.abs(kinks) < 3)), "k|", ms=12)
    title = f"{label}\n{distinct_units(run)} distinct units of 32 after training (|: kinks)"
    ax.set(xlabel="x", ylabel="first-layer unit output", title=title)
    ax.set_ylim(-0.2, None)
axes[3].scatter(x_fit, y_fit, s=10, color="gray", alpha=0.6, label="data")
axes[3].plot(x_grid, target(x_grid), "k--", lw=1, label="true curve")
curves = jax.device_get(jax.vmap(lambda p: relu_mlp(p, X_GRID))(fitted))
for i, (label, color) in enumerate(zip(["zero biases", "PyTorch-style biases", "equal weights"], colors)):
    axes[3].plot(x_grid, curves[i * SEEDS], color=color, lw=2, label=f"{label} ({distinct_units(i * SEEDS)} units)")
axes[3].set(xlabel="x", ylabel="y", title="The fitted networks (first seed of each)")
axes[3].legend(fontsize=7, loc="lower left")
fig.tight_layout()
save_figure(fig, "06_bias_init")

# %% [markdown]
# What the experiment says:
#
# * **Zero biases cost nothing here.** The zero-bias and the random-bias runs reach the
#   same training error, within the spread between seeds, and fit the same curve. The
#   zero-bias run's kinks all started at $x = 0$; after training they are spread over
#   the data like the random-bias run's. Starting every bias at zero is safe because
#   the random *weights* already make the units different. (Nor does it buy much here:
#   it is a tidy convention, not a regularizer.)
# * **Equal weights do not train.** With all weights equal every unit is a copy of
#   every other, the gradients keep them copies, and the network is one unit wide
#   however wide it was built. Here the one unit it has ends up switched off over the
#   data and the network predicts a constant: a loss stuck far above the noise.
#
# Where a bias is followed by batch normalization, as in most convolutional networks
# (the article's case), its value cannot matter at all: the mean subtraction cancels
# it exactly. Such layers usually drop it (`use_bias=False`), and zeroing it is
# harmless. A check:

# %%
bn = nnx.BatchNorm(4, rngs=nnx.Rngs(0))  # training mode: normalizes with the batch statistics
feats = rng.standard_normal((32, 4)).astype(np.float32)  # a batch of 32 pre-activations, 4 channels
shift = rng.standard_normal(4).astype(np.float32)  # any bias
bn_diff = float(jnp.max(jnp.abs(bn(jnp.asarray(feats)) - bn(jnp.asarray(feats + shift)))))
print(f"BatchNorm(h) vs BatchNorm(h + b) in training mode: max difference {bn_diff:.1e}")
report(batchnorm_bias_invariance_max_diff=bn_diff)

# %% [markdown]
# ## 4. Choosing λ: grid search, random search, cross-validation
#
# The article lists the standard ways to choose a regularization strength. All three
# train the model once per candidate λ (and per fold) and keep the λ with the best
# held-out score; they differ in which λ they try and on which data they score:
#
# * **grid search**: λ on a log-spaced grid, $\lambda_k = \lambda_{\min}\,r^k$;
# * **random search**: λ drawn log-uniformly, $\log\lambda \sim U(\log\lambda_{\min}, \log\lambda_{\max})$,
#   which wastes fewer runs than a grid when several hyperparameters are searched at once
#   (Bergstra & Bengio, 2012);
# * **k-fold cross-validation**: split the data into $k$ folds, train on $k - 1$, score
#   on the one left out, and average the $k$ scores:
#   $\mathrm{CV}(\lambda) = \frac1k\sum_{j=1}^k \mathrm{MSE}_{\text{fold } j}\big(\hat w_{-j}(\lambda)\big)$.
#
# In PyTorch this is a loop of trainings. In jaxreg you write one pure function,
# `score(lam, train_weight, val_weight)`, that trains with strength `lam` and returns the
# validation error; `grid_search` runs every (λ, fold) pair as a lane of one `vmap`,
# compiled once. The folds are per-sample 0/1 *weights* (`kfold_weights`, the same folds
# as scikit-learn's `KFold`), so every fold has the same static shapes: the training
# loss is $\sum_i t_i r_i^2 / \sum_i t_i$ with $t$ the fold's training weights.
#
# The model is the MLP above with tanh units (64 wide; 32 in the quick run) and the
# recipe from section 1, **AdamW with decay on the weights only**, on the 50 points of
# the sine.

# %%
SEL_STEPS, SEL_LR, SEL_WIDTH = pick(2000, 800), 0.03, pick(64, 32)
sel_model = jaxreg.nn.MLP(1, [SEL_WIDTH, SEL_WIDTH], 1, activation=nnx.tanh, rngs=nnx.Rngs(0))
tanh_mlp, sel_params0 = as_function(sel_model)
decayed = [jax.tree_util.keystr(path) for path, on in jax.tree_util.tree_leaves_with_path(W_ONLY(sel_params0)) if on]
print("weights_only decays:", decayed)


def train_tanh(lam, train_weight):
    tx = optax.chain(optax.adam(SEL_LR), jaxreg.decoupled_weight_decay(lam, learning_rate=SEL_LR, mask=W_ONLY))

    def loss(p):
        return jnp.sum(train_weight * (tanh_mlp(p, X_FIT) - Y_FIT) ** 2) / jnp.sum(train_weight)

    def step(carry, _):
        p, state = carry
        updates, state = tx.update(jax.grad(loss)(p), state, p)
        return (optax.apply_updates(p, updates), state), None

    (params, _), _ = jax.lax.scan(step, (sel_params0, tx.init(sel_params0)), length=SEL_STEPS)
    return params


def cv_score(lam, train_weight, val_weight):
    params = train_tanh(lam, train_weight)
    return jnp.sum(val_weight * (tanh_mlp(params, X_FIT) - Y_FIT) ** 2) / jnp.sum(val_weight)


train_w, val_w = kfold_weights(N_FIT, 5)
print("fold 0 validates on samples", np.nonzero(np.asarray(val_w[0]))[0])

LAMS = np.geomspace(1e-3, 10.0, pick(17, 9)).astype(np.float32)
grid = grid_search(cv_score, LAMS, n_splits=5, n_samples=N_FIT)
print(grid.table())
rand = random_search(cv_score, jax.random.key(0), 1e-3, 10.0, len(LAMS), n_splits=5, n_samples=N_FIT)
print(f"random search: best lambda {rand.best_value:.3g} (CV MSE {rand.mean[rand.best_index]:.4f})")

# A single 80/20 split, for comparison: fold 0's weights alone.
single = grid.scores[:, 0]

# Refit on all N_FIT points at three strengths and score against the true curve.
shown = {"smallest": float(LAMS[0]), "CV best": grid.best_value, "largest": float(LAMS[-1])}
refits = jax.device_get(
    jax.jit(jax.vmap(lambda lam: tanh_mlp(train_tanh(lam, jnp.ones(N_FIT)), X_GRID)))(jnp.asarray(list(shown.values())))
)
true_mse = np.mean((refits - target(x_grid)) ** 2, axis=1)
for (label, lam), err in zip(shown.items(), true_mse):
    print(f"{label:9s} lambda = {lam:8.3g}: MSE to the true curve {err:.4f}")
report(
    grid_best_lambda=grid.best_value,
    grid_best_index=grid.best_index,
    grid_size=len(LAMS),
    random_best_lambda=rand.best_value,
    random_best_cv_mse=rand.mean[rand.best_index],
    grid_best_cv_mse=grid.mean[grid.best_index],
    true_mse_smallest_lambda=true_mse[0],
    true_mse_cv_best=true_mse[1],
    true_mse_largest_lambda=true_mse[2],
)

# %%
fig, (ax_cv, ax_fit) = plt.subplots(1, 2, figsize=(14, 4.5))
ax_cv.fill_between(
    LAMS, grid.mean - grid.std, grid.mean + grid.std, color="C0", alpha=0.15, label="grid: CV mean ± std over folds"
)
ax_cv.semilogx(LAMS, grid.mean, "C0o-", lw=2, label="grid search, 5-fold CV mean")
ax_cv.semilogx(LAMS, single, "C7s--", ms=4, lw=1, label="one split only (fold 0)")
ax_cv.semilogx(rand.values, rand.mean, "C1^", ms=8, label="random search (log-uniform draws)")
ax_cv.axvline(grid.best_value, color="C0", ls=":", label=f"grid best $\\lambda$ = {grid.best_value:.3g}")
ax_cv.axvline(rand.best_value, color="C1", ls=":", label=f"random best $\\lambda$ = {rand.best_value:.3g}")
ax_cv.axhline(NOISE**2, color="gray", lw=1, label="noise variance")
ax_cv.set(
    xlabel="decay strength $\\lambda$ (AdamW, weights only)", ylabel="validation MSE", title="Choosing $\\lambda$"
)
ax_cv.set_yscale("log")
ax_cv.legend(fontsize=7.5, loc="upper center")
ax_fit.plot(x_grid, target(x_grid), "k--", lw=1.5, label="true curve $\\sin(1.5x)$")
ax_fit.scatter(x_fit, y_fit, s=18, color="gray", label=f"{N_FIT} training points")
for (label, lam), curve, color in zip(shown.items(), refits, ["C3", "C0", "C2"]):
    ax_fit.plot(x_grid, curve, color=color, lw=2, label=f"{label} $\\lambda$ = {lam:.3g}")
ax_fit.set(xlabel="x", ylabel="y", title=f"Refitted on all {N_FIT} points at three strengths")
ax_fit.legend(fontsize=8, loc="lower left")
fig.tight_layout()
save_figure(fig, "06_choosing_lambda")

# %% [markdown]
# The U shape is the bias-variance trade-off. With a tiny λ the network threads the
# noise (the red curve wiggles through the points); with a huge one the decay wins
# over the data and the network collapses towards a constant. In between, the
# cross-validated choice is close to the true curve.
#
# Why a cliff on the right rather than a gentle rise? Near equilibrium Adam moves a
# weight by about $\eta$ per step whatever its gradient, while AdamW's decay takes
# $\eta\lambda|w|$ off it: the two balance at $|w| \approx 1/\lambda$. Past some λ no weight
# can grow large enough to draw the sine, and the fit falls to a constant at once. So
# under AdamW, λ acts much like a bound on the weights, a soft cousin of notebook 02's
# box.
#
# Notice how noisy the single split is: ten validation points decide it. The five-fold
# mean averages that noise, and the spread between folds (the band) says how much to
# trust a difference: values of λ whose means lie within the band of the best are ties.
# Random search lands near the same place with the same budget of runs; its advantage
# shows when several hyperparameters are searched together, where a grid spends most of
# its runs varying the ones that do not matter.
#
# Every one of those $5 \times$ (number of λ) trainings ran as a lane of one compiled
# program. Notebook 07 takes this apart: how much a `vmap` saves over a Python loop, and
# how to replace the search by gradient descent on λ itself.
