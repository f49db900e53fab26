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
# # 03 · Weight decay and learning-rate decay
#
# The second source article puts two "decays" side by side that are easy to confuse:
#
# * **weight decay** shrinks the *parameters* a little at every step. It is L2
#   regularization: it changes the problem being solved, from least squares to
#
#   $$\min_{w,b}\ \frac{1}{2n}\sum_{i=1}^n \big(y_i - f(x_i; w, b)\big)^2 + \frac{\lambda}{2}\|w\|^2 ;$$
#
# * **learning-rate decay** shrinks the *step size* over time, e.g.
#   $\eta_t = \eta_0 / \sqrt{1 + \gamma^2 t}$ or $\eta \leftarrow \eta\,(1 - d)$ once per
#   epoch. It does not change the problem; it changes how precisely a noisy optimizer
#   solves it.
#
# We fit the article's line $y = 3x + 5 + \text{noise}$, with 80 points to train on and
# 20 to test on, and measure everything by the **test MSE**. We will
#
# 1. write weight decay three ways (a loss penalty, coupled, decoupled) and show that
#    for plain SGD they are the *same* update, and for Adam they are not;
# 2. train with minibatch SGD under a constant rate, the inverse-square-root decay and
#    the per-epoch decay, and see why decaying helps;
# 3. sweep $\lambda$, $\gamma$ and $d$, all in a single `jax.vmap`, and read the test MSE;
# 4. compare weight decay, gradient clipping and L1 on a problem with irrelevant
#    features, where only L1 produces exact zeros.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from _common import SMALL, pick, report, save_figure

import jaxreg

EPOCHS = pick(40, 20)
BATCH = 8
ETA0 = 0.3
SEEDS = 8  # shuffling orders averaged over, to see the schedule and not the luck of one order
print(f"{EPOCHS} epochs of minibatch SGD (batch {BATCH}), eta0 = {ETA0}, {SEEDS} shuffles; small run: {SMALL}")

# %% [markdown]
# ## The data: $y = 3x + 5 + \varepsilon$, split 80/20
#
# NumPy makes the data and scores the results; JAX does the training. The arrays that
# the compiled training code reads are JAX arrays, the rest stay NumPy.

# %%
rng = np.random.default_rng(7)
N = 100
x = rng.uniform(0.0, 2.0, N).astype(np.float32)
y = (3.0 * x + 5.0 + rng.standard_normal(N)).astype(np.float32)
perm = rng.permutation(N)
train_idx, test_idx = perm[:80], perm[80:]
x_tr, y_tr, x_te, y_te = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
x_train, y_train = jnp.asarray(x_tr), jnp.asarray(y_tr)  # for the compiled training code
N_TRAIN = len(train_idx)
STEPS_PER_EPOCH = N_TRAIN // BATCH
STEPS = EPOCHS * STEPS_PER_EPOCH
W_ONLY = {"w": True, "b": False}  # decay the slope, never the intercept


def half_mse(params, x, y):
    """The article's data term, 1/(2n) * sum of squared residuals."""
    return 0.5 * jnp.mean((y - params["w"] * x - params["b"]) ** 2)


def test_mse(w, b):
    """The article's report: the plain MSE on the 20 test points (w and b may hold many runs)."""
    w, b = np.asarray(w)[..., None], np.asarray(b)[..., None]
    return np.mean((y_te - w * x_te - b) ** 2, axis=-1)


# Least squares on the training set: the point an unregularized run should reach.
ols_w, ols_b = np.polyfit(x_tr, y_tr, 1)
min_train_loss = 0.5 * np.mean((y_tr - ols_w * x_tr - ols_b) ** 2)
ols_test_mse = test_mse(ols_w, ols_b)
print(f"least squares: y = {ols_w:.3f} x + {ols_b:.3f}, test MSE {ols_test_mse:.4f} (noise variance 1)")

