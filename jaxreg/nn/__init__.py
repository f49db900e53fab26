"""Flax NNX models and layers for regularization experiments."""

from jaxreg.nn.layers import GaussianNoise
from jaxreg.nn.models import CNN, MLP, MultiTaskMLP
from jaxreg.nn.optimizer import Optimizer, update_model

__all__ = ["CNN", "MLP", "GaussianNoise", "MultiTaskMLP", "Optimizer", "update_model"]
