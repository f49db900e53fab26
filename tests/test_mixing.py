"""MixUp and CutMix: torchvision's formulas (in NumPy), label rows that sum to 1, Beta draws, jit, vmap, fit(mix=)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxreg
from jaxreg.training import cutmix, fit, mixup
from jaxreg.training import mixing as mixing_module

RNG = np.random.default_rng(0)
IMAGES = jnp.asarray(RNG.random((5, 6, 7, 2)), jnp.float32)  # NHWC; every pixel differs from its neighbour's
LABELS = jnp.asarray([0, 1, 2, 2, 1])
ONE_HOT = np.eye(3, dtype=np.float32)[np.asarray(LABELS)]
KEYS = jax.random.split(jax.random.key(0), 64)


def torchvision_cutmix(images, labels, lam, r_y, r_x):
    """torchvision.transforms.v2.CutMix's box and label arithmetic given its draws, in NumPy (NHWC here)."""
    H, W = images.shape[1:3]
    r = 0.5 * math.sqrt(1.0 - lam)
    r_w_half, r_h_half = int(r * W), int(r * H)
    x1, y1 = max(r_x - r_w_half, 0), max(r_y - r_h_half, 0)
    x2, y2 = min(r_x + r_w_half, W), min(r_y + r_h_half, H)
    lam_adjusted = float(1.0 - (x2 - x1) * (y2 - y1) / (W * H))
    rolled = np.roll(images, 1, 0)
    output = images.copy()
    output[:, y1:y2, x1:x2] = rolled[:, y1:y2, x1:x2]
    return output, np.roll(labels, 1, 0) * (1.0 - lam_adjusted) + labels * lam_adjusted, lam


@pytest.fixture(scope="module")
def cutmixed():
    """CutMix over 64 keys (one compiled vmap), with the draws each key made."""
    images, labels = jax.jit(jax.vmap(lambda k: cutmix(k, IMAGES, LABELS, 1.0, num_classes=3)))(KEYS)
    draws = jax.jit(jax.vmap(lambda k: mixing_module._cutmix_draw(k, 1.0, 6, 7)))(KEYS)
    return np.asarray(images), np.asarray(labels), [tuple(np.asarray(d)) for d in zip(*draws)]


def test_cutmix_matches_torchvisions_formula(cutmixed):
    images, labels, draws = cutmixed
    uncorrected = []
    for got_x, got_y, (lam, cy, cx) in zip(images, labels, draws):
        want_x, want_y, _ = torchvision_cutmix(np.asarray(IMAGES), ONE_HOT, float(lam), int(cy), int(cx))
        np.testing.assert_array_equal(got_x, want_x)  # pixels copied exactly
        np.testing.assert_allclose(got_y, want_y, rtol=1e-6, atol=1e-7)
        uncorrected.append(np.abs(got_y - (np.roll(ONE_HOT, 1, 0) * (1 - lam) + ONE_HOT * lam)).max())
    # Negative control: labels mixed with the drawn lambda, not the box's area, are off.
    assert max(uncorrected) > 0.05
    assert len({(int(cy), int(cx)) for _, cy, cx in draws}) > 20  # the centres vary


