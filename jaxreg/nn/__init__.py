"""Flax NNX models and layers for regularization experiments."""

from jaxreg.nn.dropout import AlphaDropout, GaussianDropout, SpatialDropout
from jaxreg.nn.layers import GaussianNoise, RandomLayer
from jaxreg.nn.models import CNN, MLP, MultiTaskMLP
from jaxreg.nn.optimizer import Optimizer, update_model

__all__ = [
    "CNN",
    "MLP",
    "AlphaDropout",
    "GaussianDropout",
    "GaussianNoise",
    "MultiTaskMLP",
    "Optimizer",
    "RandomLayer",
    "SpatialDropout",
    "update_model",
]
