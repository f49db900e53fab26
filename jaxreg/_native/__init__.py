"""Builds, caches and registers jaxreg's CPU kernels: the one-pass update step and the
exact selection behind the pruning masks.

``step.cc`` (the XLA FFI custom calls) is compiled once per machine with the system's
C++ compiler against the XLA FFI headers that ship with jaxlib; each fused chain's
element-wise loop (written by :mod:`jaxreg._native.codegen`) is a small C++ file
compiled once in about 0.2 s. Both include ``abi.h``, the interface between them, are
built for this CPU (``-march=native``) and are cached under the rules of
:mod:`jaxreg._native.cache` (a private, verified cache). Where no compiler is found, a
build fails or ``JAXREG_NATIVE=0`` is set, :func:`available` is False, the reason is in
:func:`why_unavailable` and in one warning, and the fused chains run their unfused optax
chain instead and the masks search in XLA (the same numbers).
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import warnings
from pathlib import Path

import jax

from jaxreg._native import cache

STEP_SOURCE = Path(__file__).with_name("step.cc")
# The kernel's limits, from the one header both sides read.
MAX_SLOTS = int(re.search(r"kMaxSlots = (\d+);", cache.abi_text()).group(1))
MAX_INPUTS = int(re.search(r"kMaxInputs = (\d+);", cache.abi_text()).group(1))
_TARGETS = ("jaxreg_sumsq", "jaxreg_step", "jaxreg_select_threshold", "jaxreg_select_mark")
_LIBRARIES: dict[str, ctypes.CDLL] = {}  # kernel id -> its loaded library, kept alive
_BROKEN: dict[str, str] = {}  # kernel id -> why it could not be loaded, in this process


class KernelBuildError(RuntimeError):
    """A chain's kernel could not be compiled or loaded (the step then runs unfused)."""


def _load(source: str, stem: str, symbols: tuple[str, ...], includes: tuple[str, ...] = ()) -> ctypes.CDLL:
    """The library of ``source`` from the cache (built first if needed), with ``symbols``.

    Raises:
      KernelBuildError: it cannot be built or loaded, or lacks a symbol.
    """
    try:
        library = ctypes.CDLL(str(cache.build(source, stem, includes)))
    except (OSError, cache.BuildError) as error:
        raise KernelBuildError(str(error)) from error
    missing = [name for name in symbols if not hasattr(library, name)]
    if missing:
        raise KernelBuildError(f"the library built from {stem} lacks the symbols {', '.join(missing)}")
    return library


@functools.cache
def _base() -> ctypes.CDLL | str:
    """The FFI library, built and registered with XLA; or why it cannot be."""
    if os.environ.get("JAXREG_NATIVE", "1") == "0":
        return "disabled by JAXREG_NATIVE=0"
    try:
        library = _load(
            STEP_SOURCE.read_text(), "step", (*_TARGETS, "jaxreg_register_kernels"), (jax.ffi.include_dir(),)
        )
        for name in _TARGETS:
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, name)), platform="cpu")
    except KernelBuildError as error:
        warnings.warn(
            f"jaxreg: the native CPU kernels are not available ({error}); fused chains run "
            "their unfused optax chain and pruning masks search in XLA instead (same numbers, more "
            "memory traffic, longer compiles).",
            RuntimeWarning,
            stacklevel=4,
        )
        return str(error)
    library.jaxreg_register_kernels.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int64]
    return library


def available() -> bool:
    """Whether the CPU kernels are built and registered (building them on the first call)."""
    return not isinstance(_base(), str)


def why_unavailable() -> str | None:
    """Why :func:`available` is False; None when it is True."""
    base = _base()
    return base if isinstance(base, str) else None


def register_kernels(source: str, names: list[str]) -> str:
    """Compiles a chain's kernel source (once), registers its functions, returns their id.

    ``names`` are the ``extern "C"`` functions of ``source``, one per leaf variant; the
    id is what ``jaxreg_step``'s ``kernel`` attribute names. Registering again is cheap
    and needed in every process (a persistently cached executable finds its kernels here).

    Raises:
      KernelBuildError: the kernel cannot be built or loaded (remembered for the process).
    """
    base = _base()
    assert not isinstance(base, str), base
    kernel_id = cache.digest(source)
    if kernel_id in _BROKEN:
        raise KernelBuildError(_BROKEN[kernel_id])
    if kernel_id not in _LIBRARIES:
        try:
            library = _load(source, "kernel", tuple(names))
        except KernelBuildError as error:
            _BROKEN[kernel_id] = str(error)
            raise
        _LIBRARIES[kernel_id] = library
        pointers = (ctypes.c_void_p * len(names))(*[ctypes.cast(getattr(library, n), ctypes.c_void_p) for n in names])
        base.jaxreg_register_kernels(kernel_id.encode(), pointers, len(names))
    return kernel_id
