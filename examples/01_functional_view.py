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
# # 01 · The functional view of regularization
#
# Most deep-learning code tells training as a story about objects that change: a model
# holds its weights, an optimizer holds its moment estimates, and `optimizer.step()`
# mutates both. Regularization is then a set of extra lines placed at the right moments
# of the loop: clip the gradients *between* `backward()` and `step()`, clamp the weights
# *after* it, remember which parameter group has weight decay.
#
# JAX tells the same story as a function. One training step maps the current parameters
# $\theta_t$, the optimizer's memory $s_t$ and a batch to new parameters and new memory:
#
# $$(\theta_{t+1},\ s_{t+1}) = \mathrm{step}(\theta_t,\ s_t,\ \mathrm{batch}_t).$$
#
# Nothing is mutated, so everything that JAX can do to a function it can do to a
# training step: differentiate it (`jax.grad`), compile it (`jax.jit`), and run many
# copies of it side by side (`jax.vmap`). Regularizers become *transforms*, small pure
# functions that rewrite the update, and a regularized optimizer is their composition.
#
# In this notebook you will
#
# 1. see parameters as **pytrees**, nested containers of arrays;
# 2. write a **transform** by hand, as a pair of pure functions `(init, update)` with
#    explicit state;
# 3. build the chain **clip → Adam → decoupled weight decay → L1 prox → box** one piece
#    at a time, checking each piece against a few lines of plain `jax.numpy`;
# 4. train with `jax.grad` and `jax.jit`, then train **16 models with 16 L1 strengths
#    in one `jax.vmap`**;
# 5. write the same loop in imperative PyTorch and get the same numbers;
# 6. see why the functional form composes, and what that buys.

# %%
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
import torch
from _common import SMALL, pick, report, save_figure

import jaxreg

print(f"jax {jax.__version__}, optax {optax.__version__}, torch {torch.__version__}, small run: {SMALL}")

# %% [markdown]
# ## The problem: a sparse linear regression
#
# We use the smallest problem on which every piece of the chain has something to do:
# $y = X w^\star + b^\star + \varepsilon$ with $d = 20$ features of which only the first
# five matter ($w^\star_{6..20} = 0$). A good L1 regularizer should find those zeros;
# the box $[-c, c]$ with $c = 2$ keeps every parameter bounded; gradient clipping guards
# the first steps, where the gradient is largest. The loss is the mean squared error
#
# $$\mathcal{L}(\theta) = \frac{1}{n}\sum_{i=1}^n \big(x_i^\top w + b - y_i\big)^2,
# \qquad \theta = (w, b).$$

# %%
N, D, N_RELEVANT = 200, 20, 5
STEPS = pick(300, 100)  # training steps of the main run
SWEEP_STEPS = pick(400, 150)  # training steps of each run in the lambda sweep

# Hyperparameters of the chain
MAX_NORM = 2.0  # gradient clipping: largest global norm
LR = 0.05  # Adam's step size
WD = 0.05  # decoupled weight decay (AdamW's weight_decay)
LAM = 0.3  # L1 strength
BOX = 2.0  # parameter box [-BOX, BOX]

# The data are made with NumPy (no compilation needed); everything that trains is JAX.
rng = np.random.default_rng(0)
w_true = np.zeros((D, 1), np.float32)
w_true[:N_RELEVANT, 0] = [1.5, -1.2, 1.0, 0.7, -0.5]
b_true = 0.3
X = rng.standard_normal((N, D)).astype(np.float32)
y = (X @ w_true + b_true + 0.5 * rng.standard_normal((N, 1))).astype(np.float32)
X_val = rng.standard_normal((N, D)).astype(np.float32)
y_val = (X_val @ w_true + b_true).astype(np.float32)  # noise-free targets: the error is all model error
X, y = jnp.asarray(X), jnp.asarray(y)

# %% [markdown]
# ## 1. Parameters are pytrees
#
# A *pytree* is any nesting of lists, tuples, dicts (and registered classes such as
# Flax's `nnx.State`) whose leaves are arrays. JAX functions accept and return whole
# pytrees, and `jax.tree.map` applies a function leaf by leaf. Our model's parameters are
# a dict shaped like a Flax `Dense` layer's:

# %%
params0 = {"dense": {"kernel": jnp.zeros((D, 1)), "bias": jnp.zeros((1,))}}