def test_cutmix_pastes_one_box_whose_area_is_the_label_weight(cutmixed):
    images, labels, _ = cutmixed
    pasted_any = False
    for got_x, got_y in zip(images, labels):
        np.testing.assert_allclose(got_y.sum(1), 1, rtol=1e-6)
        changed = np.any(got_x != np.asarray(IMAGES), axis=-1)  # (batch, H, W)
        assert np.all(changed == changed[0])  # the same box in every image
        rows, cols = np.nonzero(changed[0])
        if rows.size:
            pasted_any = True
            assert changed[0, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()  # a rectangle
        own = 1 - changed[0].mean()
        # Sample 1 (label 1) pairs with sample 0 (label 0): its own label's weight is lam.
        assert got_y[1, 1] == pytest.approx(own, abs=1e-6) and got_y[1, 0] == pytest.approx(1 - own, abs=1e-6)
    assert pasted_any


def test_mixup_matches_torchvisions_formula():
    x = np.asarray(IMAGES)
    got_x, got_y = jax.jit(mixup, static_argnames="num_classes")(KEYS[0], IMAGES, LABELS, 0.4, num_classes=3)
    lam = float(mixing_module._draw_lambda(KEYS[0], 0.4))
    # torchvision: inpt.roll(1, 0).mul_(1.0 - lam).add_(inpt.mul(lam)), the same for the labels.
    np.testing.assert_allclose(got_x, np.roll(x, 1, 0) * (1 - lam) + x * lam, rtol=1e-6)
    np.testing.assert_allclose(got_y, np.roll(ONE_HOT, 1, 0) * (1 - lam) + ONE_HOT * lam, rtol=1e-6)
    assert np.abs(got_x - (np.roll(x, -1, 0) * (1 - lam) + x * lam)).max() > 0.05  # the roll's direction matters
    np.testing.assert_allclose(np.asarray(got_y).sum(1), 1, rtol=1e-6)
    # One-hot labels given as rows mix the same way; eager equals jit.
    np.testing.assert_allclose(mixup(KEYS[0], IMAGES, ONE_HOT, 0.4)[1], got_y, rtol=1e-6)


def test_lambda_is_beta_alpha_alpha():
    x, y = jnp.zeros((2, 1)), jnp.asarray([0, 1])

    def lams(alpha):  # sample 0 (label 0) pairs with sample 1 (label 1): its weight on label 0 is lam
        return jax.vmap(lambda k: mixup(k, x, y, alpha, num_classes=2)[1][0, 0])(jax.random.split(KEYS[1], 4000))

    alphas = np.asarray([0.4, 2.0], np.float32)
    draws = np.asarray(jax.jit(jax.vmap(lams))(alphas))
    np.testing.assert_allclose(draws.mean(1), 0.5, atol=0.02)
    np.testing.assert_allclose(draws.var(1), 1 / (4 * (2 * alphas + 1)), atol=0.01)


def test_traced_alpha_dtypes_and_vmap():
    alphas = jnp.asarray([0.2, 1.0, 5.0])
    mixed = jax.jit(jax.vmap(lambda a: mixup(KEYS[2], IMAGES, LABELS, a, num_classes=3)[1]))(alphas)
    np.testing.assert_allclose(mixed[1], mixup(KEYS[2], IMAGES, LABELS, 1.0, num_classes=3)[1], rtol=1e-5)
    uint8 = (IMAGES * 255).astype(jnp.uint8)
    out, _ = cutmix(KEYS[3], uint8, LABELS, 1.0, num_classes=3)
    assert out.dtype == jnp.uint8 and set(np.unique(out)) <= set(np.unique(uint8))
    out, y = mixup(KEYS[3], uint8, jnp.asarray(ONE_HOT, jnp.bfloat16), 1.0)
    assert out.dtype == jnp.uint8 and y.dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: mixup(KEYS[0], IMAGES, LABELS, 0.0, num_classes=3), r"mixup: alpha must be a finite positive .* 0.0"),
        (lambda: cutmix(KEYS[0], IMAGES, LABELS, -1.0, num_classes=3), r"cutmix: alpha must be a finite positive"),
        (lambda: mixup(KEYS[0], IMAGES, LABELS, float("inf"), num_classes=3), r"mixup: alpha must be a finite"),
        (lambda: mixup(KEYS[0], IMAGES, LABELS, np.nan, num_classes=3), r"mixup: alpha must be a finite"),
        (lambda: mixup(KEYS[0], IMAGES, LABELS), r"mixup: integer labels need num_classes"),
        (
            lambda: cutmix(KEYS[0], IMAGES, LABELS[:4], num_classes=3),
            r"cutmix: labels must be integers of shape \(5,\)",
        ),
        (lambda: cutmix(KEYS[0], IMAGES[0], LABELS, num_classes=3), r"cutmix: images must have shape \(batch, height"),
        (lambda: mixup(KEYS[0], IMAGES, LABELS, num_classes=0), r"mixup: num_classes must be a positive int, got 0"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def _fit_digits(**kwargs):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((192, 8)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int32)

    def loss_fn(model, xb, yb):
        logits = model(xb)
        if yb.ndim == 1:  # unmixed: integer labels
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        return optax.softmax_cross_entropy(logits, yb).mean()

    model = jaxreg.nn.MLP(8, [16], 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    with jax.numpy_dtype_promotion("standard"):  # optax.adam is not strict-promotion clean
        history = fit(
            model, optimizer, loss_fn, (x[:128], y[:128]), (x[128:], y[128:]),
            key=jax.random.key(0), epochs=3, batch_size=32, progress=False, **kwargs,
        )  # fmt: skip
    return history, nnx.state(model, nnx.Param)


def test_fit_mixes_each_training_batch():
    plain, plain_params = _fit_digits()
    # A mix that changes nothing trains exactly as no mix: the labels reach loss_fn as given.
    same, same_params = _fit_digits(mix=lambda key, x, y: (x, y))
    np.testing.assert_array_equal(same.train_loss, plain.train_loss)
    jax.tree.map(np.testing.assert_array_equal, same_params, plain_params)
    # MixUp with one-hot labels changes the training batches (so the training loss), not validation's data.
    mixed, _ = _fit_digits(mix=functools.partial(mixup, alpha=0.4, num_classes=2))
    assert not np.allclose(mixed.train_loss, plain.train_loss)
    assert np.all(np.isfinite(mixed.val_loss))
    with pytest.raises(TypeError, match=r"fit: mix must be a callable \(key, x_batch, y_batch\)"):
        _fit_digits(mix="mixup")
