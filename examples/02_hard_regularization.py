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
# # 02 · Hard regularization: a parameter box, gradient clipping and an L2 penalty
#
# The first source article trains the simplest model there is, a line
# $f(x) = w x + b$ fitted to $y = 3x + 2 + \text{noise}$, and puts three different
# "brakes" on it at once:
#
# | brake | acts on | rule | jaxreg |
# |---|---|---|---|
# | parameter box | parameters, after a step | $\theta \leftarrow \text{clip}(\theta, -c, c)$ | `project_box(-c, c)` |
# | gradient value clipping | the gradient, before a step | $g \leftarrow \text{clip}(g, -L, L)$ | `clip(L)` |
# | L2 penalty | the loss | $\mathcal{L} + \lambda \sum w^2$ | `penalties.l2(params, 2 * lam)` |
#
# They look alike (three numbers that keep things small) but they do different things,
# and the goal of this notebook is to see *what each one changes*: the path training
# takes, or the place where it ends. Along the way we meet the distinction the article
# raises between **hard** regularization (a constraint that can never be violated) and
# **soft** regularization (a price for being large), and choose $c$, $L$ and $\lambda$
# the way the article suggests, by a grid search on held-out data, with the whole grid
# trained in one `jax.vmap`.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from _common import SMALL, pick, report, save_figure

import jaxreg

STEPS = pick(500, 200)
LR = 0.2
print(f"{STEPS} full-batch gradient steps per run, learning rate {LR}, small run: {SMALL}")

# %% [markdown]
# ## The data
#
# 100 points with $x \sim U(0, 2)$ and $y = 3x + 2 + \varepsilon$, $\varepsilon \sim
# \mathcal{N}(0, 0.5^2)$. Later we hold out 30 of them to choose hyperparameters.

# %%
rng = np.random.default_rng(42)  # NumPy makes the data; JAX trains
x_np = rng.uniform(0.0, 2.0, 100).astype(np.float32)
y_np = (3.0 * x_np + 2.0 + 0.5 * rng.standard_normal(100)).astype(np.float32)
x, y = jnp.asarray(x_np), jnp.asarray(y_np)
print(f"x in [{x_np.min():.2f}, {x_np.max():.2f}], y in [{y_np.min():.2f}, {y_np.max():.2f}]")

# %% [markdown]
# ## The training run, with all three brakes
#
# The loss is the mean squared error plus the article's penalty on the slope,
#
# $$\mathcal{L}(w, b) = \frac1n\sum_i (y_i - w x_i - b)^2 + \lambda w^2 .$$
#
# **Mind the factor 2.** jaxreg's `penalties.l2(params, s)` is $\frac{s}{2}\sum w^2$:
# the $\frac12$ makes its gradient $s\,w$, which is what PyTorch's `weight_decay=s` and
# `jaxreg.coupled_weight_decay(s)` add to the gradient. The article's $\lambda\sum w^2$ is
# therefore `l2(params, 2 * lam)`. We penalize the slope only (the `mask`): the intercept
# just shifts the line, and shrinking it towards zero would bias every prediction
# without making the model any simpler.
#
# The update is the chain **clip(L) → SGD → box(c)**: gradient space before the
# optimizer, parameter space after it. A step of the whole chain is
#
# $$\theta_{t+1} = \mathrm{clip}\big(\theta_t - \eta\,\mathrm{clip}(\nabla\mathcal{L}(\theta_t), -L, L),\ -c,\ c\big),$$
#
# which is *projected* gradient descent with a clipped gradient. `jaxreg.clip` also
# records in its state the fraction of gradient entries that hit the bound, a cheap
# signal that $L$ is too tight; we log it at every step.
#
# `train` runs the loop with `jax.lax.scan`, and takes $c$, $L$ and $\lambda$ as
# ordinary (traceable) arguments, so that `jax.vmap` can train many settings at once.
# "Off" is spelled `inf` for $c$ and $L$ and `0` for $\lambda$.

# %%
INF = np.inf


def mse(params, x, y):
    return jnp.mean((y - params["w"] * x - params["b"]) ** 2)