def loss_fn(params, X, y):
    pred = X @ params["dense"]["kernel"] + params["dense"]["bias"]
    return jnp.mean((pred - y) ** 2)


print("structure:", jax.tree.structure(params0))
for path, leaf in jax.tree_util.tree_flatten_with_path(params0)[0]:
    print(f"  {jax.tree_util.keystr(path):22s} shape={leaf.shape}")

# %% [markdown]
# `jax.grad` differentiates with respect to the *whole* first argument, so the gradient
# is a pytree with exactly the parameters' structure. That is what makes optimizers
# generic: plain gradient descent is one `jax.tree.map`, whatever the model.

# %%
grads0 = jax.grad(loss_fn)(params0, X, y)
print("gradient shapes:", jax.tree.map(jnp.shape, grads0))
sgd_by_hand = jax.tree.map(lambda p, g: p - 0.1 * g, params0, grads0)
print(f"loss before {loss_fn(params0, X, y):.3f}, after one hand-written SGD step {loss_fn(sgd_by_hand, X, y):.3f}")

# %% [markdown]
# Regularizers often apply to some leaves only: weight decay and L1 are meant for the
# kernel, not for the bias (a bias only shifts the output; shrinking it buys no
# simplicity). In jaxreg a *mask* says where a transform acts: a pytree of bools with the
# parameters' structure, or a function that builds one. `jaxreg.masks.weights_only`
# selects the leaves with two or more dimensions:

# %%
kernel_only = jaxreg.masks.weights_only(params0)
print("weights_only:", kernel_only)

# %% [markdown]
# ## 2. A transform is a pair of pure functions
#
# An optax `GradientTransformation` is nothing more than a named pair of functions:
#
# * `init(params) -> state` builds the transform's memory (moment estimates, a step
#   counter, a logged norm, ...);
# * `update(updates, state, params) -> (new_updates, new_state)` rewrites the incoming
#   updates (at first, the gradients) and returns the new memory.
#
# Both are *pure*: their outputs depend only on their inputs, and they change nothing in
# place. The state is not hidden inside an object; it is handed in and handed back.
#
# Here is global-norm clipping written from scratch. With $\|g\|$ the Euclidean norm of
# *all* gradient entries together, every entry is scaled by
#
# $$g \leftarrow g\cdot\min\Big(1,\ \frac{M}{\|g\| + \epsilon}\Big),$$
#
# which keeps the gradient's direction and caps its length at $M$. We keep the pre-clip
# norm in the state, because it is the number worth logging (PyTorch's
# `clip_grad_norm_` returns it). $\epsilon = 10^{-6}$ is PyTorch's choice; we use it
# throughout so that the PyTorch loop at the end gives the same numbers.


# %%
class MyClipState(NamedTuple):
    norm: jax.Array  # the global norm of the last gradient, before clipping


def my_clip_by_global_norm(max_norm, eps=1e-6):
    def init(params):
        del params  # clipping needs no memory of the parameters
        return MyClipState(norm=jnp.zeros([]))

    def update(updates, state, params=None):
        norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(updates)))
        scale = jnp.minimum(1.0, max_norm / (norm + eps))
        return jax.tree.map(lambda g: g * scale, updates), MyClipState(norm)

    return optax.GradientTransformation(init, update)


mine = my_clip_by_global_norm(MAX_NORM)
theirs = jaxreg.clip_by_global_norm(MAX_NORM, eps=1e-6)
u_mine, s_mine = mine.update(grads0, mine.init(params0), params0)
u_theirs, s_theirs = theirs.update(grads0, theirs.init(params0), params0)
assert np.allclose(u_mine["dense"]["kernel"], u_theirs["dense"]["kernel"], rtol=1e-6, atol=1e-7)
print(f"pre-clip norm: mine {s_mine.norm:.4f}, jaxreg {s_theirs.norm:.4f}  (clipped to {MAX_NORM})")
print("jaxreg's state:", s_theirs)

# %% [markdown]
# Purity has a concrete meaning: calling `update` again with the *same* state gives the
# *same* answer, and the state we passed in is untouched. An optimizer step can be
# replayed, its state saved, copied or batched like any other pytree.

# %%
state = theirs.init(params0)
first, _ = theirs.update(grads0, state, params0)
again, _ = theirs.update(grads0, state, params0)
assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)))
print("same inputs, same outputs; the state we passed in still reads", state)

