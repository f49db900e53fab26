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


# --- orthogonal: Keras 3's OrthogonalRegularizer ---------------------------------------


def keras_orthogonal(w, factor, mode):
    """keras.regularizers.OrthogonalRegularizer(factor, mode)(w) in NumPy, on a backend tensor.

    keras.ops.normalize multiplies by min(rsqrt(sum x^2), 1 / epsilon), epsilon = 1e-7.
    """
    x = np.asarray(w, np.float64) if mode == "rows" else np.asarray(w, np.float64).T
    with np.errstate(divide="ignore"):
        unit = x * np.minimum(1 / np.sqrt(np.sum(x * x, axis=1, keepdims=True)), 1e7)
    size = x.shape[0]
    product_no_diagonal = (unit @ unit.T) * (1.0 - np.eye(size))
    return factor * 0.5 * np.sum(np.abs(product_no_diagonal)) / (size * (size - 1.0) / 2.0)


def numpy_normalized_orthogonal(w, factor):
    """The same with keras.utils.normalize's NumPy path (an exact unit row; a zero norm taken as 1)."""
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    unit = w / np.where(norms == 0, 1.0, norms)
    gram = np.abs(unit @ unit.T) * (1.0 - np.eye(len(w)))
    return factor * np.sum(gram) / (len(w) * (len(w) - 1))


def torch_orthogonal(w, factor, mode):
    # F.normalize divides by max(||x||, eps): the same numbers as keras.ops.normalize, and
    # torch's norm has gradient 0 at an all-zero row.
    x = w if mode == "rows" else w.T
    unit = torch.nn.functional.normalize(x, dim=1, eps=1e-7)
    n = x.shape[0]
    return factor * ((unit @ unit.T) * (1 - torch.eye(n, dtype=x.dtype))).abs().sum() / (n * (n - 1))


# A zero row, a row of norm 1e-9 (below Keras' cap) and random rows.
W_ORTHO = RNG.standard_normal((6, 4)).astype(np.float32)
W_ORTHO[1] = 0.0
W_ORTHO[3] = np.float32(1e-9) * W_ORTHO[2]
ORTHOGONAL = jax.jit(jax.value_and_grad(penalties.orthogonal), static_argnames="mode")


@pytest.mark.parametrize("mode", ["rows", "columns"])
def test_orthogonal_is_keras_formula_with_a_finite_gradient(mode):
    value, grad = ORTHOGONAL(jnp.asarray(W_ORTHO), 0.3, mode=mode)
    np.testing.assert_allclose(float(value), keras_orthogonal(W_ORTHO, 0.3, mode), rtol=1e-5)
    t = torch.tensor(W_ORTHO, dtype=torch.float64, requires_grad=True)
    torch_orthogonal(t, 0.3, mode).backward()
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=2e-4, atol=1e-6)
    if mode == "rows":  # the zero row gets gradient 0; the 1e-9 row is capped as in Keras, not made unit
        np.testing.assert_array_equal(grad[1], 0.0)
        assert abs(float(value) - numpy_normalized_orthogonal(W_ORTHO.astype(np.float64), 0.3)) > 1e-3


def test_orthogonal_is_zero_on_orthogonal_vectors_and_factor_on_parallel_ones():
    def value(w, mode="rows"):
        return float(ORTHOGONAL(jnp.asarray(w, jnp.float32), 1.0, mode=mode)[0])

    q, _ = np.linalg.qr(RNG.standard_normal((5, 5)))
    scaled = q[:, :3] * [2.0, 0.5, 7.0]  # orthogonal columns of any length
    assert value(scaled, "columns") == pytest.approx(0.0, abs=1e-6)
    assert value(scaled, "rows") > 0.1
    parallel = np.outer([1.0, -2.0, 3.0, 0.5, 1.0], [1.0, 1.0, -1.0])
    assert value(parallel) == pytest.approx(1.0)
    assert value(parallel.T, "columns") == pytest.approx(1.0)
    assert float(penalties.orthogonal(np.ones((1, 3), np.float32), 1.0)) == 0.0  # one row: no pairs
    params = {"kernel": jnp.asarray(parallel, jnp.float32), "bias": jnp.ones(3)}
    assert float(penalties.orthogonal(params, 0.5, mask={"kernel": True, "bias": False})) == pytest.approx(0.5)


def test_orthogonal_on_sown_activations_decorrelates_units():
    model = jaxreg.nn.MLP(5, [16, 8], 3, record_activations=True, rngs=nnx.Rngs(0))

    def loss(model):
        out, acts = nnx.capture(model, nnx.Intermediate)(X)
        penalty = penalties.orthogonal(acts, 0.1, mode="columns")
        return jnp.mean(out**2) + penalty, (penalty, acts)

    (_, (penalty, acts)), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model)
    want = sum(keras_orthogonal(np.asarray(a), 0.1, "columns") for a in jax.tree.leaves(acts))
    np.testing.assert_allclose(float(penalty), want, rtol=1e-5)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: penalties.orthogonal({"b": jnp.ones(3)}, 0.1), r"orthogonal: params\['b'\] has shape \(3,\)"),
        (lambda: penalties.orthogonal(jnp.ones((2, 3, 4)), 0.1), r"has shape \(2, 3, 4\), but the penalty"),
        (
            lambda: penalties.orthogonal(jnp.ones((2, 3)), 0.1, mode="cols"),
            r"mode must be 'rows' or 'columns', got 'cols'",
        ),
        (
            lambda: penalties.orthogonal(jnp.ones((2, 3)), -0.1),
            r"orthogonal: factor must be a non-negative number, got -0.1",
        ),
    ],
)
def test_orthogonal_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
