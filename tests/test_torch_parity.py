"""PyTorch as the oracle: jaxreg chains reproduce ``torch.optim`` and ``torch.nn.utils``.

Every training check runs 100 full-batch steps on the same small MLP (8-16-16-3, two
tanh hidden layers with biases) from the same initial weights and data, once in
PyTorch and once as a jitted JAX step through an ``optax.chain``, and compares every
parameter at the end: max abs difference <= 1e-5, float32. The JAX parameters use
PyTorch's layout, ``{"fc1": {"weight": (out, in), "bias": (out,)}, ...}`` with
``y = x @ W.T + b``.

What holds (torch 2.13.0 CPU, jax 0.10.2, optax 0.2.8):

* Final parameters: within ~2e-7 (SGD) and ~5e-6 (Adam, AdamW) of PyTorch's.
* One clipping step on the *same* gradients: ``clip_by_global_norm(eps=1e-6)`` gives
  exactly torch's norm for ``norm_type=inf`` and agrees to ~1e-7 (p=2) or ~3e-7 (p=1,
  3; a different summation order) otherwise. Both compute the coefficient as
  ``reciprocal(norm + 1e-6) * max_norm`` (torch's ``Tensor.__rtruediv__``), so for
  ``inf`` the clipped gradients are bit for bit torch's; for p-norms they inherit the
  norm's few ulps.
* Along two independent 100-step runs the gradients themselves drift apart (float32
  rounding in two frameworks; Adam amplifies it), by up to ~3e-5 relative in the
  gradient norm. So the per-step norm/fraction logged in ``state[0]`` is compared with
  torch at 1e-6 on the very same gradients (those of the JAX run), and with the torch
  run's own ``clip_grad_norm_`` return value / clip fraction at the drift tolerance.

The activation is tanh, not ReLU: with ReLU a pre-activation that lands within
rounding noise of 0 (it happens within 100 Adam steps here) flips a unit in one
framework only, and the runs part by O(lr), which says nothing about jaxreg.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxreg

torch = pytest.importorskip("torch")

torch.set_num_threads(1)

STEPS = 100
ATOL = 1e-5  # max abs difference of every parameter after STEPS steps
NORM_RTOL = 1e-6  # state[0].norm vs clip_grad_norm_ on the same gradients
DRIFT_RTOL = 1e-4  # ... vs the independent torch run's clip_grad_norm_ (measured <= 3e-5)
DIMS = (8, 16, 16, 3)
NAMES = ("fc1", "fc2", "out")
N_SAMPLES = 64
TORCH_EPS = 1e-6  # the eps that torch.nn.utils.clip_grad_norm_ hard-codes
SGD_LR, ADAM_LR, MOMENTUM = 0.05, 3e-3, 0.9


# ----------------------------------------------------------------------------- set-up


def make_torch_model(seed: int = 0) -> torch.nn.ModuleDict:
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(a, b) for a, b in zip(DIMS[:-1], DIMS[1:])]
    return torch.nn.ModuleDict(dict(zip(NAMES, layers)))


def torch_to_jax(model: torch.nn.ModuleDict) -> dict:
    """The model's parameters as a jax params dict (torch's (out, in) layout)."""
    return {
        name: {
            "weight": jnp.asarray(model[name].weight.detach().numpy().copy()),
            "bias": jnp.asarray(model[name].bias.detach().numpy().copy()),
        }
        for name in NAMES
    }


def torch_forward(model: torch.nn.ModuleDict, x: torch.Tensor) -> torch.Tensor:
    h = x
    for i, name in enumerate(NAMES):
        h = model[name](h)
        if i < len(NAMES) - 1:
            h = torch.tanh(h)
    return h


def jax_forward(params: dict, x: jax.Array) -> jax.Array:
    h = x
    for i, name in enumerate(NAMES):
        h = h @ params[name]["weight"].T + params[name]["bias"]
        if i < len(NAMES) - 1:
            h = jnp.tanh(h)
    return h


def make_data(loss: str, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Fixed float32 inputs and targets (float targets for MSE, int labels for CE)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N_SAMPLES, DIMS[0])).astype(np.float32)
    if loss == "mse":
        y = rng.standard_normal((N_SAMPLES, DIMS[-1])).astype(np.float32)
    else:
        y = rng.integers(0, DIMS[-1], N_SAMPLES).astype(np.int32)
    return x, y


def torch_loss(loss: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if loss == "mse":
        return torch.nn.functional.mse_loss(out, y)
    return torch.nn.functional.cross_entropy(out, y)


def jax_loss(loss: str, params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    out = jax_forward(params, x)
    if loss == "mse":
        return jnp.mean((out - y) ** 2)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, y))


TorchOpt = Callable[[torch.nn.ModuleDict], tuple[Any, Any]]  # model -> (optimizer, scheduler or None)
TorchHook = Callable[[list], Any]  # params with .grad set -> logged value; runs between backward and step
JaxObserve = Callable[[Any, dict], Any]  # (chain state, pre-transform grads as numpy) -> logged value


def run_torch(
    model: torch.nn.ModuleDict,
    make_opt: TorchOpt,
    data: tuple[np.ndarray, np.ndarray],
    loss: str,
    hook: TorchHook | None = None,
) -> list:
    """Trains ``model`` in place for STEPS steps; returns what ``hook`` logged each step."""
    x = torch.from_numpy(data[0])
    y = torch.from_numpy(data[1].astype(np.int64) if loss == "ce" else data[1])
    opt, scheduler = make_opt(model)
    params = list(model.parameters())
    logged = []
    for _ in range(STEPS):
        opt.zero_grad()
        torch_loss(loss, torch_forward(model, x), y).backward()
        if hook is not None:
            logged.append(hook(params))
        opt.step()
        if scheduler is not None:
            scheduler.step()
    return logged


def run_jax(
    params: dict,
    tx: optax.GradientTransformation,
    data: tuple[np.ndarray, np.ndarray],
    loss: str,
    observe: JaxObserve | None = None,
) -> tuple[dict, list]:
    """STEPS jitted steps of ``tx``; returns the final params and what ``observe`` logged.

    Each step is :func:`jaxreg.apply_step`: ``tx.update`` + ``optax.apply_updates``, or
    the single pass when ``tx`` is a ``jaxreg.chain`` it can fuse.
    """
    x, y = jnp.asarray(data[0]), jnp.asarray(data[1])

    @jax.jit
    def step(params, state):
        grads = jax.grad(lambda p: jax_loss(loss, p, x, y))(params)
        return *jaxreg.apply_step(tx, grads, state, params), grads  # = update + apply_updates unless fused

    state = tx.init(params)
    logged = []
    for _ in range(STEPS):
        params, state, grads = step(params, state)
        if observe is not None:
            logged.append(observe(state, jax.tree.map(np.array, grads)))
    return params, logged


def max_param_diff(model: torch.nn.ModuleDict, params: dict) -> float:
    ref = torch_to_jax(model)
    diffs = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), ref, params)
    return max(jax.tree.leaves(diffs))


def run_pair(
    make_opt: TorchOpt,
    tx: optax.GradientTransformation,
    loss: str = "mse",
    hook: TorchHook | None = None,
    observe: JaxObserve | None = None,
    differs_from: optax.GradientTransformation | None = None,
) -> tuple[list, list]:
    """Trains the same model both ways and asserts every parameter within ATOL.

    ``differs_from`` is the chain without the piece under test: its run must end far
    from PyTorch's, so that the parity is not vacuous (the piece really matters).
    Returns the torch and jax logs.
    """
    model = make_torch_model()
    init = torch_to_jax(model)
    data = make_data(loss)
    torch_log = run_torch(model, make_opt, data, loss, hook)
    params, jax_log = run_jax(init, tx, data, loss, observe)
    assert max_param_diff(make_torch_model(), params) > 1e-2, "the run should move the parameters"
    diff = max_param_diff(model, params)
    assert diff <= ATOL, f"max abs parameter difference after {STEPS} steps: {diff:.3g}"
    if differs_from is not None:
        other, _ = run_jax(init, differs_from, data, loss)
        assert max_param_diff(model, other) > 100 * ATOL, "the piece under test should change the result"
    return torch_log, jax_log


def weight_bias_groups(model: torch.nn.ModuleDict, wd: float) -> list[dict]:
    """torch param groups: weights decayed with ``wd``, biases not decayed."""
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return [{"params": weights, "weight_decay": wd}, {"params": biases, "weight_decay": 0.0}]


def adam(learning_rate) -> optax.GradientTransformation:
    """``optax.adam``, traced under standard dtype promotion.

    optax's bias correction computes ``b1 ** count`` (float ** int32), which the strict
    promotion set in conftest rejects; that is optax's code, not jaxreg's. Only Adam's
    own update is traced under "standard", so the jaxreg transforms around it in a
    chain are still traced (and checked) under strict promotion.
    """
    inner = optax.adam(learning_rate)

    def update_fn(updates, state, params=None):
        with jax.numpy_dtype_promotion("standard"):
            return inner.update(updates, state, params)

    return optax.GradientTransformation(inner.init, update_fn)


def torch_opt(cls, **kwargs) -> TorchOpt:
    return lambda model: (cls(model.parameters(), **kwargs), None)


def plain_opt(name: str) -> tuple[TorchOpt, optax.GradientTransformation]:
    """The same plain optimizer in both frameworks: SGD with momentum, or Adam."""
    if name == "sgd":
        return torch_opt(torch.optim.SGD, lr=SGD_LR, momentum=MOMENTUM), optax.sgd(SGD_LR, momentum=MOMENTUM)
    return torch_opt(torch.optim.Adam, lr=ADAM_LR), adam(ADAM_LR)


# ------------------------------------------------------- 1-3: optimizers and weight decay


@pytest.mark.parametrize("fused", [False, True], ids=["optax.sgd", "jaxreg.sgd, fused"])
@pytest.mark.parametrize("nesterov", [False, True], ids=["heavy-ball", "nesterov"])
@pytest.mark.parametrize("wd", [0.0, 0.05], ids=["wd0", "wd0.05"])
def test_sgd_coupled_weight_decay(wd, nesterov, fused):
    sgd = (jaxreg.sgd if fused else optax.sgd)(SGD_LR, momentum=MOMENTUM, nesterov=nesterov)
    tx = (jaxreg.chain if fused else optax.chain)(jaxreg.coupled_weight_decay(wd), sgd)
    params = torch_to_jax(make_torch_model())
    assert (jaxreg.fused.fast_path(tx, params, params) is None) == (fused and jaxreg.fused._native.available())
    run_pair(
        torch_opt(torch.optim.SGD, lr=SGD_LR, momentum=MOMENTUM, nesterov=nesterov, weight_decay=wd),
        tx,
        differs_from=sgd if wd else None,
    )


@pytest.mark.parametrize("wd", [0.0, 0.1], ids=["wd0", "wd0.1"])
def test_adam_coupled_weight_decay(wd):
    run_pair(
        torch_opt(torch.optim.Adam, lr=ADAM_LR, weight_decay=wd),
        optax.chain(jaxreg.coupled_weight_decay(wd), adam(ADAM_LR)),
        # Coupled decay inside Adam is not AdamW: the decoupled chain must not match.
        differs_from=optax.chain(adam(ADAM_LR), jaxreg.decoupled_weight_decay(wd, learning_rate=ADAM_LR))
        if wd
        else None,
    )


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_adamw_decoupled_weight_decay(loss):
    wd = 0.5  # large, so that the decay really shapes the trajectory
    run_pair(
        torch_opt(torch.optim.AdamW, lr=ADAM_LR, weight_decay=wd),
        optax.chain(adam(ADAM_LR), jaxreg.decoupled_weight_decay(wd, learning_rate=ADAM_LR)),
        loss=loss,
        differs_from=optax.chain(jaxreg.coupled_weight_decay(wd), adam(ADAM_LR)),
    )


def test_adamw_decoupled_weight_decay_with_lr_schedule():
    wd, gamma = 0.5, 0.97  # the lr falls to ~5% of ADAM_LR over the run

    def make_opt(model):
        opt = torch.optim.AdamW(model.parameters(), lr=ADAM_LR, weight_decay=wd)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda t: gamma**t)

    schedule = optax.exponential_decay(ADAM_LR, transition_steps=1, decay_rate=gamma)
    run_pair(
        make_opt,
        optax.chain(adam(schedule), jaxreg.decoupled_weight_decay(wd, learning_rate=schedule)),
        # Decay with the constant peak lr instead of the schedule must not match.
        differs_from=optax.chain(adam(schedule), jaxreg.decoupled_weight_decay(wd, learning_rate=ADAM_LR)),
    )


# ------------------------------------------------------------- 4-5: gradient clipping


def torch_clip_step(grads: dict, clip: Callable[[list], Any]) -> tuple[dict, Any]:
    """Runs a torch.nn.utils clip function on parameters whose .grad are ``grads``."""
    leaves, treedef = jax.tree.flatten(grads)
    params = []
    for g in leaves:
        p = torch.zeros(g.shape, requires_grad=True)
        p.grad = torch.from_numpy(np.array(g, np.float32))
        params.append(p)
    returned = clip(params)
    return treedef.unflatten([p.grad.numpy() for p in params]), returned


def clipped_fraction_torch(grads: list, clip_value: float) -> float:
    """Share of gradient entries with |g| > clip_value, counted by torch."""
    hit = sum(int((g.abs() > clip_value).sum()) for g in grads)
    return hit / sum(g.numel() for g in grads)


@pytest.mark.parametrize("norm_type", [2.0, math.inf], ids=["l2", "linf"])
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_clip_by_global_norm_before_optimizer(opt, norm_type):
    # Below the gradient norm along the whole run (l2: 0.1 to 0.5, inf: 0.02 to 0.23).
    max_norm = {2.0: 0.08, math.inf: 0.015}[norm_type]
    torch_make, jax_opt = plain_opt(opt)

    def hook(params):
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type))

    def observe(state, grads):
        _, same_grads_norm = torch_clip_step(grads, lambda ps: torch.nn.utils.clip_grad_norm_(ps, max_norm, norm_type))
        return float(state[0].norm), float(same_grads_norm)

    torch_norms, logged = run_pair(
        torch_make,
        optax.chain(jaxreg.clip_by_global_norm(max_norm, norm_type, eps=TORCH_EPS), jax_opt),
        hook=hook,
        observe=observe,
        differs_from=jax_opt,
    )
    jax_norms, same_grads_norms = np.asarray(logged).T
    assert np.mean(np.asarray(torch_norms) > max_norm) >= 0.8, "clipping should trigger on most steps"
    # Every step: state[0].norm is the norm clip_grad_norm_ returns for these gradients...
    np.testing.assert_allclose(jax_norms, same_grads_norms, rtol=NORM_RTOL)
    # ... and follows the torch run's returned norms up to the runs' gradient drift.
    np.testing.assert_allclose(jax_norms, torch_norms, rtol=DRIFT_RTOL)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_clip_by_value_before_optimizer(opt):
    clip_value = 0.003  # near the median |g| along the run: clips about half the entries
    torch_make, jax_opt = plain_opt(opt)
    total = sum(a * b + b for a, b in zip(DIMS[:-1], DIMS[1:]))

    def hook(params):
        fraction = clipped_fraction_torch([p.grad for p in params], clip_value)
        torch.nn.utils.clip_grad_value_(params, clip_value)
        return fraction

    def observe(state, grads):
        same_grads = [torch.from_numpy(g) for g in jax.tree.leaves(grads)]
        return float(state[0].clipped_fraction), clipped_fraction_torch(same_grads, clip_value)

    torch_fractions, logged = run_pair(
        torch_make,
        optax.chain(jaxreg.clip(clip_value), jax_opt),
        hook=hook,
        observe=observe,
        differs_from=jax_opt,
    )
    jax_fractions, same_grads_fractions = np.asarray(logged).T
    assert 0.2 < np.mean(torch_fractions) < 0.8, "clip_value should clip some entries but not all"
    # Every step: torch's count on the same gradients (jaxreg's is a float32 quotient)...
    np.testing.assert_allclose(jax_fractions, same_grads_fractions, rtol=2e-7)
    # ... and within one entry of the torch run's own count: an entry within rounding
    # drift of clip_value can land on the other side (it happens on ~2 of 100 steps).
    np.testing.assert_allclose(jax_fractions, torch_fractions, rtol=0, atol=1.01 / total)


# ------------------------------------------------------------------- 6: masked decay


def test_adamw_decay_on_weights_only():
    wd = 0.5

    def make_opt(model):
        return torch.optim.AdamW(weight_bias_groups(model, wd), lr=ADAM_LR), None

    def chain(mask):
        return optax.chain(adam(ADAM_LR), jaxreg.decoupled_weight_decay(wd, learning_rate=ADAM_LR, mask=mask))

    run_pair(make_opt, chain(jaxreg.masks.weights_only), differs_from=chain(None))


def test_sgd_coupled_decay_by_path():
    wd = 0.2

    def make_opt(model):
        return torch.optim.SGD(weight_bias_groups(model, wd), lr=SGD_LR, momentum=MOMENTUM), None

    def chain(mask):
        return optax.chain(jaxreg.coupled_weight_decay(wd, mask=mask), optax.sgd(SGD_LR, momentum=MOMENTUM))

    run_pair(make_opt, chain(jaxreg.masks.by_path("kernel|weight")), differs_from=chain(None))


def test_masks_select_what_the_param_groups_do():
    params = torch_to_jax(make_torch_model())
    want = {name: {"weight": True, "bias": False} for name in NAMES}
    assert jaxreg.masks.weights_only(params) == want
    assert jaxreg.masks.by_path("kernel|weight")(params) == want


# --------------------------------------------------- 7-8: one clipping step, edge cases


def random_grads(seed: int = 3, scale: float = 1.0) -> dict:
    """A gradient tree with the model's shapes (torch layout), float32 numpy."""
    rng = np.random.default_rng(seed)
    shapes = {name: {"weight": (b, a), "bias": (b,)} for name, a, b in zip(NAMES, DIMS[:-1], DIMS[1:])}
    return jax.tree.map(
        lambda s: (scale * rng.standard_normal(s)).astype(np.float32), shapes, is_leaf=lambda s: isinstance(s, tuple)
    )


