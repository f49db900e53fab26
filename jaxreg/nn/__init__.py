"""Flax NNX models and layers for regularization experiments."""

from jaxreg.nn.layers import GaussianNoise
from jaxreg.nn.models import CNN, MLP, MultiTaskMLP

__all__ = ["CNN", "MLP", "GaussianNoise", "MultiTaskMLP"]