# %% [markdown]
# ## 1. Weight decay three ways
#
# The gradient of $\frac{\lambda}{2}\|w\|^2$ is $\lambda w$, so one step of gradient descent
# on the penalized loss is
#
# $$w \leftarrow w - \eta\,(g + \lambda w) = (1 - \eta\lambda)\,w - \eta\,g .$$
#
# The right-hand side explains the name: every step the weights *decay* by the factor
# $1 - \eta\lambda$ before the data gradient acts. There are three places to put this in
# an optax chain, and jaxreg has each:
#
# | | where | code |
# |---|---|---|
# | loss penalty | in the loss, differentiated | `loss + jaxreg.penalties.l2(params, lam)` |
# | coupled decay | added to the gradient, *before* the optimizer | `chain(coupled_weight_decay(lam), sgd(lr))` |
# | decoupled decay | taken off the update, after it | `chain(sgd(lr), decoupled_weight_decay(lam, learning_rate=lr))` |
#
# (`penalties.l2` carries the $\frac12$, so the same $\lambda$ appears in all three.)
# The decoupled form needs the learning rate, because it applies $\eta\lambda w$
# itself; give it the *same schedule* as the optimizer and the three are the same
# update, step for step. Let us check it with a decaying learning rate.

# %%
LAM = 0.5
lr_schedule = jaxreg.inverse_sqrt_decay(ETA0, 0.1)


def run(tx, with_penalty=False, steps=100):
    """Full-batch training from zero; returns the slope after every step."""

    def loss(p):
        penalty = jaxreg.penalties.l2(p, LAM, mask=W_ONLY) if with_penalty else 0.0
        return half_mse(p, x_train, y_train) + penalty

    def step(carry, _):
        p, state = carry
        updates, state = tx.update(jax.grad(loss)(p), state, p)
        p = optax.apply_updates(p, updates)
        return (p, state), p["w"]

    @jax.jit
    def go():
        params = {"w": jnp.zeros([]), "b": jnp.zeros([])}
        return jax.lax.scan(step, (params, tx.init(params)), length=steps)[1]

    return np.asarray(go())


penalty = run(optax.sgd(lr_schedule), with_penalty=True)
coupled = run(optax.chain(jaxreg.coupled_weight_decay(LAM, mask=W_ONLY), optax.sgd(lr_schedule)))
decoupled = run(
    optax.chain(optax.sgd(lr_schedule), jaxreg.decoupled_weight_decay(LAM, learning_rate=lr_schedule, mask=W_ONLY))
)
d_pc = np.max(np.abs(penalty - coupled))
d_cd = np.max(np.abs(coupled - decoupled))
print(f"SGD: max |penalty - coupled| over 100 slopes {d_pc:.1e}, max |coupled - decoupled| {d_cd:.1e}")
assert d_pc < 1e-5 and d_cd < 1e-5

adam_coupled = run(optax.chain(jaxreg.coupled_weight_decay(LAM, mask=W_ONLY), optax.adam(0.1)))
adam_decoupled = run(optax.chain(optax.adam(0.1), jaxreg.decoupled_weight_decay(LAM, learning_rate=0.1, mask=W_ONLY)))
adam_diff = abs(adam_coupled[-1] - adam_decoupled[-1])
w_closed = np.mean((x_tr - x_tr.mean()) * (y_tr - y_tr.mean())) / (np.var(x_tr) + LAM)
print(f"Adam: final slope coupled {adam_coupled[-1]:.4f}, decoupled {adam_decoupled[-1]:.4f}")
print(f"      (minimum of the penalized loss: {w_closed:.4f}; SGD reached {penalty[-1]:.4f})")
report(
    sgd_penalty_vs_coupled_max_diff=d_pc,
    sgd_coupled_vs_decoupled_max_diff=d_cd,
    adam_coupled_vs_decoupled_slope_diff=adam_diff,
)

# %% [markdown]
# For SGD the three agree to float32 rounding. For Adam they differ, and it is worth
# seeing why. *Coupled* decay adds $\lambda w$ to the gradient before Adam, so Adam
# divides it by $\sqrt{\hat v}$ like everything else: it is the gradient of the penalized
# loss, and Adam minimizes that loss. *Decoupled* decay bypasses Adam: the weights shrink
# by exactly $\eta\lambda w$ per step, while Adam follows the data gradient alone. Its
# fixed point balances a normalized data step against the decay, which is not the
# minimum of any penalized loss with the same $\lambda$. Neither is wrong; they are
# different regularizers (AdamW's authors argue the decoupled one generalizes better for
# deep networks), and `torch.optim.Adam(weight_decay=...)` is the coupled one while
# `torch.optim.AdamW` is the decoupled one. Notebook 06 matches both against PyTorch.
#
# ## 2. Learning-rate decay
#
# With *minibatches*, the gradient is the full gradient plus noise. Near the minimum the
# full gradient vanishes but the noise does not, so SGD with a constant step keeps
# bouncing around the minimum in a cloud whose size grows with $\eta$. Decaying $\eta$
# shrinks the cloud. Decaying too fast stops the run before it arrives: the classic
# conditions for SGD to converge are $\sum_t \eta_t = \infty$ (enough total movement)
# and $\sum_t \eta_t^2 < \infty$ (noise that dies out).
#
# * $\eta_t = \eta_0 / \sqrt{1 + \gamma^2 t}$ (`jaxreg.inverse_sqrt_decay(eta0, gamma)`)
#   decays like $t^{-1/2}$: the steps still sum to infinity while their squares grow
#   only like $\log t$, a good compromise for noisy problems. $\gamma$ sets when the
#   decay starts: around $t \approx 1/\gamma^2$.
# * $\eta \leftarrow \eta\,(1 - d)$ after every epoch (`jaxreg.epoch_decay(eta0, d,
#   steps_per_epoch)`) decays geometrically: $\sum_t\eta_t$ is *finite*, so a large $d$
#   freezes the run early, wherever it is.
#
# Both are plain optax schedules, functions from the step count to a learning rate.

