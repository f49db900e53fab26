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
# # 07 · Sweeps and selection: one `vmap` over λ, k-fold cross-validation, hypergradients
#
# Choosing a regularization strength λ means training the model many times. In an
# imperative framework that is a loop: build a model and an optimizer, train, score,
# repeat. In JAX a training run is a *pure function* of λ, and three things follow:
#
# 1. **A sweep is a `vmap`.** Sixteen trainings with sixteen values of λ are one call of
#    one compiled program, with the λ axis batched through every matrix product. We time
#    it against a Python loop of the same runs and count the compilations.
# 2. **Cross-validation is one more axis.** With the folds written as per-sample
#    weights, every fold has the same shapes, and the (λ, fold) grid is again one `vmap`.
# 3. **λ can be tuned by gradient descent.** The validation loss after $K$ training
#    steps is a differentiable function of λ; `jax.grad` differentiates *through the
#    whole training run*, and `jaxreg.training.tune_strength` follows that hypergradient.
#
# The problem is small on purpose, so that every claim can be checked exhaustively:
# a linear model with 20 features trained on only 25 noisy points, where the right
# amount of L2 regularization matters.

# %%
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from _common import SMALL, pick, report, save_figure
from sklearn.model_selection import KFold

import jaxreg
from jaxreg.training import grid_search, kfold_weights, tune_strength, unrolled_val_loss

print(f"jax {jax.__version__} on {jax.devices()[0].platform}, small run: {SMALL}")

# %% [markdown]
# ## The problem: ridge regression by gradient descent
#
# $y = x^\top w^\star + \varepsilon$ with $w^\star \in \mathbb{R}^{20}$, noise
# $\varepsilon \sim \mathcal{N}(0, 2^2)$ and $n = 25$ training points: barely more points
# than parameters, so least squares fits the noise. We train with plain gradient descent
# on $\frac{1}{2n}\sum_i (x_i^\top w - y_i)^2$ and put the L2 term in the optimizer,
#
# $$w_{t+1} = w_t - \eta\,\big(\nabla \mathcal{L}_{\text{train}}(w_t) + \lambda\,w_t\big),$$
#
# which is `optax.chain(jaxreg.coupled_weight_decay(lam), optax.sgd(eta))`, for
# $K = 300$ steps from $w_0 = 0$. The score is the mean squared error on 200 fresh
# points with noise-free targets, so that it measures how far the model is from the
# truth. (Stopping after 300 steps is itself a mild regularizer: at very small λ the run
# has not reached the least-squares solution yet.)

# %%
D, N_TRAIN, N_VAL, NOISE = 20, 25, 200, 2.0
LR, STEPS = 0.1, 300

rng = np.random.default_rng(3)
w_true = rng.standard_normal(D).astype(np.float32)
x_train = rng.standard_normal((N_TRAIN, D)).astype(np.float32)
y_train = (x_train @ w_true + NOISE * rng.standard_normal(N_TRAIN)).astype(np.float32)
x_val = rng.standard_normal((N_VAL, D)).astype(np.float32)
y_val = (x_val @ w_true).astype(np.float32)
X, Y, XV, YV = (jnp.asarray(a) for a in (x_train, y_train, x_val, y_val))
params0 = {"w": jnp.zeros(D, jnp.float32)}


def make_optimizer(lam):
    return optax.chain(jaxreg.coupled_weight_decay(lam), optax.sgd(LR))


def train_loss(params, weight=None):
    """Half the mean squared error; with ``weight``, a weighted mean over the samples."""
    sq = (X @ params["w"] - Y) ** 2
    return 0.5 * (jnp.mean(sq) if weight is None else jnp.sum(weight * sq) / jnp.sum(weight))


def val_loss(params):
    return jnp.mean((XV @ params["w"] - YV) ** 2)


def train(lam, weight=None):
    """STEPS steps of gradient descent with L2 strength ``lam``; the final params."""
    tx = make_optimizer(lam)

    def step(carry, _):
        params, state = carry
        updates, state = tx.update(jax.grad(train_loss)(params, weight), state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params0, tx.init(params0)), length=STEPS)
    return params


