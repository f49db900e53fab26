"""The teaching notebooks in examples/ run top to bottom, draw their figures and print sane numbers.

Every ``examples/[0-9]*.py`` (jupytext percent format) is found automatically and run
in its own Python process, a clean start like a fresh kernel, with ``JAXREG_SMALL=1``
(fewer steps and points) and ``JAXREG_FIGURES`` pointing at a temporary folder; up to
``JAXREG_EXAMPLES_WORKERS`` (default: 2, or 1 on one core) run at the same time. A
notebook prints ``RESULT name=value`` lines (``examples/_common.py``'s ``report``);
``EXPECTED`` below lists, per notebook, the figures it must write and the checks its
numbers must pass. A new notebook fails here until it has an entry: add the figures it
saves and a few checks that would catch a broken lesson (losses fall, sparsity reached,
accuracy above chance, two implementations agree).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TypedDict

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("[0-9]*.py"))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RESULT_LINE = re.compile(r"^RESULT ([A-Za-z_][A-Za-z0-9_]*)=(\S+)\s*$", re.MULTILINE)
TIMEOUT_S = 600

Check = Callable[[dict[str, float]], bool]  # RESULT values by name -> passes?


class Expectation(TypedDict):
    figures: list[str]  # PNG files the notebook must write, without ".png"
    checks: dict[str, Check]  # what the check says -> the check


# One entry per notebook, keyed by file stem.
EXPECTED: dict[str, Expectation] = {
    "01_functional_view": {
        "figures": ["01_jax_vs_torch", "01_sparsity_vs_lambda"],
        "checks": {
            "every hand-written stage matches the jaxreg chain": lambda r: r["stage_max_abs_diff"] < 1e-5,
            "the training loss falls tenfold": lambda r: r["final_loss"] < 0.1 * r["initial_loss"],
            "PyTorch's imperative loop gives the same parameters": lambda r: r["torch_max_abs_diff_100_steps"] < 1e-4,
            "... and the same final loss": lambda r: r["torch_final_loss_rel_diff"] < 1e-3,
            "a vmapped run equals the same run alone": lambda r: r["vmap_vs_single_max_abs_diff"] < 1e-5,
            "ISTA sparsity goes from none to (nearly) all": lambda r: (
                r["sparsity_sgd_min"] == 0 and r["sparsity_sgd_max"] >= 0.95
            ),
            "ISTA sparsity grows with lambda": lambda r: r["sparsity_sgd_monotone"] == 1,
            "ISTA finds the true support for some lambda": lambda r: r["sgd_lambdas_with_exact_support"] >= 1,
            "Adam + L1 prox is a switch: few zeros below 0.5, all above": lambda r: (
                r["sparsity_adam_below_lam_0_5"] <= 0.2 and r["sparsity_adam_max"] == 1
            ),
            "the best lambda predicts well": lambda r: r["best_val_mse_sgd"] < 0.1,
        },
    },
    "02_hard_regularization": {
        "figures": ["02_brakes_one_at_a_time", "02_hard_vs_soft", "02_grid_search"],
        "checks": {
            "the loss falls to the noise level": lambda r: (
                r["final_loss"] < 0.05 * r["initial_loss"] and r["final_loss"] < 0.4
            ),
            "the fitted line is close to y = 3x + 2": lambda r: (
                abs(r["slope"] - 3) < 0.3 and abs(r["intercept"] - 2) < 0.3
            ),
            "gradient descent reaches the penalty's closed form": lambda r: r["l2_closed_form_max_diff"] < 1e-3,
            "a binding box holds the slope at c": lambda r: abs(r["box_slope_c2_5"] - 2.5) < 1e-6,
            "the box is never violated": lambda r: r["box_max_violation"] == 0,
            "clipping does not move the end point": lambda r: r["clip_L1_vs_unclipped_slope_diff"] < 1e-3,
            "clipping binds early and not late": lambda r: (
                r["clipped_fraction_first_step_L0_2"] == 1 and r["clipped_fraction_last_step_L0_2"] == 0
            ),
            "the box and its Lagrange penalty give the same line": lambda r: r["hard_soft_max_diff"] < 1e-3,
            "the grid search has 60 settings": lambda r: r["grid_size"] == 60,
            "the chosen box is no tighter than the true slope": lambda r: r["best_c"] >= 3,
            "the chosen setting predicts well, the worst badly": lambda r: (
                r["best_val_mse"] < 0.5 and r["worst_val_mse"] > 2 * r["best_val_mse"]
            ),
        },
    },
    "03_weight_and_lr_decay": {
        "figures": ["03_schedules", "03_training_curves", "03_sweeps", "03_wd_clip_l1"],
        "checks": {
            "for SGD, penalty, coupled and decoupled decay agree": lambda r: (
                r["sgd_penalty_vs_coupled_max_diff"] < 1e-5 and r["sgd_coupled_vs_decoupled_max_diff"] < 1e-5
            ),
            "for Adam, coupled and decoupled decay differ": lambda r: r["adam_coupled_vs_decoupled_slope_diff"] > 0.01,
            "both decays lower the SGD noise floor threefold": lambda r: (
                max(r["excess_loss_inverse_sqrt"], r["excess_loss_epoch"]) < r["excess_loss_constant"] / 3
            ),
            "both decays lower the test MSE": lambda r: (
                max(r["test_mse_inverse_sqrt"], r["test_mse_epoch"]) < r["test_mse_constant"]
            ),
            "the best gamma and d are not zero": lambda r: r["best_gamma"] > 0 and r["best_epoch_decay"] > 0,
            "the best decays beat a constant rate": lambda r: (
                r["best_test_mse"] < r["test_mse_gamma0"]
                and r["test_mse_best_epoch_decay"] < r["test_mse_epoch_decay0"]
            ),
            "a large weight decay hurts": lambda r: r["test_mse_largest_lambda"] > 1.5 * r["best_test_mse"],
            "weight decay zeroes no coefficient": lambda r: r["l2_irrelevant_zeros"] == 0,
            "L1 zeroes at least half of the irrelevant features": lambda r: r["l1_irrelevant_zeros"] >= 15,
            "L1 keeps the relevant feature": lambda r: r["l1_keeps_relevant"] == 1,
            "L1 beats plain least squares on the test set": lambda r: r["test_mse_l1"] < r["test_mse_plain"],
            "clipping ends where plain gradient descent ends": lambda r: r["clip_vs_plain_max_diff"] < 1e-4,
        },
    },
    "04_penalty_zoo": {
        "figures": [
            "04_coefficient_paths",
            "04_noise_and_dropout",
            "04_early_stopping",
            "04_multitask",
            "04_sparse_activations",
        ],
        "checks": {
            "ISTA with l1_prox / elastic_net_prox gives scikit-learn's lasso and enet paths": lambda r: (
                r["lasso_path_max_diff"] < 1e-4 and r["enet_path_max_diff"] < 1e-4
            ),
            "... with the same exact zeros (up to a coefficient at its entry point)": lambda r: (
                r["lasso_zero_pattern_mismatches"] <= 2 and r["enet_zero_pattern_mismatches"] <= 2
            ),
            "the lasso path runs from no coefficient to all ten": lambda r: (
                r["lasso_nonzero_at_alpha_max"] == 0 and r["lasso_nonzero_at_alpha_min"] == 10
            ),
            "a sum-of-squares loss needs strength n * alpha": lambda r: (
                r["sum_loss_unscaled_max_diff"] > 0.1 and r["sum_loss_scaled_max_diff"] < 1e-4
            ),
            "weight decay gives Ridge(alpha = n * lam), with no exact zeros": lambda r: (
                r["ridge_path_max_diff"] < 1e-4 and r["ridge_path_exact_zeros"] == 0
            ),
            "with a twin feature the lasso keeps one, the elastic net shares": lambda r: (
                r["twin_paths_max_diff"] < 1e-4
                and r["twin_lasso_nonzero"] <= 2
                and r["twin_enet_nonzero"] >= 10
                and r["twin_enet_max"] > 0.05
            ),
            "the plain network fits below the noise level": lambda r: r["toy_train_mse_plain"] < 0.09,
            "input and hidden noise end closer to the truth than the plain network": lambda r: (
                max(r["toy_test_mse_input_noise"], r["toy_test_mse_hidden_noise"]) < 0.7 * r["toy_test_mse_plain"]
            ),
            "dropout ends closer to the truth too": lambda r: r["toy_test_mse_dropout"] < r["toy_test_mse_plain"],
            "early stopping keeps better parameters than the end of the run": lambda r: (
                r["early_stop_test_mse_best"] < r["early_stop_test_mse_end"]
                and r["early_stop_best_step"] < r["early_stop_stop_step"]
            ),
            "auxiliary tasks at least halve the main task's test error": lambda r: (
                r["multitask_main_test_mse_shared"] < 0.5 * r["multitask_main_test_mse_single"]
                and r["multitask_aux_test_mse"] < 0.2
            ),
            "activity L1 halves the active units without losing accuracy": lambda r: (
                r["activity_active_units_strong"] < 0.5 * r["activity_active_units_plain"]
                and r["activity_zero_fraction_strong"] > r["activity_zero_fraction_plain"]
                and r["activity_accuracy_strong"] > 0.9
                and r["activity_accuracy_plain"] > 0.9
            ),
        },
    },
    "05_regularize_then_prune": {
        "figures": [
            "05_weights",
            "05_accuracy_vs_sparsity",
            "05_structured_and_nm",
            "05_gradual_vs_oneshot",
        ],
        "checks": {
            "every network learns the digits": lambda r: (
                min(r["accuracy_plain"], r["accuracy_l2"], r["accuracy_l1"], r["accuracy_strong_l1"]) > 0.9
            ),
            "only the L1 prox makes exact zeros, more with a larger lambda": lambda r: (
                r["zeros_plain"] < 0.01
                and r["zeros_l2"] < 0.01
                and 0.1 < r["zeros_l1"] < r["zeros_strong_l1"]
                and r["zeros_strong_l1"] > 0.8
            ),
            "regularizing first makes 90% global pruning cheaper": lambda r: (
                r["pruned90_global_l1"] > r["pruned90_global_plain"] + 0.05
                and r["pruned90_global_l2"] > r["pruned90_global_plain"]
            ),
            "strong L1 survives 95% pruning": lambda r: r["pruned95_global_strong_l1"] > 0.9,
            "L1 and strong L1 can be pruned further than the plain network": lambda r: (
                r["safe_sparsity_global_plain"] < r["safe_sparsity_global_l1"] < r["safe_sparsity_global_strong_l1"]
            ),
            "global pruning beats per-leaf pruning at 90%": lambda r: (
                r["pruned90_global_plain"] > r["pruned90_leaf_plain"]
            ),
            "structured and N:M masks reach their sparsity and cost accuracy": lambda r: (
                r["nm_2_4_sparsity"] == 0.5
                and r["structured_half_units_sparsity_plain"] > 0.5
                and r["structured_half_units_accuracy_plain"] < r["accuracy_plain"]
                and r["nm_1_4_accuracy_plain"] < r["leaf75_accuracy_plain"]
            ),
            "on the L1 network N:M costs less": lambda r: (
                r["nm_1_4_accuracy_l1"] > r["nm_1_4_accuracy_plain"]
                and r["nm_2_4_accuracy_l1"] > r["nm_2_4_accuracy_plain"]
            ),
            "gradual and one-shot pruning reach the same 98% sparsity": lambda r: (
                abs(r["final_sparsity_gradual"] - 0.98) < 1e-3 and abs(r["final_sparsity_oneshot"] - 0.98) < 1e-3
            ),
            "pruning 98% at once drops to near chance; fine-tuning recovers": lambda r: (
                r["accuracy_oneshot_before_finetuning"] < 0.5 and r["accuracy_oneshot_finetuned"] > 0.9
            ),
            "gradual pruning ends at least as accurate as one-shot with fine-tuning": lambda r: (
                r["accuracy_gradual"] >= r["accuracy_oneshot_finetuned"]
            ),
        },
    },
    "06_from_pytorch": {
        "figures": ["06_weight_decay_vs_torch", "06_clip_grad_norm", "06_bias_init", "06_choosing_lambda"],
        "checks": {
            "every weight-decay recipe gives PyTorch's parameters": lambda r: r["recipes_max_abs_diff"] < 1e-5,
            "... while the decay itself moves them far more": lambda r: r["decay_effect_min"] > 1e-3,
            "AdamW defaults: 1e-2 in PyTorch, 1e-4 in optax": lambda r: (
                abs(r["torch_adamw_default_wd"] - 1e-2) < 1e-9 and abs(r["optax_adamw_default_wd"] - 1e-4) < 1e-9
            ),
            "optax.adamw(lr) differs from AdamW(lr); weight_decay=1e-2 matches it": lambda r: (
                r["adamw_defaults_max_abs_diff"] > 1e-4 and r["adamw_matched_max_abs_diff"] < 1e-5
            ),
            "at the same lambda, coupled Adam decays harder than AdamW": lambda r: (
                r["weight_norm_adam_coupled"] < r["weight_norm_adamw"] < r["weight_norm_no_decay"]
            ),
            "the weights-only mask spares the biases": lambda r: (
                r["bias_norm_adam_coupled_weights_only"] > 2 * r["bias_norm_adam_coupled"]
            ),
            "the logged pre-clip norm is clip_grad_norm_'s": lambda r: r["clip_norm_max_rel_diff"] < 1e-4,
            "clip + SGD gives PyTorch's parameters": lambda r: r["clip_max_abs_diff"] < 1e-5,
            "clipping binds on some steps, not all, and matters": lambda r: (
                0 < r["clipped_step_fraction"] < 1 and r["clip_effect"] > 1e-3
            ),
            "zero and random biases train equally well": lambda r: (
                r["bias_init_zero_final_mse"] < 1.25 * r["bias_init_torch_final_mse"]
                and r["zero_bias_distinct_units"] == 32
            ),
            "equal weights stay one unit and do not fit": lambda r: (
                r["equal_weights_distinct_units"] == 1
                and r["bias_init_equal_weights_final_mse"] > 2 * r["bias_init_zero_final_mse"]
            ),
            "batch norm cancels a bias": lambda r: r["batchnorm_bias_invariance_max_diff"] < 1e-5,
            "the CV optimum is inside the grid": lambda r: 0 < r["grid_best_index"] < r["grid_size"] - 1,
            "the CV choice fits the true curve far better than either extreme": lambda r: (
                r["true_mse_cv_best"] < 0.5 * min(r["true_mse_smallest_lambda"], r["true_mse_largest_lambda"])
            ),
            "random search does about as well as the grid": lambda r: (
                r["random_best_cv_mse"] < 1.1 * r["grid_best_cv_mse"]
            ),
        },
    },
    "07_sweeps_and_selection": {
        "figures": ["07_vmap_vs_loop", "07_kfold_cv", "07_hypergradient"],
        "checks": {
            "the loop and the vmap each compile once": lambda r: r["loop_compiles"] == 1 and r["vmap_compiles"] == 1,
            "the vmapped sweep equals the loop": lambda r: r["sweep_vs_loop_max_rel_diff"] < 1e-5,
            "vmap is not slower than the loop by more than 2x": lambda r: r["vmap_speedup"] > 0.5,
            "a static lambda compiles once per value": lambda r: r["static_compiles"] >= 3,
            "folds as weights give the index-based (KFold) scores": lambda r: (
                r["cv_weights_vs_slicing_max_rel_diff"] < 1e-4
            ),
            "the CV choice beats no regularization on held-out data": lambda r: (
                r["holdout_mse_at_cv_choice"] < r["holdout_mse_smallest_lambda"]
            ),
            "unrolled_val_loss is the swept function": lambda r: r["unrolled_vs_sweep_max_rel_diff"] < 1e-5,
            "the hypergradient matches a finite difference": lambda r: r["hypergrad_vs_finite_diff_rel"] < 1e-2,
            "tune_strength ends much closer to the grid optimum, from below and above": lambda r: (
                max(r["end_gap_from_below_decades"], r["end_gap_from_above_decades"]) < 0.3 * r["start_gap_decades"]
            ),
            "the tuned lambdas validate about as well as the grid optimum": lambda r: (
                max(r["val_mse_tuned_from_below"], r["val_mse_tuned_from_above"]) < 1.05 * r["val_mse_grid_optimum"]
            ),
        },
    },
    "08_scaling_out": {
        "figures": ["08_shardings", "08_training"],
        "checks": {
            "the notebook sees 8 devices": lambda r: r["devices"] == 8,
            "the loss falls fivefold": lambda r: r["final_loss"] < 0.2 * r["initial_loss"],
            "gradual pruning reaches 80 % of the kernels": lambda r: abs(r["final_kernel_sparsity"] - 0.8) < 1e-6,
            "the optimizer update communicates scalars only": lambda r: (
                r["update_all_gathers"] == 0
                and r["update_non_scalar_collectives"] == 0
                and r["update_all_reduces"] >= 1
            ),
            "the training step communicates more than the update (FSDP, data parallel)": lambda r: (
                r["step_all_gathers"] + r["step_all_reduces"] > r["update_all_reduces"]
            ),
            "each replayed step equals one device's, masks included": lambda r: (
                r["steps_replayed_on_one_device"] >= 3
                and r["max_step_diff_vs_one_device"] < 1e-5
                and r["step_masks_identical_to_one_device"] == 1
            ),
            "a whole run on one device ends as well": lambda r: 0.5 < r["final_loss_one_device"] / r["final_loss"] < 2,
        },
    },
    # Timings are only checked to be positive: machines (and a busy 2-core CI) vary.
    # native=0 (no C++ compiler, JAXREG_NATIVE=0) makes apply_step the plain step.
    "09_one_pass_step": {
        "figures": ["09_traffic_and_time"],
        "checks": {
            "the one pass gives the plain chain's parameters and state": lambda r: (
                r["max_abs_diff_params"] < 1e-5 and r["max_abs_diff_state"] < 1e-5 and r["params_moved"] > 1e-4
            ),
            "jaxreg.nn.Optimizer trains like nnx.Optimizer": lambda r: r["nnx_optimizer_max_abs_diff"] < 1e-5,
            "an SGD chain with a value clip is one custom call with the plain chain's numbers": lambda r: (
                (r["native"] == 0 or (r["sgd_step_custom_calls"] == 1 and r["sgd_sumsq_custom_calls"] == 0))
                and r["sgd_max_abs_diff"] < 1e-5
                and 0.1 < r["sgd_clipped_fraction"] < 0.9
            ),
            "the plain step makes three loops per leaf and moves over 10 transfers per parameter": lambda r: (
                r["unfused_param_loops"] >= 3 * r["leaves"]
                and r["unfused_custom_calls"] == 0
                and r["unfused_bytes_per_param"] > 40
            ),
            "with native kernels, the one pass is jaxreg_sumsq + jaxreg_step, 32 bytes per parameter": lambda r: (
                r["native"] == 0
                or (
                    r["fused_step_custom_calls"] == 1
                    and r["fused_sumsq_custom_calls"] == 1
                    and r["fused_param_loops"] == 0
                    and abs(r["fused_bytes_per_param"] - 32) < 1
                )
            ),
            "without them, apply_step compiles to the plain step": lambda r: (
                r["native"] == 1
                or (r["fused_step_custom_calls"] == 0 and r["fused_param_loops"] == r["unfused_param_loops"])
            ),
            "max_norm fuses as a stage of the same call, with the plain chain's numbers and the cap held": lambda r: (
                (r["native"] == 0 or r["max_norm_step_custom_calls"] == 1)
                and r["max_norm_max_abs_diff"] < 1e-5
                and abs(r["max_norm_largest_unit_norm"] - 0.3) < 1e-5
            ),
            "fast_path names a reason for each unfusable case; apply_step then is update + apply_updates": lambda r: (
                r["fallback_reasons"] == 3 and r["fallback_custom_calls"] == 0 and r["fallback_max_abs_diff"] < 1e-6
            ),
            "the times and the bandwidth are positive": lambda r: all(
                r[k] > 0
                for k in ("seconds_optax_chain", "seconds_apply_step", "seconds_bandwidth_probe", "bandwidth_gb_s")
            ),
        },
    },
}


# Notebooks run in parallel, up to WORKERS at a time (each is mostly single-threaded
# compilation), started in test order as soon as the module's first test asks for one.
WORKERS = int(os.environ.get("JAXREG_EXAMPLES_WORKERS", min(2, os.cpu_count() or 1)))


@dataclasses.dataclass
class NotebookRun:
    returncode: int
    stdout: str
    stderr: str
    figures: pathlib.Path
    seconds: float


class _Runner:
    """Runs notebooks in subprocesses, at most ``WORKERS`` at once; ``result`` waits for one."""

    def __init__(self, notebooks: list[pathlib.Path], root: pathlib.Path):
        self._queue = list(notebooks)
        self._root = root
        self._running: dict[pathlib.Path, tuple] = {}
        self._done: dict[pathlib.Path, NotebookRun] = {}

    def _start_more(self) -> None:
        while self._queue and len(self._running) < WORKERS:
            notebook = self._queue.pop(0)
            folder = self._root / notebook.stem
            folder.mkdir()
            out, err = open(folder / "stdout.txt", "w+"), open(folder / "stderr.txt", "w+")
            env = dict(os.environ, JAXREG_SMALL="1", JAXREG_FIGURES=str(folder / "figures"), MPLBACKEND="Agg")
            proc = subprocess.Popen([sys.executable, notebook.name], cwd=EXAMPLES, env=env, stdout=out, stderr=err)
            self._running[notebook] = (proc, time.monotonic(), out, err, folder)

    def _reap(self) -> None:
        for notebook, (proc, start, out, err, folder) in list(self._running.items()):
            seconds = time.monotonic() - start
            if proc.poll() is None and seconds > TIMEOUT_S:
                proc.kill()
                proc.wait()
            if proc.poll() is not None:
                out.seek(0)
                err.seek(0)
                self._done[notebook] = NotebookRun(proc.returncode, out.read(), err.read(), folder / "figures", seconds)
                out.close()
                err.close()
                del self._running[notebook]

    def result(self, notebook: pathlib.Path) -> NotebookRun:
        if notebook not in self._done and notebook not in self._running:
            if notebook in self._queue:
                self._queue.remove(notebook)
            self._queue.insert(0, notebook)
        while notebook not in self._done:
            self._reap()
            self._start_more()
            time.sleep(0.05)
        return self._done.pop(notebook)

    def close(self) -> None:
        self._queue.clear()
        for proc, _, out, err, _ in self._running.values():
            proc.kill()
            proc.wait()
            out.close()
            err.close()


@pytest.fixture(scope="module")
def notebook_runner(request, tmp_path_factory):
    # Queue every notebook this session will test, so that the next one runs while the
    # current one is checked (under pytest-xdist, only on demand).
    wanted = []
    if "PYTEST_XDIST_WORKER" not in os.environ:
        wanted = [
            item.callspec.params["notebook"]
            for item in request.session.items
            if getattr(item, "originalname", None) == "test_notebook_runs_and_its_numbers_are_sane"
        ]
    runner = _Runner(wanted, tmp_path_factory.mktemp("notebooks"))
    yield runner
    runner.close()


def _results(stdout: str) -> dict[str, float]:
    return {name: float(value) for name, value in RESULT_LINE.findall(stdout)}


def test_notebooks_are_found():
    assert len(NOTEBOOKS) >= 3, f"expected the notebooks in {EXAMPLES}, found {NOTEBOOKS}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_its_numbers_are_sane(notebook, notebook_runner):
    expected = EXPECTED.get(notebook.stem)
    assert expected is not None, (
        f"{notebook.name} has no entry in EXPECTED (tests/test_examples.py): add the figures it saves "
        "and checks on the RESULT lines it prints."
    )
    run = notebook_runner.result(notebook)
    log = f"--- stdout (tail) ---\n{run.stdout[-3000:]}\n--- stderr (tail) ---\n{run.stderr[-3000:]}"
    assert run.returncode == 0, f"{notebook.name} exited with {run.returncode} after {run.seconds:.0f} s\n{log}"

    problems = []
    for name in expected["figures"]:
        png = run.figures / f"{name}.png"
        if not png.is_file():
            problems.append(f"figure {png.name} was not written")
        elif png.stat().st_size < 5000 or not png.read_bytes().startswith(PNG_SIGNATURE):
            problems.append(f"figure {png.name} is not a proper PNG ({png.stat().st_size} bytes)")

    results = _results(run.stdout)
    if not results:
        problems.append("no RESULT lines printed")
    problems += [f"RESULT {k}={v} is not finite" for k, v in results.items() if not math.isfinite(v)]
    for description, check in expected["checks"].items():
        try:
            ok = check(results)
        except KeyError as missing:
            problems.append(f"{description}: no RESULT line for {missing}")
            continue
        if not ok:
            problems.append(f"{description}: failed")
    assert not problems, f"{notebook.name}:\n  " + "\n  ".join(problems) + f"\nRESULTS: {results}\n{log}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_converts_to_ipynb(notebook, tmp_path):
    # jupytext's Python API, what `jupytext --to ipynb` calls, without a process per notebook.
    import jupytext

    out = tmp_path / f"{notebook.stem}.ipynb"
    jupytext.write(jupytext.read(notebook), out, fmt="ipynb")
    cells = json.loads(out.read_text())["cells"]
    kinds = [cell["cell_type"] for cell in cells]
    assert kinds[0] == "markdown", f"{notebook.name} should open with a markdown cell (title and idea), not {kinds[0]}"
    assert "".join(cells[0]["source"]).startswith("# "), f"{notebook.name}: the first cell should hold a '# ' title"
    assert kinds.count("markdown") >= 5 and kinds.count("code") >= 5, (
        f"{notebook.name}: a teaching notebook alternates prose and code; got {kinds.count('markdown')} "
        f"markdown and {kinds.count('code')} code cells"
    )