# %%
GAMMAS_SHOWN = [0.0, 0.1, 0.3, 1.0]
DECAYS_SHOWN = [0.05, 0.1, 0.3]
t = np.arange(STEPS)
shown = [jaxreg.inverse_sqrt_decay(ETA0, g) for g in GAMMAS_SHOWN]
shown += [jaxreg.epoch_decay(ETA0, d, STEPS_PER_EPOCH) for d in DECAYS_SHOWN]
curves = jax.device_get(jax.jit(lambda t: [schedule(t) for schedule in shown])(t))
fig, ax = plt.subplots(figsize=(7, 4))
for i, g in enumerate(GAMMAS_SHOWN):
    ax.plot(t, curves[i], color=f"C{i}", label=f"inverse sqrt, $\\gamma = {g}$")
for i, d in enumerate(DECAYS_SHOWN):
    ax.plot(t, curves[len(GAMMAS_SHOWN) + i], color=f"C{i + 4}", ls="--", label=f"per epoch, $d = {d}$")
ax.set(
    xlabel="step",
    ylabel="learning rate $\\eta_t$",
    yscale="log",
    title=f"Learning-rate schedules ($\\eta_0 = {ETA0}$, {STEPS_PER_EPOCH} steps per epoch)",
)
ax.legend(ncol=2, fontsize=8)
save_figure(fig, "03_schedules")

# %% [markdown]
# ### One schedule with both decays, and a JAX wrinkle
#
# To compare and sweep the two decays with a single training function, we use their
# product, $\eta_t = \frac{\eta_0}{\sqrt{1 + \gamma^2 t}}\,(1 - d)^{\lfloor t / \text{epoch} \rfloor}$:
# $d = 0$ gives the inverse-square-root decay, $\gamma = 0$ the per-epoch decay, both zero
# a constant rate. A schedule is just a function of the step count, so the product is
# one line.
#
# The wrinkle: `jaxreg.epoch_decay` builds on `optax.exponential_decay`, which inspects
# its rate in Python when the schedule is made, so it cannot take a *traced* $d$, and we
# want to `vmap` over $d$. (`inverse_sqrt_decay` takes a traced $\gamma$ without
# trouble.) So we write the per-epoch factor by hand, and check the product against both
# jaxreg schedules.


# %%
def lr_schedule_both(gamma, decay):
    inverse_sqrt = jaxreg.inverse_sqrt_decay(ETA0, gamma)
    return lambda count: inverse_sqrt(count) * (1 - decay) ** (count // STEPS_PER_EPOCH)


product = jax.jit(lambda t, g, d: lr_schedule_both(g, d)(t))
for i, g in enumerate(GAMMAS_SHOWN):
    assert np.allclose(product(t, g, 0.0), curves[i], rtol=1e-6)
for i, d in enumerate(DECAYS_SHOWN):
    assert np.allclose(product(t, 0.0, d), curves[len(GAMMAS_SHOWN) + i], rtol=1e-5)
print("the product schedule reproduces inverse_sqrt_decay (d = 0) and epoch_decay (gamma = 0)")

# %% [markdown]
# ### Training with minibatch SGD under three schedules
#
# `train` takes minibatches of 8 in a shuffled order fixed in advance (`batches`, one row
# of indices per step; every epoch is a pass over a fresh permutation), and returns the
# final parameters and the full-batch training loss after every step. $\lambda$,
# $\gamma$, $d$ and the shuffling order are all traced arguments, so `run_configs` can
# `vmap` over settings and, inside, over 8 shuffling orders, whose results we average:
# we want to see the schedule, not the luck of one order.


# %%
def train(lam, gamma, decay, batches):
    tx = optax.chain(jaxreg.coupled_weight_decay(lam, mask=W_ONLY), optax.sgd(lr_schedule_both(gamma, decay)))
    params = {"w": jnp.zeros([]), "b": jnp.zeros([])}

    def step(carry, idx):
        p, state = carry
        grads = jax.grad(half_mse)(p, x_train[idx], y_train[idx])
        updates, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, updates)
        return (p, state), half_mse(p, x_train, y_train)

    (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), batches)
    return params, losses


