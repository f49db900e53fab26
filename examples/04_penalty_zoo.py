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
# # 04 · A zoo of regularizers: penalties, noise, dropout, shared tasks, early stopping, sparse activations
#
# The third source article surveys the ways deep learning keeps a model from fitting its
# training data *too* well. They fall into a few families:
#
# | family | what it does | jaxreg |
# |---|---|---|
# | norm penalties | price large weights: L1 (sparse), L2 (small), elastic net | `l1_prox`, `elastic_net_prox`, decays |
# | noise injection | perturb inputs or hidden units while training | `nn.MLP(input_noise_std=, hidden_noise_std=)` |
# | dropout | multiplicative noise: drop each hidden unit with probability $p$ | `nn.MLP(dropout_rate=)` |
# | multi-task learning | heads share a trunk; every task constrains it | `nn.MultiTaskMLP` |
# | early stopping | stop when the validation loss stops improving | `training.EarlyStopping` |
# | sparse representations | an L1 penalty on *activations* instead of weights | `penalties.activity_l1` |
#
# This notebook takes them one at a time, each on a problem small enough to train in
# seconds, and shows its effect in a figure:
#
# 1. **L1, L2 and elastic-net coefficient paths** on scikit-learn's diabetes data,
#    computed with jaxreg's proximal steps (proximal gradient descent under `jit`, one
#    `vmap` over all the strengths), and checked against scikit-learn's `lasso_path`,
#    `enet_path` and `Ridge`;
# 2. **input noise, hidden noise and dropout** on a small network that overfits 30 points;
# 3. **early stopping** as a pure state machine inside the compiled training loop;
# 4. **a multi-task trunk** that learns from auxiliary tasks what the main task has too
#    few labels to learn;
# 5. **sparse activations** on the digits data.

# %%
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from _common import SMALL, pick, report, save_figure
from flax import nnx
from sklearn.datasets import load_diabetes, load_digits
from sklearn.linear_model import Ridge, enet_path, lasso_path

import jaxreg

ISTA_STEPS = 5000  # proximal gradient steps per strength (about 4,000 are needed at the smallest one)
NET_STEPS = pick(3000, 1500)  # training steps of each small network in parts 2-4
DIGIT_STEPS = pick(1500, 500)  # minibatch steps on the digits in part 5
print(f"jax {jax.__version__}, optax {optax.__version__}, small run: {SMALL}")

# %% [markdown]
# ## 1. Coefficient paths: L1, L2 and the elastic net
#
# The diabetes data has $n = 442$ patients, $d = 10$ features (age, sex, body-mass
# index, blood pressure and six blood serum measurements s1-s6) and a measure of disease
# progression one year later. We standardize every column and the target (mean 0,
# variance 1), so that one $\lambda$ means the same thing for every coefficient, and fit
# a linear model $\hat y = Xw$ (no intercept is needed after centering) under three
# penalties:
#
# $$\min_w\ \underbrace{\frac{1}{2n}\|y - Xw\|^2}_{f(w)} + \begin{cases}
# \lambda \|w\|_1 & \text{lasso (L1)}\\
# \lambda\big(r\|w\|_1 + \frac{1 - r}{2}\|w\|^2\big) & \text{elastic net, } r = \text{l1\_ratio}\\
# \frac{\lambda}{2}\|w\|^2 & \text{ridge (L2)}
# \end{cases}$$
#
# A **coefficient path** is the solution $w^\star(\lambda)$ drawn as $\lambda$ goes from
# large (everything shrunk to zero) to small (least squares). It shows at a glance what
# a penalty does: which coefficients it keeps, in what order they enter, how far each
# is pulled towards zero.
#
# ### Proximal gradient descent (ISTA)
#
# The L1 term has no gradient at zero, so plain gradient descent on it never lands on
# an exact zero. Proximal gradient descent splits the objective: a gradient step on the
# smooth part $f$, then the *proximal map* of the penalty, which for L1 is soft
# thresholding and for the elastic net a soft threshold followed by a shrink:
#
# $$w \leftarrow \operatorname{prox}_{\eta\lambda}\big(w - \eta\nabla f(w)\big),\qquad
# \operatorname{prox}^{L1}_{t}(v) = \operatorname{sign}(v)\max(|v| - t, 0),\qquad
# \operatorname{prox}^{EN}_{t}(v) = \frac{\operatorname{prox}^{L1}_{t r}(v)}{1 + t(1 - r)} .$$
#
# In optax terms the gradient step is `optax.sgd(lr)` and the prox is a
# parameter-space transform after it: `jaxreg.l1_prox(lam, learning_rate=lr)` or
# `jaxreg.elastic_net_prox(lam * r, lam * (1 - r), learning_rate=lr)`. With
# $\eta = 1/L$, where $L$ is the largest eigenvalue of $X^\top X / n$ (the Lipschitz
# constant of $\nabla f$), the iteration converges to the exact minimizer.
#
# ### Mind the scaling
#
# scikit-learn's `Lasso` and `ElasticNet` minimize exactly the objectives above, with
# the data term $\frac{1}{2n}\|y - Xw\|^2$. Write the loss as a *mean* with the
# $\frac12$, as `half_mse` below does, and jaxreg's strength is scikit-learn's `alpha`,
# one for one. Write it as a plain sum of squares and the same `alpha` means $n$ times
# less regularization (we check this below). `Ridge` is different again: it minimizes
# $\|y - Xw\|^2 + \alpha\|w\|^2$, with neither the $\frac{1}{2n}$ nor the $\frac12$, so
# our ridge $\lambda$ is `Ridge(alpha=n * lam)`.

# %%
X_np, y_np = load_diabetes(return_X_y=True)
FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
X_np = (X_np - X_np.mean(0)) / X_np.std(0)
y_np = (y_np - y_np.mean()) / y_np.std()
N_DIAB = len(y_np)
X_d, y_d = jnp.asarray(X_np, jnp.float32), jnp.asarray(y_np, jnp.float32)


def lipschitz(X):
    """Largest eigenvalue of X'X / n: the Lipschitz constant of the gradient of half_mse."""
    return float(np.linalg.eigvalsh(X.T @ X / len(X)).max())


