"""Image augmentation: shapes and dtypes kept, one draw per key, identity at zero, flips flip, jit and vmap."""

import sys

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg.training import ImageAugmentation, gaussian_noise, random_flip, random_rotation, random_shift
from jaxreg.training import augment as augment_module

KEY = jax.random.key(0)
IMAGES = jnp.asarray(np.random.default_rng(0).random((8, 6, 7, 3)), jnp.float32)
FULL = ImageAugmentation(flip=0.5, max_shift=2, max_degrees=15.0, noise_std=0.1)
# The kernels are jitted per shape, dtype and max_shift: the tests share IMAGES' shape
# (and max_shift=2) so that they share compilations. Small, because XLA's compile time of
# the random draws grows with the number of elements.
AUGMENTATIONS = {
    "flip": lambda k, x: random_flip(k, x, 0.5),
    "shift": lambda k, x: random_shift(k, x, 2),
    "rotation": lambda k, x: random_rotation(k, x, 15.0),
    "noise": lambda k, x: gaussian_noise(k, x, 0.1),
    "all": FULL,
}


def _check_shape_dtype_and_draws(augment, x):
    out = augment(KEY, x)
    assert out.shape == x.shape and out.dtype == x.dtype
    np.testing.assert_array_equal(augment(KEY, x), out)  # same key, same batch
    assert not np.array_equal(augment(jax.random.key(1), x), out)  # another key, another draw


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_shape_dtype_and_one_draw_per_key(name):
    _check_shape_dtype_and_draws(AUGMENTATIONS[name], IMAGES)


def test_other_dtypes_are_kept():
    _check_shape_dtype_and_draws(FULL, IMAGES.astype(jnp.bfloat16))
    # Integer images: noise in pixel units, results rounded and clipped to the dtype's range.
    _check_shape_dtype_and_draws(ImageAugmentation(flip=0.5, noise_std=25.0), (IMAGES * 255).astype(jnp.uint8))


def test_zero_strength_is_the_identity():
    np.testing.assert_array_equal(ImageAugmentation()(KEY, IMAGES), IMAGES)
    for out in (random_flip(KEY, IMAGES, 0.0), random_shift(KEY, IMAGES, 0), random_rotation(KEY, IMAGES, 0.0)):
        np.testing.assert_array_equal(out, IMAGES)
    np.testing.assert_array_equal(gaussian_noise(KEY, IMAGES, 0.0), IMAGES)


def test_flips_flip():
    np.testing.assert_array_equal(random_flip(KEY, IMAGES, 1.0), dm_pix.flip_left_right(IMAGES))
    np.testing.assert_array_equal(random_flip(KEY, IMAGES, 1.0), IMAGES[:, :, ::-1, :])
    x = jnp.tile(IMAGES, (16, 1, 1, 1))  # 128 images, about half flipped
    out = random_flip(KEY, x, 0.5)
    flipped = np.array([np.array_equal(o, i[:, ::-1]) for o, i in zip(np.asarray(out), np.asarray(x))])
    kept = np.array([np.array_equal(o, i) for o, i in zip(np.asarray(out), np.asarray(x))])
    assert np.all(flipped | kept) and 40 <= flipped.sum() <= 88


