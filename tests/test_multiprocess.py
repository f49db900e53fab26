"""jaxreg across processes: two ``jax.distributed`` processes on localhost, 4 CPU devices each.

Both run ``tests/sharded/multiprocess_worker.py`` on a ``(data=2, model=4)`` mesh whose
``data`` axis spans the two processes (CPU collectives over gloo), and check that
global-norm clipping and global magnitude pruning of globally sharded arrays equal what
one process computes alone; here we check that they did, and that both processes got
the same bits. If this JAX build cannot start ``jax.distributed`` or run a
cross-process sum on CPU, the test is skipped with the error it gave.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

WORKER = pathlib.Path(__file__).resolve().parent / "sharded" / "multiprocess_worker.py"
NUM_PROCESSES = 2
TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_workers(folder: pathlib.Path) -> tuple[list[dict | None], list[str], bool]:
    """Starts the processes, waits for all of them; returns their records, logs, and whether time ran out."""
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0")
    procs = []
    for i in range(NUM_PROCESSES):
        log = open(folder / f"process{i}.log", "w+")
        cmd = [sys.executable, str(WORKER), str(i), str(NUM_PROCESSES), str(port), str(folder / f"process{i}.json")]
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    deadline = time.monotonic() + TIMEOUT_S
    timed_out = False
    for proc, _ in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            timed_out = True
    logs = []
    for proc, log in procs:
        if proc.poll() is None:  # a process still waiting on its peer
            proc.kill()
            proc.wait()
        log.seek(0)
        logs.append(log.read()[-3000:])
        log.close()
    records = []
    for i in range(NUM_PROCESSES):
        path = folder / f"process{i}.json"
        records.append(json.loads(path.read_text()) if path.exists() else None)
    return records, logs, timed_out


def test_two_processes_agree_with_one(tmp_path):
    records, logs, timed_out = _run_workers(tmp_path)
    log = "\n".join(f"--- process {i} ---\n{text}" for i, text in enumerate(logs))
    setup_errors = [r["error"] for r in records if r is not None and r["stage"] == "setup"]
    if setup_errors:
        pytest.skip(f"this JAX build cannot run CPU collectives across processes: {setup_errors[0]}")
    assert not timed_out, f"the processes did not finish in {TIMEOUT_S} s\n{log}"
    assert all(r is not None for r in records), f"a process wrote no record\n{log}"
    for r in records:
        assert r["process_count"] == NUM_PROCESSES and r["devices"] == 8 and r["local_devices"] == 4, r
        # The data axis runs across the processes: a leaf split over it needs both.
        assert r["mesh_processes"] == [[0] * 4, [1] * 4], r["mesh_processes"]
        assert "error" not in r, f"process {r['process_id']}: {r['error']}\n{r.get('traceback', '')}"
        failed = {name: c["detail"] for name, c in r["checks"].items() if not c["ok"]}
        assert not failed, f"process {r['process_id']}: {failed}"
    assert sorted(records[0]["checks"]) == ["clip_by_global_norm", "magnitude_mask_global", "magnitude_mask_leaf"]
    assert len({r["digest"] for r in records}) == 1, "the processes got different norms or masks"
