"""Python code run in a fresh interpreter, for cases that could crash the test process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Runs ``code`` (dedented) with this interpreter in the repository root, on CPU, and
    returns the finished process with its stdout and stderr as text."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
    )
