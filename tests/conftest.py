"""Shared test set-up: strict dtype promotion and random pytrees of mixed shapes."""

from __future__ import annotations

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")

SHAPES = {
    "dense1": {"kernel": (5, 7), "bias": (7,)},
    "conv": {"kernel": (3, 3, 2, 4)},
    "out": {"kernel": (7, 3), "bias": (3,)},
    "scale": (),
}


def random_tree(seed: int, dtype=np.float32, scale: float = 1.0, shapes=SHAPES):
    """A dict of numpy arrays of mixed shapes (like a small model's params)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: (scale * rng.standard_normal(s)).astype(dtype), shapes, is_leaf=lambda s: isinstance(s, tuple)
    )


@pytest.fixture
def tree_pair():
    """(params, updates) as numpy trees."""
    return random_tree(0), random_tree(1, scale=0.3)
