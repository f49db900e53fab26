"""``python -m jaxreg.demo``: regularization on handwritten digits, end to end.

Trains the same network (:class:`jaxreg.nn.MLP`, 64-256-256-10) on scikit-learn's bundled
8x8 digits (1797 images, no download) once without regularization and once with each of
the regularizers of the source articles: coupled L2 (PyTorch's ``weight_decay``),
decoupled weight decay (AdamW), an L1 proximal step with gradual magnitude pruning,
dropout with Gaussian noise, and early stopping. Every run goes through
:func:`jaxreg.training.fit` with a progress bar.
It prints a table (test accuracy, test loss, sparsity of the weights, epochs, train
time) and writes three PNG plots (loss curves, weight histograms, accuracy vs sparsity)
into ``--out``. The same ``--seed`` gives the same table (times aside).

Needs scikit-learn (the data) and matplotlib (the plots): ``pip install 'jaxreg[dev]'``,
or ``make demo``.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxreg
from jaxreg import pruning
from jaxreg.training import EarlyStopping, History, fit

LEARNING_RATE = 1e-3
FAST_LEARNING_RATE = 1e-2
BATCH_SIZE = 64
DEFAULT_EPOCHS = 60
FAST_EPOCHS = 6
MAX_SEED = 2**32 - 1  # the largest seed NumPy's RandomState (scikit-learn's random_state) takes


class Digits(NamedTuple):
    """The digits split into train / validation / test sets (inputs scaled to [0, 1])."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


class Config(NamedTuple):
    """One line of the table: how the model and its optimizer are built and trained."""

    name: str
    tx: optax.GradientTransformation
    dropout_rate: float = 0.0
    input_noise_std: float = 0.0
    hidden_noise_std: float = 0.0
    early_stopping: EarlyStopping | None = None


class Outcome(NamedTuple):
    """What one configuration produced."""

    name: str
    test_accuracy: float
    test_loss: float
    sparsity: float  # fraction of kernel weights that are exactly zero
    epochs: int
    train_time: float  # seconds in fit, compilation included
    history: History
    kernels: np.ndarray  # all kernel weights, flattened (for the histogram)


