"""Keyed, jit-able augmentation of image batches (noise injection on the inputs).

The third and fifth source articles list data augmentation (flips, crops, rotations)
beside dropout as noise injection on the inputs. These functions take a PRNG key and a
batch of images in NHWC layout ``(batch, height, width, channels)`` and return a batch
of the same shape and dtype, each image transformed with its own random draw. They are
pure, so they run under ``jit`` and ``vmap`` and inside :func:`~jaxreg.training.fit`'s
compiled epoch (``fit(..., augment=ImageAugmentation(...))``). Strengths may be traced
(a ``vmap`` over the noise level compiles once); a strength known to be zero skips its
work, so a zero-strength augmentation returns its input unchanged.

Shifts and rotations resample with dm-pix (bilinear, zeros outside the image: the
interpolation of ``dm_pix.rotate``, on each channel plane), installed with
``pip install 'jaxreg[train]'``; it is imported when first needed, so
``jaxreg.training`` (and flips and noise) work without it.

Why here and not in ``jaxreg.nn``: augmentation acts on data batches in the input
pipeline, not on activations inside a model, and it has no parameters or state. Noise
on hidden units is the layer :class:`jaxreg.nn.GaussianNoise`. MixUp and CutMix, which
mix the labels too, are :func:`~jaxreg.training.mixup` and :func:`~jaxreg.training.cutmix`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxreg import _checks

__all__ = ["ImageAugmentation", "gaussian_noise", "random_flip", "random_rotation", "random_shift"]


def _pix(fn: str) -> Any:
    return _checks.import_extra(fn, "dm_pix", "dm-pix", "rotations and shifts need")


def _check_images(fn: str, images: jax.Array) -> jax.Array:
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"{fn}: images must have shape (batch, height, width, channels), got {images.shape}.")
    return images


def _is_zero(value: Any) -> bool:
    arr = _checks.concrete(value)
    return arr is not None and arr.dtype.kind in "biuf" and bool(np.all(arr == 0))


def _check_probability(fn: str, name: str, value: Any) -> None:
    arr = _checks.concrete(value)
    if arr is not None and not (arr.dtype.kind in "biuf" and np.all((arr >= 0) & (arr <= 1))):
        raise ValueError(f"{fn}: {name} must lie in [0, 1], got {value!r}.")


def _check_shift(fn: str, max_shift: Any) -> int:
    if isinstance(max_shift, bool) or not isinstance(max_shift, (int, np.integer)) or max_shift < 0:
        raise ValueError(f"{fn}: max_shift must be a non-negative int (pixels), got {max_shift!r}.")
    return int(max_shift)


def _check_strength(fn: str, name: str, value: Any) -> None:
    """``value`` must be finite and >= 0 (or not known until it is traced): an infinite
    angle or noise std would turn every image into NaN."""
    _checks.check_nonnegative(fn, name, value)
    arr = _checks.concrete(value)
    if arr is not None and not np.all(np.isfinite(arr)):
        raise ValueError(f"{fn}: {name} must be a finite non-negative number, got {value!r}.")


def _like(x: jax.Array, dtype: Any) -> jax.Array:
    """``x`` (float32) back in the images' dtype; integer images are rounded and clipped."""
    if jnp.issubdtype(dtype, jnp.integer):
        info = jnp.iinfo(dtype)
        return jnp.clip(jnp.round(x), info.min, info.max).astype(dtype)
    return x.astype(dtype)


def random_flip(key: jax.Array, images: jax.Array, probability: chex.Numeric = 0.5) -> jax.Array:
    """Flips each image left-right (along its width) with probability ``probability``.

    Args:
      key: PRNG key; one Bernoulli draw per image.
      images: a batch ``(batch, height, width, channels)``.
      probability: chance that an image is flipped, in [0, 1] (may be traced).

    Returns:
      The batch, each image flipped or left as it was; same shape and dtype.
    """
    fn = "random_flip"
    images = _check_images(fn, images)
    _check_probability(fn, "probability", probability)
    if _is_zero(probability):
        return images
    return _flip_kernel(key, images, probability)


