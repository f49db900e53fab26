"""MixUp and CutMix: each sample mixed with its neighbour in the batch, and the labels with it.

MixUp (Zhang et al. 2018) blends whole inputs, CutMix (Yun et al. 2019) pastes a box of
one image into another; both mix the labels in the proportion of the inputs. The numbers
are those of ``torchvision.transforms.v2.MixUp`` and ``CutMix``: one
``lam ~ Beta(alpha, alpha)`` per batch, sample ``i`` paired with sample ``i - 1`` (the
batch rolled by one, ``x.roll(1, 0)``), the labels one-hot encoded and mixed as
``lam * y + (1 - lam) * y.roll(1, 0)``, and CutMix's ``lam`` corrected to the area of
the box actually pasted (a box clipped at the border is smaller than drawn).

Where they differ from torchvision: they are pure functions of a PRNG key (so they jit,
vmap and draw the same for the same key), images are NHWC ``(batch, height, width,
channels)`` rather than NCHW, inputs of any dtype are mixed in float32 and cast back
(integer images rounded and clipped), and ``alpha`` may be traced.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxreg import _checks
from jaxreg.training.augment import _check_images, _like

__all__ = ["cutmix", "mixup"]


def _check_alpha(fn: str, alpha: Any) -> None:
    arr = _checks.concrete(alpha)
    if arr is not None and not (arr.dtype.kind in "biuf" and np.all(np.isfinite(arr)) and np.all(arr > 0)):
        raise ValueError(f"{fn}: alpha must be a finite positive number (Beta(alpha, alpha)), got {alpha!r}.")


def _one_hot(fn: str, labels: Any, batch: int, num_classes: int | None) -> jax.Array:
    """``labels`` as float rows of class weights: integer labels one-hot encoded, rows kept."""
    labels = jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.integer) and labels.shape == (batch,):
        if num_classes is None:
            raise ValueError(f"{fn}: integer labels need num_classes; give num_classes= or one-hot labels.")
        num_classes = _checks.check_positive_int(fn, "num_classes", num_classes)
        return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if jnp.issubdtype(labels.dtype, jnp.floating) and labels.ndim == 2 and labels.shape[0] == batch:
        return labels
    raise ValueError(
        f"{fn}: labels must be integers of shape ({batch},) or float rows of shape ({batch}, classes), "
        f"got {labels.dtype} of shape {labels.shape}."
    )


def _mix(a: jax.Array, lam: jax.Array) -> jax.Array:
    """``lam * a + (1 - lam) * a.roll(1, 0)``, in torchvision's order of operations."""
    return jnp.roll(a, 1, axis=0) * (1 - lam) + a * lam


def mixup(
    key: jax.Array, x: jax.Array, y: jax.Array, alpha: chex.Numeric = 1.0, *, num_classes: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """MixUp: ``x[i]`` becomes ``lam * x[i] + (1 - lam) * x[i - 1]``, and so do its labels.

    ``lam ~ Beta(alpha, alpha)``, one draw for the batch; sample 0 pairs with the last
    one (the batch rolled by one), as ``torchvision.transforms.v2.MixUp``.

    Example::

        x, y = mixup(key, x, y, alpha=0.2, num_classes=10)
        loss = optax.softmax_cross_entropy(model(x), y).mean()

    Args:
      key: PRNG key.
      x: a batch of inputs of any shape ``(batch, ...)`` (images, features, ...).
      y: integer labels ``(batch,)`` (give ``num_classes``) or float rows of class
        weights ``(batch, classes)`` (one-hot or already soft).
      alpha: the Beta distribution's parameter, finite and > 0 (may be traced); small
        values (0.2) keep most samples nearly unmixed.
      num_classes: the number of classes, for integer labels.

    Returns:
      ``(x, y)``: the mixed inputs (same shape and dtype) and the mixed labels
      ``(batch, classes)`` (float32 for integer labels, else the labels' dtype), whose
      rows sum to what the given rows sum to (1 for one-hot labels).
    """
    fn = "mixup"
    _check_alpha(fn, alpha)
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"{fn}: x must be a batch (batch, ...) of at least one sample, got shape {x.shape}.")
    y = _one_hot(fn, y, x.shape[0], num_classes)
    return _mixup_kernel(x, y, _draw_lambda(key, alpha))