def _require(module: str, purpose: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        sys.exit(
            f"jaxreg.demo needs {module} for {purpose}; install it with pip install 'jaxreg[dev]' "
            f"(or pip install {'scikit-learn' if module == 'sklearn' else module})."
        )


def load_digits(seed: int) -> Digits:
    """scikit-learn's digits, shuffled by ``seed`` and split 50/20/30 (train/val/test), stratified.

    Args:
      seed: seed of the split.

    Returns:
      A :class:`Digits` with float32 inputs of shape ``(n, 64)`` and int32 labels.
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
    return Digits(x_train, y_train, x_val, y_val, x_test, y_test)


def cross_entropy(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of the model's logits against integer labels.

    Args:
      model: the classifier.
      x: inputs ``(batch, 64)``.
      y: labels ``(batch,)``.

    Returns:
      A float32 scalar.
    """
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def accuracy(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
    """Fraction of correctly classified samples.

    Args:
      model: the classifier.
      x: inputs.
      y: labels.

    Returns:
      A float32 scalar in [0, 1].
    """
    return jnp.mean((jnp.argmax(model(x), axis=-1) == y).astype(jnp.float32))


@functools.lru_cache(maxsize=4)
def configurations(lr: float, total_steps: int, steps_per_epoch: int, patience: int) -> tuple[Config, ...]:
    """The configurations compared, each an optimizer chain around Adam and model options.

    Cached, so that a second run with the same sizes in one process (the determinism
    test) builds the same optax objects and reuses fit's compiled epochs. For the same
    reason the configurations that differ only outside the optimizer share one Adam:
    early stopping then reuses the compiled epoch of the unregularized run.

    Args:
      lr: Adam's learning rate.
      total_steps: optimizer steps of a full run (for the pruning schedule).
      steps_per_epoch: optimizer steps per epoch (pruning frequency).
      patience: early stopping's patience in epochs.

    Returns:
      A tuple of :class:`Config`.
    """
    adam = optax.adam(lr)
    kernels = jaxreg.masks.weights_only
    sparsity = pruning.polynomial_sparsity(
        0.9,
        begin_step=total_steps // 5,
        end_step=max(total_steps * 7 // 10, total_steps // 5 + 1),
        frequency=steps_per_epoch,
    )
    return (
        Config("no regularization", adam),
        Config("coupled L2 (Adam + L2)", optax.chain(jaxreg.coupled_weight_decay(1e-3, mask=kernels), optax.adam(lr))),
        Config(
            "decoupled decay (AdamW)",
            optax.chain(optax.adam(lr), jaxreg.decoupled_weight_decay(0.1, learning_rate=lr, mask=kernels)),
        ),
        Config(
            "L1 prox + pruning 90%",
            optax.chain(
                optax.adam(lr),
                jaxreg.l1_prox(0.05, learning_rate=lr, mask=kernels),
                pruning.prune_during_training(pruning.magnitude_score, sparsity, where=kernels),
            ),
        ),
        Config("dropout + noise", adam, dropout_rate=0.3, input_noise_std=0.1, hidden_noise_std=0.1),
        Config("early stopping", adam, early_stopping=EarlyStopping(patience=patience)),
    )


def _kernels(model: nnx.Module) -> list[jax.Array]:
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return [
        leaf for leaf, keep in zip(jax.tree.leaves(params), jax.tree.leaves(jaxreg.masks.weights_only(params))) if keep
    ]


def train_one(config: Config, data: Digits, *, epochs: int, hidden: Sequence[int], seed: int) -> Outcome:
    """Builds the model and optimizer of ``config``, trains them with ``fit``, tests them.

    Args:
      config: the configuration.
      data: the digits.
      epochs: epochs to train (early stopping may stop sooner).
      hidden: hidden layer widths of the MLP.
      seed: seed of the model's initialization, dropout, noise and shuffles.

    Returns:
      An :class:`Outcome`.
    """
    model = jaxreg.nn.MLP(
        64,
        hidden,
        10,
        dropout_rate=config.dropout_rate,
        input_noise_std=config.input_noise_std,
        hidden_noise_std=config.hidden_noise_std,
        rngs=nnx.Rngs(seed),
    )
    # optax.adam mixes weakly typed Python floats into its moments: not strict-promotion clean.
    with jax.numpy_dtype_promotion("standard"):
        optimizer = nnx.Optimizer(model, config.tx, wrt=nnx.Param)
        start = time.perf_counter()
        history = fit(
            model,
            optimizer,
            cross_entropy,
            (data.x_train, data.y_train),
            (data.x_val, data.y_val),
            key=jax.random.key(seed),
            epochs=epochs,
            batch_size=BATCH_SIZE,
            metric_fn=accuracy,
            early_stopping=config.early_stopping,
            progress=f"{config.name:<24}",
        )
        train_time = time.perf_counter() - start
        model.eval()
        x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
        test_loss, test_acc = float(cross_entropy(model, x_test, y_test)), float(accuracy(model, x_test, y_test))
    kernels = _kernels(model)
    report = pruning.sparsity_report(kernels)
    flat = np.concatenate([np.asarray(k).ravel() for k in kernels])
    return Outcome(config.name, test_acc, test_loss, report.sparsity, history.epochs, train_time, history, flat)


def format_table(outcomes: Sequence[Outcome]) -> str:
    """The results as a fixed-width text table.

    Args:
      outcomes: one :class:`Outcome` per configuration.

    Returns:
      The table as a string.
    """
    width = max(len("configuration"), *(len(o.name) for o in outcomes))
    columns = ("test acc", 8), ("test loss", 9), ("sparsity", 8), ("epochs", 6), ("time (s)", 8)
    head = f"{'configuration':<{width}}" + "".join(f"  {name:>{w}}" for name, w in columns)
    lines = [head, "-" * len(head)]
    for o in outcomes:
        lines.append(
            f"{o.name:<{width}}  {o.test_accuracy:>8.2%}  {o.test_loss:>9.4f}  {o.sparsity:>8.1%}  "
            f"{o.epochs:>6d}  {o.train_time:>8.1f}"
        )
    return "\n".join(lines)


def write_plots(outcomes: Sequence[Outcome], out: Path) -> list[Path]:
    """Writes loss curves, weight histograms and accuracy vs sparsity as PNG files.

    Args:
      outcomes: one :class:`Outcome` per configuration.
      out: the output folder (created if missing).

    Returns:
      The paths written.
    """
    _require("matplotlib", "the plots")
    import matplotlib
    from matplotlib.figure import Figure

    # Figures drawn without pyplot: no backend is chosen or switched, so a notebook that
    # imports this function keeps its own.
    out.mkdir(parents=True, exist_ok=True)
    colors = matplotlib.colormaps["tab10"].colors
    paths = []

    fig = Figure(figsize=(11, 4.2))
    ax_train, ax_val = fig.subplots(1, 2, sharey=True)
    for color, o in zip(colors, outcomes):
        epochs = np.arange(1, o.epochs + 1)
        ax_train.plot(epochs, o.history.train_loss, color=color, label=o.name)
        ax_val.plot(epochs, o.history.val_loss, color=color, label=o.name)
    for ax, title in ((ax_train, "training loss (training mode)"), (ax_val, "validation loss")):
        ax.set(title=title, xlabel="epoch", yscale="log")
        ax.grid(alpha=0.3)
    ax_train.set_ylabel("cross-entropy")
    ax_val.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "loss_curves.png")
    fig.savefig(paths[-1], dpi=110)

    cols = 4
    rows = -(-len(outcomes) // cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows))
    axes = fig.subplots(rows, cols, sharex=True, squeeze=False)
    limit = max(float(np.max(np.abs(o.kernels))) for o in outcomes)
    for ax, color, o in zip(axes.ravel(), colors, outcomes):
        ax.hist(o.kernels, bins=np.linspace(-limit, limit, 81), color=color, log=True)
        ax.set_title(f"{o.name}\n{o.sparsity:.0%} exactly zero", fontsize=9)
    for ax in axes.ravel()[len(outcomes) :]:
        ax.axis("off")
    fig.suptitle("kernel weights after training (log counts)")
    fig.tight_layout()
    paths.append(out / "weight_histograms.png")
    fig.savefig(paths[-1], dpi=110)

    fig = Figure(figsize=(8.5, 4.2))
    ax = fig.subplots()
    # Several runs share a point (sparsity 0, equal accuracy): distinct hollow markers keep each visible.
    for color, marker, o in zip(colors, "osD^vP<>", outcomes):
        ax.scatter(o.sparsity, o.test_accuracy, s=90, marker=marker, facecolors="none", edgecolors=color, label=o.name)
    ax.set(xlabel="sparsity (fraction of kernel weights exactly zero)", ylabel="test accuracy")
    ax.set_xlim(-0.05, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    paths.append(out / "accuracy_vs_sparsity.png")
    fig.savefig(paths[-1], dpi=110)
    return paths


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
            "weight decay, L1 prox + magnitude pruning, dropout + noise and early stopping; "
            "print a table and write PNG plots."
        ),
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"epochs per configuration (default {DEFAULT_EPOCHS}, {FAST_EPOCHS} with --fast)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("jaxreg-demo"), help="folder for the PNG plots (default ./jaxreg-demo)"
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help=f"a quick smoke run: one hidden layer of 64, {FAST_EPOCHS} epochs, Adam lr {FAST_LEARNING_RATE}",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the split, initialization, dropout and shuffles (default 0)"
    )
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be a positive int, got {args.epochs}")
    if not 0 <= args.seed <= MAX_SEED:
        parser.error(f"--seed must lie in [0, {MAX_SEED}] (NumPy's and scikit-learn's seeds), got {args.seed}")
    return args


def run(epochs: int, hidden: Sequence[int], seed: int, lr: float = LEARNING_RATE) -> list[Outcome]:
    """Trains every configuration on the digits.

    Args:
      epochs: epochs per configuration.
      hidden: hidden layer widths.
      seed: the seed.
      lr: Adam's learning rate.

    Returns:
      One :class:`Outcome` per configuration.
    """
    data = load_digits(seed)
    steps_per_epoch = len(data.x_train) // BATCH_SIZE
    patience = max(2, epochs // 6)
    configs = configurations(lr, epochs * steps_per_epoch, steps_per_epoch, patience)
    return [train_one(c, data, epochs=epochs, hidden=hidden, seed=seed) for c in configs]


def main(argv: Sequence[str] | None = None) -> list[Outcome]:
    """Runs the demo: trains, prints the table, writes the plots.

    Args:
      argv: command-line arguments (None: ``sys.argv[1:]``).

    Returns:
      One :class:`Outcome` per configuration.
    """
    args = parse_args(argv)
    epochs = args.epochs or (FAST_EPOCHS if args.fast else DEFAULT_EPOCHS)
    hidden, lr = ((64,), FAST_LEARNING_RATE) if args.fast else ((256, 256), LEARNING_RATE)
    _require("sklearn", "the digits data")
    _require("matplotlib", "the plots")
    # Before minutes of training, not after: the plots are written last.
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=args.out):
            pass
    except OSError as err:
        sys.exit(f"jaxreg.demo: cannot write the plots to --out {args.out}: {err.strerror or err}")
    print(
        f"jaxreg demo: scikit-learn digits, MLP 64-{'-'.join(map(str, hidden))}-10, Adam lr={lr}, "
        f"batch {BATCH_SIZE}, {epochs} epochs, seed {args.seed}"
    )
    start = time.perf_counter()
    outcomes = run(epochs, hidden, args.seed, lr)
    print()
    print(format_table(outcomes))
    print("\nsparsity: fraction of kernel weights exactly 0.0; time: seconds in fit, compilation included.")
    paths = write_plots(outcomes, args.out)
    print(f"plots written to {args.out.absolute()}/: {', '.join(p.name for p in paths)}")
    print(f"total time {time.perf_counter() - start:.1f} s")
    return outcomes


if __name__ == "__main__":
    main()
