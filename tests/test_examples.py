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
    out = tmp_path / f"{notebook.stem}.ipynb"
    proc = subprocess.run(
        [sys.executable, "-m", "jupytext", "--to", "ipynb", "--output", str(out), str(notebook)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    cells = json.loads(out.read_text())["cells"]
    kinds = [cell["cell_type"] for cell in cells]
    assert kinds[0] == "markdown", f"{notebook.name} should open with a markdown cell (title and idea), not {kinds[0]}"
    assert "".join(cells[0]["source"]).startswith("# "), f"{notebook.name}: the first cell should hold a '# ' title"
    assert kinds.count("markdown") >= 5 and kinds.count("code") >= 5, (
        f"{notebook.name}: a teaching notebook alternates prose and code; got {kinds.count('markdown')} "
        f"markdown and {kinds.count('code')} code cells"
    )