# %% [markdown]
# ## 1. A sweep over λ: a Python loop against one `vmap`
#
# The function to sweep maps λ to the validation error after training. Two ways to run
# it for sixteen values of λ:
#
# * **a loop**: `jax.jit` the function, then call it once per λ. Because λ is an
#   *argument* (a traced value, not a Python constant), JAX compiles it once and reuses
#   the program for every λ; each call still pays the dispatch and runs one small
#   training on its own.
# * **a `vmap`**: `jax.jit(jax.vmap(f))` is one program that trains all sixteen models
#   at once: every parameter, gradient and optimizer state gets a leading axis of 16,
#   and the sixteen matrix-vector products of a step become one matrix product.
#
# To *count* compilations, the function increments a Python counter. Python code in a
# jitted function runs only while JAX traces it, so the counter counts traces, one per
# compilation. `jitted._cache_size()` confirms it from JAX's side.

# %%
TRACES = {"count": 0}


def val_after_training(lam):
    TRACES["count"] += 1  # runs when JAX traces (compiles) the function, not when the program runs
    return val_loss(train(lam))


LAMS = np.geomspace(1e-3, 10.0, 16).astype(np.float32)
REPEATS = pick(21, 15)
loop_fn = jax.jit(val_after_training)
sweep_fn = jax.jit(jax.vmap(val_after_training))


def loop_sweep(lams):
    """A call that runs loop_fn once per lambda (the lambdas are put on the device beforehand)."""
    args = [jnp.float32(lam) for lam in lams]
    return lambda: [loop_fn(lam) for lam in args]


def vmap_sweep(lams):
    """A call that runs all the lambdas in one sweep_fn call."""
    batch = jnp.asarray(lams)
    return lambda: sweep_fn(batch)