order_rng = np.random.default_rng(1)
BATCHES = np.stack(
    [np.concatenate([order_rng.permutation(N_TRAIN) for _ in range(EPOCHS)]) for _ in range(SEEDS)]
).reshape(SEEDS, STEPS, BATCH)

# vmap over shuffling orders (inner) and over settings (outer); jit once.
_run = jax.jit(jax.vmap(jax.vmap(train, in_axes=(None, None, None, 0)), in_axes=(0, 0, 0, None)))


def run_configs(lams, gammas, decays):
    """Trains each (lambda, gamma, d) under each order: params (K, SEEDS), losses (K, SEEDS, STEPS), NumPy."""
    args = np.broadcast_arrays(*(np.asarray(v, np.float32) for v in (lams, gammas, decays)))
    return jax.device_get(_run(*args, BATCHES))


GAMMA_MAIN, DECAY_MAIN = 0.3, 0.1
names = ["constant", f"inverse sqrt, gamma = {GAMMA_MAIN}", f"per epoch, d = {DECAY_MAIN}"]
params3, losses3 = run_configs(0.0, [0.0, GAMMA_MAIN, 0.0], [0.0, 0.0, DECAY_MAIN])
test3 = test_mse(params3["w"], params3["b"])  # (3 schedules, SEEDS)
for k, name in enumerate(names):
    print(
        f"{name:26s} test MSE {test3[k].mean():.4f} (+- {test3[k].std():.4f} over orders), "
        f"slope {params3['w'][k].mean():.3f}"
    )

# %%
fig, ax = plt.subplots(figsize=(7, 4))
for k, name in enumerate(names):
    excess = (losses3[k] - min_train_loss).mean(axis=0)
    ax.semilogy(np.arange(1, STEPS + 1) / STEPS_PER_EPOCH, excess, color=f"C{k}", lw=1.5, label=name)
ax.set(
    xlabel="epoch",
    ylabel="training loss minus its minimum",
    title=f"Minibatch SGD, mean of {SEEDS} orders: decay lowers the noise floor",
)
ax.legend()
save_figure(fig, "03_training_curves")

excess_final = (losses3[:, :, -STEPS_PER_EPOCH:] - min_train_loss).mean(axis=(1, 2))
report(
    excess_loss_constant=excess_final[0],
    excess_loss_inverse_sqrt=excess_final[1],
    excess_loss_epoch=excess_final[2],
    test_mse_constant=test3[0].mean(),
    test_mse_inverse_sqrt=test3[1].mean(),
    test_mse_epoch=test3[2].mean(),
)

# %% [markdown]
# With a constant rate the training loss stops improving after a few epochs and
# hovers above its minimum: that plateau is the noise cloud. Both decays keep
# improving, an order of magnitude below it, and the test MSE follows.
#
# ## 3. Sweeping $\lambda$, $\gamma$ and $d$ with `vmap`
#
# How strong should the weight decay be, and how fast the learning-rate decay? Because
# `train` is a pure function of its settings, a whole grid is one call: an
# $8 \times 8$ grid of $(\lambda, \gamma)$ plus 8 values of $d$, each under 8 shuffling
# orders, is $72 \times 8 = 576$ trainings in one compiled program.