def train(c, L, lam, x=x, y=y, steps=STEPS, lr=LR):
    """Returns the final params and, per step, the data MSE, the clipped fraction and the params.

    ``c`` is one bound for both parameters, or a dict ``{"w": c_w, "b": c_b}`` of one per leaf.
    """
    tx = optax.chain(jaxreg.clip(L), optax.sgd(lr), jaxreg.project_box(jax.tree.map(jnp.negative, c), c))
    params = {"w": jnp.zeros([]), "b": jnp.zeros([])}

    def loss(p):
        data = mse(p, x, y)
        return data + jaxreg.penalties.l2(p, 2 * lam, mask={"w": True, "b": False}), data

    def step(carry, _):
        p, state = carry
        (_, data), grads = jax.value_and_grad(loss, has_aux=True)(p)
        updates, state = tx.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), (data, state[0].clipped_fraction, p)

    (params, _), (history, clipped, path) = jax.lax.scan(step, (params, tx.init(params)), length=steps)
    return params, history, clipped, path


_train_vmapped = jax.jit(jax.vmap(train))  # built once, so that calls with the same shapes reuse one compilation


def train_many(cs, Ls, lams):
    """Trains one model per entry of the (broadcast) arrays, in one vmap; returns NumPy results."""
    return jax.device_get(_train_vmapped(*np.broadcast_arrays(*(np.asarray(v, np.float32) for v in (cs, Ls, lams)))))


# device_get hands the results to NumPy: printing and plotting them is then free of JAX dispatch.
params, history, clipped, _ = jax.device_get(jax.jit(train)(5.0, 1.0, 0.01))
print(f"all three at once (c = 5, L = 1, lambda = 0.01): y = {params['w']:.3f} x + {params['b']:.3f}")
print(
    f"MSE {history[0]:.3f} -> {history[-1]:.4f};  "
    f"clipped fraction: first step {clipped[0]:.0%}, last step {clipped[-1]:.0%}"
)
report(initial_loss=history[0], final_loss=history[-1], slope=params["w"], intercept=params["b"])

# %% [markdown]
# Loose brakes barely matter: the fit is close to the truth $y = 3x + 2$. To see what
# each brake does we turn the other two off and vary one at a time.
#
# ## One brake at a time
#
# For each brake, four settings from tight to off, each set trained in one `vmap`.

# %%
C_VALUES = [1.0, 2.0, 2.5, INF]
L_VALUES = [0.05, 0.2, 1.0, INF]
LAM_VALUES = [0.0, 0.1, 0.5, 2.0]

# name: (symbol for the plots, values, results of the vmapped runs)
runs = {
    "box c": ("$c$", C_VALUES, train_many(C_VALUES, INF, 0.0)),
    "clip L": ("$L$", L_VALUES, train_many(INF, L_VALUES, 0.0)),
    "penalty lambda": ("$\\lambda$", LAM_VALUES, train_many(INF, INF, LAM_VALUES)),
}
for name, (_, values, (ps, hist, _, _)) in runs.items():
    for v, w, b, h in zip(values, ps["w"], ps["b"], hist[:, -1]):
        print(f"{name:14s} = {v:<5}: y = {w:6.3f} x + {b:6.3f}   final MSE {h:.4f}")

# %%
x_grid = np.linspace(0, 2, 50)
fig, axes = plt.subplots(2, 3, figsize=(14, 7.5), sharex="row")
for col, (name, (symbol, values, (ps, hist, _, _))) in enumerate(runs.items()):
    ax_fit, ax_loss = axes[0, col], axes[1, col]
    title = name.split()[0] + " " + symbol
    ax_fit.scatter(x, y, s=8, color="lightgray", label="data")
    ax_fit.plot(x_grid, 3 * x_grid + 2, "k--", lw=1, label="truth $3x + 2$")
    for i, v in enumerate(values):
        w, b = ps["w"][i], ps["b"][i]
        setting = f"{symbol} = {'off' if v in (INF, 0.0) else v}"
        ax_fit.plot(x_grid, w * x_grid + b, color=f"C{i}", lw=2, label=f"{setting}: $y = {w:.2f}x + {b:.2f}$")
        ax_loss.semilogy(hist[i], color=f"C{i}", lw=2, label=setting)
    ax_fit.set(title=f"Fitted lines, varying the {title}", xlabel="x", ylabel="y")
    ax_fit.legend(fontsize=8, loc="upper left")
    ax_loss.set(
        title=f"Training MSE, varying the {title} (colors as above)", xlabel="step", ylabel="data MSE (log scale)"
    )