eigenvalues = np.linalg.eigvalsh(X_np.T @ X_np / N_DIAB)
LR_ISTA = 1 / lipschitz(X_np)
print(f"n = {N_DIAB}, d = {X_np.shape[1]}; X'X/n has eigenvalues {eigenvalues.min():.4f} .. {eigenvalues.max():.3f}")
print(f"condition number {eigenvalues.max() / eigenvalues.min():.0f}; ISTA step 1/L = {LR_ISTA:.4f}")
print(f"correlation of s1 and s2: {np.corrcoef(X_np[:, 4], X_np[:, 5])[0, 1]:.3f}")

# Above alpha_max = max_j |x_j' y| / n every lasso coefficient is exactly zero (the
# optimality condition |x_j'(y - Xw)| / n <= alpha holds at w = 0); scikit-learn starts
# its path there and goes down to eps * alpha_max. The elastic net's starts at alpha_max / r.
L1_RATIO = 0.5
N_ALPHAS = 50
RELATIVE = np.geomspace(1, 1e-3, N_ALPHAS)  # alpha / alpha_max along every path
alpha_max = np.abs(X_np.T @ y_np).max() / N_DIAB
ALPHAS_LASSO = alpha_max * RELATIVE
ALPHAS_ENET = ALPHAS_LASSO / L1_RATIO


def half_mse(w, X, y):
    """scikit-learn's data term, ||y - Xw||^2 / (2n)."""
    return 0.5 * jnp.mean((y - X @ w) ** 2)


def ista(prox, X, y, lr, loss=half_mse, steps=ISTA_STEPS):
    """Proximal gradient descent from w = 0: a gradient step (optax.sgd), then the prox."""
    tx = optax.chain(optax.sgd(lr), prox)
    grad = jax.grad(loss)

    def step(carry, _):
        w, state = carry
        updates, state = tx.update(grad(w, X, y), state, w)
        return (optax.apply_updates(w, updates), state), None

    w0 = jnp.zeros(X.shape[1])
    return jax.lax.scan(step, (w0, tx.init(w0)), length=steps)[0][0]


# One compiled program per penalty; each strength is one lane of the vmap.
lasso_ista = jax.jit(jax.vmap(lambda lam: ista(jaxreg.l1_prox(lam, learning_rate=LR_ISTA), X_d, y_d, LR_ISTA)))
enet_ista = jax.jit(
    jax.vmap(
        lambda lam: ista(
            jaxreg.elastic_net_prox(lam * L1_RATIO, lam * (1 - L1_RATIO), learning_rate=LR_ISTA), X_d, y_d, LR_ISTA
        )
    )
)
start = time.perf_counter()
path_lasso = np.asarray(lasso_ista(jnp.asarray(ALPHAS_LASSO, jnp.float32)))  # (50 strengths, 10 coefficients)
path_enet = np.asarray(enet_ista(jnp.asarray(ALPHAS_ENET, jnp.float32)))
seconds = time.perf_counter() - start
print(f"jaxreg: 2 x {N_ALPHAS} runs of {ISTA_STEPS} ISTA steps in {seconds:.2f} s (compilation included)")

SK = {"tol": 1e-10, "max_iter": 100_000}
_, sk_lasso, _ = lasso_path(X_np, y_np, alphas=ALPHAS_LASSO, **SK)
_, sk_enet, _ = enet_path(X_np, y_np, l1_ratio=L1_RATIO, alphas=ALPHAS_ENET, **SK)
sk_lasso, sk_enet = sk_lasso.T, sk_enet.T  # scikit-learn returns (features, alphas)

lasso_diff = np.abs(path_lasso - sk_lasso).max()
enet_diff = np.abs(path_enet - sk_enet).max()
lasso_zero_mismatch = int(np.sum((path_lasso == 0) != (sk_lasso == 0)))
enet_zero_mismatch = int(np.sum((path_enet == 0) != (sk_enet == 0)))
print(f"lasso path: max |jaxreg - sklearn| = {lasso_diff:.2e} (largest coefficient {np.abs(sk_lasso).max():.3f})")
print(f"            entries zero in one and not the other: {lasso_zero_mismatch} of {sk_lasso.size}")
print(f"enet path:  max |jaxreg - sklearn| = {enet_diff:.2e}; zero-pattern mismatches: {enet_zero_mismatch}")
print(f"nonzero coefficients along the lasso path: {(path_lasso != 0).sum(1)[::7]} ...")
report(
    lasso_path_max_diff=lasso_diff,
    enet_path_max_diff=enet_diff,
    lasso_zero_pattern_mismatches=lasso_zero_mismatch,
    enet_zero_pattern_mismatches=enet_zero_mismatch,
    lasso_nonzero_at_alpha_max=(path_lasso[0] != 0).sum(),
    lasso_nonzero_at_alpha_min=(path_lasso[-1] != 0).sum(),
)

# %% [markdown]
# Fifty strengths, two penalties, 5,000 steps each: one compiled `vmap` per penalty,
# and the coefficients agree with scikit-learn's coordinate descent to about $10^{-5}$
# (float32). The zeros agree too, up to the odd coefficient at the very strength where
# it enters the model, which one solver has at exactly zero and the other at $10^{-7}$.
# Proximal gradient descent is slower per unit of accuracy than coordinate descent on
# a problem this small, but it is the same code that regularizes a network, and it runs
# all strengths at once.
#
# The scaling warning, checked: minimize $\frac12\|y - Xw\|^2$ (a sum, no $\frac1n$) with
# `l1_prox(alpha)`, and you solve the lasso for $\alpha / n$ instead of $\alpha$. The step
# size must shrink by $n$ too, since the sum's gradient is $n$ times larger.


# %%
def half_sse(w, X, y):
    """The same fit written as a sum: ||y - Xw||^2 / 2, n times half_mse."""
    return 0.5 * jnp.sum((y - X @ w) ** 2)


i_mid = N_ALPHAS // 3
alpha = float(ALPHAS_LASSO[i_mid])
lr_sum = LR_ISTA / N_DIAB
w_naive = np.asarray(ista(jaxreg.l1_prox(alpha, learning_rate=lr_sum), X_d, y_d, lr_sum, loss=half_sse))
w_scaled = np.asarray(ista(jaxreg.l1_prox(alpha * N_DIAB, learning_rate=lr_sum), X_d, y_d, lr_sum, loss=half_sse))
unscaled_diff = np.abs(w_naive - sk_lasso[i_mid]).max()
scaled_diff = np.abs(w_scaled - sk_lasso[i_mid]).max()
print(f"alpha = {alpha:.4f}: scikit-learn keeps {(sk_lasso[i_mid] != 0).sum()} of 10 coefficients")
print(f"  sum loss, strength alpha:     {(w_naive != 0).sum()} kept, max diff {unscaled_diff:.3f}")
print(f"  sum loss, strength n * alpha: {(w_scaled != 0).sum()} kept, max diff {scaled_diff:.1e}")
report(sum_loss_unscaled_max_diff=unscaled_diff, sum_loss_scaled_max_diff=scaled_diff)