def time_sweeps(lams, repeats=REPEATS):
    """Median seconds per sweep over ``lams``, both ways, and the compilations each needed.

    Each way is called once first (the warm-up, which compiles if needed). Then the two
    are timed alternately, so that a busy moment of a shared machine hits both; a sample
    holds several sweeps when one is short, and every sweep waits for its results.
    """
    runs = {"loop": loop_sweep(lams), "vmap": vmap_sweep(lams)}
    compiles = {}
    for name, run in runs.items():
        TRACES["count"] = 0
        jax.block_until_ready(run())
        compiles[name] = TRACES["count"]
    number = max(1, 32 // len(lams))
    samples = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(number):
                jax.block_until_ready(run())
            samples[name].append((time.perf_counter() - start) / number)
    return {name: float(np.median(t)) for name, t in samples.items()}, compiles


main_times, main_compiles = time_sweeps(LAMS)
loop_seconds, vmap_seconds = main_times["loop"], main_times["vmap"]
loop_compiles, vmap_compiles = main_compiles["loop"], main_compiles["vmap"]

loop_result = np.array([float(value) for value in loop_sweep(LAMS)()])
vmap_result = np.asarray(sweep_fn(jnp.asarray(LAMS)))
agree = float(np.max(np.abs(loop_result - vmap_result) / loop_result))
print(f"loop: {len(LAMS)} calls, {loop_compiles} compilation(s), cache size {loop_fn._cache_size()}")
print(f"vmap: 1 call,   {vmap_compiles} compilation(s), cache size {sweep_fn._cache_size()}")
print(f"median time for all {len(LAMS)} runs: loop {loop_seconds * 1e3:.2f} ms, vmap {vmap_seconds * 1e3:.2f} ms")
print(f"largest relative difference between the two sweeps: {agree:.1e}")
report(
    loop_ms=loop_seconds * 1e3,
    vmap_ms=vmap_seconds * 1e3,
    vmap_speedup=loop_seconds / vmap_seconds,
    loop_compiles=loop_compiles,
    vmap_compiles=vmap_compiles,
    sweep_vs_loop_max_rel_diff=agree,
)

# %% [markdown]
# Both ways compile once and give the same numbers (to float32 rounding: a batched
# matrix product may sum in another order). The `vmap` is faster because it does the
# same arithmetic in fewer, larger operations and pays the per-call overhead once.
#
# **The pitfall: a Python constant per run.** If λ reaches the compiled function as a
# Python constant, by closing over it or by marking it static
# (`jax.jit(f, static_argnums=0)`), JAX must compile a new program for every value:

# %%
PITFALL_VALUES = [float(lam) for lam in LAMS[: pick(4, 3)]]
# (A lambda, so that these compilations are cached apart from loop_fn's, which wraps the same function.)
static_fn = jax.jit(lambda lam: val_after_training(lam), static_argnums=0)
TRACES["count"] = 0
start = time.perf_counter()
static_result = [float(static_fn(lam)) for lam in PITFALL_VALUES]
static_seconds = time.perf_counter() - start
static_compiles = TRACES["count"]
print(
    f"static lambda: {len(PITFALL_VALUES)} values, {static_compiles} compilations, "
    f"{static_seconds / len(PITFALL_VALUES) * 1e3:.0f} ms per value (compilation included), "
    f"against {loop_seconds / len(LAMS) * 1e3:.2f} ms per value for the compiled loop"
)
report(static_compiles=static_compiles, static_ms_per_value=static_seconds / len(PITFALL_VALUES) * 1e3)

# %% [markdown]
# How does each way scale with the number of runs? The loop's time grows linearly: $n$
# calls of the same small program. The `vmap`'s grows much more slowly while the batch
# still fits the machine's vector units and caches; each new batch size is one new
# compilation (the shapes change), done in the warm-up before timing. (The 16 runs are
# timed again here, so the two measurements show how noisy timing is.)

# %%
SIZES = pick([1, 2, 4, 8, 16, 32, 64, 128, 256], [1, 4, 16, 64])
scaling = {"loop": [], "vmap": []}
new_compiles = {"loop": 0, "vmap": 0}
for n in SIZES:
    times, compiles = time_sweeps(np.geomspace(1e-3, 10.0, n).astype(np.float32))
    for name in scaling:
        scaling[name].append(times[name])
        new_compiles[name] += compiles[name]
for n, t_loop, t_vmap in zip(SIZES, scaling["loop"], scaling["vmap"]):
    print(f"{n:4d} runs: loop {t_loop * 1e3:8.2f} ms   vmap {t_vmap * 1e3:8.2f} ms   ratio {t_loop / t_vmap:5.1f}")
print(
    f"new compilations while scaling: loop {new_compiles['loop']}, vmap {new_compiles['vmap']} (one per new batch size)"
)
report(vmap_speedup_largest=scaling["loop"][-1] / scaling["vmap"][-1])

# %%
fig, (ax_t, ax_r) = plt.subplots(1, 2, figsize=(13, 4.3))
ax_t.loglog(SIZES, np.array(scaling["loop"]) * 1e3, "o-", lw=2, label="Python loop of jitted runs (1 compilation)")
ax_t.loglog(SIZES, np.array(scaling["vmap"]) * 1e3, "s-", lw=2, label="one jit(vmap) call (1 compilation per size)")
per_run = scaling["loop"][0] * 1e3
ax_t.loglog(SIZES, per_run * np.array(SIZES), "k:", lw=1, label="linear in the number of runs")
ax_t.set(
    xlabel="number of λ values (training runs)",
    ylabel="median wall time (ms)",
    title=f"Sweep time, {STEPS} steps per run, after warm-up",
)
ax_t.legend(fontsize=8)
ax_r.semilogx(LAMS, loop_result, "o", ms=9, mfc="none", label="loop")
ax_r.semilogx(LAMS, vmap_result, "-", lw=2, label="vmap")
best = int(np.argmin(vmap_result))
ax_r.axvline(LAMS[best], color="gray", ls=":", label=f"best of the 16: λ = {LAMS[best]:.3g}")
ax_r.set(
    xlabel="L2 strength λ",
    ylabel="validation MSE after training",
    title=f"The same sweep both ways (max relative difference {agree:.0e})",
)
ax_r.set_yscale("log")
ax_r.legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "07_vmap_vs_loop")

# %% [markdown]
# Timings on a shared machine are noisy, so read the figure for its shape rather than
# its digits. For a model this small each run is a few hundred microseconds, dominated
# by fixed costs, and batching removes most of them once there are enough runs to
# batch; for two to four runs the two ways are about even (a batched product of a few
# small matrices is not yet cheaper than the products one by one). For a large model, where one run
# already keeps every core busy, a `vmap` stops being faster than a loop and its memory
# grows with the batch: `grid_search(..., chunk_size=k)` then runs the lanes $k$ at a
# time, still in one compiled program.
#
# The validation curve on the right is the classic U: too little regularization and
# the model fits the noise in 25 points, too much and it shrinks the true weights.
#
# ## 2. k-fold cross-validation
#
# A held-out set of 200 clean points is a luxury. Normally all we have is the 25
# training points, and cross-validation estimates the validation error from them
# alone: cut the data into $K$ folds, train on $K - 1$, score on the one left out,
#
# $$\mathrm{CV}(\lambda) = \frac{1}{K}\sum_{k=1}^{K}
# \frac{\sum_{i \in \text{fold } k}\big(x_i^\top \hat w_{-k}(\lambda) - y_i\big)^2}{|\text{fold } k|}.$$
#
# The folds have different index sets, which would give every fold its own shapes (and,
# under `jit`, its own compilation). jaxreg writes each fold as two 0/1 **weight
# vectors** over all 25 samples instead, `kfold_weights(25, 5)`: the training loss is
# the weighted mean $\sum_i t_i r_i^2 / \sum_i t_i$ and the validation score uses $v = 1 - t$.
# The shapes never change, and `grid_search` runs all (λ, fold) pairs as one `vmap`.