ax_frac = axes[1, 1].twinx()
clip_frac = runs["clip L"][2][2]
for i in range(len(L_VALUES) - 1):  # L = inf never clips
    ax_frac.plot(clip_frac[i], color=f"C{i}", ls=":", lw=1.5)
ax_frac.set_ylabel("clipped fraction (dotted)")
ax_frac.set_ylim(-0.05, 1.05)
ax_frac.grid(False)
fig.tight_layout()
save_figure(fig, "02_brakes_one_at_a_time")

# %% [markdown]
# Read the figure column by column: each brake leaves a different fingerprint.
#
# * **The box changes where training ends.** With $c < 3$ the best slope is out of
#   reach; the projection holds $w$ exactly at $c$ (the constraint is *active*) and the
#   intercept compensates as well as it can, until it too hits the wall ($c = 1$ and
#   $c = 2$ pin both parameters). With $c$ above the true values the box is inactive and
#   changes nothing at all. The final MSE tells you which case you are in.
# * **Clipping changes only the path.** A clipped step is at most $\eta L$ per
#   coordinate, so a tight $L$ turns the early descent into a straight line: the loss
#   falls at a constant speed instead of geometrically. But near the solution the
#   gradient becomes small, clipping switches off (the dotted clipped fraction drops to
#   0), and every $L$ ends at the same line, given enough steps. Clipping protects
#   against exploding gradients; it is not a regularizer of the solution.
# * **The penalty changes where training ends, smoothly.** Every $\lambda > 0$ moves the
#   minimum; there is no threshold below which it is inactive. For this loss we can
#   even write the new minimum down, which gives us a check on the training.
#
# ### Checking the penalty against its closed form
#
# Setting the gradient of $\frac1n\sum(y_i - w x_i - b)^2 + \lambda w^2$ to zero gives
# $b = \bar y - w\bar x$ and
#
# $$w^\star(\lambda) = \frac{S_{xy}}{S_{xx} + \lambda}, \qquad
# S_{xy} = \overline{(x - \bar x)(y - \bar y)},\quad S_{xx} = \overline{(x - \bar x)^2}.$$
#
# The penalty adds $\lambda$ to the denominator: it shrinks the slope by the factor
# $S_{xx} / (S_{xx} + \lambda)$, which is why L2 regularization is also called
# *shrinkage*. (Had we used `l2(params, lam)`, the denominator would read
# $S_{xx} + \lambda/2$: the factor-2 convention is not a detail.)

# %%
s_xy = np.mean((x_np - x_np.mean()) * (y_np - y_np.mean()))
s_xx = np.mean((x_np - x_np.mean()) ** 2)
lam_ps = runs["penalty lambda"][2][0]
w_closed = s_xy / (s_xx + np.array(LAM_VALUES))
b_closed = y_np.mean() - w_closed * x_np.mean()
closed_diff = np.max(np.abs([lam_ps["w"] - w_closed, lam_ps["b"] - b_closed]))
for lam, w_gd, w_cf in zip(LAM_VALUES, lam_ps["w"], w_closed):
    print(f"lambda = {lam:3}: slope by gradient descent {w_gd:.4f}, closed form {w_cf:.4f}")
print(f"max difference over slopes and intercepts: {closed_diff:.1e}")

box_ps = runs["box c"][2][0]
box_violation = np.max(np.maximum(np.abs([box_ps["w"], box_ps["b"]]) - np.array(C_VALUES), 0))
clip_ps = runs["clip L"][2][0]
report(
    l2_closed_form_max_diff=closed_diff,
    box_slope_c2_5=box_ps["w"][2],
    box_max_violation=box_violation,
    clip_L1_vs_unclipped_slope_diff=abs(clip_ps["w"][2] - clip_ps["w"][3]),
    clipped_fraction_first_step_L0_2=clip_frac[1, 0],
    clipped_fraction_last_step_L0_2=clip_frac[1, -1],
)

# %% [markdown]
# ## Hard versus soft
#
# A box is a **hard** constraint: $|w| \le c$ holds after every step, exactly, whatever
# the data say. A penalty is **soft**: large weights are allowed, they just cost
# something, and how far the weights end up depends on how hard the data pull.
#
# For convex problems the two are closer than they look. Minimizing the loss subject to
# $|w| \le c$ has the Lagrangian $\mathcal{L}(w, b) + \mu(w^2 - c^2)$, so when the
# constraint is active its solution is also the minimum of the *penalized* loss for some
# multiplier $\mu$. Here we can solve for it: $w^\star(\lambda) = c$ gives
# $\lambda = S_{xy}/c - S_{xx}$. Let us check it by training a box on the slope alone
# (`project_box` takes one bound per leaf: the intercept gets $\pm\infty$) and the
# matching penalty, and by drawing both paths over the loss landscape.

