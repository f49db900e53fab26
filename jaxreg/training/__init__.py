"""Training utilities that are pure functions or pure state machines (jit/vmap friendly)."""

from jaxreg.training.early_stopping import EarlyStopping, EarlyStoppingState

__all__ = ["EarlyStopping", "EarlyStoppingState"]