# %%
K = 5
train_w, val_w = kfold_weights(N_TRAIN, K)


def cv_score(lam, train_weight, val_weight):
    params = train(lam, train_weight)
    return jnp.sum(val_weight * (X @ params["w"] - Y) ** 2) / jnp.sum(val_weight)


cv = grid_search(cv_score, LAMS, n_splits=K, n_samples=N_TRAIN)
print(cv.table())

# The same folds by index, as scikit-learn's KFold gives them, for one lambda: slicing
# gives every fold its own arrays, trained by the same gradient descent.
LAM_CHECK = float(LAMS[8])


def sliced_fold_score(train_idx, val_idx):
    xt, yt, xv, yv = (
        jnp.asarray(a) for a in (x_train[train_idx], y_train[train_idx], x_train[val_idx], y_train[val_idx])
    )
    tx = make_optimizer(LAM_CHECK)

    def step(carry, _):
        params, state = carry
        grads = jax.grad(lambda p: 0.5 * jnp.mean((xt @ p["w"] - yt) ** 2))(params)
        updates, state = tx.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params0, tx.init(params0)), length=STEPS)
    return float(jnp.mean((xv @ params["w"] - yv) ** 2))


sliced = np.array([sliced_fold_score(tr, va) for tr, va in KFold(K).split(x_train)])
fold_diff = float(np.max(np.abs(sliced - cv.scores[8]) / sliced))
print(f"lambda = {LAM_CHECK:.3g}: fold scores by weights {np.round(cv.scores[8], 4)}")
print(f"                  by slicing (KFold)  {np.round(sliced, 4)}  (max relative difference {fold_diff:.1e})")

# The one-standard-error rule: the largest lambda whose CV mean is within one standard
# error of the best, i.e. the simplest model the data cannot tell apart from the best.
se = cv.std / np.sqrt(K)
one_se = int(np.max(np.nonzero(cv.mean <= cv.mean[cv.best_index] + se[cv.best_index])[0]))
holdout_best = int(np.argmin(vmap_result))
print(f"CV best lambda {LAMS[cv.best_index]:.3g}, one-SE lambda {LAMS[one_se]:.3g}")
print(f"held-out best lambda {LAMS[holdout_best]:.3g} (the 200 clean points, which CV never sees)")
print(
    f"held-out MSE at the CV choice {vmap_result[cv.best_index]:.3f}, at the one-SE choice {vmap_result[one_se]:.3f}, "
    f"at the best of the grid {vmap_result[holdout_best]:.3f}, without regularization {vmap_result[0]:.3f}"
)
report(
    cv_best_lambda=LAMS[cv.best_index],
    cv_one_se_lambda=LAMS[one_se],
    holdout_best_lambda=LAMS[holdout_best],
    holdout_mse_at_cv_choice=vmap_result[cv.best_index],
    holdout_mse_best=vmap_result[holdout_best],
    holdout_mse_smallest_lambda=vmap_result[0],
    cv_weights_vs_slicing_max_rel_diff=fold_diff,
)

# %%
fig, (ax_w, ax_cv) = plt.subplots(1, 2, figsize=(14, 4.3), gridspec_kw={"width_ratios": [1, 1.4]})
ax_w.imshow(np.asarray(val_w), cmap="Blues", aspect="auto", vmin=0, vmax=1.4)
ax_w.set(
    xlabel="sample",
    ylabel="fold",
    title="kfold_weights(25, 5): validation weight $v$ (blue)\ntraining weight $t = 1 - v$ (white)",
)
ax_w.set_yticks(range(K))
ax_w.grid(False)
for k in range(K):
    ax_cv.semilogx(LAMS, cv.scores[:, k], color="C0", alpha=0.35, lw=1, label="one fold" if k == 0 else None)
