"""Regularizing layers for Flax NNX: the train/eval switch and RNG keys they share, and ``GaussianNoise``."""

from __future__ import annotations

import jax
from flax import nnx

from jaxreg import _tree

RngsArg = nnx.Rngs | nnx.RngStream | None


def rngs_for(rngs: RngsArg, stream: str, draws: bool) -> RngsArg:
    """``rngs`` for a layer that draws from ``stream``, or None where it never draws and ``rngs`` lacks the stream.

    A layer with a zero rate or std needs no keys, so ``rngs`` need not hold its stream.
    Where ``rngs`` holds it (or the ``default`` fallback) the layer still forks it, as it
    always did: the fork advances the stream the parameters are drawn from when both fall
    back to ``default``, so a seed keeps giving the same parameters.
    """
    if isinstance(rngs, nnx.Rngs) and not draws and stream not in rngs and "default" not in rngs:
        return None
    return rngs


class RandomLayer(nnx.Module):
    """A layer that perturbs its input in training mode and passes it through in evaluation mode.

    The conventions of ``nnx.Dropout``: ``model.train()`` / ``model.eval()`` (and
    ``nnx.view(model, deterministic=...)``) set the ``deterministic`` attribute, a
    ``deterministic=`` call argument overrides it, and the keys come from the
    ``rng_collection`` stream of the ``rngs`` given at construction, or of a ``rngs=``
    (``nnx.Rngs``, ``nnx.RngStream`` or key) given at the call. Subclasses say whether
    they draw at all (``draws``) and what they do with a key (``_perturb``).

    Args:
      draws: False where the layer is the identity in both modes (a zero rate or std);
        then ``rngs`` need not hold the stream.
      deterministic: if True the layer passes its input through unchanged.
      rng_collection: the ``nnx.Rngs`` stream the keys come from.
      rngs: ``nnx.Rngs`` (or a stream) for the keys; may be omitted when the layer is
        only used in evaluation mode or gets ``rngs=`` at each call.

    Returns:
      The module.
    """

    def __init__(self, draws: bool, *, deterministic: bool, rng_collection: str, rngs: RngsArg):
        self.draws = draws
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        rngs = rngs_for(rngs, rng_collection, draws)
        if isinstance(rngs, nnx.Rngs):
            self.rngs = rngs[rng_collection].fork()
        elif isinstance(rngs, nnx.RngStream):
            self.rngs = rngs.fork()
        elif rngs is None:
            self.rngs = nnx.data(None)
        else:
            raise TypeError(
                f"{type(self).__name__}: rngs must be an nnx.Rngs, an nnx.RngStream or None, got {type(rngs).__name__}."
            )

    def _perturb(self, x: jax.Array, key: jax.Array) -> jax.Array:
        raise NotImplementedError

    def _key(self, rngs: RngsArg | jax.Array) -> jax.Array:
        rngs = self.rngs if rngs is None else rngs
        if isinstance(rngs, nnx.Rngs):
            return rngs[self.rng_collection]()
        if isinstance(rngs, nnx.RngStream):
            return rngs()
        if isinstance(rngs, jax.Array):
            return rngs
        name = type(self).__name__
        if rngs is None:
            raise ValueError(f"{name}: training mode needs rngs=nnx.Rngs(...) at construction or at the call.")
        raise TypeError(f"{name}: rngs must be an nnx.Rngs, an nnx.RngStream or a key, got {type(rngs).__name__}.")

    def __call__(
        self, x: jax.Array, *, deterministic: bool | None = None, rngs: RngsArg | jax.Array = None
    ) -> jax.Array:
        """Perturbs ``x`` (training mode) or returns it (evaluation mode).

        Args:
          x: the input.
          deterministic: overrides the ``deterministic`` attribute for this call.
          rngs: overrides the ``rngs`` given at construction for this call.

        Returns:
          An array of ``x``'s shape and dtype.
        """
        deterministic = self.deterministic if deterministic is None else deterministic
        if deterministic or not self.draws:
            return x
        return self._perturb(x, self._key(rngs))

    def set_view(self, deterministic: bool | None = None) -> None:
        """Sets the mode for ``nnx.view``.

        Args:
          deterministic: if True the layer passes its input through unchanged.
        """
        if deterministic is not None:
            self.deterministic = deterministic


class GaussianNoise(RandomLayer):
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
        rngs: RngsArg = None,
    ):
        if not stddev >= 0:
            raise ValueError(f"GaussianNoise: stddev must be a non-negative number, got {stddev!r}.")
        self.stddev = stddev
        super().__init__(stddev > 0, deterministic=deterministic, rng_collection=rng_collection, rngs=rngs)

    def _perturb(self, x: jax.Array, key: jax.Array) -> jax.Array:
        wide = _tree.wide(x)
        return (wide + self.stddev * jax.random.normal(key, x.shape, wide.dtype)).astype(x.dtype)
