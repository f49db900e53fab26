"""Builds, caches and registers the CPU kernels of jaxreg's fused update step.

``step.cc`` (the XLA FFI custom calls) is compiled once per machine with the system's
C++ compiler against the XLA FFI headers that ship with jaxlib; each fused chain's
element-wise loop (written by :mod:`jaxreg.fused`) is a small C++ file compiled once in
about 0.2 s. Both are built for this CPU (``-march=native``) and cached under
``$JAXREG_CACHE_DIR`` (default ``~/.cache/jaxreg``), keyed by their source, the jaxlib
version, the compiler flags and the CPU. Where no compiler is found, a build fails or
``JAXREG_NATIVE=0`` is set, :func:`available` is False, the reason is in
:func:`why_unavailable` and in one warning, and the fused chains run their unfused optax
chain instead (the same numbers).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jaxlib

STEP_SOURCE = Path(__file__).with_name("step.cc")
# No -ffast-math: results must match XLA's IEEE arithmetic. -fno-trapping-math lets the
# compiler turn the clips' comparisons into vector selects. -ffp-contract=fast fuses
# a * b + c into one FMA where the CPU has it, as XLA:CPU does (jax 0.10.2: a jitted
# g + 0.9 * t equals the FMA on every element, the two-rounding result on 72%). With it
# the fused chains come closer to the unfused ones (SGD's momentum trace, an ulp off on
# 30% of entries before, matched to the bit in the tests); where LLVM and GCC contract a
# longer expression differently, results stay an ulp apart.
FLAGS = (
    "-O3",
    "-march=native",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-ffp-contract=fast",
    "-std=c++17",
    "-shared",
    "-fPIC",
)
_LIBRARIES: dict[str, ctypes.CDLL] = {}  # kernel id -> its loaded library, kept alive


class KernelBuildError(RuntimeError):
    """A chain's kernel could not be compiled or loaded (the step then runs unfused)."""


@functools.cache
def _cpu_signature() -> str:
    """The CPU's model and feature flags: a library built with -march=native is for it only."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    return platform.machine() + "\n".join([ln for ln in lines if ln.startswith(("model name", "flags"))][:2])


def _cache_dir() -> Path:
    return Path(os.environ.get("JAXREG_CACHE_DIR") or Path.home() / ".cache" / "jaxreg") / "native"


def _digest(source: str) -> str:
    key = hashlib.sha256()
    for part in (source, jaxlib.__version__, " ".join(FLAGS), _cpu_signature()):
        key.update(part.encode())
    return key.hexdigest()[:16]


def _build(source: str, stem: str, includes: tuple[str, ...] = ()) -> Path:
    """Compiles ``source`` into ``<cache>/<stem>-<digest>.so`` unless it is there already."""
    target = _cache_dir() / f"{stem}-{_digest(source)}.so"
    if target.exists():
        return target
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++ or clang++)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / f"{stem}.cc"
        src.write_text(source)
        out = Path(tmp) / "out.so"
        cmd = [compiler, *FLAGS, *(f"-I{i}" for i in includes), str(src), "-o", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        os.replace(out, target)  # atomic: processes building at once never load half a file
    return target


@functools.cache
def _base() -> ctypes.CDLL | str:
    """The FFI library, built and registered with XLA; or why it cannot be."""
    if os.environ.get("JAXREG_NATIVE", "1") == "0":
        return "disabled by JAXREG_NATIVE=0"
    try:
        library = ctypes.CDLL(str(_build(STEP_SOURCE.read_text(), "step", (jax.ffi.include_dir(),))))
        for name in ("jaxreg_sumsq", "jaxreg_step"):
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, name)), platform="cpu")
    except (OSError, RuntimeError, AttributeError) as error:
        warnings.warn(
            f"jaxreg: the native CPU update step is not available ({error}); fused chains run "
            "their unfused optax chain instead (same numbers, more memory traffic).",
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
    """
    base = _base()
    assert not isinstance(base, str), base
    kernel_id = _digest(source)
    if kernel_id not in _LIBRARIES:
        try:
            library = ctypes.CDLL(str(_build(source, "kernel")))
        except (OSError, RuntimeError) as error:
            raise KernelBuildError(str(error)) from error
        _LIBRARIES[kernel_id] = library
        pointers = (ctypes.c_void_p * len(names))(*[ctypes.cast(getattr(library, n), ctypes.c_void_p) for n in names])
        base.jaxreg_register_kernels(kernel_id.encode(), pointers, len(names))
    return kernel_id
