"""Training utilities: pure state machines and searches (jit/vmap friendly), a training loop, augmentation."""

from jaxreg.training.augment import ImageAugmentation, gaussian_noise, random_flip, random_rotation, random_shift
from jaxreg.training.averaging import AveragingState, WeightAveraging, ema, swa, update_batch_stats
from jaxreg.training.early_stopping import EarlyStopping, EarlyStoppingState
from jaxreg.training.fit import History, fit
from jaxreg.training.hypergradient import TuneResult, tune_strength, unrolled_val_loss
from jaxreg.training.mixing import cutmix, mixup
from jaxreg.training.selection import SearchResult, grid_search, kfold_weights, random_search

__all__ = [
    "AveragingState",
    "EarlyStopping",
    "EarlyStoppingState",
    "History",
    "ImageAugmentation",
    "SearchResult",
    "TuneResult",
    "WeightAveraging",
    "cutmix",
    "ema",
    "fit",
    "gaussian_noise",
    "grid_search",
    "kfold_weights",
    "mixup",
    "swa",
    "random_flip",
    "random_rotation",
    "random_search",
    "random_shift",
    "tune_strength",
    "unrolled_val_loss",
    "update_batch_stats",
]
