"""jaxreg.penalties at their kinks: PyTorch's derivatives at 0 (abs and norms), under jit."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

import jaxreg
from jaxreg import penalties

RNG = np.random.default_rng(0)
X = RNG.standard_normal((16, 5)).astype(np.float32)
Y = RNG.standard_normal((16, 3)).astype(np.float32)


def fresh_mlp_params():
    """A fresh jaxreg.nn.MLP(5, [8], 3) as {k0, b0, k1, b1}: its biases start at exactly zero."""
    model = jaxreg.nn.MLP(5, [8], 3, rngs=nnx.Rngs(0))
    params = {
        "k0": model.layers[0].kernel[...],
        "b0": model.layers[0].bias[...],
        "k1": model.head.kernel[...],
        "b1": model.head.bias[...],
    }
    np.testing.assert_allclose(forward(params), model(X), rtol=1e-6)
    assert not np.any(params["b0"]) and not np.any(params["b1"])
    return params


def forward(p):
    return jax.nn.relu(X @ p["k0"] + p["b0"]) @ p["k1"] + p["b1"]


def data_loss(p):
    return jnp.mean((forward(p) - Y) ** 2)


def torch_twin(params):
    t = {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in params.items()}
    out = torch.relu(torch.from_numpy(X) @ t["k0"] + t["b0"]) @ t["k1"] + t["b1"]
    return t, torch.mean((out - torch.from_numpy(Y)) ** 2)


def torch_group_lasso(t, axis):
    # The groups are the slices along axis: one row per group, a 2-norm per row.
    return sum(
        torch.linalg.vector_norm(torch.movedim(w, axis, 0).reshape(w.shape[axis], -1), dim=1).sum() for w in t.values()
    )


PENALTIES = {
    "l1": (lambda p: penalties.l1(p, 0.1), lambda t: 0.1 * sum(w.abs().sum() for w in t.values())),
    "elastic_net": (
        lambda p: penalties.elastic_net(p, 0.1, 0.05),
        lambda t: sum(0.1 * w.abs().sum() + 0.025 * (w**2).sum() for w in t.values()),
    ),
    "group_lasso": (lambda p: penalties.group_lasso(p, 0.1), lambda t: 0.1 * torch_group_lasso(t, -1)),
    "group_lasso axis 0": (
        lambda p: penalties.group_lasso(p, 0.1, axis=0),
        lambda t: 0.1 * torch_group_lasso(t, 0),
    ),
}


@pytest.mark.parametrize("name", sorted(PENALTIES))
def test_gradient_on_a_fresh_mlp_with_zero_biases_is_torchs(name):
    penalty, torch_penalty = PENALTIES[name]
    params = fresh_mlp_params()
    grads = jax.jit(jax.grad(lambda p: data_loss(p) + penalty(p)))(params)
    t, loss = torch_twin(params)
    (loss + torch_penalty(t)).backward()
    for key, g in grads.items():
        assert np.all(np.isfinite(g)), key
        np.testing.assert_allclose(g, t[key].grad.numpy(), rtol=1e-5, atol=1e-7, err_msg=key)


def test_norm_penalties_have_gradient_zero_at_an_all_zero_group_and_keep_nan():
    w = {"kernel": jnp.asarray([[0.0, 0.0], [3.0, 4.0]]), "bias": jnp.zeros(2)}
    assert float(penalties.group_lasso(w, 2.0, axis=0)) == pytest.approx(10.0)
    grad = jax.jit(jax.grad(lambda p: penalties.group_lasso(p, 2.0, axis=0)))(w)
    np.testing.assert_allclose(grad["kernel"], [[0.0, 0.0], [1.2, 1.6]], rtol=1e-6)
    np.testing.assert_array_equal(grad["bias"], [0.0, 0.0])
    assert np.isnan(float(penalties.group_lasso({"w": jnp.asarray([[np.nan, 0.0]])})))
    for penalty in (penalties.l1, lambda p: penalties.elastic_net(p, 1.0, 1.0), penalties.activity_l1):
        np.testing.assert_array_equal(jax.jit(jax.grad(penalty))({"a": jnp.zeros((2, 3))})["a"], 0.0)


def test_an_sgd_step_on_an_l1_penalized_loss_is_torchs():
    # PyTorch's abs has subgradient 0 at 0: the penalty alone leaves a zero weight at 0.
    params = {**fresh_mlp_params(), "unused": jnp.zeros(4)}
    tx = optax.sgd(0.1)

    @jax.jit
    def step(params, opt_state):
        grads = jax.grad(lambda p: data_loss(p) + penalties.l1(p, 0.5))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    new, _ = step(params, tx.init(params))
    t, loss = torch_twin(params)
    optimizer = torch.optim.SGD(list(t.values()), lr=0.1)
    (loss + 0.5 * sum(w.abs().sum() for w in t.values())).backward()
    optimizer.step()
    for key, w in new.items():
        np.testing.assert_allclose(w, t[key].detach().numpy(), rtol=1e-5, atol=1e-7, err_msg=key)
    np.testing.assert_array_equal(new["unused"], 0.0)