# %% [markdown]
# ## 3. The chain, one piece at a time
#
# `optax.chain(t1, t2, ...)` feeds the updates through `t1`, then `t2`, and so on, and
# keeps a tuple of their states. It is short enough to write ourselves, and writing it
# shows that there is nothing more to composition than passing values along:


# %%
def my_chain(*transforms):
    def init(params):
        return tuple(t.init(params) for t in transforms)

    def update(updates, state, params=None):
        new_state = []
        for t, s in zip(transforms, state):
            updates, s = t.update(updates, s, params)
            new_state.append(s)
        return updates, tuple(new_state)

    return optax.GradientTransformation(init, update)


# %% [markdown]
# The order of the pieces matters, and jaxreg sorts them into two spaces:
#
# * **gradient space**, *before* the optimizer: the pieces see raw gradients
#   (clipping, coupled L2);
# * **parameter space**, *after* the optimizer: the pieces see the tentative new
#   parameters $w = \theta + u$ and map them somewhere else (decoupled decay, proximal
#   steps, projections). They need `params`, and return an update $u'$ such that
#   `optax.apply_updates(params, u')` $= \mathrm{op}(\theta + u)$.
#
# To check each piece we feed our hand-written chain and the jaxreg chain the same
# sequence of probe inputs, three `(params, gradient)` pairs, and compare the updates at
# every call (the states carry over from call to call, so Adam's moments and bias
# correction are checked too). The probe parameters mix a few large entries (which the
# box must clip) with many small ones (which the L1 prox can set to zero), like a trained
# sparse model.


# %%
def probe(rng):
    big = rng.random((D, 1)) < 0.3
    kernel = np.where(big, 2.2 * rng.standard_normal((D, 1)), 0.03 * rng.standard_normal((D, 1)))
    params = {"dense": {"kernel": jnp.asarray(kernel, jnp.float32), "bias": jnp.full((1,), 0.5)}}
    return params, grad_fn(params, X, y)


grad_fn = jax.jit(jax.grad(loss_fn))
PROBES = [probe(np.random.default_rng(seed)) for seed in (1, 2, 3)]


def check(hand_pieces, jaxreg_pieces):
    """Runs both chains on the probes; asserts they agree; returns the largest difference."""
    hand, ref = my_chain(*hand_pieces), optax.chain(*jaxreg_pieces)

    @jax.jit  # compiled only to be quick: one program runs both chains over all the probes
    def run_both():
        s_hand, s_ref = hand.init(params0), ref.init(params0)
        pairs = []
        for params, grads in PROBES:
            u_hand, s_hand = hand.update(grads, s_hand, params)
            u_ref, s_ref = ref.update(grads, s_ref, params)
            pairs.append((u_hand, u_ref))
        return pairs

    worst = 0.0
    for u_hand, u_ref in run_both():
        for a, b in zip(jax.tree.leaves(u_hand), jax.tree.leaves(u_ref)):
            assert np.allclose(a, b, rtol=1e-5, atol=1e-6), (a, b)
            worst = max(worst, float(jnp.max(jnp.abs(a - b))))
    new_params = optax.apply_updates(PROBES[-1][0], u_ref)
    print(f"{len(jaxreg_pieces)} piece(s): max |hand - jaxreg| = {worst:.2e}")
    return worst, new_params


stage_diffs = {}
stage_diffs["clip"], _ = check([my_clip_by_global_norm(MAX_NORM)], [jaxreg.clip_by_global_norm(MAX_NORM, eps=1e-6)])

# %% [markdown]
# ### Piece 2: Adam
#
# Adam keeps exponential moving averages of the gradient and of its square, corrects
# their bias towards zero in the first steps, and steps along their ratio:
#
# $$m \leftarrow \beta_1 m + (1-\beta_1) g,\quad v \leftarrow \beta_2 v + (1-\beta_2) g^2,
# \quad u = -\eta\,\frac{m / (1-\beta_1^t)}{\sqrt{v / (1-\beta_2^t)} + \epsilon}.$$
#
# Its state is the triple $(m, v, t)$: the first piece of the chain with real memory.