# %%
LAMS = np.array([0.0, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0], np.float32)
GAMMAS = np.array([0.0, 0.03, 0.1, 0.2, 0.3, 0.5, 1.0, 3.0], np.float32)
DECAYS = np.array([0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5], np.float32)
lam_grid, gamma_grid = (a.ravel() for a in np.meshgrid(LAMS, GAMMAS, indexing="ij"))
n_grid = lam_grid.size
swept, _ = run_configs(
    np.concatenate([lam_grid, np.zeros_like(DECAYS)]),
    np.concatenate([gamma_grid, np.zeros_like(DECAYS)]),
    np.concatenate([np.zeros_like(lam_grid), DECAYS]),
)
mean_test = test_mse(swept["w"], swept["b"]).mean(axis=1)  # average over shuffling orders
grid, decay_curve = mean_test[:n_grid].reshape(len(LAMS), len(GAMMAS)), mean_test[n_grid:]
i_best, j_best = np.unravel_index(int(np.argmin(grid)), grid.shape)
d_best = int(np.argmin(decay_curve))
print(f"best on the grid: lambda = {LAMS[i_best]:g}, gamma = {GAMMAS[j_best]:g}, test MSE {grid[i_best, j_best]:.4f}")
print(f"gamma sweep at lambda = 0:            {np.round(grid[0], 4)}")
print(f"lambda sweep at gamma = {GAMMAS[j_best]:g}:          {np.round(grid[:, j_best], 4)}")
print(f"per-epoch decay sweep at lambda = 0:  {np.round(decay_curve, 4)}; best d = {DECAYS[d_best]:g}")
report(
    best_lambda=LAMS[i_best],
    best_gamma=GAMMAS[j_best],
    best_test_mse=grid[i_best, j_best],
    test_mse_gamma0=grid[0, 0],
    test_mse_largest_lambda=grid[-1, j_best],
    best_epoch_decay=DECAYS[d_best],
    test_mse_epoch_decay0=decay_curve[0],
    test_mse_best_epoch_decay=decay_curve[d_best],
)


# %%
def zero_on_log_axis(ax, values, zero_at):
    """Plots a grid that starts at 0 on a log axis: 0 is drawn at ``zero_at`` and labelled "0"."""
    positions = values.copy()
    positions[0] = zero_at
    ax.set_xscale("log")
    ax.set_xticks(positions, ["0"] + [f"{v:g}" for v in values[1:]], fontsize=8)
    ax.minorticks_off()
    return positions


fig, (ax_lam, ax_gam, ax_grid) = plt.subplots(1, 3, figsize=(17, 4.3))
pos = zero_on_log_axis(ax_lam, LAMS, 1e-3)
ax_lam.plot(pos, grid[:, j_best], "o-", label=f"$\\gamma = {GAMMAS[j_best]:g}$")
ax_lam.plot(pos, grid[:, 0], "s--", label="$\\gamma = 0$ (constant rate)")
ax_lam.axhline(ols_test_mse, color="gray", ls=":", label="least squares")
ax_lam.set(xlabel="weight decay $\\lambda$", ylabel="test MSE", title="Test MSE vs weight decay")
ax_lam.legend()
pos = zero_on_log_axis(ax_gam, GAMMAS, 0.01)
ax_gam.plot(pos, grid[0], "o-", color="C2", label="inverse sqrt: vs $\\gamma$ (bottom axis)")
ax_gam.axhline(ols_test_mse, color="gray", ls=":", label="least squares")
ax_gam.set(xlabel="$\\gamma$", ylabel="test MSE", title="Test MSE vs learning-rate decay ($\\lambda = 0$)")
ax_d = ax_gam.twiny()
ax_d.plot(DECAYS, decay_curve, "s--", color="C4", label="per epoch: vs $d$ (top axis)")
ax_d.set_xlabel("per-epoch decay $d$")
ax_d.grid(False)
handles, labels = ax_gam.get_legend_handles_labels()
handles_d, labels_d = ax_d.get_legend_handles_labels()
ax_gam.legend(handles + handles_d, labels + labels_d, fontsize=8, loc="upper center")
im = ax_grid.imshow(grid, origin="lower", cmap="viridis_r", aspect="auto", norm=plt.matplotlib.colors.LogNorm())
ax_grid.set_xticks(range(len(GAMMAS)), [f"{v:g}" for v in GAMMAS])
ax_grid.set_yticks(range(len(LAMS)), [f"{v:g}" for v in LAMS])
ax_grid.add_patch(plt.Rectangle((j_best - 0.5, i_best - 0.5), 1, 1, fill=False, ec="red", lw=2.5))
ax_grid.set(xlabel="$\\gamma$", ylabel="$\\lambda$", title="Test MSE over ($\\lambda$, $\\gamma$); red: best")
ax_grid.grid(False)
fig.colorbar(im, ax=ax_grid, label="test MSE (log scale)")
fig.tight_layout()
save_figure(fig, "03_sweeps")

