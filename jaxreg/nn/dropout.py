"""Dropout variants for Flax NNX: whole channels, multiplicative Gaussian noise, SELU-preserving.

Each follows ``nnx.Dropout``'s conventions: ``model.train()`` / ``model.eval()`` /
``nnx.view`` set ``deterministic``, a ``deterministic=`` call argument overrides it, the
keys come from a ``"dropout"`` RNG stream (falling back to ``"default"``) or a ``rngs=``
given at the call, and ``rate``, in ``[0, 1)``, is the probability of dropping, not of
keeping. The math runs in float32 for bfloat16 and float16 inputs (in the input's own
dtype otherwise) and the result has the input's dtype.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxreg import _tree
from jaxreg.nn.layers import RandomLayer, RngsArg

# SELU's negative saturation value, -scale * alpha (Klambauer et al., 2017): the value
# AlphaDropout sets dropped units to (torch's and Keras' alpha').
SELU_SATURATION = -1.7580993408473766


def _dropout_init(
    self: RandomLayer,
    rate: float,
    *,
    deterministic: bool = False,
    rng_collection: str = "dropout",
    rngs: RngsArg = None,
) -> None:
    """The ``__init__`` of the dropout layers: a validated ``rate``, keys from the ``dropout`` stream."""
    if not 0 <= rate < 1:
        raise ValueError(f"{type(self).__name__}: rate must lie in [0, 1), got {rate!r}.")
    self.rate = rate
    RandomLayer.__init__(self, rate > 0, deterministic=deterministic, rng_collection=rng_collection, rngs=rngs)


class SpatialDropout(RandomLayer):
    """Drops whole channels of a channels-last feature map, scaling the kept ones by ``1 / (1 - rate)``.

    Keras' ``SpatialDropout1D`` / ``2D`` / ``3D`` in one layer, for inputs
    ``(batch, *spatial, channels)`` of any rank from 3 (``(batch, time, channels)``) up:
    each example's channel is kept or zeroed as a whole, so that the strongly correlated
    neighbouring pixels of early convolutions cannot make up for a dropped one (Tompson et
    al., 2015). It is ``nnx.Dropout(rate, broadcast_dims=(1, ..., ndim - 2))`` with the
    broadcast axes taken from the input's rank. PyTorch's ``Dropout1d`` / ``2d`` /
    ``3d`` do the same on channels-first inputs; for those use ``nnx.Dropout`` with
    ``broadcast_dims`` the spatial axes.

    Args:
      rate: the probability of dropping a channel, in [0, 1).
      deterministic: if True the layer passes its input through unchanged.
      rng_collection: the ``nnx.Rngs`` stream the keys come from.
      rngs: ``nnx.Rngs`` (or a stream) for the masks; may be omitted when the layer is
        only used in evaluation mode, and need not hold the stream when ``rate`` is 0.

    Returns:
      The module; calling it returns an array of the input's shape and dtype.
    """

    __init__ = _dropout_init

    def __call__(
        self, x: jax.Array, *, deterministic: bool | None = None, rngs: RngsArg | jax.Array = None
    ) -> jax.Array:
        """Zeroes whole channels of ``(batch, *spatial, channels)`` inputs (training mode) or returns them."""
        if x.ndim < 3:
            raise ValueError(
                f"SpatialDropout: expected inputs of shape (batch, *spatial, channels), got {x.shape}; "
                "for inputs without spatial axes use nnx.Dropout."
            )
        return super().__call__(x, deterministic=deterministic, rngs=rngs)

    def _perturb(self, x: jax.Array, key: jax.Array) -> jax.Array:
        mask_shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
        keep = jax.random.bernoulli(key, 1 - self.rate, mask_shape)
        wide = _tree.wide(x)
        return jnp.where(keep, wide / (1 - self.rate), 0).astype(x.dtype)


class GaussianDropout(RandomLayer):
    """Multiplies each unit by ``N(1, rate / (1 - rate))`` noise: dropout's mean and variance, without zeros.

    Keras' ``GaussianDropout(rate)`` (Srivastava et al., 2014, section 10): the
    multiplicative noise has mean 1, so the expected output is the input, and variance
    ``rate / (1 - rate)``, that of ``nnx.Dropout(rate)``'s factor ``mask / (1 - rate)``.
    PyTorch has no such layer. Unlike :class:`~jaxreg.nn.GaussianNoise`, which adds noise
    of a fixed std, the noise scales with each unit.

    Args:
      rate: the dropout rate the noise imitates, in [0, 1).
      deterministic: if True the layer passes its input through unchanged.
      rng_collection: the ``nnx.Rngs`` stream the keys come from.
      rngs: ``nnx.Rngs`` (or a stream) for the noise; may be omitted when the layer is
        only used in evaluation mode, and need not hold the stream when ``rate`` is 0.

    Returns:
      The module; calling it returns an array of the input's shape and dtype.
    """

    __init__ = _dropout_init

    def _perturb(self, x: jax.Array, key: jax.Array) -> jax.Array:
        wide = _tree.wide(x)
        std = math.sqrt(self.rate / (1 - self.rate))
        return (wide * (1 + std * jax.random.normal(key, x.shape, wide.dtype))).astype(x.dtype)


class AlphaDropout(RandomLayer):
    """Dropout for SELU networks: keeps zero mean and unit variance by dropping to SELU's saturation value.

    ``torch.nn.AlphaDropout`` and Keras' ``AlphaDropout`` (Klambauer et al., 2017): each
    unit is kept with probability ``1 - rate`` or set to ``alpha' = -1.7580993408473766``,
    then the affine map ``a * x + b`` with ``a = ((1 - rate) (1 + rate alpha'^2))^(-1/2)``
    and ``b = -a alpha' rate`` brings a zero-mean, unit-variance input back to zero mean
    and unit variance, the fixed point that self-normalizing networks rely on. Plain
    dropout (zeros, scaled by ``1 / (1 - rate)``) would change the variance. Use it after
    ``nnx.selu`` with LeCun-normal initialized weights.

    Args:
      rate: the probability of dropping a unit, in [0, 1).
      deterministic: if True the layer passes its input through unchanged.
      rng_collection: the ``nnx.Rngs`` stream the keys come from.
      rngs: ``nnx.Rngs`` (or a stream) for the masks; may be omitted when the layer is
        only used in evaluation mode, and need not hold the stream when ``rate`` is 0.

    Returns:
      The module; calling it returns an array of the input's shape and dtype.
    """

    __init__ = _dropout_init

    def _perturb(self, x: jax.Array, key: jax.Array) -> jax.Array:
        keep = jax.random.bernoulli(key, 1 - self.rate, x.shape)
        a = ((1 - self.rate) * (1 + self.rate * SELU_SATURATION**2)) ** -0.5
        b = -a * SELU_SATURATION * self.rate
        return (a * jnp.where(keep, _tree.wide(x), SELU_SATURATION) + b).astype(x.dtype)