# %%
def my_adam(lr, b1=0.9, b2=0.999, eps=1e-8):
    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return (zeros, zeros, 0)

    def update(updates, state, params=None):
        m, v, t = state
        t = t + 1
        m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, m, updates)
        v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g**2, v, updates)
        u = jax.tree.map(lambda m, v: -lr * (m / (1 - b1**t)) / (jnp.sqrt(v / (1 - b2**t)) + eps), m, v)
        return u, (m, v, t)

    return optax.GradientTransformation(init, update)


hand = [my_clip_by_global_norm(MAX_NORM), my_adam(LR)]
ours = [jaxreg.clip_by_global_norm(MAX_NORM, eps=1e-6), optax.adam(LR)]
stage_diffs["+ adam"], _ = check(hand, ours)

# %% [markdown]
# ### Piece 3: decoupled weight decay
#
# Weight decay pulls the weights towards zero. *Decoupled* decay (AdamW, Loshchilov &
# Hutter) does it after Adam, in parameter space, so that Adam's per-coordinate
# rescaling does not touch it: every selected weight loses the same fraction
# $\eta \cdot \mathrm{wd}$ of its value per step,
#
# $$u \leftarrow u - \eta\,\mathrm{wd}\,\theta \qquad(\text{kernel only}).$$
#
# Had we added $\mathrm{wd}\cdot\theta$ to the gradient *before* Adam instead ("coupled"
# L2, PyTorch's `Adam(weight_decay=...)`), Adam would divide it by $\sqrt{v}$, and weights
# with large gradients would be decayed less. Notebook 03 shows that for plain SGD the
# two coincide.


# %%
def my_decoupled_decay(wd, lr, mask):
    def init(params):
        return ()

    def update(updates, state, params):
        return jax.tree.map(lambda u, p, on: u - lr * wd * p if on else u, updates, params, mask), state

    return optax.GradientTransformation(init, update)


hand.append(my_decoupled_decay(WD, LR, kernel_only))
ours.append(jaxreg.decoupled_weight_decay(WD, learning_rate=LR, mask=jaxreg.masks.weights_only))
stage_diffs["+ decay"], _ = check(hand, ours)

# %% [markdown]
# ### Piece 4: the L1 proximal step
#
# The L1 penalty $\lambda\|w\|_1$ is not differentiable at zero, and its subgradient
# $\lambda\,\mathrm{sign}(w)$ makes weights oscillate around zero instead of landing on
# it. The *proximal* step handles it exactly: after the smooth step lands at
# $w = \theta + u$, it solves
#
# $$\mathrm{prox}(w) = \arg\min_x\ \eta\lambda\|x\|_1 + \tfrac12\|x - w\|^2
# = \mathrm{sign}(w)\max(|w| - \eta\lambda,\ 0),$$
#
# the *soft threshold*: every weight moves $\eta\lambda$ towards zero, and those within
# $\eta\lambda$ of zero become exactly `0.0`. As an update: $u \leftarrow \mathrm{prox}(\theta+u) - \theta$.


# %%
def my_l1_prox(lam, lr, mask):
    def shrink(w):
        return jnp.sign(w) * jnp.maximum(jnp.abs(w) - lr * lam, 0.0)

    def init(params):
        return ()

    def update(updates, state, params):
        return jax.tree.map(lambda u, p, on: shrink(p + u) - p if on else u, updates, params, mask), state

    return optax.GradientTransformation(init, update)


hand.append(my_l1_prox(LAM, LR, kernel_only))
ours.append(jaxreg.l1_prox(LAM, learning_rate=LR, mask=jaxreg.masks.weights_only))
stage_diffs["+ l1 prox"], probed = check(hand, ours)
print(f"kernel entries set exactly to zero on the last probe: {int(jnp.sum(probed['dense']['kernel'] == 0))} of {D}")

# %% [markdown]
# ### Piece 5: the box
#
# A hard constraint $\theta \in [-c, c]$ is kept by *projecting* after every step, the
# closest point of the box being a clip: $u \leftarrow \mathrm{clip}(\theta + u, -c, c) - \theta$.
# This is projected gradient descent; it is the same as PyTorch's
# `p.data.clamp_(-c, c)` after `optimizer.step()`. (jaxreg also makes sure the rounding
# of `apply_updates` cannot land a hair outside the box.)


# %%
def my_box(c):
    def init(params):
        return ()

    def update(updates, state, params):
        return jax.tree.map(lambda u, p: jnp.clip(p + u, -c, c) - p, updates, params), state

    return optax.GradientTransformation(init, update)