# %% [markdown]
# The knobs behave very differently.
#
# * **$\gamma$ has a sweet spot.** Too little decay leaves the SGD noise in the final
#   parameters; too much freezes the run before it reaches the minimum (with
#   $\gamma = 3$ the rate is already ten times smaller after 11 steps). The per-epoch
#   decay has the same shape in $d$: its steps sum to a finite distance,
#   $\eta_0 \cdot \text{epoch} / d$, and a large $d$ spends it in the first few epochs.
# * **$\lambda$ should be (nearly) zero here.** The model is the right one, a line,
#   and 80 points pin both parameters well; weight decay can only pull the slope away
#   from 3 (the closed form is $w^\star = S_{xy}/(S_{xx} + \lambda)$, notebook 02). The
#   heatmap is mostly a picture of $\gamma$; $\lambda$ hurts as soon as it is comparable
#   to the variance of $x$.
#
# The test set has 20 points: differences in the third decimal are within its noise,
# and choosing on the test set is itself a form of overfitting. Choose on a validation
# split (notebook 02, and section 4 below) or by cross-validation (notebook 07), and
# report the test MSE once.
#
# Regularization pays when the model can fit the noise. The next section gives it that
# chance.
#
# ## 4. Weight decay vs clipping vs L1, with irrelevant features
#
# Keep the article's target, $y = 3x_0 + 5 + \varepsilon$, but give the model 30 more
# features $x_1, \dots, x_{30}$ that have nothing to do with $y$ (all features standard
# normal, the same 80/20 split). Least squares uses every feature it is given, so it
# fits some of the noise through the irrelevant ones. Three candidate fixes:
#
# * **weight decay (L2)**, `coupled_weight_decay(lam)`: shrinks every coefficient
#   towards zero by the same *factor*; small coefficients get small, never zero;
# * **gradient clipping**, `clip_by_global_norm(1.0)`: bounds each step's length;
# * **L1**, `l1_prox(lam, learning_rate=lr)` after SGD (proximal gradient descent,
#   ISTA): moves every coefficient towards zero by the same *amount*
#   $\eta\lambda$ and stops at zero, solving the lasso
#   $\min \frac{1}{2n}\|y - Xw - b\|^2 + \lambda\|w\|_1$.
#
# As notebook 02 taught, we choose each $\lambda$ on data the model was not fitted to.
# With only 80 points a single validation split is a noisy judge, so we use 5-fold
# cross-validation (notebook 07 has more on it), in a form that suits JAX: instead of
# slicing the data differently for each fold, which would change array shapes, every
# fold keeps all 80 rows and gives each row a weight, 1 to fit on it and 0 to hold it
# out. A `vmap` over the 5 weight vectors and over 26 settings (13 values of $\lambda$
# for each regularizer) fits 130 models in one call.
#
# Cross-validation curves are flat near their minimum and noisy, so we pick $\lambda$ by
# the *one-standard-error rule* (Breiman et al.; glmnet's `lambda.1se`): the strongest
# regularization whose cross-validated error is within one standard error of the best,
# i.e. the simplest model that the data cannot tell apart from the best one. Then we
# refit on all 80 points and
# measure the test error once, on 2,000 fresh points from the same distribution: we can
# draw them here, and 20 test points would be too few to rank the methods reliably.
# Training is full-batch gradient descent, run to convergence.

# %%
N_IRRELEVANT, FOLDS = 30, 5
D5 = 1 + N_IRRELEVANT


def make_data(n):
    X = rng.standard_normal((n, D5)).astype(np.float32)
    return X, (3.0 * X[:, 0] + 5.0 + rng.standard_normal(n)).astype(np.float32)


X5, y5 = make_data(N)
X5_tr, y5_tr = jnp.asarray(X5[train_idx]), jnp.asarray(y5[train_idx])
X5_new, y5_new = make_data(2000)
fold_of_row = np.arange(N_TRAIN) % FOLDS  # the rows are already in random order
FOLD_WEIGHTS = (fold_of_row[None, :] != np.arange(FOLDS)[:, None]).astype(np.float32)  # (5, 80)
LR5, FIT_STEPS = 0.2, pick(1000, 400)


