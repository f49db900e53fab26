"""jaxreg.nn: shapes, train/eval switching of dropout and noise, zero biases, activity
regularization, multi-task losses, jaxreg chains inside nnx.Optimizer, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

import jaxreg
from jaxreg.nn import CNN, MLP, AlphaDropout, GaussianDropout, GaussianNoise, MultiTaskMLP, SpatialDropout
from jaxreg.nn.layers import RandomLayer

X = jnp.asarray(np.random.default_rng(0).standard_normal((8, 5)), jnp.float32)


def test_mlp_shapes_and_zero_biases():
    model = MLP(5, [16, 8], 3, rngs=nnx.Rngs(0))
    assert model(X).shape == (8, 3)
    biases = [layer.bias[...] for layer in model.layers] + [model.head.bias[...]]
    assert all(bool(jnp.all(b == 0)) for b in biases)


@pytest.mark.parametrize("kwargs", [{"dropout_rate": 0.5}, {"input_noise_std": 0.3}, {"hidden_noise_std": 0.3}])
def test_train_mode_is_random_and_eval_mode_is_deterministic(kwargs):
    model = MLP(5, [16], 3, rngs=nnx.Rngs(0), **kwargs)
    a, b = model(X), model(X)
    assert not np.allclose(a, b), "training mode should draw new noise/masks each call"
    model.eval()
    c, d = model(X), model(X)
    np.testing.assert_array_equal(c, d)
    plain = MLP(5, [16], 3, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(c, plain(X), rtol=1e-6)  # eval mode is the plain network
    model.train()
    assert not np.allclose(model(X), model(X))


def test_gaussian_noise_statistics_and_dtype():
    layer = GaussianNoise(0.5, rngs=nnx.Rngs(1))
    y = layer(jnp.zeros((20_000,), jnp.bfloat16))
    assert y.dtype == jnp.bfloat16
    assert abs(float(jnp.std(y.astype(jnp.float32))) - 0.5) < 0.02
    assert GaussianNoise(0.5, deterministic=True)(jnp.ones(3)).tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("size", [8, 28])
def test_cnn_on_small_and_mnist_sized_images(size):
    model = CNN(1, 10, dropout_rate=0.2, rngs=nnx.Rngs(0))
    images = jnp.ones((4, size, size, 1), jnp.float32)
    assert model(images).shape == (4, 10)
    assert all(bool(jnp.all(c.bias[...] == 0)) for c in model.convs) and bool(jnp.all(model.head.bias[...] == 0))


def test_activity_l1_on_sown_activations():
    model = MLP(5, [16, 8], 3, record_activations=True, rngs=nnx.Rngs(0))

    def loss(model):
        out, acts = nnx.capture(model, nnx.Intermediate)(X)
        return jnp.mean(out**2) + jaxreg.penalties.activity_l1(acts, 1e-2), acts

    _, acts = loss(model)
    leaves = jax.tree.leaves(acts)
    assert [a.shape for a in leaves] == [(8, 16), (8, 8)]
    want = 1e-2 * sum(float(jnp.sum(jnp.abs(a))) / 8 for a in leaves)
    np.testing.assert_allclose(float(jaxreg.penalties.activity_l1(acts, 1e-2)), want, rtol=1e-6)
    grads = nnx.grad(lambda m: loss(m)[0])(model)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    # The penalty's gradient reaches the first layer's kernel through the activations.
    plain = nnx.grad(lambda m: jnp.mean(m(X) ** 2))(MLP(5, [16, 8], 3, rngs=nnx.Rngs(0)))
    assert not np.allclose(grads.layers[0].kernel[...], plain.layers[0].kernel[...])


def test_multitask_outputs_and_weighted_loss():
    model = MultiTaskMLP(
        5, [16, 8], {"price": 1, "kind": 4}, task_weights={"price": 2.0, "kind": 0.5}, rngs=nnx.Rngs(0)
    )
    out = model(X)
    assert out["price"].shape == (8, 1) and out["kind"].shape == (8, 4)
    total = model.weighted_loss({"price": jnp.float32(1.0), "kind": jnp.float32(4.0)})
    assert float(total) == pytest.approx(4.0)


def test_models_train_with_a_jaxreg_chain_and_path_masks():
    model = MLP(5, [16], 1, dropout_rate=0.1, rngs=nnx.Rngs(0))
    y = jnp.sum(X[:, :2], axis=1, keepdims=True)
    tx = optax.chain(
        jaxreg.clip_by_global_norm(1.0),
        optax.adam(1e-2),
        jaxreg.decoupled_weight_decay(1e-2, learning_rate=1e-2, mask=jaxreg.masks.by_path("kernel")),
        jaxreg.l1_prox(1e-3, learning_rate=1e-2, mask=jaxreg.masks.by_path(r"layers/0/kernel")),
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(X) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    with jax.numpy_dtype_promotion("standard"):  # optax.adam is not strict-promotion clean
        losses = [float(step(model, optimizer)) for _ in range(60)]
    assert losses[-1] < 0.5 * losses[0]


# Every model in jaxreg.nn with a batch and a scalar loss: its dropout and noise are on,
# so a jitted step also draws from the model's RNG streams.
TRAINABLE = {
    "MLP": (
        lambda: MLP(5, [16, 8], 3, dropout_rate=0.2, input_noise_std=0.1, hidden_noise_std=0.1, rngs=nnx.Rngs(0)),
        X,
        lambda out: jnp.mean(out**2),
    ),
    "CNN": (
        lambda: CNN(1, 3, features=(4, 6), dropout_rate=0.2, rngs=nnx.Rngs(0)),
        jnp.asarray(np.random.default_rng(1).standard_normal((4, 8, 8, 1)), jnp.float32),
        lambda out: jnp.mean(out**2),
    ),
    "MultiTaskMLP": (
        lambda: MultiTaskMLP(5, [16, 8], {"a": 1, "b": 2}, dropout_rate=0.2, rngs=nnx.Rngs(0)),
        X,
        lambda out: jnp.mean(out["a"] ** 2) + jnp.mean(out["b"] ** 2),
    ),
}


def test_every_model_in_jaxreg_nn_is_in_the_jitted_training_test():
    models = {name for name in jaxreg.nn.__all__ if isinstance(getattr(jaxreg.nn, name), type)}
    models = {name for name in models if issubclass(getattr(jaxreg.nn, name), nnx.Module)}
    models = {name for name in models if not issubclass(getattr(jaxreg.nn, name), RandomLayer)}
    assert models == set(TRAINABLE)


@pytest.mark.parametrize("name", sorted(TRAINABLE))
@pytest.mark.parametrize("jit", ["jax.jit", "nnx.jit"])
def test_every_model_trains_under_jit(name, jit):
    make, x, loss_of = TRAINABLE[name]
    model = make()
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))

    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: loss_of(m(x)))(model)
        optimizer.update(model, grads)
        return loss, grads

    if jit == "nnx.jit":
        loss, grads = nnx.jit(step)(model, optimizer)
    else:
        graphdef, state = nnx.split((model, optimizer))

        @jax.jit
        def functional_step(state):
            model, optimizer = nnx.merge(graphdef, state)
            loss, grads = step(model, optimizer)
            return nnx.state((model, optimizer)), loss, grads

        state, loss, grads = functional_step(state)
        nnx.update((model, optimizer), state)
    assert np.isfinite(float(loss))
    grads = nnx.to_pure_dict(grads)
    after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    # An SGD step: every parameter moved by -0.1 * its gradient.
    jax.tree.map(lambda b, g, a: np.testing.assert_allclose(a, b - 0.1 * g, rtol=1e-5, atol=1e-7), before, grads, after)
    assert any(bool(np.any(g != 0)) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize(
    "make",
    [
        lambda rngs: MLP(5, [16], 3, rngs=rngs),
        lambda rngs: MultiTaskMLP(5, [16, 8], {"a": 1}, rngs=rngs),
        lambda rngs: CNN(1, 3, features=(4,), rngs=rngs),
        lambda rngs: GaussianNoise(0.0, rngs=rngs),
    ],
)
def test_models_ask_only_for_the_rng_streams_they_draw_from(make):
    model = make(nnx.Rngs(params=0))  # no dropout and no noise: no "dropout" or "noise" stream needed
    model.train()
    x = TRAINABLE["CNN"][1] if isinstance(model, CNN) else X
    out = model(x)
    np.testing.assert_array_equal(jax.tree.leaves(out)[0], jax.tree.leaves(model(x))[0])


def test_dropout_and_noise_draw_from_their_named_streams():
    model = MLP(5, [16], 3, dropout_rate=0.5, hidden_noise_std=0.1, rngs=nnx.Rngs(params=0, dropout=1, noise=2))
    assert not np.allclose(model(X), model(X))
    with pytest.raises(KeyError, match="noise"):
        MLP(5, [16], 3, hidden_noise_std=0.1, rngs=nnx.Rngs(params=0, dropout=1))


def test_a_seed_gives_the_same_parameters_whichever_layers_draw():
    # Layers that never draw still fork the default stream, so the parameters of a seed do
    # not depend on the dropout rate or noise std.
    plain = nnx.to_pure_dict(nnx.state(MLP(5, [16], 3, rngs=nnx.Rngs(0)), nnx.Param))
    noisy = MLP(5, [16], 3, dropout_rate=0.5, input_noise_std=0.1, hidden_noise_std=0.1, rngs=nnx.Rngs(0))
    jax.tree.map(np.testing.assert_array_equal, plain, nnx.to_pure_dict(nnx.state(noisy, nnx.Param)))


def test_update_model_passes_extra_args_to_the_transforms_that_read_them():
    def step(tx, **extra_args):
        model = MLP(5, [16], 3, rngs=nnx.Rngs(0))
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        grads = nnx.grad(lambda m: jnp.mean(m(X) ** 2))(model)
        with jax.numpy_dtype_promotion("standard"):  # reduce_on_plateau is not strict-promotion clean
            jaxreg.nn.update_model(optimizer, model, grads, **extra_args)
        return nnx.to_pure_dict(nnx.state(model, nnx.Param)), optimizer

    # A chain the single pass runs: its element-wise members read no loss, the numbers are the same.
    plain, _ = step(jaxreg.chain(jaxreg.sgd(0.1)))
    with_value, _ = step(jaxreg.chain(jaxreg.sgd(0.1)), value=jnp.float32(2.0))
    jax.tree.map(np.testing.assert_array_equal, plain, with_value)
    # A member that reads the loss gets it, in a jaxreg.chain (run unfused) as in an optax.chain.
    for chain in (jaxreg.chain, optax.chain):
        _, optimizer = step(chain(jaxreg.sgd(0.1), optax.contrib.reduce_on_plateau()), value=jnp.float32(2.0))
        assert float(optimizer.opt_state[1].best_value[...]) == 2.0


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: MLP(5, [16, 0], 3, rngs=nnx.Rngs(0)), r"MLP: hidden\[1\] must be a positive int, got 0"),
        (
            lambda: MLP(5, [16], 3, dropout_rate=1.0, rngs=nnx.Rngs(0)),
            r"MLP: dropout_rate must lie in \[0, 1\), got 1.0",
        ),
        (
            lambda: MLP(5, [16], 3, input_noise_std=-1.0, rngs=nnx.Rngs(0)),
            r"MLP: input_noise_std must be a non-negative",
        ),
        (lambda: CNN(1, 10, features=(8, -2), rngs=nnx.Rngs(0)), r"CNN: features\[1\] must be a positive int, got -2"),
        (lambda: MultiTaskMLP(5, [], {"a": 1}, rngs=nnx.Rngs(0)), r"MultiTaskMLP: trunk must list at least one"),
        (
            lambda: MultiTaskMLP(5, [4], {"a": 1}, task_weights={"b": 1.0}, rngs=nnx.Rngs(0)),
            r"task_weights must name the same tasks",
        ),
        (lambda: GaussianNoise(-0.1), r"GaussianNoise: stddev must be a non-negative number, got -0.1"),
        (lambda: SpatialDropout(1.0), r"SpatialDropout: rate must lie in \[0, 1\), got 1.0"),
        (lambda: GaussianDropout(-0.1), r"GaussianDropout: rate must lie in \[0, 1\), got -0.1"),
        (lambda: AlphaDropout(float("nan")), r"AlphaDropout: rate must lie in \[0, 1\), got nan"),
        (
            lambda: SpatialDropout(0.5, deterministic=True)(jnp.ones((2, 4))),
            r"SpatialDropout: expected inputs of shape \(batch, \*spatial, channels\), got \(2, 4\)",
        ),
        (lambda: AlphaDropout(0.5)(X), r"AlphaDropout: training mode needs rngs=nnx.Rngs"),
        (
            lambda: MLP(5, [16], 3, rngs=nnx.Rngs(0))(jnp.ones((2, 4))),
            r"MLP: expected inputs of shape \(batch, 5\), got \(2, 4\)",
        ),
        (
            lambda: CNN(1, 10, rngs=nnx.Rngs(0))(jnp.ones((2, 8, 8, 3))),
            r"CNN: expected images of shape \(batch, height, width, 1\)",
        ),
    ],
)
def test_bad_input(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# --- SpatialDropout, GaussianDropout, AlphaDropout ----------------------------------------

DROPOUTS = {"SpatialDropout": SpatialDropout, "GaussianDropout": GaussianDropout, "AlphaDropout": AlphaDropout}
IMAGES = jnp.asarray(np.random.default_rng(2).standard_normal((4, 3, 3, 6)), jnp.float32)


@pytest.mark.parametrize("name", sorted(DROPOUTS))
def test_dropouts_are_the_identity_in_eval_mode_and_at_rate_zero(name):
    layer = DROPOUTS[name](0.5, rngs=nnx.Rngs(0))
    assert not np.allclose(layer(IMAGES), IMAGES)
    assert layer(IMAGES, deterministic=True) is IMAGES
    layer.eval()
    assert layer(IMAGES) is IMAGES
    assert nnx.view(layer, deterministic=False)(IMAGES) is not IMAGES
    layer.train()
    assert nnx.view(layer, deterministic=True)(IMAGES) is IMAGES
    # A zero rate draws nothing: no "dropout" stream needed.
    assert DROPOUTS[name](0.0, rngs=nnx.Rngs(params=0))(IMAGES) is IMAGES
    # A key at the call replaces the layer's stream.
    key = jax.random.key(3)
    np.testing.assert_array_equal(DROPOUTS[name](0.5)(IMAGES, rngs=key), layer(IMAGES, rngs=key))


@pytest.mark.parametrize("shape", [(64, 5, 32), (64, 3, 3, 32), (64, 2, 2, 2, 32)], ids=["1d", "2d", "3d"])
def test_spatial_dropout_zeroes_whole_channels(shape):
    y = np.asarray(SpatialDropout(0.25, rngs=nnx.Rngs(0))(jnp.ones(shape, jnp.bfloat16)).astype(jnp.float32))
    per_channel = y.reshape(shape[0], -1, shape[-1])
    assert np.all(per_channel == per_channel[:, :1]), "a channel is kept or dropped as a whole"
    assert set(np.unique(per_channel)) == {0.0, float(jnp.asarray(1 / 0.75, jnp.bfloat16))}
    assert abs(np.mean(per_channel[:, 0] == 0) - 0.25) < 0.04
    assert abs(y.mean() - 1.0) < 0.06


def test_gaussian_dropout_noise_has_mean_one_and_dropouts_variance():
    y = GaussianDropout(0.2, rngs=nnx.Rngs(0))(jnp.full((200_000,), 2.0, jnp.bfloat16))
    assert y.dtype == jnp.bfloat16
    noise = np.asarray(y.astype(jnp.float32)) / 2.0
    assert abs(noise.mean() - 1.0) < 0.01
    assert abs(noise.var() - 0.2 / 0.8) < 0.01  # nnx.Dropout(0.2)'s factor mask / 0.8 has this variance


def torch_alpha_dropout(x, rate):
    torch.manual_seed(0)
    return torch.nn.functional.alpha_dropout(torch.from_numpy(np.array(x)), rate, training=True).numpy()


def kept(y):
    """Where ``y`` is not the dropped units' common value (the most frequent one)."""
    values, counts = np.unique(y, return_counts=True)
    return y != values[np.argmax(counts)]


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_alpha_dropout_keeps_zero_mean_unit_variance_as_torch(rate):
    x = jnp.asarray(np.random.default_rng(3).standard_normal(200_000), jnp.float32)
    y = np.asarray(nnx.jit(lambda layer, x: layer(x))(AlphaDropout(rate, rngs=nnx.Rngs(0)), x))
    want = torch_alpha_dropout(x, rate)
    for out in (y, want):
        assert abs(out.mean()) < 0.01 and abs(out.var() - 1.0) < 0.01
        assert abs(np.mean(kept(out)) - (1 - rate)) < 0.01
    # Where both keep or both drop a unit, the numbers are torch's.
    same = kept(y) == kept(want)
    assert same.mean() > 0.4
    np.testing.assert_allclose(y[same], want[same], rtol=1e-6, atol=1e-6)
    assert not np.allclose(y[~same], want[~same], atol=0.1)  # the masks differ elsewhere
    dropout = np.asarray(nnx.Dropout(rate, rngs=nnx.Rngs(0))(x))
    assert abs(dropout.var() - 1 / (1 - rate)) < 0.05  # plain dropout would not keep the variance


def test_dropouts_in_a_model_under_jit_follow_train_and_eval():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(6, 6, rngs=rngs)
            self.spatial = SpatialDropout(0.5, rngs=rngs)
            self.gaussian = GaussianDropout(0.3, rngs=rngs)
            self.alpha = AlphaDropout(0.2, rngs=rngs)

        def __call__(self, x):
            return self.alpha(self.gaussian(nnx.selu(self.spatial(self.linear(x)))))

    model = Net(nnx.Rngs(0))
    loss = nnx.jit(nnx.value_and_grad(lambda m: jnp.mean(m(IMAGES) ** 2)))
    (a, grads), (b, _) = loss(model), loss(model)
    assert a != b, "each call draws new masks and noise"
    assert np.isfinite(float(a)) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    model.eval()
    np.testing.assert_array_equal(model(IMAGES), nnx.selu(model.linear(IMAGES)))