hand.append(my_box(BOX))
ours.append(jaxreg.project_box(-BOX, BOX))
stage_diffs["+ box"], probed = check(hand, ours)
largest = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(probed))
print(f"largest |parameter| after the full chain: {largest:.4f} (box {BOX})")
assert largest <= BOX

print("\nstage            max |hand - jaxreg|")
for name, diff in stage_diffs.items():
    print(f"  {name:14s} {diff:.2e}")
report(stage_max_abs_diff=max(stage_diffs.values()))

# %% [markdown]
# Five pieces, each a dozen lines of `jnp`, each matching the library. The full chain
# that we will train with is the list `ours`:
#
# ```python
# tx = optax.chain(
#     jaxreg.clip_by_global_norm(MAX_NORM, eps=1e-6),        # gradient space
#     optax.adam(LR),                                         # the optimizer
#     jaxreg.decoupled_weight_decay(WD, learning_rate=LR, mask=jaxreg.masks.weights_only),
#     jaxreg.l1_prox(LAM, learning_rate=LR, mask=jaxreg.masks.weights_only),
#     jaxreg.project_box(-BOX, BOX),                          # parameter space
# )
# ```
#
# ## 4. `jax.grad` and `jax.jit`: a training step
#
# A training step is now an ordinary function of pytrees: differentiate the loss, run
# the chain, apply the updates. `jax.jit` traces it once and compiles the whole of it
# (the gradient, all five pieces and the update) into one XLA program.

# %%
tx = optax.chain(*ours)