@functools.cache
def _jitted(make: Callable, *args: Any, **kwargs: Any) -> tuple[Callable, Callable]:
    """``make(*args, **kwargs)``'s init and jitted update, compiled once per configuration."""
    tx = make(*args, **kwargs)
    return tx.init, jax.jit(tx.update)


def jax_clip_step(grads: dict, make: Callable, *args: Any, **kwargs: Any) -> tuple[dict, Any]:
    """One jitted update of the transform ``make(*args, **kwargs)`` on ``grads``."""
    init, update = _jitted(make, *args, **kwargs)
    g = jax.tree.map(jnp.asarray, grads)
    updates, state = update(g, init(g))
    return jax.tree.map(np.asarray, updates), state


NORM_TYPES = [1.0, 2.0, 3.0, math.inf]
# How close clip_by_global_norm's norm is to clip_grad_norm_'s on the same gradients:
# inf needs no arithmetic (exact); p=2 sums squares in another order than torch's norm
# of per-tensor norms; p=1 and p=3 likewise, with a pow on top (measured <= 3.5e-7).
ONE_STEP_NORM_RTOL = {1.0: 1e-6, 2.0: 2.5e-7, 3.0: 1e-6, math.inf: 0.0}


@pytest.mark.parametrize("seed, scale", [(0, 1e-3), (1, 1.0), (2, 30.0)])
@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=lambda p: f"p{p}")
def test_one_step_clip_by_global_norm_matches_torch(norm_type, seed, scale):
    grads = random_grads(seed, scale)
    max_norm = 0.5 * scale
    want, want_norm = torch_clip_step(grads, lambda ps: torch.nn.utils.clip_grad_norm_(ps, max_norm, norm_type))
    got, state = jax_clip_step(grads, jaxreg.clip_by_global_norm, max_norm, norm_type, eps=TORCH_EPS)
    assert float(want_norm) > max_norm  # it clips
    np.testing.assert_allclose(float(state.norm), float(want_norm), rtol=ONE_STEP_NORM_RTOL[norm_type], atol=0)
    # The coefficient is computed torch's way, so an exact norm gives exact gradients;
    # otherwise the norm's rounding carries over (<= 6 ulps, ~4e-7).
    chex.assert_trees_all_close(got, want, rtol=0.0 if norm_type == math.inf else 1e-6, atol=0.0)


