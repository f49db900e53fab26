"""Training utilities that are pure functions or pure state machines (jit/vmap friendly)."""

from jaxreg.training.early_stopping import EarlyStopping, EarlyStoppingState
from jaxreg.training.selection import SearchResult, grid_search, kfold_weights, random_search

__all__ = ["EarlyStopping", "EarlyStoppingState", "SearchResult", "grid_search", "kfold_weights", "random_search"]