def fit(l2, l1, max_norm, row_weights):
    tx = optax.chain(
        jaxreg.clip_by_global_norm(max_norm),  # PyTorch's order: clip the loss gradient,
        jaxreg.coupled_weight_decay(l2, mask=W_ONLY),  # then SGD adds its weight_decay term
        optax.sgd(LR5),
        jaxreg.l1_prox(l1, learning_rate=LR5, mask=W_ONLY),
    )
    params = {"w": jnp.zeros(D5), "b": jnp.zeros([])}

    def loss(p):
        residuals = y5_tr - X5_tr @ p["w"] - p["b"]
        return 0.5 * jnp.sum(row_weights * residuals**2) / jnp.sum(row_weights)

    def step(carry, _):
        p, state = carry
        updates, state = tx.update(jax.grad(loss)(p), state, p)
        return (optax.apply_updates(p, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), length=FIT_STEPS)
    return params


# vmap over settings (inner) and over row-weight vectors (outer); jit once per shape.
fit_many = jax.jit(jax.vmap(jax.vmap(fit, in_axes=(0, 0, 0, None)), in_axes=(None, None, None, 0)))


def squared_errors(params, X, y):
    """NumPy squared residuals of many fitted models: w (..., D5), b (...) -> (..., n)."""
    return (y - params["w"] @ X.T - params["b"][..., None]) ** 2


LAMS5 = np.logspace(-3, 0.5, 13).astype(np.float32)
zeros5, inf5 = np.zeros_like(LAMS5), np.full_like(LAMS5, np.inf)
# 13 values of the L2 strength, then 13 of the L1 strength, on each of the 5 folds.
cv_fits = jax.device_get(
    fit_many(
        np.concatenate([LAMS5, zeros5]), np.concatenate([zeros5, LAMS5]), np.concatenate([inf5, inf5]), FOLD_WEIGHTS
    )
)
assert np.all(np.isfinite(cv_fits["w"])), "a run diverged: lower LR5 or the largest lambda"
held_out = 1 - FOLD_WEIGHTS[:, None, :]  # (5, 1, 80)
errors = squared_errors(cv_fits, X5[train_idx], y5[train_idx])  # (5, 26, 80)
fold_mse = (errors * held_out).sum(-1) / held_out.sum(-1)  # (5 folds, 26 settings)
cv_mse, cv_se = fold_mse.mean(axis=0), fold_mse.std(axis=0, ddof=1) / np.sqrt(FOLDS)
zeros_l1 = np.mean(np.sum(cv_fits["w"][:, 13:] == 0, axis=-1), axis=0)  # mean over folds


def one_standard_error(mean, se):
    """Index of the largest lambda whose CV error is within one SE of the minimum."""
    best = int(np.argmin(mean))
    return int(np.nonzero(mean <= mean[best] + se[best])[0].max())


pick_l2, pick_l1 = one_standard_error(cv_mse[:13], cv_se[:13]), one_standard_error(cv_mse[13:], cv_se[13:])
lam_l2, lam_l1 = LAMS5[pick_l2], LAMS5[pick_l1]
print(
    f"minimum CV error at: L2 lambda = {LAMS5[np.argmin(cv_mse[:13])]:.3g}, "
    f"L1 lambda = {LAMS5[np.argmin(cv_mse[13:])]:.3g}"
)
print(f"one-standard-error choice: L2 lambda = {lam_l2:.3g}, L1 lambda = {lam_l1:.3g}")

methods = {
    "plain GD": (0.0, 0.0, np.inf),
    f"weight decay, lambda = {lam_l2:.2g}": (lam_l2, 0.0, np.inf),
    "clip global norm at 1": (0.0, 0.0, 1.0),
    f"L1 prox, lambda = {lam_l1:.2g}": (0.0, lam_l1, np.inf),
}
hyper = np.array(list(methods.values()), np.float32)
final = jax.device_get(fit_many(hyper[:, 0], hyper[:, 1], hyper[:, 2], np.ones((1, N_TRAIN), np.float32)))
final = {k: v[0] for k, v in final.items()}  # the single all-ones weight vector
test5 = squared_errors(final, X5_new, y5_new).mean(axis=-1)
irrelevant_zeros = np.sum(final["w"][:, 1:] == 0, axis=1)
for k, name in enumerate(methods):
    print(
        f"{name:26s} test MSE {test5[k]:.4f}   w0 = {final['w'][k, 0]:.3f}   "
        f"exact zeros among the {N_IRRELEVANT} irrelevant: {irrelevant_zeros[k]}"
    )
clip_vs_plain = np.max(np.abs(final["w"][2] - final["w"][0]))
print(f"clipped vs plain coefficients: max difference {clip_vs_plain:.1e}")
report(
    test_mse_plain=test5[0],
    test_mse_weight_decay=test5[1],
    test_mse_clip=test5[2],
    test_mse_l1=test5[3],
    l2_irrelevant_zeros=irrelevant_zeros[1],
    l1_irrelevant_zeros=irrelevant_zeros[3],
    l1_keeps_relevant=float(final["w"][3, 0] != 0),
    clip_vs_plain_max_diff=clip_vs_plain,
)

