"""Training utilities that are pure functions or pure state machines (jit/vmap friendly)."""

from jaxreg.training.early_stopping import EarlyStopping, EarlyStoppingState
from jaxreg.training.hypergradient import TuneResult, tune_strength, unrolled_val_loss
from jaxreg.training.selection import SearchResult, grid_search, kfold_weights, random_search

__all__ = [
    "EarlyStopping",
    "EarlyStoppingState",
    "SearchResult",
    "TuneResult",
    "grid_search",
    "kfold_weights",
    "random_search",
    "tune_strength",
    "unrolled_val_loss",
]