def train_step(params, opt_state, X, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, X, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


fast_step = jax.jit(train_step)
opt_state = tx.init(params0)
fast_step(params0, opt_state, X, y)[0]["dense"]["bias"].block_until_ready()  # compile once


TIMING_REPEATS = pick(20, 3)


def time_step(step, repeats=TIMING_REPEATS):
    jax.block_until_ready(step(params0, opt_state, X, y))  # warm-up: the first call compiles
    start = time.perf_counter()
    for _ in range(repeats):
        out = step(params0, opt_state, X, y)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats * 1e6


print(f"one step: {time_step(train_step):.0f} us op by op, {time_step(fast_step):.0f} us compiled")

# %%
params, opt_state, jax_losses, jax_path = params0, tx.init(params0), [], []
for _ in range(STEPS):
    params, opt_state, loss = fast_step(params, opt_state, X, y)
    jax_losses.append(float(loss))
    jax_path.append(jax.device_get(params))  # kept to compare with PyTorch step by step
jax_params = jax.device_get(params)
final_loss = float(loss_fn(params, X, y))
print(f"loss {jax_losses[0]:.3f} -> {final_loss:.4f} in {STEPS} steps;  last pre-clip norm {opt_state[0].norm:.4f}")
print("kernel:", np.round(jax_params["dense"]["kernel"][:, 0], 3))
print(
    f"exact zeros among the {D - N_RELEVANT} irrelevant weights: "
    f"{np.sum(jax_params['dense']['kernel'][N_RELEVANT:] == 0)}"
)
report(initial_loss=jax_losses[0], final_loss=final_loss)

# %% [markdown]
# The loss falls and the five relevant weights are found... but the fifteen irrelevant
# ones are small, not zero: an L1 prox is supposed to produce exact zeros, and it
# produced almost none. Keep that in mind; section 6 explains it. First, the same loop
# in PyTorch.
#
# ## 5. The same loop, imperatively, in PyTorch
#
# PyTorch spreads the same five pieces over the loop body, each at its place in time:
#
# | piece | jaxreg (a list entry) | PyTorch (a line in the loop) |
# |---|---|---|
# | clip | `clip_by_global_norm(M, eps=1e-6)` | `clip_grad_norm_(params, M)` between `backward()` and `step()` |
# | Adam + decoupled decay | `adam(lr)`, `decoupled_weight_decay(wd, lr, mask)` | `AdamW`, one param group per decay |
# | L1 prox | `l1_prox(lam, lr, mask)` | soft-threshold by hand under `torch.no_grad()` after `step()` |
# | box | `project_box(-c, c)` | `p.clamp_(-c, c)` under `torch.no_grad()` |
#
# AdamW applies its decay to every parameter of a group, so the bias goes into a group
# with `weight_decay=0`: that is the PyTorch spelling of `mask=weights_only`.

# %%
torch.manual_seed(0)
X_t, y_t = torch.tensor(np.asarray(X)), torch.tensor(np.asarray(y))
w = torch.tensor(np.asarray(params0["dense"]["kernel"]), requires_grad=True)
b = torch.tensor(np.asarray(params0["dense"]["bias"]), requires_grad=True)
optimizer = torch.optim.AdamW(
    [{"params": [w], "weight_decay": WD}, {"params": [b], "weight_decay": 0.0}], lr=LR, betas=(0.9, 0.999), eps=1e-8
)
torch_losses, param_diffs = [], []
for t in range(STEPS):
    optimizer.zero_grad()
    loss = torch.mean((X_t @ w + b - y_t) ** 2)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([w, b], MAX_NORM)
    optimizer.step()
    with torch.no_grad():
        w.copy_(torch.sign(w) * torch.clamp(w.abs() - LR * LAM, min=0.0))  # L1 prox, kernel only
        w.clamp_(-BOX, BOX)
        b.clamp_(-BOX, BOX)
    torch_losses.append(loss.item())
    ours = jax_path[t]["dense"]
    param_diffs.append(
        max(np.max(np.abs(w.detach().numpy() - ours["kernel"])), np.max(np.abs(b.detach().numpy() - ours["bias"])))
    )

first = min(100, STEPS)
torch_diff = max(param_diffs[:first])
loss_rel_diff = abs(torch_losses[-1] - jax_losses[-1]) / jax_losses[-1]
print(f"max |torch - jax| over the parameters of the first {first} steps: {torch_diff:.1e}")
print(
    f"after all {STEPS} steps: parameters {param_diffs[-1]:.1e}, final losses differ by {loss_rel_diff:.1e} (relative)"
)
assert torch_diff < 1e-4
report(torch_max_abs_diff_100_steps=torch_diff, torch_final_loss_rel_diff=loss_rel_diff)

# %%
fig, (ax_loss, ax_diff, ax_w) = plt.subplots(1, 3, figsize=(16, 3.8))
ax_loss.semilogy(jax_losses, lw=2.5, label="JAX + jaxreg (functional)")
ax_loss.semilogy(torch_losses, "--", lw=1.5, color="black", label="PyTorch (imperative)")
ax_loss.set(xlabel="step", ylabel="training MSE", title="Same chain, same losses")
ax_loss.legend()
ax_diff.semilogy(np.maximum(param_diffs, 1e-9), color="C3")
ax_diff.axhline(np.finfo(np.float32).eps, color="gray", ls=":", label="float32 epsilon")
ax_diff.set(xlabel="step", ylabel="max |PyTorch - JAX| over the parameters", title="Parameter difference, step by step")
ax_diff.legend()
idx = np.arange(D)
ax_w.bar(idx - 0.2, w_true[:, 0], width=0.4, color="lightgray", label="true $w^\\star$")
ax_w.bar(idx + 0.2, jax_params["dense"]["kernel"][:, 0], width=0.4, label="JAX + jaxreg")
ax_w.plot(idx + 0.2, w.detach().numpy()[:, 0], "k.", ms=6, label="PyTorch")
ax_w.axhline(0, color="black", lw=0.5)
ax_w.set(xlabel="feature", ylabel="weight", title=f"Learned kernel after {STEPS} steps (Adam chain)")
ax_w.set_xticks(idx[::2])
ax_w.legend()
save_figure(fig, "01_jax_vs_torch")

# %% [markdown]
# Both loops compute the same function, and they agree to float32 rounding: about
# $10^{-6}$, the size of a few float32 roundings of numbers near 1 (the two libraries
# sum in different orders). In a long run (the full-size run of this notebook has 300
# steps) you may see the difference jump by orders of magnitude in a weight or two:
# when a small weight lands within rounding distance of the soft threshold, one run
# sets it to zero and the other does not, and from there Adam's steps, whose size is
# about $\eta$ whatever the gradient, carry the two apart. The losses still agree. That
# is a property of the dynamics near the L1 kink, not of either library.
#
# The difference that matters is where the *structure* lives. In PyTorch, the regularizer's order is the
# order of lines in the loop, and the optimizer's state lives inside `optimizer`. In JAX
# the order is the order of a list, and the state is a value that `train_step` takes and
# returns. That difference is what the next section exploits.
#
# ## 6. `jax.vmap` over λ: sixteen trainings in one call
#
# Why did `LAM = 0.3` give no zeros? Rather than guess, sweep λ. Because the training
# run is a pure function of λ, we can write it once, with `jax.lax.scan` for the loop,
# and let `jax.vmap` batch it: the parameters, the optimizer states and the λ inside the
# prox all get a leading axis of 16, and XLA runs the sixteen trainings as one program.
# jaxreg accepts a traced λ anywhere a float goes, so nothing in the chain has to know.
#
# We run the sweep twice, swapping **one piece**: Adam for plain SGD. With SGD the chain
# is proximal gradient descent (ISTA), the classic lasso solver.

# %%
LAMS = np.logspace(-3, 0.5, 16).astype(np.float32)


def train(lam, optimizer):
    chain = optax.chain(
        jaxreg.clip_by_global_norm(MAX_NORM, eps=1e-6),
        optimizer,
        jaxreg.decoupled_weight_decay(WD, learning_rate=LR, mask=jaxreg.masks.weights_only),
        jaxreg.l1_prox(lam, learning_rate=LR, mask=jaxreg.masks.weights_only),
        jaxreg.project_box(-BOX, BOX),
    )

    def body(carry, _):
        params, state = carry
        grads = jax.grad(loss_fn)(params, X, y)
        updates, state = chain.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(body, (params0, chain.init(params0)), length=SWEEP_STEPS)
    return params


def sweep(optimizer):
    # device_get: the results come back as NumPy arrays, for cheap printing and plotting.
    return jax.device_get(jax.jit(jax.vmap(lambda lam: train(lam, optimizer)))(LAMS))


start = time.perf_counter()
swept = {"Adam": sweep(optax.adam(LR)), "SGD (ISTA)": sweep(optax.sgd(LR))}
print(f"2 x {len(LAMS)} trainings of {SWEEP_STEPS} steps: {time.perf_counter() - start:.1f} s, compilation included")

# A vmapped run is the same computation as a single one.
single = jax.device_get(jax.jit(lambda lam: train(lam, optax.sgd(LR)))(LAMS[7]))
vmap_diff = max(np.max(np.abs(a[7] - b)) for a, b in zip(jax.tree.leaves(swept["SGD (ISTA)"]), jax.tree.leaves(single)))
print(f"vmapped run 7 vs the same run alone: max difference {vmap_diff:.1e}")
assert vmap_diff < 1e-5


stats = {}
for name, ps in swept.items():
    kernels, biases = ps["dense"]["kernel"], ps["dense"]["bias"]  # (16, D, 1) and (16, 1)
    sp = np.mean(kernels == 0, axis=(1, 2))  # fraction of kernel entries that are exactly zero
    val = np.mean((X_val @ kernels + biases[:, None, :] - y_val) ** 2, axis=(1, 2))
    stats[name] = (sp, val)
    print(f"{name:11s} sparsity: {np.array2string(sp, precision=2, max_line_width=200)}")

# %%
true_sparsity = 1 - N_RELEVANT / D
fig, (ax_sp, ax_val) = plt.subplots(1, 2, figsize=(11, 3.8))
for (name, (sp, val)), marker in zip(stats.items(), "os"):
    ax_sp.semilogx(LAMS, sp, marker=marker, label=name)
    ax_val.loglog(LAMS, val, marker=marker, label=name)
ax_sp.axhline(true_sparsity, ls="--", color="gray", label=f"true sparsity ({true_sparsity:.2f})")
ax_sp.axvline(LAM, ls=":", color="C0", label=f"LAM = {LAM} of the main run")
ax_sp.set(
    xlabel="L1 strength $\\lambda$",
    ylabel="fraction of exact zeros in the kernel",
    title="Sparsity vs $\\lambda$ (one vmap per curve)",
)
ax_sp.legend(loc="upper left")
ax_val.set(
    xlabel="L1 strength $\\lambda$",
    ylabel="validation MSE (noise-free targets)",
    title="Validation error vs $\\lambda$",
)
ax_val.legend(loc="upper left")
save_figure(fig, "01_sparsity_vs_lambda")

sp_sgd, val_sgd = stats["SGD (ISTA)"]
kernels_sgd = swept["SGD (ISTA)"]["dense"]["kernel"][:, :, 0]
exact_support = np.all((kernels_sgd != 0) == (w_true[:, 0] != 0), axis=1)
best = int(np.argmin(val_sgd))
print(f"SGD: lowest validation MSE {val_sgd[best]:.4f} at lambda {LAMS[best]:.3g} (sparsity {sp_sgd[best]:.2f})")
print(
    f"SGD: the zeros are exactly the {D - N_RELEVANT} irrelevant features "
    f"for lambda in {np.round(LAMS[exact_support], 3)}"
)
report(
    vmap_vs_single_max_abs_diff=vmap_diff,
    sparsity_sgd_min=sp_sgd.min(),
    sparsity_sgd_max=sp_sgd.max(),
    sparsity_sgd_monotone=float(np.all(np.diff(sp_sgd) >= 0)),
    sgd_lambdas_with_exact_support=exact_support.sum(),
    sparsity_adam_below_lam_0_5=stats["Adam"][0][LAMS < 0.5].max(),
    sparsity_adam_max=stats["Adam"][0].max(),
    best_lambda_sgd=LAMS[best],
    best_val_mse_sgd=val_sgd[best],
)

# %% [markdown]
# The two curves tell different stories, and the reason is in the math of the pieces.
#
# * **SGD (ISTA).** The update is $-\eta g$ and the prox threshold is $\eta\lambda$, so a
#   weight stays at zero exactly when its gradient there is smaller than $\lambda$:
#   $|g_i| \le \lambda$. Irrelevant features have small gradients and drop out first,
#   relevant ones last, and sparsity climbs gradually with λ. On a plateau of λ the
#   zeros are exactly the fifteen irrelevant features: the lasso doing feature selection.
#   The validation error is lowest a little *before* that plateau, though: the same
#   threshold that zeroes the irrelevant weights also pulls every relevant weight
#   $\eta\lambda$ towards zero each step, a bias that costs accuracy. (Refitting the
#   selected features without the penalty, the "relaxed lasso", removes it.)
# * **Adam.** Adam divides by $\sqrt{v}$, so near a fixed point its step is about
#   $\eta\cdot\mathrm{sign}(g)$ *whatever the size of $g$*. The prox threshold $\eta\lambda$
#   competes with that normalized step, so a weight stays at zero only when $\lambda \gtrsim 1$,
#   for every feature at once. Below that almost no zeros (our `LAM = 0.3`), above it
#   all zeros: a switch, not a path.
#
# So "L1 after Adam" is well defined but it is not the lasso, and λ means something
# different. If you want sparsity from a proximal step, pair it with a non-adaptive
# optimizer (or put the L1 term in the loss and prune afterwards, notebook 05).
#
# ## 7. Why the functional form composes
#
# We never wrote a "regularized Adam". We wrote five independent functions with one
# shared signature, and `optax.chain` (eight lines, section 3) composed them. Several
# things follow from that one decision.
#
# * **Order is data.** `[clip, adam, decay, prox, box]` is a list you can read, print,
#   reorder and test piece by piece (section 3 did). In the PyTorch loop the same
#   order is a property of where lines sit relative to `backward()` and `step()`, and a
#   misplaced `clamp_` is a silent bug.
# * **State is a value.** Because every piece hands its memory back instead of keeping
#   it, the whole optimizer state is one pytree: saved with the parameters, inspected
#   (`opt_state[0].norm` is the log of the clip), and given a batch axis by `vmap`.
#   That is how sixteen optimizers with sixteen λ ran as one program; in PyTorch it is
#   sixteen optimizer objects and a Python loop.
# * **Transformations compose with transforms.** `jit` compiled gradient, chain and
#   update together; `vmap` batched a full training run; and because the run is
#   differentiable, `jax.grad` of the validation loss *with respect to λ* works too
#   (hypergradients, notebook 07).
# * **Swapping a piece is a one-word change**, as Adam → SGD was above, and the rest of
#   the chain does not notice. The flip side is that composition does not think for
#   you: the Adam/prox interaction came from two pieces that are each correct.
#
# The imperative form has its own strengths: you can stop at any line with a debugger,
# and in-place updates save memory. The two are not rivals: jaxreg reproduces PyTorch's
# numbers where the semantics agree, as section 5 showed, so you can move a training
# recipe between them without changing what it computes.