ax_cv.fill_between(LAMS, cv.mean - se, cv.mean + se, color="C0", alpha=0.2, label="CV mean ± one standard error")
ax_cv.semilogx(LAMS, cv.mean, "C0o-", lw=2, label=f"{K}-fold CV (noisy targets, left axis)")
ax_cv.axvline(LAMS[cv.best_index], color="C0", ls=":", lw=1.5, label=f"CV best λ = {LAMS[cv.best_index]:.3g}")
ax_cv.axvline(LAMS[one_se], color="C2", ls="--", lw=1.5, label=f"one-SE rule λ = {LAMS[one_se]:.3g}")
ax_cv.set(xlabel="L2 strength λ", ylabel="CV mean squared error", title="Cross-validation on the 25 training points")
ax_cv.set_yscale("log")
ax_hold = ax_cv.twinx()
ax_hold.semilogx(LAMS, vmap_result, "C3s--", ms=4, lw=1, label="held-out MSE (clean targets, right axis)")
ax_hold.set_ylabel("held-out MSE", color="C3")
ax_hold.set_yscale("log")
ax_hold.grid(False)
handles = ax_cv.get_legend_handles_labels()[0] + ax_hold.get_legend_handles_labels()[0]
ax_cv.legend(handles=handles, fontsize=7.5, loc="upper center")
fig.tight_layout()
save_figure(fig, "07_kfold_cv")

# %% [markdown]
# The five folds disagree a lot (each scores only five points, and one fold's error is
# ten times another's), but their mean follows the held-out curve: the CV choice of λ
# lands next to the λ that the 200 clean points would have chosen, without ever looking
# at them. The weighted folds give the same scores as slicing by scikit-learn's `KFold`
# indices, to float32 rounding.
#
# The **one-standard-error rule** (take the largest λ whose CV mean is within one
# standard error of the best: the simplest model the data cannot tell apart from the
# best) is a popular guard against choosing by noise. Here it misleads: with five folds
# of five points the standard error is as wide as the whole dip of the curve, and the
# rule picks a λ whose held-out error is close to that of no regularization at all.
# Twenty-five points can find the right decade of λ, and not much more; a rule that
# widens the choice by the noise widens it a lot.
#
# ## 3. Hypergradient: tuning λ by gradient descent
#
# A grid spends its runs evenly, including where the curve is obviously bad. Because
# the whole training run is a differentiable function of λ, we can instead follow the
# slope of the validation loss. With $w_K(\lambda)$ the weights after $K$ steps,
#
# $$\frac{d\,\mathcal{L}_{\text{val}}(w_K)}{d\log\lambda}
#   = \nabla\mathcal{L}_{\text{val}}(w_K)^\top\,\frac{\partial w_K}{\partial\log\lambda},
# \qquad
# \frac{\partial w_{t+1}}{\partial\log\lambda}
#   = \big(I - \eta(\nabla^2\mathcal{L}_{\text{train}} + \lambda I)\big)\frac{\partial w_t}{\partial\log\lambda}
#     - \eta\lambda\,w_t .$$
#
# Nobody has to write that recursion: `jax.grad` of the unrolled run computes it
# backwards through the `scan` (reverse-mode differentiation through training, at the
# cost of storing the $K$ intermediate weight vectors). We work in $\log\lambda$ because
# λ spans decades and must stay positive.
#
# `jaxreg.training.unrolled_val_loss(make_optimizer, train_loss, val_loss, params0, K)`
# is exactly the function $\log\lambda \mapsto \mathcal{L}_{\text{val}}(w_K)$ that section 1
# swept; `tune_strength` takes Adam steps on $\log\lambda$ along its gradient, the whole
# search as one compiled `scan`. First, two checks: the function equals section 1's, and
# its gradient equals a finite difference.

# %%
objective = unrolled_val_loss(make_optimizer, train_loss, val_loss, params0, STEPS)
same_as_sweep = float(np.max(np.abs(np.asarray(jax.vmap(objective)(jnp.log(LAMS))) - vmap_result) / vmap_result))
log_lam = jnp.float32(np.log(0.3))
hypergrad = float(jax.grad(objective)(log_lam))
h = 1e-2
finite_diff = (float(objective(log_lam + h)) - float(objective(log_lam - h))) / (2 * h)
print(f"unrolled_val_loss vs the section-1 sweep: max relative difference {same_as_sweep:.1e}")
print(f"d val / d log(lambda) at lambda = 0.3: jax.grad {hypergrad:.5f}, central difference {finite_diff:.5f}")
report(
    unrolled_vs_sweep_max_rel_diff=same_as_sweep,
    hypergrad_vs_finite_diff_rel=abs(hypergrad - finite_diff) / abs(finite_diff),
)