# %%
C_HARD = 2.0
lam_soft = float(s_xy / C_HARD - s_xx)
# Three runs in one vmap: the box on the slope alone (the intercept's bound is inf),
# the matching penalty, and no brake. Small steps, so that the paths drawn below are
# smooth, and more of them, to converge.
boxes = {"w": np.array([C_HARD, INF, INF], np.float32), "b": np.array([INF, INF, INF], np.float32)}
lams = np.array([0.0, lam_soft, 0.0], np.float32)
ends, _, _, paths = jax.device_get(
    jax.jit(jax.vmap(lambda c, lam: train(c, INF, lam, lr=0.02, steps=10 * STEPS)))(boxes, lams)
)
hard, soft = ({k: v[run] for k, v in ends.items()} for run in (0, 1))
hard_path, soft_path, free_path = ({k: v[run] for k, v in paths.items()} for run in range(3))
hard_soft_diff = max(abs(float(hard["w"] - soft["w"])), abs(float(hard["b"] - soft["b"])))
print(f"hard: |w| <= {C_HARD}           -> y = {hard['w']:.4f} x + {hard['b']:.4f}")
print(f"soft: penalty lambda = {lam_soft:.4f} -> y = {soft['w']:.4f} x + {soft['b']:.4f}")
report(hard_soft_lambda=lam_soft, hard_soft_max_diff=hard_soft_diff)

# %%
ws, bs = np.meshgrid(np.linspace(-0.1, 3.6, 150), np.linspace(-0.1, 3.6, 150))
landscape = np.mean((y_np - ws[..., None] * x_np - bs[..., None]) ** 2, axis=-1)
fig, ax = plt.subplots(figsize=(7, 6))
contours = ax.contour(ws, bs, landscape, levels=np.geomspace(0.2, 30, 10), colors="gray", linewidths=0.7)
ax.clabel(contours, fontsize=7, fmt="%.2g")
ax.axvspan(C_HARD, 3.6, color="C3", alpha=0.08, label=f"outside the box $|w| \\leq {C_HARD}$")
for path, style, label in [
    (free_path, "k.-", "no brake"),
    (hard_path, "C3o-", f"hard: box on $w$ ($c = {C_HARD}$)"),
    (soft_path, "C0s-", f"soft: penalty $\\lambda = {lam_soft:.2f}$"),
]:
    marks = np.unique(np.geomspace(1, len(path["w"]) - 1, 25).astype(int))  # early steps are the long ones
    ax.plot(path["w"], path["b"], style, ms=3.5, lw=1.2, markevery=list(marks), label=label)
ax.plot([3.0], [2.0], "k*", ms=12, label="truth (3, 2)")
ax.set(
    xlabel="slope $w$",
    ylabel="intercept $b$",
    title="Hard vs soft: different paths, same end point\n"
    "(gray: contours of the data MSE; markers at log-spaced steps)",
)
ax.legend(loc="lower right", fontsize=8)
save_figure(fig, "02_hard_vs_soft")

# %% [markdown]
# The end points agree; the paths do not. The projected run follows the unconstrained
# one until it hits the wall $w = c$, and then slides along it. The penalized run feels
# a pull towards $w = 0$ that grows with $w$: it barely notices it at first, *crosses*
# the wall on its way, and is pulled back (a penalty is a preference, not a guarantee).
# That is the practical difference:
#
# * a **hard** constraint gives a *guarantee* that holds at every step and on any data
#   (useful for stability, for bounding a network's Lipschitz constant, for
#   parameters with a physical range), and costs nothing while it is inactive;
# * a **soft** penalty gives a *preference* that acts everywhere, and whose strength
#   in terms of the weights depends on the data: the $\lambda$ that matched $c = 2$ here
#   would give a different slope on other data.
#
# Clipping is neither: it bounds each *step*, not the weights, and has no effect on
# where a converged run ends. It is the brake for exploding gradients, and, combined
# with a learning-rate schedule (notebook 03), a way to keep the first steps sane.
#
# ## Choosing $c$, $L$ and $\lambda$ on held-out data
#
# Which setting is best cannot be read off the training loss, which can only get worse
# as the brakes tighten. The article's answer is to hold data out: we train on 70 points,
# score each setting by its MSE on the other 30, and keep the best. The grid below has
# $5 \times 3 \times 4 = 60$ settings; flattened into one batch, all 60 trainings are a
# single `vmap`-ed, compiled call.

