"""``python -m jaxreg.demo``: regularization and pruning on handwritten digits, over several seeds.

Trains the same network (:class:`jaxreg.nn.MLP`, 64-256-256-10, Adam) on scikit-learn's
bundled 8x8 digits (1797 images, no download) without regularization and with coupled
L2 (PyTorch's ``weight_decay``), decoupled weight decay (AdamW), an L1 proximal step,
and dropout with Gaussian noise; early stopping watches the unregularized runs. Every
configuration is trained from ``--seeds`` seeds, each seed a lane of one
``jax.vmap``-ed, jitted training program (the configurations that differ only in their
optimizer's strengths are lanes of the same program), then pruned one-shot by
magnitude (:func:`jaxreg.pruning.magnitude_mask`) at 0 to 98% sparsity without
retraining.

It prints two tables of mean ± std over the seeds (test accuracy, test loss, exact
zeros, epochs; test accuracy at each pruning level) and writes three PNG figures into
``--out``: ``accuracy_vs_sparsity.png`` (where does pruning start to hurt, and does
L1 first move that point?), ``loss_curves.png`` (which regularizer keeps the validation
loss down, and where does early stopping stop?) and ``weight_histograms.png`` (where do
the weights end up?). The same ``--seed`` gives the same tables.

Needs scikit-learn (the data) and matplotlib (the figures): ``pip install 'jaxreg[dev]'``,
or ``make demo``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxreg.demo.train import Config, Data, Lanes, train

LEARNING_RATE = 1e-3
FAST_LEARNING_RATE = 1e-2
BATCH_SIZE = 64
DEFAULT_EPOCHS = 60
FAST_EPOCHS = 30
HIDDEN = (256, 256)
FAST_HIDDEN = (64,)
DEFAULT_SEEDS = 5
LEVELS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98)  # one-shot pruning sparsities
MAX_SEED = 2**32 - 1  # the largest seed NumPy's RandomState (scikit-learn's random_state) takes
EARLY_STOPPING = "early stopping"
WATCHED = "no regularization"  # the runs early stopping watches
L1 = "L1 prox"

CONFIGURATIONS = (
    Config(WATCHED),
    Config("coupled L2 (Adam + L2)", l2=1e-3),
    Config("decoupled decay (AdamW)", weight_decay=0.1),
    Config(L1, l1=0.2),
    Config("dropout + noise", dropout_rate=0.3, input_noise_std=0.1, hidden_noise_std=0.1),
)


class Outcome(NamedTuple):
    """What one configuration produced; arrays have one row per seed."""

    name: str
    test_accuracy: np.ndarray  # (seeds,)
    test_loss: np.ndarray  # (seeds,)
    sparsity: np.ndarray  # (seeds,) fraction of kernel weights exactly zero
    epochs: np.ndarray  # (seeds,) epochs trained; for early stopping, the epoch where it stopped
    kept_epoch: np.ndarray | None  # early stopping: the epoch whose weights it kept (None: the last one)
    pruned_accuracy: np.ndarray  # (seeds, levels) test accuracy after one-shot magnitude pruning
    train_loss: np.ndarray  # (seeds, epochs) in training mode
    val_loss: np.ndarray  # (seeds, epochs)
    kernels: np.ndarray  # (seeds, weights) the kernel weights kept, flattened


class Results(NamedTuple):
    """What :func:`run` returns."""

    outcomes: list[Outcome]
    levels: tuple[float, ...]  # the columns of ``Outcome.pruned_accuracy``
    timings: list[tuple[list[str], float]]  # (names of one program's configurations, seconds with compilation)


def _require(module: str, purpose: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        sys.exit(
            f"jaxreg.demo needs {module} for {purpose}; install it with pip install 'jaxreg[dev]' "
            f"(or pip install {'scikit-learn' if module == 'sklearn' else module})."
        )


def load_digits(seed: int) -> Data:
    """scikit-learn's digits, shuffled by ``seed`` and split 50/20/30 (train/val/test), stratified.

    Args:
      seed: seed of the split.

    Returns:
      A :class:`~jaxreg.demo.train.Data` with float32 inputs in [0, 1] of shape ``(n, 64)`` and int32 labels.
    """
    _require("sklearn", "the digits data")
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    x, y = sklearn_digits(return_X_y=True)
    x, y = (x / 16.0).astype(np.float32), y.astype(np.int32)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=0.3, stratify=y, random_state=seed)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=2 / 7, stratify=y_rest, random_state=seed
    )
    return Data(x_train, y_train, x_val, y_val, x_test, y_test)


def _flat(kernels: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([k.reshape(k.shape[0], -1) for k in kernels], axis=1)


def _outcome(config: Config, lanes: Lanes) -> Outcome:
    epochs = lanes.train_loss.shape[1]
    return Outcome(
        config.name,
        lanes.test_accuracy,
        lanes.test_loss,
        lanes.sparsity,
        np.full(len(lanes.test_accuracy), epochs),
        None,
        lanes.pruned_accuracy,
        lanes.train_loss,
        lanes.val_loss,
        _flat(lanes.kernels),
    )


def _early_stopping(lanes: Lanes) -> Outcome:
    """Early stopping on the watched runs: their curves, the epoch it stopped at, the weights it kept."""
    return Outcome(
        EARLY_STOPPING,
        lanes.best_test_accuracy,
        lanes.best_test_loss,
        lanes.best_sparsity,
        lanes.stop_epoch,
        lanes.best_epoch,
        lanes.best_pruned_accuracy,
        lanes.train_loss,
        lanes.val_loss,
        _flat(lanes.best_kernels),
    )


def run(
    epochs: int, hidden: Sequence[int], seed: int, lr: float = LEARNING_RATE, seeds: int = DEFAULT_SEEDS
) -> Results:
    """Trains every configuration from ``seeds`` seeds and prunes the results.

    Args:
      epochs: epochs per run.
      hidden: hidden layer widths.
      seed: seed of the data split and of the runs' keys.
      lr: Adam's learning rate.
      seeds: runs per configuration (lanes of the vmapped program).

    Returns:
      :class:`Results`, one :class:`Outcome` per configuration and one for early stopping.
    """
    data = load_digits(seed)
    keys = jax.random.split(jax.random.key(seed), seeds)
    sizes = dict(
        hidden=tuple(hidden),
        lr=lr,
        epochs=epochs,
        batch_size=BATCH_SIZE,
        patience=max(2, epochs // 6),
        levels=LEVELS,
    )
    lanes, timings = train(CONFIGURATIONS, data, keys, **sizes)
    outcomes = [_outcome(c, lane) for c, lane in zip(CONFIGURATIONS, lanes)]
    outcomes.append(_early_stopping(lanes[[c.name for c in CONFIGURATIONS].index(WATCHED)]))
    return Results(outcomes, LEVELS, timings)


def _mean_std(values: np.ndarray, scale: float = 1.0, digits: int = 2) -> str:
    values = np.asarray(values, np.float64) * scale
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
    )
    top = line(head)
    return "\n".join([top, "-" * len(top), *map(line, rows)])


def format_table(outcomes: Sequence[Outcome]) -> str:
    """Test accuracy, test loss, exact zeros and epochs, mean ± std over the seeds.

    Args:
      outcomes: one :class:`Outcome` per configuration.

    Returns:
      The table as a string.
    """
    head = ("configuration", "test acc (%)", "test loss", "zeros (%)", "epochs")
    rows = [
        (
            o.name,
            _mean_std(o.test_accuracy, 100),
            _mean_std(o.test_loss, digits=4),
            _mean_std(o.sparsity, 100, 1),
            _mean_std(o.epochs, digits=1),
        )
        for o in outcomes
    ]
    return _table(head, rows)


def format_pruning_table(outcomes: Sequence[Outcome], levels: Sequence[float]) -> str:
    """Test accuracy (%) after one-shot magnitude pruning at each sparsity, mean ± std over the seeds.

    Args:
      outcomes: one :class:`Outcome` per configuration.
      levels: the sparsities, the columns of ``Outcome.pruned_accuracy``.

    Returns:
      The table as a string.
    """
    head = ("configuration", *(f"{s:.0%} pruned" for s in levels))
    rows = [(o.name, *(_mean_std(a, 100, 1) for a in o.pruned_accuracy.T)) for o in outcomes]
    return _table(head, rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m jaxreg.demo``.

    Args:
      argv: the arguments (None: ``sys.argv[1:]``).

    Returns:
      The parsed options.
    """
    parser = argparse.ArgumentParser(
        prog="python -m jaxreg.demo",
        description=(
            "Train one MLP on scikit-learn's digits without regularization and with coupled L2, decoupled "
            "weight decay, an L1 prox and dropout + noise (early stopping watching the unregularized runs), "
            "from several seeds as lanes of one vmapped program; prune every result one-shot by magnitude; "
            "print tables of mean ± std and write PNG figures."
        ),
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"epochs per run (default {DEFAULT_EPOCHS}, {FAST_EPOCHS} with --fast)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("jaxreg-demo"), help="folder for the PNG figures (default ./jaxreg-demo)"
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help=f"a quick run with the same message: one hidden layer of {FAST_HIDDEN[0]}, Adam lr {FAST_LEARNING_RATE}",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and of the runs' keys (default 0)")
    parser.add_argument(
        "--seeds", type=int, default=DEFAULT_SEEDS, help=f"runs per configuration (default {DEFAULT_SEEDS})"
    )
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be a positive int, got {args.epochs}")
    if args.seeds < 2:
        parser.error(f"--seeds must be an int >= 2 (a standard deviation needs two runs), got {args.seeds}")
    if not 0 <= args.seed <= MAX_SEED:
        parser.error(f"--seed must lie in [0, {MAX_SEED}] (NumPy's and scikit-learn's seeds), got {args.seed}")
    return args


def main(argv: Sequence[str] | None = None) -> tuple[Results, dict[str, Any]]:
    """Runs the demo: trains, prints the tables, writes the figures.

    Args:
      argv: command-line arguments (None: ``sys.argv[1:]``).

    Returns:
      The :class:`Results` and the ``matplotlib.figure.Figure`` objects written, by file name.
    """
    args = parse_args(argv)
    epochs = args.epochs or (FAST_EPOCHS if args.fast else DEFAULT_EPOCHS)
    hidden, lr = (FAST_HIDDEN, FAST_LEARNING_RATE) if args.fast else (HIDDEN, LEARNING_RATE)
    _require("sklearn", "the digits data")
    _require("matplotlib", "the plots")
    # Before minutes of training, not after: the figures are written last.
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=args.out):
            pass
    except OSError as err:
        sys.exit(f"jaxreg.demo: cannot write the plots to --out {args.out}: {err.strerror or err}")
    print(
        f"jaxreg demo: scikit-learn digits, MLP 64-{'-'.join(map(str, hidden))}-10, Adam lr={lr}, "
        f"batch {BATCH_SIZE}, {epochs} epochs, {args.seeds} seeds from seed {args.seed}"
    )
    programs = len({c.model_options for c in CONFIGURATIONS})
    print(f"training {len(CONFIGURATIONS)} configurations x {args.seeds} seeds in {programs} vmapped programs ...")
    start = time.perf_counter()
    results = run(epochs, hidden, args.seed, lr, args.seeds)
    print(f"\nmean ± std over {args.seeds} seeds:\n")
    print(format_table(results.outcomes))
    print(
        f"\nzeros: kernel weights exactly 0.0. {EARLY_STOPPING} watches the '{WATCHED}' runs (validation loss, "
        f"patience {max(2, epochs // 6)}): epochs is where it stopped; the weights it keeps are the best epoch's."
    )
    print("\ntest accuracy (%) after one-shot magnitude pruning of every kernel, no retraining:\n")
    print(format_pruning_table(results.outcomes, results.levels))
    print()
    for names, seconds in results.timings:
        lanes = f"{len(names)} configurations x {args.seeds} seeds" if len(names) > 1 else f"{args.seeds} seeds"
        print(f"{seconds:5.1f} s (compilation included): {', '.join(names)}, {lanes} as lanes of one vmapped program")
    from jaxreg.demo.plots import write_plots

    figures = write_plots(results.outcomes, results.levels, (WATCHED, L1), args.out)
    print(f"figures written to {args.out.absolute()}/: {', '.join(figures)}")
    print(f"total time {time.perf_counter() - start:.1f} s (compilation included)")
    return results, figures