# The kernels are jitted so that an eager call is one compiled program, not dozens of
# op-by-op dispatches; inside fit's compiled epoch (or any jit) they are inlined.
@jax.jit
def _flip_kernel(key: jax.Array, images: jax.Array, probability: jax.Array) -> jax.Array:
    flip = jax.random.bernoulli(key, probability, (images.shape[0],))
    # jnp.flip on the width axis, as dm_pix.flip_left_right does for NHWC.
    return jnp.where(flip[:, None, None, None], jnp.flip(images, axis=2), images)


@functools.partial(jax.jit, static_argnames=("max_shift",))
def _affine_kernel(key: jax.Array, images: jax.Array, max_degrees: jax.Array, max_shift: int) -> jax.Array:
    """Rotates each image by up to ``max_degrees`` about its centre and moves it by up to
    ``max_shift`` whole pixels, in one bilinear resampling per image (dm-pix)."""
    import dm_pix as pix  # the public functions checked that it is installed

    n, height, width = images.shape[:3]
    angle_key, shift_key = jax.random.split(key)
    angles = jax.random.uniform(angle_key, (n,), jnp.float32, -1.0, 1.0) * (
        jnp.asarray(max_degrees, jnp.float32) * jnp.float32(math.pi / 180)
    )
    shifts = jax.random.randint(shift_key, (n, 2), -max_shift, max_shift + 1).astype(jnp.float32)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    ys, xs = jnp.meshgrid(
        jnp.arange(height, dtype=jnp.float32) - cy, jnp.arange(width, dtype=jnp.float32) - cx, indexing="ij"
    )

    def one(image: jax.Array, angle: jax.Array, shift: jax.Array) -> jax.Array:
        c, s = jnp.cos(angle), jnp.sin(angle)
        # Pull resampling, as dm_pix.rotate: output pixel (y, x) reads the input at the
        # point rotated about the centre, minus the shift. Zero outside the image.
        coords = jnp.stack([c * ys + s * xs + (cy - shift[0]), -s * ys + c * xs + (cx - shift[1])])
        # One (height, width) plane per channel: 4 interpolation taps per pixel, where
        # dm_pix.affine_transform on the (h, w, c) volume would take 8.
        planes = jnp.moveaxis(image, -1, 0)
        out = jax.vmap(lambda plane: pix.flat_nd_linear_interpolate_constant(plane, coords, cval=0.0))(planes)
        return jnp.moveaxis(out, 0, -1)

    # dm-pix mixes int32 indices and float weights: not strict-promotion clean.
    with jax.numpy_dtype_promotion("standard"):
        out = jax.vmap(one)(images.astype(jnp.float32), angles, shifts)
    return _like(out, images.dtype)


def random_shift(key: jax.Array, images: jax.Array, max_shift: int) -> jax.Array:
    """Moves each image by a whole number of pixels, drawn uniformly in ``[-max_shift, max_shift]``.

    The vertical and horizontal shifts are drawn independently; pixels moved in from
    outside the image are 0 (the pad-and-crop augmentation of CIFAR training). Whole-pixel
    shifts move pixel values exactly, without interpolation.

    Args:
      key: PRNG key.
      images: a batch ``(batch, height, width, channels)``.
      max_shift: largest shift in pixels, an int >= 0 (a Python or NumPy integer).

    Returns:
      The shifted batch, same shape and dtype.
    """
    fn = "random_shift"
    images = _check_images(fn, images)
    max_shift = _check_shift(fn, max_shift)
    if max_shift == 0:
        return images
    _pix(fn)
    return _affine_kernel(key, images, 0.0, max_shift)