# %%
perm = rng.permutation(100)
train_idx, val_idx = perm[:70], perm[70:]
GRID_C = np.array([0.5, 1.0, 2.0, 3.0, 5.0], np.float32)
GRID_L = np.array([0.05, 0.2, 1.0], np.float32)
GRID_LAM = np.array([0.0, 0.01, 0.1, 1.0], np.float32)
cc, ll, mm = (a.ravel() for a in np.meshgrid(GRID_C, GRID_L, GRID_LAM, indexing="ij"))


def validation_mse(c, L, lam):
    params, *_ = train(c, L, lam, x=x[train_idx], y=y[train_idx])
    return mse(params, x[val_idx], y[val_idx])


val = np.asarray(jax.jit(jax.vmap(validation_mse))(cc, ll, mm)).reshape(len(GRID_C), len(GRID_L), len(GRID_LAM))
i, j, k = np.unravel_index(int(np.argmin(val)), val.shape)
print(f"{val.size} settings trained in one vmap")
print(f"best: c = {GRID_C[i]:g}, L = {GRID_L[j]:g}, lambda = {GRID_LAM[k]:g}  ->  validation MSE {val[i, j, k]:.4f}")
print(f"worst: validation MSE {val.max():.2f}")
report(
    grid_size=val.size,
    best_c=GRID_C[i],
    best_L=GRID_L[j],
    best_lam=GRID_LAM[k],
    best_val_mse=val[i, j, k],
    worst_val_mse=val.max(),
)

# %%
fig, axes = plt.subplots(1, len(GRID_L), figsize=(13, 3.8), sharey=True)
norm = plt.matplotlib.colors.LogNorm(vmin=float(val.min()), vmax=float(val.max()))
for j_l, ax in enumerate(axes):
    im = ax.imshow(val[:, j_l, :], norm=norm, cmap="viridis_r", origin="lower", aspect="auto")
    for a in range(len(GRID_C)):
        for m in range(len(GRID_LAM)):
            v = float(val[a, j_l, m])
            ax.text(m, a, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if v > 2 else "black")
    ax.set_xticks(range(len(GRID_LAM)), [f"{v:g}" for v in GRID_LAM])
    ax.set_yticks(range(len(GRID_C)), [f"{v:g}" for v in GRID_C])
    ax.set(xlabel="penalty $\\lambda$", title=f"clip $L = {float(GRID_L[j_l]):g}$")
    ax.grid(False)
    if j_l == j:
        ax.add_patch(plt.Rectangle((k - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2.5))
axes[0].set_ylabel("box $c$")
fig.colorbar(im, ax=axes, label="validation MSE (log scale)")
fig.suptitle(f"Grid search on a validation split ({STEPS} steps per run; red: best)", y=1.02)
save_figure(fig, "02_grid_search")

# %% [markdown]
# What the grid says:
#
# * **The box dominates.** Any $c$ well below the true slope 3 is a disaster whatever
#   the other two numbers; from $c = 3$ up the box (nearly) never binds and the rows
#   look alike.
# * **$L$ matters only through the budget.** With $L = 0.05$ each step moves a
#   parameter by at most $\eta L = 0.01$, so it takes 300 steps just to travel from 0
#   to a slope of 3; with a short budget that column is worse, with a long one it
#   catches up. With a larger $L$ the columns agree. Clipping changes how fast we get
#   there, not where "there" is.
# * **$\lambda$ should be small here.** The model is a line and the data are a line plus
#   noise: there is nothing to overfit, so any shrinkage only adds bias. Regularization
#   pays when the model can fit the noise (many features, few points): see the
#   irrelevant features of notebook 03 and the penalty paths of notebook 04.
#
# A single split is a noisy judge: with 30 validation points, settings that differ in
# the third decimal are ties. K-fold cross-validation (notebook 07) averages that noise
# away, and is the same `vmap` with one more axis.
