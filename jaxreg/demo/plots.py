"""The demo's figures, each drawn on a ``matplotlib.figure.Figure`` and answering one question.

No pyplot and no ``matplotlib.use``: the figures are drawn without global state, so a
notebook that imports these functions keeps its backend. Every configuration has the
same colour, line style and marker in every figure; a shaded band is mean ± one
standard deviation over the seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from jaxreg.demo import Outcome

_STYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 1)))
_MARKERS = ("o", "s", "D", "^", "v", "P")
DPI = 110


def _style(i: int) -> dict:
    import matplotlib

    return {
        "color": matplotlib.colormaps["tab10"].colors[i % 10],
        "linestyle": _STYLES[i % len(_STYLES)],
        "marker": _MARKERS[i % len(_MARKERS)],
    }


def _band(ax: Axes, x: np.ndarray, runs: np.ndarray, label: str, style: dict, markevery: int = 1) -> None:
    """Plots the mean over the seeds (rows of ``runs``) with a band of one standard deviation."""
    mean, std = runs.mean(axis=0), runs.std(axis=0)
    ax.fill_between(x, mean - std, mean + std, color=style["color"], alpha=0.18, linewidth=0)
    ax.plot(x, mean, label=label, linewidth=1.8, markersize=5, markevery=markevery, **style)


def accuracy_vs_sparsity(outcomes: Sequence[Outcome], levels: Sequence[float], focus: Sequence[str]) -> Figure:
    """Test accuracy after one-shot magnitude pruning, against the fraction of kernel weights pruned.

    The left panel compares the configurations named in ``focus`` (with a dotted
    vertical line where each already had that many exact zeros of its own), the right
    panel shows every configuration. The x axis shows the fraction of weights *kept* on
    a log scale (labelled by sparsity), so that 90%, 95% and 98% are spread out where
    the curves fall.

    Args:
      outcomes: the configurations' results.
      levels: the pruned fractions, as in ``Outcome.pruned_accuracy``.
      focus: names of the outcomes of the left panel.

    Returns:
      The figure.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5.2))
    ax_focus, ax_all = fig.subplots(1, 2, sharey=True)
    kept = 1.0 - np.asarray(levels)
    for i, o in enumerate(outcomes):
        _band(ax_all, kept, o.pruned_accuracy, o.name, _style(i))
        if o.name in focus:
            _band(ax_focus, kept, o.pruned_accuracy, o.name, _style(i))
            zeros = float(o.sparsity.mean())
            if zeros > 0:
                ax_focus.axvline(1 - zeros, color=_style(i)["color"], linestyle=":", linewidth=1.2)
                ax_focus.annotate(
                    f"{o.name}: {zeros:.0%} of its weights\nwere already exactly zero",
                    (1 - zeros, 0.3),
                    xytext=(6, 0),
                    textcoords="offset points",
                    fontsize=8,
                    color=_style(i)["color"],
                )
    seeds = len(outcomes[0].test_accuracy)
    titles = (f"{' vs '.join(focus)}", "every configuration")
    for ax, title in zip((ax_focus, ax_all), titles):
        ax.axhline(0.1, color="0.4", linestyle=":", linewidth=1)
        ax.text(kept[2], 0.09, "chance (10 classes)", fontsize=8, color="0.3", ha="center", va="top")
        ax.set_xscale("log")
        ax.set_xlim(kept[0] * 1.15, kept[-1] / 1.15)  # inverted: sparsity grows to the right
        ax.set_xticks(kept, [f"{s:.0%}" for s in levels])
        ax.minorticks_off()
        ax.set_ylim(0, 1.02)
        ax.set(title=title, xlabel="sparsity: fraction of kernel weights pruned (smallest magnitude first)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left", title=f"mean ± std over {seeds} seeds", title_fontsize=8)
    ax_focus.set_ylabel("test accuracy after one-shot pruning (no retraining)")
    fig.suptitle("Where does magnitude pruning start to hurt, and does training with L1 first move that point?")
    fig.tight_layout()
    return fig


