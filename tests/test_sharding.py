"""Every transform and mask function on parameters sharded over 8 devices: one device's numbers, no gathers.

The checks run in one subprocess (``tests/sharded/checks.py``) with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``, so that the rest of the suite
keeps its single device, and they share compiled programs because compilation is
what takes the time. Each check runs on an ``Auto`` mesh and an ``Explicit`` mesh of
shape ``(data=2, model=4)`` with FSDP-style shardings (kernels split over both axes or
one, on different dimensions; an embedding split 8 ways; replicated biases and a
scalar). The subprocess reports one record per check; here each becomes a test:

* ``transform/<name>``: under ``jax.jit``, on sharded params and gradients, the
  updates equal one device's (to float tolerance) and keep the params' shardings; the
  state ``init`` makes on sharded params is sharded like them;
* ``mask/<name>``: the pruning mask and the params it prunes are identical to one
  device's and sharded as the params;
* ``hlo/<program>``: the compiled program moves no parameter-sized data: the card's
  chain and global magnitude pruning communicate only all-reduces of scalars;
* ``sharded/<program>``, ``gradual_pruning_5_steps``: the same programs (and five
  steps of Adam with gradual global pruning) give one device's numbers;
* ``bad_input/<case>``: trees that do not match the params raise errors naming the
  leaf; a mesh axis that does not exist is JAX's error (jaxreg takes no axis names);
  with Explicit axes, ``n_m_mask`` names a leaf whose shards would split its blocks;
* ``explicit/mask_without_mesh/<name>``: outside ``jax.set_mesh``, random masks and
  scores (which read only the params' shapes) give one device's numbers, sharded as
  the params.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parent / "sharded" / "checks.py"
TIMEOUT_S = 600

TRANSFORMS = [
    "clip",
    "clip_by_global_norm",
    "clip_by_leaf_norm",
    "coupled_weight_decay",
    "decoupled_weight_decay",
    "l1_prox",
    "elastic_net_prox",
    "group_lasso_prox",
    "project_box",
    "project_nonnegative",
    "project_l2_ball",
    "project_l1_ball",
    "max_norm",
    "keep_pruned",
    "prune_during_training_leaf",
]
MASKS = ["magnitude_mask_leaf", "structured_mask", "n_m_mask", "random_mask_global", "threshold_mask"]
PROGRAMS = ["card_chain", "magnitude_mask_global", "prune_during_training_global"]
BAD_INPUT = [
    "mask_tree_missing_leaf",
    "bound_tree_missing_leaf",
    "keep_tree_extra_leaf",
    "where_tree_missing_leaf",
    "unknown_mesh_axis",
    "differently_sharded_bounds",
    "differently_sharded_keep",
    "n_m_mask_blocks_across_shards",
]
WITHOUT_MESH = ["random_mask", "random_mask_jit", "random_score"]
CHECKS = [
    f"{mode}/{check}"
    for mode in ("auto", "explicit")
    for check in (
        [f"transform/{name}" for name in TRANSFORMS]
        + [f"mask/{name}" for name in MASKS]
        + [f"{kind}/{name}" for name in PROGRAMS for kind in ("hlo", "sharded")]
        + ["hlo/all_transforms", "hlo/all_masks", "gradual_pruning_5_steps"]
        + [f"bad_input/{name}" for name in BAD_INPUT]
    )
] + [f"explicit/mask_without_mesh/{name}" for name in WITHOUT_MESH]


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("sharded") / "records.json"
    # Eight host devices for the subprocess only; LLVM's optimizations are switched off
    # there because compiling, not running, is what these small programs spend time on.
    flags = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    env = dict(os.environ, XLA_FLAGS=flags)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert proc.returncode == 0, (
        f"{SCRIPT.name} exited with {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return json.loads(out.read_text())


def test_every_check_ran(records):
    assert sorted(records) == sorted(CHECKS), (
        f"checks that did not run: {sorted(set(CHECKS) - set(records))}; "
        f"checks this file does not know: {sorted(set(records) - set(CHECKS))}"
    )


@pytest.mark.parametrize("name", CHECKS)
def test_sharded(records, name):
    record = records.get(name)
    assert record is not None, f"{name} did not run"
    assert record["ok"], f"{name}: {record['detail']}"
