"""One of the processes of ``tests/test_multiprocess.py``: jaxreg on arrays sharded across processes.

Usage: ``python multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT OUT.json``, with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (4 CPU devices per process).
Every process joins ``jax.distributed`` on ``127.0.0.1:PORT``, builds the same global
arrays on a ``(data=2, model=4)`` mesh whose ``data`` axis runs across the processes,
and runs global-norm clipping and global magnitude pruning under ``jit``. Each gathers
the results and compares them with what one process computes alone, on the whole
arrays, and writes a JSON record: ``{"stage": ..., "ok": ..., "checks": {...},
"digest": ...}``. A failure to start ``jax.distributed`` or to run a first
cross-process sum is reported with ``"stage": "setup"`` so that the test can tell
"this build cannot run CPU collectives" from a jaxreg bug.
"""

from __future__ import annotations

import hashlib
import json
import sys
import traceback
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxreg
from jaxreg import pruning

SPECS = {
    "dense1": {"kernel": P("data", "model"), "bias": P("model")},
    "dense2": {"kernel": P("model", "data"), "bias": P()},
    "embed": {"table": P(("data", "model"), None)},
}
SHAPES = {
    "dense1": {"kernel": (64, 128), "bias": (128,)},
    "dense2": {"kernel": (128, 32), "bias": (32,)},
    "embed": {"table": (256, 16)},
}


def random_tree(seed: int) -> Any:
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: rng.standard_normal(s).astype(np.float32), SHAPES, is_leaf=lambda s: isinstance(s, tuple)
    )


def global_arrays(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """The same numbers as ``tree``, as arrays sharded over all processes' devices (each holds its shards)."""

    def put(x: np.ndarray, spec: P) -> jax.Array:
        return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda index: x[index])

    return jax.tree.map(put, tree, SPECS)


def gathered(tree: Any) -> Any:
    """A globally sharded tree as whole numpy arrays, on every process."""
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def main(process_id: int, num_processes: int, port: int, path: str) -> int:
    record: dict[str, Any] = {"process_id": process_id, "stage": "setup", "ok": False, "checks": {}}

    def write() -> None:
        with open(path, "w") as f:
            json.dump(record, f, indent=1)

    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}",
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=120,
        )
        mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto))
        probe = jax.make_array_from_callback((8,), NamedSharding(mesh, P(("data", "model"))), lambda i: np.ones(8)[i])
        total = float(jax.jit(jnp.sum)(probe))  # one cross-process all-reduce
        assert total == 8.0, f"a sum over both processes gave {total}, not 8"
        record.update(
            devices=jax.device_count(),
            local_devices=jax.local_device_count(),
            process_count=jax.process_count(),
            mesh_processes=[[d.process_index for d in row] for row in mesh.devices],  # which process holds what
        )
    except Exception as exc:  # noqa: BLE001  (reported to the test, which skips)
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc()[-3000:]
        write()
        return 3

    record["stage"] = "checks"
    try:
        params, grads = random_tree(0), jax.tree.map(lambda x: 3 * x, random_tree(1))
        sp, sg = global_arrays(params, mesh), global_arrays(grads, mesh)
        digest = hashlib.sha256()

        clip = jaxreg.clip_by_global_norm(1.0)
        clipped, state = jax.jit(lambda g: clip.update(g, clip.init(g)))(sg)
        ref_clipped, ref_state = clip.update(grads, clip.init(grads))
        norm, ref_norm = float(state.norm), float(ref_state.norm)
        out = gathered(clipped)
        diff = max(
            float(np.max(np.abs(a - np.asarray(b)))) for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref_clipped))
        )
        record["checks"]["clip_by_global_norm"] = {
            "ok": bool(np.isclose(norm, ref_norm, rtol=1e-6) and diff < 1e-6),
            "detail": f"norm {norm:.7g} (one process: {ref_norm:.7g}), max |diff| of the clipped updates {diff:.3g}",
        }
        digest.update(np.float32(norm).tobytes())

        for scope in ("global", "leaf"):
            keep = jax.jit(lambda p, scope=scope: pruning.magnitude_mask(p, 0.9, scope=scope))(sp)
            ref = pruning.magnitude_mask(params, 0.9, scope=scope)
            keep = gathered(keep)
            same = all(np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(keep), jax.tree.leaves(ref)))
            kept = sum(int(k.sum()) for k in jax.tree.leaves(keep))
            record["checks"][f"magnitude_mask_{scope}"] = {
                "ok": same,
                "detail": f"{'identical' if same else 'DIFFERENT'} to one process; {kept} weights kept",
            }
            for k in jax.tree.leaves(keep):
                digest.update(np.packbits(k).tobytes())
        record["digest"] = digest.hexdigest()
        record["ok"] = all(c["ok"] for c in record["checks"].values())
    except Exception as exc:  # noqa: BLE001
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc()[-3000:]
    write()
    jax.distributed.shutdown()
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