def test_shifts_move_whole_pixels_with_zero_fill():
    x = np.asarray(IMAGES)
    out = np.asarray(random_shift(KEY, IMAGES, 2))
    seen = set()
    for o, i in zip(out, x):
        matches = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                want = np.zeros_like(i)
                h, w = i.shape[:2]
                want[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = i[
                    max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
                ]
                if np.array_equal(o, want):
                    matches.append((dy, dx))
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 4  # the shifts vary from image to image


def _bar_angle(image):
    """Orientation (degrees) of the principal axis of a 2-D intensity image, and its centroid."""
    ys, xs = np.mgrid[: image.shape[0], : image.shape[1]]
    w = image / image.sum()
    cy, cx = (w * ys).sum(), (w * xs).sum()
    cov = np.cov(np.stack([(xs - cx).ravel(), (ys - cy).ravel()]), aweights=w.ravel())
    vals, vecs = np.linalg.eigh(cov)
    vx, vy = vecs[:, -1]
    return np.degrees(np.arctan2(-vy, vx)) % 180, (cy, cx)


def test_rotations_are_small_and_about_the_centre():
    bar = np.zeros((17, 17, 1), np.float32)
    bar[7:10, 2:15] = 1.0  # a horizontal bar through the centre
    x = jnp.asarray(np.repeat(bar[None], 16, axis=0))
    out = np.asarray(random_rotation(KEY, x, 20.0))[..., 0]
    angles = []
    for image in out:
        angle, (cy, cx) = _bar_angle(image)
        angle = angle - 180 if angle > 90 else angle
        assert abs(cy - 8) < 0.3 and abs(cx - 8) < 0.3
        assert abs(angle) <= 20.5
        angles.append(angle)
    assert np.std(angles) > 5  # spread over [-20, 20], not all the same


def test_noise_has_the_requested_std():
    out = gaussian_noise(KEY, jnp.zeros_like(IMAGES), 0.3)
    assert abs(float(jnp.std(out)) - 0.3) < 0.03 and abs(float(jnp.mean(out))) < 0.03


def test_jit_and_vmap():
    keys = jax.random.split(KEY, 3)
    batches = jnp.stack([IMAGES, IMAGES[::-1], 2 * IMAGES])
    mapped = jax.jit(jax.vmap(FULL))(keys, batches)
    for k, b, m in zip(keys, batches, mapped):
        np.testing.assert_allclose(m, FULL(k, b), rtol=1e-5, atol=1e-5)  # fusion reorders float ops


def test_traced_strength_compiles_once_and_zero_is_exact():
    stds = jnp.asarray([0.0, 0.1, 0.5], jnp.float32)
    noisy = jax.jit(jax.vmap(lambda s: gaussian_noise(KEY, IMAGES, s)))(stds)
    np.testing.assert_array_equal(noisy[0], IMAGES)
    np.testing.assert_allclose(jnp.std(noisy - IMAGES, axis=(1, 2, 3, 4))[1:], stds[1:], rtol=0.1)
    # A zero known only at run time takes the resampling path, which is exact at angle 0 and shift 0.
    np.testing.assert_array_equal(augment_module._affine_kernel(KEY, IMAGES, 0.0, 0), IMAGES)


def test_missing_dm_pix_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "dm_pix", None)
    with pytest.raises(ImportError, match=r"random_rotation: .* pip install 'jaxreg\[train\]'"):
        random_rotation(KEY, IMAGES, 10.0)
    random_flip(KEY, IMAGES, 0.5)  # flips and noise need no dm-pix
    gaussian_noise(KEY, IMAGES, 0.1)


def test_numpy_integer_shifts():
    np.testing.assert_array_equal(random_shift(KEY, IMAGES, np.int64(2)), random_shift(KEY, IMAGES, 2))
    assert ImageAugmentation(max_shift=np.int32(1)) == ImageAugmentation(max_shift=1)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: random_flip(KEY, IMAGES[0], 0.5), r"random_flip: images must have shape \(batch, height, width, "),
        (lambda: random_flip(KEY, IMAGES, 1.5), r"random_flip: probability must lie in \[0, 1\], got 1.5"),
        (lambda: random_shift(KEY, IMAGES, -1), r"random_shift: max_shift must be a non-negative int"),
        (lambda: random_shift(KEY, IMAGES, 1.5), r"random_shift: max_shift must be a non-negative int .* got 1.5"),
        (lambda: random_rotation(KEY, IMAGES, -5.0), r"random_rotation: max_degrees must be a non-negative"),
        (lambda: gaussian_noise(KEY, IMAGES, -0.1), r"gaussian_noise: stddev must be a non-negative number"),
        (lambda: ImageAugmentation(flip=2.0), r"ImageAugmentation: flip must lie in \[0, 1\], got 2.0"),
        (lambda: ImageAugmentation(noise_std=-1.0), r"ImageAugmentation: noise_std must be a non-negative"),
        (
            lambda: random_rotation(KEY, IMAGES, float("inf")),
            r"random_rotation: max_degrees must be a finite non-negative number, got inf",
        ),
        (lambda: gaussian_noise(KEY, IMAGES, np.inf), r"gaussian_noise: stddev must be a finite non-negative number"),
        (lambda: ImageAugmentation(max_degrees=np.inf), r"ImageAugmentation: max_degrees must be a finite"),
        (lambda: ImageAugmentation(noise_std=float("inf")), r"ImageAugmentation: noise_std must be a finite"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