def loss_curves(outcomes: Sequence[Outcome]) -> Figure:
    """Training and validation loss per epoch; where early stopping stopped is marked.

    An outcome with ``kept_epoch`` set (early stopping) trained the same run as the
    curve it watched, so it is drawn as marks on that curve: a vertical line at the
    mean epoch where it stopped, a band of one standard deviation around it, and a
    star per seed at the epoch whose weights it kept.

    Args:
      outcomes: the configurations' results.

    Returns:
      The figure.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5.6))
    ax_train, ax_val = fig.subplots(1, 2)
    epochs = np.arange(1, outcomes[0].train_loss.shape[1] + 1)
    every = max(1, len(epochs) // 12)
    for i, o in enumerate(outcomes):
        style = _style(i)
        if o.kept_epoch is None:
            _band(ax_train, epochs, o.train_loss, o.name, style, every)
            _band(ax_val, epochs, o.val_loss, o.name, style, every)
            continue
        stop, kept = o.epochs, o.kept_epoch
        ax_val.axvspan(stop.mean() - stop.std(), stop.mean() + stop.std(), color=style["color"], alpha=0.12)
        ax_val.axvline(
            stop.mean(),
            color=style["color"],
            linestyle="--",
            linewidth=1.5,
            label=f"{o.name}: stopped here (mean ± std)",
        )
        seeds = np.arange(len(kept))
        ax_val.plot(
            kept,
            o.val_loss[seeds, kept - 1],
            linestyle="none",
            marker="*",
            markersize=13,
            color=style["color"],
            markeredgecolor="black",
            label=f"{o.name}: each seed's best epoch (weights kept)",
        )
    ax_train.set(title="training loss (in training mode: with dropout and noise)", yscale="log")
    # The first epochs span a decade; the differences between regularizers lie near the minimum.
    low = min(float(o.val_loss.mean(axis=0).min()) for o in outcomes)
    ax_val.set(title="validation loss (zoomed on the lowest values)", ylim=(0.8 * low, 2.5 * low))
    for ax in ax_train, ax_val:
        ax.set(xlabel="epoch", ylabel="cross-entropy")
        ax.grid(alpha=0.3, which="both")
    handles, labels = ax_val.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=9)
    fig.suptitle("Which regularizer keeps the validation loss down, and where does early stopping stop?")
    fig.tight_layout(rect=(0, 0.11, 1, 1))
    return fig


def weight_histograms(outcomes: Sequence[Outcome]) -> Figure:
    """Histograms of the kernel weights (all seeds pooled), one panel per configuration.

    Args:
      outcomes: the configurations' results.

    Returns:
      The figure.
    """
    from matplotlib.figure import Figure

    cols = 3
    rows = -(-len(outcomes) // cols)
    fig = Figure(figsize=(4 * cols, 2.9 * rows))
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
    limit = max(float(np.max(np.abs(o.kernels))) for o in outcomes)
    bins = np.linspace(-limit, limit, 81)
    for i, (ax, o) in enumerate(zip(axes.ravel(), outcomes)):
        seeds = o.kernels.shape[0]
        ax.hist(o.kernels.ravel(), bins=bins, weights=np.full(o.kernels.size, 1 / seeds), color=_style(i)["color"])
        ax.set_yscale("log")
        ax.set_title(f"{o.name}\n{o.sparsity.mean():.0%} exactly zero", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("weight")
    for ax in axes[:, 0]:
        ax.set_ylabel("weights per run")
    for ax in axes.ravel()[len(outcomes) :]:
        ax.axis("off")
    fig.suptitle("Where do the kernel weights end up under each regularizer? (log counts)")
    fig.tight_layout()
    return fig


def write_plots(
    outcomes: Sequence[Outcome], levels: Sequence[float], focus: Sequence[str], out: Path
) -> dict[str, Figure]:
    """Draws the three figures and writes them as PNG files into ``out`` (created if missing).

    Args:
      outcomes: the configurations' results.
      levels: the pruned fractions of ``Outcome.pruned_accuracy``.
      focus: the names compared on their own in ``accuracy_vs_sparsity.png``.
      out: the output folder.

    Returns:
      The figures by file name (``loss_curves.png``, ``weight_histograms.png``,
      ``accuracy_vs_sparsity.png``), for inspection.
    """
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "loss_curves.png": loss_curves(outcomes),
        "weight_histograms.png": weight_histograms(outcomes),
        "accuracy_vs_sparsity.png": accuracy_vs_sparsity(outcomes, levels, focus),
    }
    for name, fig in figures.items():
        fig.savefig(out / name, dpi=DPI)
    return figures
