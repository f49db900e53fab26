"""Regularizing layers for Flax NNX."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def rngs_for(rngs: nnx.Rngs | nnx.RngStream | None, stream: str, draws: bool) -> nnx.Rngs | nnx.RngStream | None:
    """``rngs`` for a layer that draws from ``stream``, or None where it never draws and ``rngs`` lacks the stream.

    A layer with a zero rate or std needs no keys, so ``rngs`` need not hold its stream.
    Where ``rngs`` holds it (or the ``default`` fallback) the layer still forks it, as it
    always did: the fork advances the stream the parameters are drawn from when both fall
    back to ``default``, so a seed keeps giving the same parameters.
    """
    if isinstance(rngs, nnx.Rngs) and not draws and stream not in rngs and "default" not in rngs:
        return None
    return rngs


class GaussianNoise(nnx.Module):
    """Adds ``N(0, stddev^2)`` noise in training mode; the identity in evaluation mode.

    Noise injection on inputs (a form of data augmentation) or on hidden units (the
    third source article). Like ``nnx.Dropout`` it follows ``model.train()`` /
    ``model.eval()`` through its ``deterministic`` attribute and draws its keys from an
    ``nnx.Rngs`` stream (``"noise"``, falling back to ``"default"``). Keras calls this
    layer ``GaussianNoise``; PyTorch has none (``x + std * torch.randn_like(x)`` by hand).

    Args:
      stddev: the noise's standard deviation, >= 0.
      deterministic: if True the layer passes its input through unchanged.
      rng_collection: the ``nnx.Rngs`` stream the keys come from.
      rngs: ``nnx.Rngs`` (or a stream) for the noise; may be omitted when the layer is
        only used in evaluation mode, and need not hold the stream when ``stddev`` is 0.

    Returns:
      The module; calling it returns an array of the input's shape and dtype.
    """

    def __init__(
        self,
        stddev: float,
        *,
        deterministic: bool = False,
        rng_collection: str = "noise",
        rngs: nnx.Rngs | nnx.RngStream | None = None,
    ):
        if not stddev >= 0:
            raise ValueError(f"GaussianNoise: stddev must be a non-negative number, got {stddev!r}.")
        self.stddev = stddev
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        rngs = rngs_for(rngs, rng_collection, draws=stddev > 0)
        if isinstance(rngs, nnx.Rngs):
            self.rngs = rngs[rng_collection].fork()
        elif isinstance(rngs, nnx.RngStream):
            self.rngs = rngs.fork()
        else:
            self.rngs = nnx.data(None)

    def __call__(self, x: jax.Array, *, deterministic: bool | None = None) -> jax.Array:
        """Applies the noise (training mode) or returns ``x`` (evaluation mode)."""
        deterministic = self.deterministic if deterministic is None else deterministic
        if deterministic or self.stddev == 0:
            return x
        if self.rngs is None:
            raise ValueError("GaussianNoise: training mode needs rngs=nnx.Rngs(...) at construction.")
        noise = jax.random.normal(self.rngs(), x.shape, jnp.float32) * self.stddev
        return (x.astype(jnp.float32) + noise).astype(x.dtype)
