"""Shared test set-up: XLA's CPU code at LLVM level 0, strict dtype promotion and random pytrees of mixed shapes."""

from __future__ import annotations

import os

# The suite's programs are small and each runs a few times, so compiling them, not
# running them, is what its time goes to: LLVM's optimizations of the CPU code are
# switched off (about a fifth less CPU time), in this process and in the ones the tests
# start (notebooks, benchmarks). XLA's own passes (fusion, layout, the programs' HLO)
# are unchanged. An XLA_FLAGS that sets the level already is left alone.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

import jax  # noqa: E402  (after XLA_FLAGS: the backend reads them when it starts)
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