# %% [markdown]
# Now the search. The reference is the grid optimum of the same function on a fine grid
# (41 values, one more `vmap`); `tune_strength` starts 30 times too small and 30 times
# too large and takes 60 Adam steps of size 0.3 on $\log\lambda$.

# %%
fine = grid_search(lambda lam: objective(jnp.log(lam)), np.geomspace(1e-3, 10.0, 41))
optimum = fine.best_value
OUTER_STEPS = 60
tuned = {}
for factor in (1 / 30, 30.0):
    tuned[factor] = tune_strength(
        make_optimizer,
        train_loss,
        val_loss,
        params0,
        optimum * factor,
        inner_steps=STEPS,
        outer_steps=OUTER_STEPS,
        outer_learning_rate=0.3,
    )
gaps = {}
for factor, result in tuned.items():
    start_gap = abs(np.log10(result.strengths[0] / optimum))
    end_gap = abs(np.log10(result.strength / optimum))
    gaps[factor] = (start_gap, end_gap)
    print(
        f"start {result.strengths[0]:.4g} -> tuned {result.strength:.4g} (grid optimum {optimum:.4g}); "
        f"distance in decades {start_gap:.2f} -> {end_gap:.3f}; "
        f"validation MSE {result.val_losses[0]:.3f} -> {result.val_losses[-1]:.3f}"
    )
report(
    grid_optimum_lambda=optimum,
    tuned_from_below_lambda=tuned[1 / 30].strength,
    tuned_from_above_lambda=tuned[30.0].strength,
    start_gap_decades=gaps[1 / 30][0],
    end_gap_from_below_decades=gaps[1 / 30][1],
    end_gap_from_above_decades=gaps[30.0][1],
    val_mse_grid_optimum=fine.mean[fine.best_index],
    val_mse_tuned_from_below=float(objective(jnp.log(jnp.float32(tuned[1 / 30].strength)))),
    val_mse_tuned_from_above=float(objective(jnp.log(jnp.float32(tuned[30.0].strength)))),
)

# %%
fig, (ax_path, ax_steps) = plt.subplots(1, 2, figsize=(14, 4.5))
ax_path.semilogx(fine.values, fine.mean, color="gray", lw=2, label="validation MSE after training (41-point grid)")
ax_path.axvline(optimum, color="black", ls=":", label=f"grid optimum λ = {optimum:.3g}")
for result, color, name in zip(tuned.values(), ["C0", "C3"], ["from 30x too small", "from 30x too large"]):
    lams = result.strengths[:-1]
    ax_path.scatter(lams, result.val_losses, c=np.arange(len(lams)), cmap="viridis", s=28, zorder=3, edgecolors=color)
    ax_path.plot(lams, result.val_losses, color=color, lw=1, alpha=0.6, label=f"tune_strength {name}")
    ax_steps.semilogy(result.strengths, "o-", color=color, ms=4, label=name)
ax_path.set(xlabel="L2 strength λ", ylabel="validation MSE", title="Hypergradient steps on the validation curve")
ax_path.set_yscale("log")
ax_path.legend(fontsize=8, loc="upper center")
ax_steps.axhline(optimum, color="black", ls=":", label="grid optimum")
ax_steps.set(
    xlabel="outer (hypergradient) step",
    ylabel="λ",
    title="λ along the search (Adam on log λ, step 0.3)",
)
ax_steps.legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "07_hypergradient")

# %% [markdown]
# From either side, λ walks to the grid optimum (the marker colors go from dark to
# light along the search). Adam's momentum carries it past the optimum first, and it
# comes back, as a heavy ball rolls through the bottom of a valley; a smaller outer step
# or plain gradient descent on $\log\lambda$ would trade that for a slower approach. Each
# step costs about two training runs (one forward, one backward), not one per grid
# point. The price is what a gradient
# always costs: it finds a *local* minimum of a validation loss that need not be convex
# in λ, the reverse pass stores the whole unrolled run, and a noisy validation set
# gives a noisy gradient. In practice: search coarsely (a small `vmap` grid or random
# search) to find the right decade, then refine with the hypergradient, especially when
# several strengths (one per layer, say) must be tuned at once, where a grid is out of
# reach and a gradient costs the same.
