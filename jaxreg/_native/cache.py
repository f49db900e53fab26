"""The compiled-library cache of the one-pass step: what is loaded is what jaxreg built.

A library is a shared object that runs inside the user's process, so the cache obeys
four rules (the architecture page explains them):

* **A private directory.** The cache directory (``$JAXREG_CACHE_DIR/native``, default
  ``~/.cache/jaxreg/native``) must be owned by the current user and not writable by
  group or others, and so must its parent unless the parent is sticky (``/tmp``):
  otherwise another user could plant a library under the predictable file name. A
  directory that fails the check is not used: one warning, and the libraries are built
  in a fresh private temporary directory for this process instead.
* **A verified file.** Each library ``<name>.so`` has a record ``<name>.so.json`` of
  its size and SHA-256, written after the library's atomic rename; a library is loaded
  only when it matches its record. A truncated or altered file is rebuilt (loading a
  truncated library would kill the process with SIGBUS).
* **One build per key.** A per-library file lock (the ``filelock`` package) serialises
  processes that build the same library at once; the key covers the source, the
  jaxlib version, the flags, the CPU and the compiler's own ``--version``, so a compiler
  upgrade rebuilds.
* **Bounded builds.** The compiler runs with a timeout (``JAXREG_CXX_TIMEOUT`` seconds,
  default 300); a failed build is remembered for the process and not re-run on every
  call; the temporary build directory is removed however the build ends, and leftovers
  of builds killed outright are removed after an hour.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import filelock
import jaxlib

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
ABI = Path(__file__).with_name("abi.h")  # the Python-C++ interface every library includes
_BUILD_PREFIX = "build-"
_STALE_SECONDS = 3600.0
_FAILED: dict[str, str] = {}  # library file name -> why its build failed, in this process


class BuildError(RuntimeError):
    """A library could not be compiled, verified or loaded."""


def compiler() -> list[str]:
    """The C++ compiler command: ``$CXX`` split as a shell would (``ccache g++`` works),
    else the first of ``c++``, ``g++``, ``clang++`` on the PATH.

    Raises:
      BuildError: there is none.
    """
    if os.environ.get("CXX"):
        return shlex.split(os.environ["CXX"])
    found = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if found is None:
        raise BuildError("no C++ compiler found (set CXX, or install g++ or clang++)")
    return [found]


@functools.cache
def _compiler_identity(command: tuple[str, ...]) -> str:
    try:
        done = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        raise BuildError(f"the C++ compiler {' '.join(command)!r} does not run: {error}") from error
    return done.stdout + done.stderr


@functools.cache
def _cpu_signature() -> str:
    """The CPU's model and feature flags: a library built with -march=native is for it only."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    return platform.machine() + "\n".join([ln for ln in lines if ln.startswith(("model name", "flags"))][:2])


@functools.cache
def abi_text() -> str:
    """``abi.h``, read once per process (every trace of a fused step computes a digest)."""
    return ABI.read_text()


def digest(source: str) -> str:
    """The cache key of ``source``: it, the interface header, jaxlib's version, the flags,
    the CPU and the compiler."""
    key = hashlib.sha256()
    parts = (source, abi_text(), jaxlib.__version__, " ".join(FLAGS), _cpu_signature())
    for part in (*parts, _compiler_identity(tuple(compiler()))):
        key.update(part.encode())
    return key.hexdigest()[:16]


def _unsafe(path: Path, owner_only: bool) -> str | None:
    """Why another user could change what ``path`` holds; None if no one else can."""
    info = path.stat()
    sticky = bool(info.st_mode & stat.S_ISVTX)
    if info.st_uid not in (os.getuid(), 0) or (owner_only and info.st_uid != os.getuid()):
        return f"{path} is owned by another user (uid {info.st_uid})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and (owner_only or not sticky):
        return f"{path} is writable by group or others (mode {stat.S_IMODE(info.st_mode):o})"
    return None


@functools.cache
def _private_fallback() -> Path:
    return Path(tempfile.mkdtemp(prefix="jaxreg-native-"))


@functools.cache
def _checked_dir(requested: str) -> Path:
    path = Path(requested)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        problem = _unsafe(path, owner_only=True) or _unsafe(path.parent, owner_only=False)
    except OSError as error:
        problem = f"{path} cannot be used: {error}"
    if problem is None:
        return path
    fallback = _private_fallback()
    warnings.warn(
        f"jaxreg: not using the kernel cache {path}: {problem}. Libraries are built in the private "
        f"directory {fallback} for this process; point JAXREG_CACHE_DIR at a directory only you can write.",
        RuntimeWarning,
        stacklevel=5,
    )
    return fallback


def cache_dir() -> Path:
    """The directory the libraries live in, checked (see the module's docstring)."""
    base = os.environ.get("JAXREG_CACHE_DIR") or str(Path.home() / ".cache" / "jaxreg")
    return _checked_dir(str(Path(base) / "native"))


def _record_path(library: Path) -> Path:
    return library.with_name(library.name + ".json")


def _fingerprint(data: bytes) -> dict[str, object]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _verified(library: Path) -> bool:
    """Whether ``library`` is ours, unaltered since its record was written."""
    try:
        record = json.loads(_record_path(library).read_text())
        return _unsafe(library, owner_only=True) is None and record == _fingerprint(library.read_bytes())
    except (OSError, ValueError):
        return False


def _remove_stale_builds(directory: Path) -> None:
    """Build directories left by processes killed outright (older than an hour)."""
    for leftover in directory.glob(_BUILD_PREFIX + "*"):
        try:
            if time.time() - leftover.stat().st_mtime > _STALE_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def build(source: str, stem: str, includes: tuple[str, ...] = ()) -> Path:
    """The verified library of ``source`` in the cache, compiled first unless it is there.

    Raises:
      BuildError: no compiler, the compiler failed or timed out (remembered: a second
        call raises at once), or the cache cannot be written.
    """
    name = f"{stem}-{digest(source)}.so"
    if name in _FAILED:
        raise BuildError(_FAILED[name])
    directory = cache_dir()
    target = directory / name
    if _verified(target):
        return target
    try:
        with filelock.FileLock(str(directory / (name + ".lock")), timeout=_timeout() + 60):
            if not _verified(target):  # another process may have built it while we waited
                _remove_stale_builds(directory)
                _compile(source, stem, includes, target)
    except (OSError, filelock.Timeout, BuildError) as error:
        _FAILED[name] = str(error)
        raise BuildError(str(error)) from error
    return target


def _timeout() -> float:
    return float(os.environ.get("JAXREG_CXX_TIMEOUT", "300"))


def _compile(source: str, stem: str, includes: tuple[str, ...], target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix=_BUILD_PREFIX, dir=target.parent) as tmp:
        src = Path(tmp) / f"{stem}.cc"
        src.write_text(source)
        out = Path(tmp) / "out.so"
        cmd = [*compiler(), *FLAGS, f"-I{ABI.parent}", *(f"-I{i}" for i in includes), str(src), "-o", str(out)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=_timeout())
        except subprocess.TimeoutExpired as error:
            raise BuildError(f"{' '.join(cmd)} did not finish in {_timeout():g} s (JAXREG_CXX_TIMEOUT)") from error
        if done.returncode != 0:
            raise BuildError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        record = json.dumps(_fingerprint(out.read_bytes()))
        os.replace(out, target)  # atomic: processes loading at once never see half a file
        staged = Path(tmp) / "record.json"
        staged.write_text(record)
        os.replace(staged, _record_path(target))  # written after the library: a record vouches for a whole file