# %% [markdown]
# ### Correlated features: what the elastic net is for
#
# The lasso's weak spot is a group of strongly correlated features: it tends to pick one
# of them and zero the others, and which one it picks can flip with a small change in
# the data. The elastic net's L2 part is strictly convex, so it spreads the weight
# across the group instead (Zou & Hastie's *grouping effect*). To see it cleanly we add
# an eleventh feature, a noisy twin of bmi (correlation 0.99), and compute both paths
# again, in one compiled program: `elastic_net_prox(l1, l2)` with `l2 = 0` is the lasso's
# prox, so a single `vmap` over pairs $(\ell_1, \ell_2)$ runs both penalties.

# %%
twin = X_np[:, 2] + 0.15 * np.random.default_rng(0).standard_normal(N_DIAB)
X_twin = np.hstack([X_np, ((twin - twin.mean()) / twin.std())[:, None]])
lr_twin = 1 / lipschitz(X_twin)
print(f"correlation of bmi and its twin: {np.corrcoef(X_twin[:, 2], X_twin[:, 10])[0, 1]:.3f}")
alpha_max_twin = np.abs(X_twin.T @ y_np).max() / N_DIAB
alphas_twin = {"lasso": alpha_max_twin * RELATIVE, "enet": alpha_max_twin * RELATIVE / L1_RATIO}
l1s = np.concatenate([alphas_twin["lasso"], alphas_twin["enet"] * L1_RATIO])
l2s = np.concatenate([np.zeros(N_ALPHAS), alphas_twin["enet"] * (1 - L1_RATIO)])
both = jax.jit(
    jax.vmap(
        lambda l1, l2: ista(
            jaxreg.elastic_net_prox(l1, l2, learning_rate=lr_twin), jnp.asarray(X_twin, jnp.float32), y_d, lr_twin
        )
    )
)
twin_paths = np.asarray(both(jnp.asarray(l1s, jnp.float32), jnp.asarray(l2s, jnp.float32)))
twin_lasso, twin_enet = twin_paths[:N_ALPHAS], twin_paths[N_ALPHAS:]
_, sk_twin_lasso, _ = lasso_path(X_twin, y_np, alphas=alphas_twin["lasso"], **SK)
_, sk_twin_enet, _ = enet_path(X_twin, y_np, l1_ratio=L1_RATIO, alphas=alphas_twin["enet"], **SK)
twin_diff = max(np.abs(twin_lasso - sk_twin_lasso.T).max(), np.abs(twin_enet - sk_twin_enet.T).max())
print(f"max |jaxreg - sklearn| on both twin paths: {twin_diff:.2e}")
print(f"lasso: the twin is nonzero at {(twin_lasso[:, 10] != 0).sum()} of {N_ALPHAS} strengths")
print(
    f"elastic net: at {(twin_enet[:, 10] != 0).sum()}, with up to {twin_enet[:, 10].max():.3f} against bmi's ", end=""
)
print(f"{twin_enet[np.argmax(twin_enet[:, 10]), 2]:.3f}")
report(
    twin_paths_max_diff=twin_diff,
    twin_lasso_nonzero=(twin_lasso[:, 10] != 0).sum(),
    twin_enet_nonzero=(twin_enet[:, 10] != 0).sum(),
    twin_enet_max=twin_enet[:, 10].max(),
)

# %% [markdown]
# ### The ridge path
#
# L2 has a closed form, $w^\star(\lambda) = (X^\top X/n + \lambda I)^{-1} X^\top y / n$,
# and its gradient is smooth, so no prox is needed: L2 *is* weight decay. Gradient
# descent with `jaxreg.coupled_weight_decay(lam)` before `optax.sgd(lr)` adds
# $\lambda w$ to the gradient of $f$, which is the gradient of the ridge objective. The
# penalty makes the problem better conditioned, so each lane takes its own step size
# $1/(L + \lambda)$, also a traced value of the `vmap`.

# %%
LAMS_RIDGE = np.geomspace(1e3, 1e-3, N_ALPHAS)


def ridge_gd(lam):
    lr = 1 / (eigenvalues.max() + lam)
    tx = optax.chain(jaxreg.coupled_weight_decay(lam), optax.sgd(lr))

    def step(carry, _):
        w, state = carry
        updates, state = tx.update(jax.grad(half_mse)(w, X_d, y_d), state, w)
        return (optax.apply_updates(w, updates), state), None

    w0 = jnp.zeros(X_np.shape[1])
    return jax.lax.scan(step, (w0, tx.init(w0)), length=ISTA_STEPS)[0][0]


path_ridge = np.asarray(jax.jit(jax.vmap(ridge_gd))(jnp.asarray(LAMS_RIDGE, jnp.float32)))
sk_ridge = np.stack([Ridge(alpha=N_DIAB * lam, fit_intercept=False).fit(X_np, y_np).coef_ for lam in LAMS_RIDGE])
ridge_diff = np.abs(path_ridge - sk_ridge).max()
print(f"ridge path: max |jaxreg - sklearn Ridge(alpha = n * lam)| = {ridge_diff:.2e}")
print(f"exact zeros anywhere on the ridge path: {int((path_ridge == 0).sum())}")
report(ridge_path_max_diff=ridge_diff, ridge_path_exact_zeros=(path_ridge == 0).sum())