@pytest.mark.parametrize("seed", range(3))
def test_one_step_clip_by_global_norm_eps0_matches_optax(seed):
    grads = random_grads(seed)
    got, state = jax_clip_step(grads, jaxreg.clip_by_global_norm, 0.5, eps=0.0)
    want, _ = jax_clip_step(grads, optax.clip_by_global_norm, 0.5)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=0.0)  # measured: <= 1 ulp
    np.testing.assert_allclose(float(state.norm), float(optax.tree.norm(jax.tree.map(jnp.asarray, grads))), rtol=1e-6)


@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=lambda p: f"p{p}")
@pytest.mark.parametrize("eps", [0.0, TORCH_EPS], ids=["eps0", "eps1e-6"])
def test_zero_gradients_give_exact_zero_updates(eps, norm_type):
    grads = jax.tree.map(np.zeros_like, random_grads())
    got, state = jax_clip_step(grads, jaxreg.clip_by_global_norm, 0.5, norm_type, eps=eps)
    assert float(state.norm) == 0.0
    for leaf in jax.tree.leaves(got):
        assert not np.any(np.isnan(leaf))
        np.testing.assert_array_equal(leaf, np.zeros_like(leaf))
    if eps == TORCH_EPS:  # and so does torch
        want, _ = torch_clip_step(grads, lambda ps: torch.nn.utils.clip_grad_norm_(ps, 0.5, norm_type))
        jax.tree.map(np.testing.assert_array_equal, got, want)