def random_rotation(key: jax.Array, images: jax.Array, max_degrees: chex.Numeric) -> jax.Array:
    """Rotates each image about its centre by an angle drawn uniformly in ``[-max_degrees, max_degrees]``.

    Bilinear interpolation (as ``dm_pix.rotate`` with ``mode="constant"``); corners
    rotated in from outside the image are 0.

    Args:
      key: PRNG key.
      images: a batch ``(batch, height, width, channels)``.
      max_degrees: largest rotation in degrees, finite and >= 0 (may be traced).

    Returns:
      The rotated batch, same shape and dtype.
    """
    fn = "random_rotation"
    images = _check_images(fn, images)
    _check_strength(fn, "max_degrees", max_degrees)
    if _is_zero(max_degrees):
        return images
    _pix(fn)
    return _affine_kernel(key, images, max_degrees, 0)


def gaussian_noise(key: jax.Array, images: jax.Array, stddev: chex.Numeric) -> jax.Array:
    """Adds ``N(0, stddev^2)`` noise to every pixel (computed in float32).

    Args:
      key: PRNG key.
      images: a batch ``(batch, height, width, channels)``.
      stddev: the noise's standard deviation, finite and >= 0 (may be traced).

    Returns:
      The noisy batch, same shape and dtype (integer images are rounded and clipped).
    """
    fn = "gaussian_noise"
    images = _check_images(fn, images)
    _check_strength(fn, "stddev", stddev)
    if _is_zero(stddev):
        return images
    return _noise_kernel(key, images, stddev)


@jax.jit
def _noise_kernel(key: jax.Array, images: jax.Array, stddev: jax.Array) -> jax.Array:
    noise = jax.random.normal(key, images.shape, jnp.float32) * jnp.asarray(stddev, jnp.float32)
    return _like(images.astype(jnp.float32) + noise, images.dtype)


@dataclasses.dataclass(frozen=True)
class ImageAugmentation:
    """Random flips, shifts, rotations and noise for image batches, as one keyed function.

    ``augment(key, images)`` flips each image left-right with probability ``flip``,
    rotates it by up to ``max_degrees`` and shifts it by up to ``max_shift`` pixels (in
    one bilinear resampling), then adds Gaussian noise of std ``noise_std``; every
    image gets its own draws. All strengths default to zero, which is the identity:
    flips in particular are wrong for digits and text, so nothing is on by default.
    Pass it to :func:`~jaxreg.training.fit` as ``augment=``; for flat inputs (an MLP
    on 8x8 digits) reshape around it.

    Example::

        augment = ImageAugmentation(max_shift=1, max_degrees=10.0, noise_std=0.05)
        fit(model, optimizer, loss_fn, (images, labels), key=key, epochs=20, batch_size=64, augment=augment)

    Args:
      flip: probability of a left-right flip, in [0, 1].
      max_shift: largest shift in whole pixels, an int >= 0.
      max_degrees: largest rotation in degrees, finite and >= 0.
      noise_std: std of the additive Gaussian noise, finite and >= 0.

    Returns:
      A frozen, hashable object; call it as ``augment(key, images) -> images``.
    """

    flip: float = 0.0
    max_shift: int = 0
    max_degrees: float = 0.0
    noise_std: float = 0.0

    def __post_init__(self) -> None:
        fn = "ImageAugmentation"
        _check_probability(fn, "flip", self.flip)
        object.__setattr__(self, "max_shift", _check_shift(fn, self.max_shift))  # frozen: a plain int
        _check_strength(fn, "max_degrees", self.max_degrees)
        _check_strength(fn, "noise_std", self.noise_std)

    def __call__(self, key: jax.Array, images: jax.Array) -> jax.Array:
        """Augments a batch ``(batch, height, width, channels)``; same shape and dtype back."""
        fn = "ImageAugmentation"
        images = _check_images(fn, images)
        flip_key, affine_key, noise_key = jax.random.split(key, 3)
        images = random_flip(flip_key, images, self.flip)
        if not (_is_zero(self.max_degrees) and self.max_shift == 0):
            _pix(fn)
            images = _affine_kernel(affine_key, images, self.max_degrees, self.max_shift)
        return gaussian_noise(noise_key, images, self.noise_std)