# %%
fig, axes = plt.subplots(2, 2, figsize=(14, 10))
panels = [
    (axes[0, 0], ALPHAS_LASSO, path_lasso, sk_lasso, "Lasso (L1): l1_prox", "$\\alpha$ (scikit-learn's alpha)"),
    (axes[0, 1], ALPHAS_ENET, path_enet, sk_enet, f"Elastic net, l1_ratio = {L1_RATIO}: elastic_net_prox", "$\\alpha$"),
    (
        axes[1, 0],
        LAMS_RIDGE,
        path_ridge,
        sk_ridge,
        "Ridge (L2): coupled_weight_decay",
        "$\\lambda$ (Ridge alpha = $n\\lambda$)",
    ),
]
for ax, lams, ours, theirs, title, xlabel in panels:
    for j, name in enumerate(FEATURES):
        ax.plot(lams, ours[:, j], color=f"C{j}", lw=1.8, label=name)
        ax.plot(lams, theirs[:, j], "o", color="k", ms=2.2, alpha=0.6)
    ax.set(xscale="log", xlabel=xlabel, ylabel="coefficient (standardized data)", title=title, ylim=(-0.47, 0.5))
    ax.invert_xaxis()  # weak penalty (the least-squares end) on the right
    ax.axhline(0, color="gray", lw=0.8)
axes[0, 0].plot([], [], "o", color="k", ms=3, label="scikit-learn")
axes[0, 0].legend(ncol=2, loc="lower left", fontsize=8)
ax = axes[1, 1]
for path, sk_path, style, name in [
    (twin_lasso, sk_twin_lasso.T, "-", "lasso"),
    (twin_enet, sk_twin_enet.T, "--", f"elastic net ({L1_RATIO})"),
]:
    ax.plot(RELATIVE, path[:, 2], style, color="C2", lw=2, label=f"{name}: bmi")
    ax.plot(RELATIVE, path[:, 10], style, color="C9", lw=2, label=f"{name}: its twin")
    ax.plot(RELATIVE, sk_path[:, 2], "o", color="k", ms=2.2, alpha=0.6)
    ax.plot(RELATIVE, sk_path[:, 10], "o", color="k", ms=2.2, alpha=0.6)
ax.set(
    xscale="log",
    xlabel="$\\alpha / \\alpha_{max}$ (each path from its own start)",
    ylabel="coefficient",
    title="A twin of bmi (correlation 0.99): the lasso picks one, the elastic net shares",
)
ax.invert_xaxis()
ax.legend(fontsize=8)
fig.suptitle(
    "Coefficient paths on the diabetes data: jaxreg proximal gradient (lines) vs scikit-learn (dots); "
    "the penalty weakens to the right",
    y=1.0,
)
fig.tight_layout()
save_figure(fig, "04_coefficient_paths")

# %% [markdown]
# Four panels, three personalities:
#
# * **L1** switches coefficients on one at a time: bmi first, then s5, then bp, and so
#   on. Above the strength where a coefficient enters, it is *exactly* zero, and between
#   two such events the path is linear in $\alpha$. Near the least-squares end s1 and s2
#   (correlation 0.9) grow large with opposite signs, two big coefficients that mostly
#   cancel: the instability that correlated features cause without enough penalty.
# * **The elastic net** with `l1_ratio = 0.5` has the same zeros and nearly the same
#   order of entry; each coefficient enters at a larger $\alpha$ and is shrunk a little
#   more. Its difference shows with the twin (bottom right): the lasso gives all the
#   weight to bmi and keeps the twin at exactly zero (it enters only at the
#   least-squares end, with a tiny coefficient), while the elastic net splits the
#   weight between the two over most of its path, as it does for any group of
#   correlated features. Which of two near-copies the lasso keeps is an accident of the
#   noise; where the penalty fades, the elastic net too tends to the least-squares fit.
# * **L2** shrinks everything smoothly towards zero and zeroes nothing: at every
#   $\lambda$ all ten coefficients are nonzero. It is the choice when every feature
#   carries a little signal; L1 when you believe few do and want the model to say which;
#   the elastic net when they come in correlated groups.
#
# ## 2. Noise injection and dropout
#
# Penalties act on weights. The next regularizers act on the *signal* flowing through
# the network during training. We need a network that overfits: a multilayer perceptron
# with two hidden layers of 128 ReLU units, fitted to 30 noisy points of
# $y = \sin 3x + \varepsilon$, $\varepsilon \sim \mathcal N(0, 0.3^2)$. Three data sets:
#
# * **train**: the 30 points the network fits;
# * **validation**: 30 more noisy points, which we use to make decisions (early stopping);
# * **test**: the noise-free curve $\sin 3x$ on a grid, so the test MSE measures how far
#   the fitted function is from the truth.
#
# ### A training loop that JAX compiles whole
#
# A Flax NNX model is a Python object, but `nnx.split` takes it apart into a static
# *graph definition* and a pytree of arrays (parameters, optimizer moments, the random
# keys of the noise layers), and `nnx.merge` puts it back together. In between, the
# state is an ordinary pytree, so a whole training run can be one `jax.lax.scan` under
# `jax.jit`: no Python in the loop, one compilation per model. `train` below does that:
# it steps the optimizer (`nnx.Optimizer(model, tx, wrt=nnx.Param)`), switches the model
# to evaluation mode (`model.eval()`: no noise, no dropout) every `every` steps to record
# metrics, and can carry an early-stopping state along (section 3). We reuse it for
# every network in this notebook.


# %%
def train(model, tx, loss_fn, data, steps, evaluate, *, every=10, batch=None, stopper=None, seed=0):
    """Trains ``model`` in place; returns ``evaluate(model)`` every ``every`` steps (and the stopper's state).

    ``loss_fn(model, x, y)`` is the training loss; ``data = (x, y)``; ``batch`` draws
    minibatches of that size (with replacement), else every step is full-batch.
    """
    x, y = (jnp.asarray(a) for a in data)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    n_evals = steps // every
    rows = np.random.default_rng(seed).integers(0, len(x), (n_evals, every, batch or 0))

    def step(state, rows):
        model, optimizer = nnx.merge(graphdef, state)
        xb, yb = (x[rows], y[rows]) if batch else (x, y)
        optimizer.update(model, nnx.grad(loss_fn)(model, xb, yb))
        return nnx.state((model, optimizer)), None

    def chunk(carry, rows):
        state, stop = carry
        state, _ = jax.lax.scan(step, state, rows)
        model, _ = nnx.merge(graphdef, state)  # a copy: switching it to eval mode changes nothing in `state`
        model.eval()
        metrics = evaluate(model)
        if stopper is not None:
            stop = stopper.update(stop, metrics["val"], nnx.state(model, nnx.Param))
            metrics = {**metrics, "stopped": stop.should_stop}
        return (state, stop), metrics

    stop = stopper.init(nnx.state(model, nnx.Param)) if stopper is not None else None
    (state, stop), history = jax.jit(lambda carry, rows: jax.lax.scan(chunk, carry, rows))((state, stop), rows)
    nnx.update((model, optimizer), state)
    history = {k: np.asarray(v) for k, v in history.items()}
    return (history, stop) if stopper is not None else history


