"""What `pip install jaxreg` and the sdist carry: the licence, the kernel's sources, and
everything the sdist's own tests need."""

import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _build(kind: str, out: Path) -> Path:
    code = f"from setuptools import build_meta; print(build_meta.build_{kind}({str(out)!r}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    return _build("sdist", tmp_path_factory.mktemp("sdist"))


def test_the_wheel_carries_the_licence_and_the_kernel_sources(tmp_path):
    names = zipfile.ZipFile(_build("wheel", tmp_path)).namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert {"jaxreg/_native/step.cc", "jaxreg/_native/abi.h"} <= set(names)


def test_the_sdist_carries_what_its_tests_need(sdist):
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    needed = {
        "LICENSE",
        "Makefile",
        "tests/conftest.py",
        "tests/sharded/checks.py",
        "examples/09_one_pass_step.py",
        "docs/conf.py",
        "docs/architecture.md",
        "bench/harness.py",
        "jaxreg/_native/abi.h",
    }
    assert needed <= names, needed - names
    assert not any("__pycache__" in n or n.startswith("docs/_build") for n in names)


def test_the_sdists_tests_run_from_it(sdist, tmp_path):
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    (root,) = tmp_path.iterdir()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "tests/test_api.py"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    # The unpacked sources were tested, not this checkout's.
    where = subprocess.run(
        [sys.executable, "-c", "import jaxreg; print(jaxreg.__file__)"], cwd=root, capture_output=True, text=True
    )
    assert where.stdout.startswith(str(root))


def test_the_version_floors_are_the_tested_versions():
    # README's "Tested with" names the versions the floors in pyproject.toml are.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    readme = (REPO / "README.md").read_text()
    floors = dict(dep.split(">=") for dep in project["dependencies"] if ">=" in dep)
    assert project["requires-python"] == ">=3.11" and "Python 3.11" in readme
    for name in ("jax", "optax", "flax", "chex"):
        assert f"{name} {floors[name]}" in readme.replace("jax/jaxlib", "jax") or f"{name} {floors[name]}." in readme, (
            name
        )