# The Beta draw is its own program, the mixing another: the draw (a rejection sampler,
# the larger compilation) is compiled once, whatever the batch's shape and dtype. Inside
# a jit both are inlined.
@jax.jit
def _mixup_kernel(x: jax.Array, y: jax.Array, lam: jax.Array) -> tuple[jax.Array, jax.Array]:
    return _like(_mix(x.astype(jnp.float32), lam), x.dtype), _mix(y, lam.astype(y.dtype))


@jax.jit
def _draw_lambda(key: jax.Array, alpha: jax.Array) -> jax.Array:
    alpha = jnp.asarray(alpha, jnp.float32)
    return jax.random.beta(key, alpha, alpha)


def cutmix(
    key: jax.Array, images: jax.Array, y: jax.Array, alpha: chex.Numeric = 1.0, *, num_classes: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """CutMix: a box of ``images[i - 1]`` pasted into ``images[i]``; labels mixed by the box's area.

    As ``torchvision.transforms.v2.CutMix``: ``lam ~ Beta(alpha, alpha)``; a centre
    ``(cy, cx)`` uniform over the pixels; half-sides ``floor(h * r)`` and ``floor(w * r)``
    with ``r = sqrt(1 - lam) / 2``; the box ``[cy - half_h, cy + half_h) x [cx - half_w,
    cx + half_w)`` clipped to the image; the same box in every image of the batch, filled
    from the batch rolled by one. The labels are mixed with ``lam = 1 - box area /
    image area``, the fraction of each image that is its own.

    Args:
      key: PRNG key.
      images: a batch ``(batch, height, width, channels)``.
      y: integer labels ``(batch,)`` (give ``num_classes``) or float rows of class
        weights ``(batch, classes)``.
      alpha: the Beta distribution's parameter, finite and > 0 (may be traced).
      num_classes: the number of classes, for integer labels.

    Returns:
      ``(images, y)``: the images with the box pasted (same shape and dtype, pixels
      copied exactly) and the mixed labels ``(batch, classes)``.
    """
    fn = "cutmix"
    _check_alpha(fn, alpha)
    images = _check_images(fn, images)
    y = _one_hot(fn, y, images.shape[0], num_classes)
    return _cutmix_kernel(images, y, *_cutmix_draw(key, alpha, *images.shape[1:3]))


def _cutmix_draw(key: jax.Array, alpha: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(lam, cy, cx)``: the Beta draw and the box's centre pixel."""
    lam_key, y_key, x_key = jax.random.split(key, 3)
    cy = jax.random.randint(y_key, (), 0, height)
    cx = jax.random.randint(x_key, (), 0, width)
    return _draw_lambda(lam_key, alpha), cy, cx


def _cutmix_box(lam: jax.Array, cy: jax.Array, cx: jax.Array, height: int, width: int) -> tuple[jax.Array, ...]:
    """``(y1, y2, x1, x2)`` of the pasted box, as torchvision computes it from ``lam`` and the centre."""
    r = 0.5 * jnp.sqrt(1 - lam)
    half_h = jnp.floor(r * height).astype(jnp.int32)
    half_w = jnp.floor(r * width).astype(jnp.int32)
    return (
        jnp.maximum(cy - half_h, 0),
        jnp.minimum(cy + half_h, height),
        jnp.maximum(cx - half_w, 0),
        jnp.minimum(cx + half_w, width),
    )


@jax.jit
def _cutmix_kernel(
    images: jax.Array, y: jax.Array, lam: jax.Array, cy: jax.Array, cx: jax.Array
) -> tuple[jax.Array, jax.Array]:
    height, width = images.shape[1:3]
    y1, y2, x1, x2 = _cutmix_box(lam, cy, cx, height, width)
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    inside = (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2)
    mixed = jnp.where(inside[None, :, :, None], jnp.roll(images, 1, axis=0), images)
    area = ((y2 - y1) * (x2 - x1)).astype(jnp.float32)
    lam = 1 - area / jnp.float32(height * width)
    return mixed, _mix(y, lam.astype(y.dtype))