# %%
fig = plt.figure(figsize=(15, 5.5))
layout = fig.add_gridspec(len(methods), 2, width_ratios=[1, 1.6], hspace=0.15, wspace=0.25)
ax_sel = fig.add_subplot(layout[:, 0])
for part, (marker, name, chosen) in enumerate([("o", "weight decay (L2)", pick_l2), ("s", "L1 prox", pick_l1)]):
    mean, se = cv_mse[13 * part : 13 * (part + 1)], cv_se[13 * part : 13 * (part + 1)]
    ax_sel.errorbar(
        LAMS5, mean, yerr=se, fmt=f"{marker}-", color=f"C{part}", capsize=2, label=f"{name} (mean $\\pm$ SE)"
    )
    ax_sel.plot(LAMS5[chosen], mean[chosen], marker, color=f"C{part}", ms=14, mfc="none", mew=2)
ax_sel.set(
    xscale="log",
    yscale="log",
    xlabel="$\\lambda$",
    ylabel="cross-validated MSE",
    title="Choosing $\\lambda$ by 5-fold CV (circled: one-SE choice)",
)
ax_zeros = ax_sel.twinx()
ax_zeros.semilogx(LAMS5, zeros_l1, "s:", color="C1", alpha=0.6, label="L1: exact zeros (right axis)")
ax_zeros.set(ylabel=f"exact zeros among the {D5} coefficients", ylim=(-1, D5 + 1))
ax_zeros.grid(False)
h1, t1 = ax_sel.get_legend_handles_labels()
h2, t2 = ax_zeros.get_legend_handles_labels()
ax_sel.legend(h1 + h2, t1 + t2, loc="upper left", fontsize=8)
idx = np.arange(1, D5)
for k, name in enumerate(methods):
    ax = fig.add_subplot(layout[k, 1])
    w = final["w"][k, 1:]
    ax.bar(idx, w, color=f"C{k}")
    ax.plot(idx[w == 0], np.zeros(int((w == 0).sum())), "kx", ms=5, label="exactly 0")
    ax.set_ylim(-0.45, 0.45)
    ax.set_xlim(0.3, D5 - 0.3)
    label = f"{name}: $w_0$ = {final['w'][k, 0]:.2f}, test MSE {test5[k]:.3f}"
    ax.text(0.99, 0.93, label, transform=ax.transAxes, ha="right", va="top", fontsize=9)
    if (w == 0).any():
        ax.legend(loc="lower right", fontsize=8)
    if k < len(methods) - 1:
        ax.set_xticklabels([])
    if k == 0:
        ax.set_title("Coefficients of the 30 irrelevant features (true value 0)")
ax.set_xlabel("feature")
save_figure(fig, "03_wd_clip_l1")

# %% [markdown]
# Three different behaviours:
#
# * **Weight decay** shrinks all 30 irrelevant coefficients and zeroes none:
#   $(1 - \eta\lambda)$ times a number is never zero. It shrinks $w_0$ by the same
#   factor, so the bias it adds costs about as much as the variance it removes: its
#   effect on the test error is small, a little better or a little worse depending on
#   the draw of the data.
# * **Clipping** gives the *same coefficients as plain gradient descent*, to float32
#   precision: near the solution the gradient is small, the clip never binds, and the run
#   converges to the same least-squares point. Clipping is insurance against exploding
#   gradients (large steps early in training, spikes in deep networks), not a
#   regularizer; it does not know that a feature is irrelevant.
# * **L1** sets the irrelevant coefficients *exactly* to zero and keeps the relevant
#   one: it selects features, and has by far the lowest test error. The soft threshold
#   removes every coefficient whose data gradient at zero is smaller than $\lambda$,
#   which for pure-noise features is most of them. The price is a small downward bias
#   on $w_0$ (it too moves $\eta\lambda$ towards zero each step).
#
# How to choose between them: use L1 when you believe few features matter and want a
# sparse, interpretable model (its cousin the elastic net, notebook 04, behaves better
# with correlated features); use weight decay when every feature carries a little
# signal; use clipping whenever the gradients can blow up, *in addition* to either.
# And choose $\lambda$ on data the model was not fitted to, as we did here.