rng = np.random.default_rng(3)
N_TOY = 30
x_tr = rng.uniform(-1, 1, (N_TOY, 1)).astype(np.float32)
y_tr = (np.sin(3 * x_tr) + 0.3 * rng.standard_normal((N_TOY, 1))).astype(np.float32)
x_va = rng.uniform(-1, 1, (N_TOY, 1)).astype(np.float32)
y_va = (np.sin(3 * x_va) + 0.3 * rng.standard_normal((N_TOY, 1))).astype(np.float32)
x_te = np.linspace(-1, 1, 200, dtype=np.float32)[:, None]
y_te = np.sin(3 * x_te)


def mse_loss(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def toy_metrics(model):
    return {
        "train": mse_loss(model, x_tr, y_tr),
        "val": mse_loss(model, x_va, y_va),
        "test": mse_loss(model, x_te, y_te),
        "fit": model(x_te)[:, 0],
    }


STEPS_AXIS = np.arange(1, NET_STEPS // 10 + 1) * 10  # the step of each evaluation

# %% [markdown]
# ### The noise layers
#
# **Gaussian noise** adds $\varepsilon \sim \mathcal N(0, \sigma^2)$ to its input in
# training mode and passes it through unchanged in evaluation mode.
# `jaxreg.nn.GaussianNoise(sigma, rngs=...)` is the layer; `MLP(input_noise_std=)` puts
# one before the first layer (noise on the *inputs*, the simplest data augmentation)
# and `MLP(hidden_noise_std=)` one after every hidden activation. For small $\sigma$,
# training on noisy inputs is the same as adding a smoothness penalty (Bishop, 1995):
# to second order,
#
# $$\mathbb E_\varepsilon\big[(f(x + \varepsilon) - y)^2\big] \approx (f(x) - y)^2 +
# \sigma^2\Big(\|\nabla f(x)\|^2 + (f(x) - y)\,\nabla^2 f(x)\Big),$$
#
# and the $\|\nabla f\|^2$ term is a Tikhonov penalty on the slope of the fitted function:
# a wiggly interpolant that passes through every noisy point pays for its steep slopes.
#
# **Dropout** is multiplicative noise: each hidden unit is kept with probability
# $1 - p$ and zeroed otherwise, and the kept ones are scaled by $1/(1 - p)$ ("inverted"
# dropout, $y = x \cdot m / (1 - p)$ with $m \sim \text{Bernoulli}(1 - p)$), so that
# $\mathbb E[y] = x$ and evaluation needs no rescaling. No unit can count on any other
# being present, which discourages co-adapted features that only fit the training set.
# `MLP(dropout_rate=p)` uses `nnx.Dropout` after every hidden layer.

# %%
noise = jaxreg.nn.GaussianNoise(0.5, rngs=nnx.Rngs(noise=0))
dropout = nnx.Dropout(0.25, rngs=nnx.Rngs(dropout=0))
ones = jnp.ones(100_000)
noisy, dropped = noise(ones), dropout(ones)
print(f"GaussianNoise(0.5), train mode: mean {noisy.mean():.3f}, std {noisy.std():.3f}")
print(
    f"Dropout(0.25), train mode: {float((dropped == 0).mean()):.3f} zeroed, kept ones become "
    f"{float(dropped.max()):.4f} = 1 / 0.75, mean {dropped.mean():.3f}"
)
noise.eval()
dropout.eval()
print(f"eval mode: both are the identity: {bool(jnp.all(noise(ones) == 1))}, {bool(jnp.all(dropout(ones) == 1))}")

# %% [markdown]
# Now four networks with the same architecture, initialization, optimizer (Adam,
# learning rate $3\cdot 10^{-3}$, full batch) and number of steps: plain, noise on the
# inputs ($\sigma = 0.1$, a tenth of the input range's half-width), noise on the hidden
# units ($\sigma = 0.3$), and dropout ($p = 0.2$). The plain network also carries an
# early-stopping state, used in section 3 (it watches; it changes nothing here).

# %%
VARIANTS = {
    "plain": {},
    "input noise, $\\sigma$ = 0.1": {"input_noise_std": 0.1},
    "hidden noise, $\\sigma$ = 0.3": {"hidden_noise_std": 0.3},
    "dropout, p = 0.2": {"dropout_rate": 0.2},
}
PATIENCE = 20  # evaluations (of 10 steps each) without improvement before stopping
stopper = jaxreg.training.EarlyStopping(patience=PATIENCE)
toy_models, toy_history = {}, {}
for name, kwargs in VARIANTS.items():
    model = jaxreg.nn.MLP(1, [128, 128], 1, rngs=nnx.Rngs(0), **kwargs)
    extra = {"stopper": stopper} if name == "plain" else {}
    result = train(model, optax.adam(3e-3), mse_loss, (x_tr, y_tr), NET_STEPS, toy_metrics, **extra)
    if name == "plain":
        result, stop_state = result
    toy_models[name], toy_history[name] = model, result
    print(
        f"{name:28s} final train MSE {result['train'][-1]:.4f}   val MSE {result['val'][-1]:.4f}   "
        f"test MSE (distance to sin 3x) {result['test'][-1]:.4f}"
    )
final_test = {name: h["test"][-1] for name, h in toy_history.items()}
report(
    toy_train_mse_plain=toy_history["plain"]["train"][-1],
    toy_test_mse_plain=final_test["plain"],
    toy_test_mse_input_noise=final_test["input noise, $\\sigma$ = 0.1"],
    toy_test_mse_hidden_noise=final_test["hidden noise, $\\sigma$ = 0.3"],
    toy_test_mse_dropout=final_test["dropout, p = 0.2"],
)

# %%
fig, (ax_fit, ax_curve) = plt.subplots(1, 2, figsize=(15, 5))
ax_fit.plot(x_te[:, 0], y_te[:, 0], color="k", lw=2.5, alpha=0.35, label="truth: sin 3x")
ax_fit.plot(x_tr[:, 0], y_tr[:, 0], "o", color="k", ms=5, label="30 training points")
for i, (name, h) in enumerate(toy_history.items()):
    ax_fit.plot(x_te[:, 0], h["fit"][-1], color=f"C{i}", lw=1.6, label=f"{name} (test MSE {h['test'][-1]:.3f})")
ax_fit.set(xlabel="x", ylabel="y", title=f"Fitted functions after {NET_STEPS} Adam steps", ylim=(-1.9, 1.9))
ax_fit.legend(fontsize=8, loc="lower right")
for i, (name, h) in enumerate(toy_history.items()):
    ax_curve.plot(STEPS_AXIS, h["test"], color=f"C{i}", lw=1.5, label=name)
    ax_curve.plot(STEPS_AXIS, h["train"], color=f"C{i}", lw=1, ls=":")
ax_curve.plot([], [], color="k", lw=1.5, label="test MSE (solid)")
ax_curve.plot([], [], color="k", lw=1, ls=":", label="train MSE (dotted)")
ax_curve.axhline(0.09, color="gray", ls="--", lw=1, label="noise variance 0.09")
ax_curve.set(
    xscale="log",
    yscale="log",
    xlabel="training step",
    ylabel="MSE (evaluation mode: no noise, no dropout)",
    title="The plain network's train MSE falls far below the noise",
)
ax_curve.legend(fontsize=8, ncol=2, loc="lower left")
fig.tight_layout()
save_figure(fig, "04_noise_and_dropout")

# %% [markdown]
# The plain network drives its training error well below the noise variance: it has
# memorized the noise, and its curve bends to pass through individual points. The three
# kinds of noise keep the training error higher, near the noise level for input and
# hidden noise and in between for dropout (the network cannot fit values it never sees
# exactly twice), and all three end closer to the truth. The fitted curves show the
# Tikhonov reading of input noise: the noisy-input fit is among the smoothest. How much
# each helps depends on $\sigma$ and $p$, which are hyperparameters like any $\lambda$,
# to choose on validation data (notebook 07).
#
# ## 3. Early stopping
#
# The plain network's test error (right panel above) first falls, then rises as the
# network starts fitting noise. Early stopping exploits this: evaluate on validation
# data every so often, remember the best parameters, and stop after `patience`
# evaluations without improvement. It is a regularizer too: for a linear model trained
# by gradient descent from zero, stopping after $t$ steps with step size $\eta$ acts
# much like an L2 penalty with $\lambda \approx 1/(\eta t)$ (Bishop, 1995; Goodfellow et
# al., section 7.8).
#
# `jaxreg.training.EarlyStopping` is a pure state machine: `init(params)` and
# `update(state, score, params)` return a pytree of arrays (best score, best
# parameters, best step, `should_stop`). That is why `train` could carry it *inside* the
# compiled scan. Here the run went on to the end so that we can see what stopping
# avoided; in a real run you would break out of the loop (or use
# `jax.lax.while_loop` with `should_stop` in the condition) when it fires.

# %%
h = toy_history["plain"]
best_eval, stopped = int(stop_state.best_step), np.asarray(h["stopped"])
stop_eval = int(np.argmax(stopped)) if stopped.any() else len(stopped) - 1
best_step, stop_step = STEPS_AXIS[best_eval], STEPS_AXIS[stop_eval]
restored = toy_models["plain"]
test_end = float(h["test"][-1])
nnx.update(restored, stop_state.best_params)  # back to the best parameters
restored.eval()
test_best = float(mse_loss(restored, x_te, y_te))
print(
    f"best validation MSE {float(stop_state.best_score):.4f} at step {best_step}; patience ran out at step {stop_step}"
)
print(f"test MSE: restored best parameters {test_best:.4f}, after all {NET_STEPS} steps {test_end:.4f}")
print(f"stopping would have saved {1 - stop_step / NET_STEPS:.0%} of the steps")
report(
    early_stop_best_step=best_step,
    early_stop_stop_step=stop_step,
    early_stop_test_mse_best=test_best,
    early_stop_test_mse_end=test_end,
)

# %%
fig, ax = plt.subplots(figsize=(9, 5))
ax.plot(STEPS_AXIS, h["train"], color="C0", ls=":", label="train MSE")
ax.plot(STEPS_AXIS, h["val"], color="C1", label="validation MSE (what the stopper watches)")
ax.plot(STEPS_AXIS, h["test"], color="C2", label="test MSE (distance to sin 3x)")
ax.axvline(best_step, color="k", ls="--", lw=1)
ax.axvspan(stop_step, NET_STEPS, color="gray", alpha=0.15, label="steps early stopping skips")
ax.text(
    best_step * 1.08, 0.95, f"best: step {best_step}\n(parameters kept)", transform=ax.get_xaxis_transform(), va="top"
)
ax.text(
    stop_step * 1.08,
    0.72,
    f"patience ({PATIENCE} evaluations)\nran out: step {stop_step}",
    transform=ax.get_xaxis_transform(),
    va="top",
)
ax.set(
    xscale="log",
    yscale="log",
    xlabel="training step",
    ylabel="MSE",
    title="Early stopping on the plain network: jaxreg.training.EarlyStopping inside the compiled loop",
)
ax.legend(loc="lower left", fontsize=8)
save_figure(fig, "04_early_stopping")

# %% [markdown]
# ## 4. A multi-task trunk
#
# Multi-task learning trains one network on several related tasks: a shared **trunk**
# computes features, and each task has its own small **head** on top. The trunk gets
# gradients from every task, so it must learn features that serve them all; for a task
# with few labels, the other tasks act as a regularizer on the shared weights (Caruana,
# 1997).
#
# The setting where this pays most is a main task with few labels and auxiliary tasks
# with many. Our inputs are $x \in \mathbb R^{20}$, and every task depends on the same
# three hidden directions: $z = \tanh(A^\top x)$ with $A$ a $20 \times 3$ matrix, and
# task $t$ is $y_t = c_t^\top z + \varepsilon$. The *main* task has labels for 30
# inputs; four *auxiliary* tasks have labels for 1,000 (think of cheap proxy measurements
# next to an expensive one). `jaxreg.nn.MultiTaskMLP(in_features, trunk, tasks)` builds
# the trunk and one head per task; its `weighted_loss` sums the per-task losses with
# `task_weights`. The trunk is $20 \to 32 \to 4$ (ReLU): a narrow last layer, so that the
# tasks must share its four features. We compare two models:
#
# * the main task alone: the same architecture with only the main head, trained on the
#   main task's 30 labels;
# * the shared model: main head and four auxiliary heads on one trunk. We give the main
#   task the weight 0.2 in `task_weights`, so that its 30 labels do not pull the shared
#   features towards memorizing them: the auxiliary tasks shape the features, the main
#   head only has to read them. (With weight 1 the shared model also beats the lone one
#   on most draws of the data, but less reliably.)

# %%
D_MT, K_MT, N_AUX, N_MAIN = 20, 3, 1000, 30
MAIN_WEIGHT = 0.2  # the main task's weight in the shared model's loss (the auxiliary ones weigh 1)
AUX_TASKS = ["aux1", "aux2", "aux3", "aux4"]
rng = np.random.default_rng(0)
A_mt = np.linalg.qr(rng.standard_normal((D_MT, K_MT)))[0] * 1.5
C_mt = rng.standard_normal((K_MT, 1 + len(AUX_TASKS)))
C_mt *= 1.5 / np.linalg.norm(C_mt, axis=0)  # every task has the same signal strength


def multitask_data(n):
    x = rng.standard_normal((n, D_MT)).astype(np.float32)
    clean = (np.tanh(x @ A_mt) @ C_mt).astype(np.float32)
    return x, (clean + 0.3 * rng.standard_normal(clean.shape)).astype(np.float32), clean


x_mt, y_mt, _ = multitask_data(N_AUX)
x_mt_te, _, y_mt_te = multitask_data(2000)
main_rows = (np.arange(N_AUX) < N_MAIN).astype(np.float32)  # the main task is labelled on the first 30 only
print(f"main task: variance {y_mt_te[:, 0].var():.3f} on the test set, noise variance 0.09")


def multitask_loss(model, x, y):
    out = model(x)
    losses = {"main": jnp.sum(main_rows * (out["main"][:, 0] - y[:, 0]) ** 2) / N_MAIN}
    losses |= {t: jnp.mean((out[t][:, 0] - y[:, i + 1]) ** 2) for i, t in enumerate(AUX_TASKS) if t in out}
    return model.weighted_loss(losses)


def multitask_metrics(model):
    out = model(x_mt_te)
    aux = [jnp.mean((out[t][:, 0] - y_mt_te[:, i + 1]) ** 2) for i, t in enumerate(AUX_TASKS) if t in out]
    return {"main": jnp.mean((out["main"][:, 0] - y_mt_te[:, 0]) ** 2), "aux": sum(aux) / max(len(aux), 1)}


mt_history = {}
for name, tasks in [("main task alone", ["main"]), ("main + 4 auxiliary tasks", ["main", *AUX_TASKS])]:
    weights = {t: MAIN_WEIGHT if t == "main" and len(tasks) > 1 else 1.0 for t in tasks}
    model = jaxreg.nn.MultiTaskMLP(D_MT, [32, 4], dict.fromkeys(tasks, 1), task_weights=weights, rngs=nnx.Rngs(0))
    mt_history[name] = train(model, optax.adam(3e-3), multitask_loss, (x_mt, y_mt), NET_STEPS, multitask_metrics)
    print(f"{name:26s} main-task test MSE: final {mt_history[name]['main'][-1]:.4f}, ", end="")
    print(f"best along the run {mt_history[name]['main'].min():.4f}")
single, multi = mt_history["main task alone"], mt_history["main + 4 auxiliary tasks"]
report(
    multitask_main_test_mse_single=single["main"][-1],
    multitask_main_test_mse_shared=multi["main"][-1],
    multitask_aux_test_mse=multi["aux"][-1],
    multitask_main_variance=y_mt_te[:, 0].var(),
)

# %%
fig, ax = plt.subplots(figsize=(9, 5))
ax.plot(STEPS_AXIS, single["main"], color="C3", label="main task, trained alone on its 30 labels")
ax.plot(
    STEPS_AXIS,
    multi["main"],
    color="C0",
    label=f"main task (weight {MAIN_WEIGHT}), trunk shared with 4 auxiliary tasks",
)
ax.plot(STEPS_AXIS, multi["aux"], color="C0", ls=":", label=f"auxiliary tasks (mean; {N_AUX} labels each)")
ax.axhline(y_mt_te[:, 0].var(), color="gray", ls="--", lw=1, label="predicting the mean (variance of the main task)")
ax.set(
    xscale="log",
    yscale="log",
    xlabel="training step",
    ylabel="test MSE",
    title="A shared trunk (jaxreg.nn.MultiTaskMLP): auxiliary tasks regularize the main one",
)
ax.legend(fontsize=8)
save_figure(fig, "04_multitask")

# %% [markdown]
# Alone, the main task has 30 labels for a network with about 800 weights: it fits
# them and generalizes poorly, not much better than predicting the mean. With the
# auxiliary tasks, the trunk must produce four features from which *all five* targets
# can be read off linearly, and such features must encode the three shared directions;
# the main head then needs just five numbers from its 30 labels. The auxiliary tasks never see the main task's labels;
# they help by constraining the weights the tasks share. When the tasks are *not*
# related, the same constraint hurts, which is why `task_weights` exists: down-weight a
# task that competes with the one you care about.
#
# ## 5. Sparse representations: L1 on activations
#
# An L1 penalty on the *weights* makes the model sparse; an L1 penalty on the
# *activations* makes each example's representation sparse: few hidden units respond to
# any one input, while the weights can stay dense. With $a^{(l)}(x)$ the hidden
# activations of layer $l$,
#
# $$\mathcal L = \text{cross-entropy} + \lambda \sum_l \frac1B \sum_{b=1}^{B} \|a^{(l)}(x_b)\|_1 .$$
#
# The model has to expose its activations to the loss without changing its call
# signature. `jaxreg.nn.MLP(record_activations=True)` *sows* each hidden activation into
# an `nnx.Intermediate` collection, and `nnx.capture(model, nnx.Intermediate)(x)` returns
# the output together with those activations, ready for
# `jaxreg.penalties.activity_l1(acts, lam)`. Since the activations are functions of the
# weights, the penalty's gradient reaches every layer.
#
# We train a $64 \to 128 \to 128 \to 10$ ReLU network on scikit-learn's 8x8 digits
# (1,797 images, 10 classes; 1,200 to train, 597 to test), with Adam and minibatches of
# 64, for three strengths.

# %%
digits = load_digits()
X_dig = (digits.data / 16.0).astype(np.float32)
y_dig = digits.target.astype(np.int32)
perm = np.random.default_rng(0).permutation(len(y_dig))
tr, te = perm[:1200], perm[1200:]
x_dtr, y_dtr, x_dte, y_dte = X_dig[tr], y_dig[tr], jnp.asarray(X_dig[te]), jnp.asarray(y_dig[te])


def activity_loss(lam):
    def loss(model, x, y):
        logits, acts = nnx.capture(model, nnx.Intermediate)(x)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return ce + jaxreg.penalties.activity_l1(acts, lam)

    return loss


def digit_metrics(model):
    logits, acts = nnx.capture(model, nnx.Intermediate)(x_dte)
    hidden = jnp.concatenate(jax.tree.leaves(acts), axis=-1)  # (597, 256): both hidden layers
    return {"accuracy": jnp.mean(jnp.argmax(logits, -1) == y_dte), "zero_fraction": jnp.mean(hidden == 0)}


ACTIVITY_LAMS = pick([0.0, 1e-3, 1e-2], [0.0, 1e-2])
sparse_acts = {}
for lam in ACTIVITY_LAMS:
    model = jaxreg.nn.MLP(64, [128, 128], 10, record_activations=True, rngs=nnx.Rngs(0))
    hist = train(
        model, optax.adam(1e-3), activity_loss(lam), (x_dtr, y_dtr), DIGIT_STEPS, digit_metrics, every=50, batch=64
    )
    model.eval()
    _, acts = nnx.capture(model, nnx.Intermediate)(x_dte)
    hidden = np.concatenate([np.asarray(a) for a in jax.tree.leaves(acts)], axis=-1)
    active_per_example = (hidden > 0).sum(1).mean()
    dead = int(((hidden > 0).sum(0) == 0).sum())
    sparse_acts[lam] = {"hidden": hidden, "accuracy": float(hist["accuracy"][-1]), "active": active_per_example}
    print(
        f"lambda = {lam:<6g} test accuracy {hist['accuracy'][-1]:.3f}   exact-zero activations "
        f"{hist['zero_fraction'][-1]:.1%}   active units per image {active_per_example:.1f} of 256   "
        f"units never active {dead}"
    )
plain_sa, strong_sa = sparse_acts[0.0], sparse_acts[ACTIVITY_LAMS[-1]]
report(
    activity_accuracy_plain=plain_sa["accuracy"],
    activity_accuracy_strong=strong_sa["accuracy"],
    activity_active_units_plain=plain_sa["active"],
    activity_active_units_strong=strong_sa["active"],
    activity_zero_fraction_plain=np.mean(plain_sa["hidden"] == 0),
    activity_zero_fraction_strong=np.mean(strong_sa["hidden"] == 0),
)

# %%
fig, (ax_hist, ax_units) = plt.subplots(1, 2, figsize=(15, 4.8), width_ratios=[1.4, 1])
bins = np.linspace(0, max(s["hidden"].max() for s in sparse_acts.values()), 60)
for i, (lam, s) in enumerate(sparse_acts.items()):
    values = s["hidden"].ravel()
    label = f"$\\lambda$ = {lam:g}: {np.mean(values == 0):.0%} exactly 0, accuracy {s['accuracy']:.1%}"
    ax_hist.hist(values[values > 0], bins=bins, histtype="step", lw=1.8, color=f"C{i}", label=label)
ax_hist.set(
    yscale="log",
    xlabel="activation value (the exact zeros are not drawn)",
    ylabel="count (597 test images x 256 units)",
    title="Hidden activations on the test digits",
)
ax_hist.legend(fontsize=8)
for i, (lam, s) in enumerate(sparse_acts.items()):
    frac = np.sort((s["hidden"] > 0).mean(0))[::-1]
    ax_units.plot(frac, color=f"C{i}", lw=1.8, label=f"$\\lambda$ = {lam:g}: {s['active']:.0f} active per image")
ax_units.set(
    xlabel="hidden unit (sorted by how often it fires)",
    ylabel="fraction of test images it is active on",
    title="How often each of the 256 hidden units fires",
)
ax_units.legend(fontsize=8)
fig.suptitle("Sparse representations: jaxreg.penalties.activity_l1 on the sown activations of jaxreg.nn.MLP", y=1.02)
fig.tight_layout()
save_figure(fig, "04_sparse_activations")

# %% [markdown]
# ReLU already produces exact zeros: about a quarter of the plain network's activations
# on the test digits, and a few units never fire at all. The activity penalty pushes
# much further: with $\lambda = 10^{-2}$ three quarters or more of the activations are
# exactly zero, and an image activates a quarter of the 256 units or fewer (the longer
# the training, the sparser). In the right panel, the plain network has units that fire
# on almost every image; with the penalty even the busiest unit fires on about half of
# them or less, a code in which each unit responds to something more specific. The
# activations also get smaller (left panel): the penalty charges for their size, not
# only for their number. On this problem the test accuracy does not suffer at these
# strengths (differences of a few images out of 597 are noise); push $\lambda$ far
# enough and it would. Sparse codes are cheaper to store and compute with and easier
# to interpret. Note that it is the *activations* that are sparse here, not the
# weights: notebook 05 makes the weights sparse, by regularizing and then pruning.
#
# ## Summary
#
# | regularizer | where it acts | what we saw | jaxreg |
# |---|---|---|---|
# | L1 | weights, prox step | exact zeros; features enter one by one | `l1_prox` after `optax.sgd` |
# | elastic net | weights, prox step | zeros, shared across correlated features | `elastic_net_prox` |
# | L2 | weights, gradient | smooth shrinkage, no zeros | `coupled_weight_decay`, `penalties.l2` |
# | input / hidden noise | the signal, in training | smoother fits | `MLP(input_noise_std=, hidden_noise_std=)` |
# | dropout | hidden units, in training | less memorization | `MLP(dropout_rate=)` |
# | early stopping | the length of training | the best point of the run, less compute | `training.EarlyStopping` |
# | multi-task trunk | the shared weights | auxiliary labels help a task with few | `nn.MultiTaskMLP` |
# | activity L1 | activations | few units active per example | `penalties.activity_l1` |
#
# All of them are ordinary pieces of a JAX program: transforms in an optax chain, model
# arguments, a term in the loss, or a pytree carried through `lax.scan`. So they combine
# freely, compile into the training step, and `vmap` over their strengths.
