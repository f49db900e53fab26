"""Construction-time argument checks with messages that name function, argument and value.

Hyperparameters may be Python numbers, JAX/NumPy scalars, optax schedules (callables of
the step count) or traced values (inside ``jit``/``vmap``). Only values that are known at
construction time are checked: a schedule or a tracer is accepted as it is, so that a
sweep over lambda stays one ``vmap``.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

import jax
import numpy as np


def concrete(value: Any) -> np.ndarray | None:
    """``value`` as a NumPy array if it is known now, else None (schedule or tracer)."""
    if callable(value) or isinstance(value, jax.core.Tracer):
        return None
    try:
        return np.asarray(value)
    except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
        return None


def _number(fn: str, name: str, value: Any) -> np.ndarray | None:
    arr = concrete(value)
    if arr is None:
        return None
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"{fn}: {name} must be a real number, an array of them or a schedule, "
            f"got {value!r} of type {type(value).__name__}."
        )
    return arr


def check_nonnegative(fn: str, name: str, value: Any) -> None:
    """Raises unless ``value`` is >= 0 (or not known until it is traced)."""
    arr = _number(fn, name, value)
    if arr is not None and not np.all(arr >= 0):
        raise ValueError(f"{fn}: {name} must be a non-negative number, got {value!r}.")


def check_positive(fn: str, name: str, value: Any) -> None:
    """Raises unless ``value`` is > 0 (or not known until it is traced)."""
    arr = _number(fn, name, value)
    if arr is not None and not np.all(arr > 0):
        raise ValueError(f"{fn}: {name} must be a positive number, got {value!r}.")


def check_learning_rate(fn: str, learning_rate: Any) -> Any:
    """Validates ``learning_rate=`` and returns it, with None meaning a step of 1."""
    if learning_rate is None:
        return 1.0
    check_positive(fn, "learning_rate", learning_rate)
    return learning_rate


def check_positive_int(fn: str, name: str, value: Any) -> int:
    """``value`` must be an int >= 1 (a count of steps, units, draws, ...): a Python or
    NumPy integer, as scikit-learn accepts; returned as a Python int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{fn}: {name} must be a positive int, got {value!r}.")
    return int(value)


def check_axis_arg(fn: str, axis: Any) -> int:
    """``axis`` must be a Python int; its range is checked per leaf at ``init``."""
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{fn}: axis must be an int, got {axis!r}.")
    return int(axis)


def check_scope(fn: str, scope: str) -> str:
    """``scope`` is 'global' (one constraint over the whole tree) or 'leaf'."""
    if scope not in ("global", "leaf"):
        raise ValueError(f"{fn}: scope must be 'global' or 'leaf', got {scope!r}.")
    return scope


def check_norm_type(fn: str, norm_type: Any, name: str = "norm_type") -> float:
    """A p-norm order: any real p >= 1, or inf (also given as the string 'inf')."""
    if isinstance(norm_type, str) and norm_type.lower() in ("inf", "infinity"):
        return math.inf
    message = f"{fn}: {name} must be a number p >= 1 or inf, got {norm_type!r}."
    if isinstance(norm_type, bool) or not isinstance(norm_type, (int, float, np.number)):
        raise ValueError(message)
    p = float(norm_type)
    if not (p >= 1):
        raise ValueError(message)
    return p


def import_extra(fn: str, module: str, package: str, needs: str) -> Any:
    """Imports an optional dependency of the ``train`` extra, or raises an ImportError saying how to get it.

    ``needs`` completes the message: ``f"{fn}: {needs} {package}, which is not installed; ..."``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{fn}: {needs} {package}, which is not installed; install it with pip install 'jaxreg[train]'."
        ) from err