def with_entries(grads: dict, value: float) -> dict:
    """``grads`` with two entries (in two different leaves) set to ``value``."""
    grads = jax.tree.map(np.copy, grads)
    grads["fc2"]["weight"][1, 2] = value
    grads["out"]["bias"][0] = value
    return grads


NON_FINITE = pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])


@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=lambda p: f"p{p}")
@NON_FINITE
def test_non_finite_through_clip_by_global_norm_matches_torch(bad, norm_type):
    grads = with_entries(random_grads(), bad)
    want, want_norm = torch_clip_step(
        grads, lambda ps: torch.nn.utils.clip_grad_norm_(ps, 0.5, norm_type, error_if_nonfinite=False)
    )
    got, state = jax_clip_step(grads, jaxreg.clip_by_global_norm, 0.5, norm_type, eps=TORCH_EPS)
    np.testing.assert_array_equal(float(state.norm), float(want_norm))  # inf, or NaN for a NaN entry
    jax.tree.map(np.testing.assert_array_equal, got, want)  # same values, NaN where torch has NaN
    leaves = np.concatenate([x.ravel() for x in jax.tree.leaves(got)])
    if math.isnan(bad):  # NaN norm: everything NaN
        assert np.all(np.isnan(leaves))
    else:  # inf norm: finite entries scaled to 0, the infinite ones to NaN (0 * inf)
        assert np.sum(np.isnan(leaves)) == 2 and np.all(leaves[~np.isnan(leaves)] == 0)


@NON_FINITE
def test_non_finite_through_clip_matches_clip_grad_value(bad):
    clip_value = 0.3
    grads = with_entries(random_grads(), bad)
    want, _ = torch_clip_step(grads, lambda ps: torch.nn.utils.clip_grad_value_(ps, clip_value))
    got, state = jax_clip_step(grads, jaxreg.clip, clip_value)
    jax.tree.map(np.testing.assert_array_equal, got, want)  # NaN stays NaN, +-inf -> +-clip_value
    assert np.isnan(got["fc2"]["weight"][1, 2]) == math.isnan(bad)
    same_grads = [torch.from_numpy(g) for g in jax.tree.leaves(grads)]  # NaN > c is False: not counted
    np.testing.assert_allclose(float(state.clipped_fraction), clipped_fraction_torch(same_grads, clip_value), rtol=2e-7)
