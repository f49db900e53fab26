"""python -m jaxreg.demo: one --fast run per module; its tables, figures and numbers; the command line."""

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxreg import demo

NAMES = [c.name for c in demo.CONFIGURATIONS] + [demo.EARLY_STOPPING]
FOCUS = (demo.WATCHED, demo.L1)
SEED = 3


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    """(results, figures, printed output, --out folder) of one ``--fast`` run.

    ``matplotlib.use`` fails the run: the figures are drawn without switching the backend.
    """
    import matplotlib

    out = tmp_path_factory.mktemp("demo") / "figures"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(matplotlib, "use", lambda *args, **kwargs: pytest.fail("the demo switched the backend"))
        results, figures = demo.main(["--fast", "--seed", str(SEED), "--out", str(out)])
    return results, figures, printed.getvalue(), out


@pytest.fixture(scope="module")
def fast(fast_run):
    results, _, printed, out = fast_run
    return results, printed, out


@pytest.fixture(scope="module")
def figures(fast_run):
    return fast_run[1]


@pytest.fixture(scope="module")
def by_name(fast):
    return {o.name: o for o in fast[0].outcomes}


def _table_rows(printed: str, column: str) -> tuple[str, list[str]]:
    """The header line that names ``column`` and the rows under its rule."""
    lines = printed.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("configuration ") and column in line)
    assert set(lines[start + 1]) == {"-"}
    rows = list(lines[start + 2 : start + 2 + len(NAMES)])
    return lines[start], rows


def test_help_documents_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--epochs", "--out", "--fast", "--seed", "--seeds"):
        assert option in out


def test_python_dash_m_runs_the_package():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "jaxreg.demo", "--help"], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and "--seeds" in done.stdout


def test_the_tables_give_mean_and_std_for_every_configuration_and_sparsity(fast):
    _, printed, _ = fast
    head, rows = _table_rows(printed, "test acc (%)")
    assert head.split("  ")[0] == "configuration"
    for column in ("test acc (%)", "test loss", "zeros (%)", "epochs"):
        assert column in head
    assert [row[: len(name)] for row, name in zip(rows, NAMES)] == NAMES
    assert all(row.count(" ± ") == 4 for row in rows)

    head, rows = _table_rows(printed, "pruned")
    assert [f"{s:.0%} pruned" for s in demo.LEVELS] == [c.strip() for c in head.split("  ") if "pruned" in c]
    assert [row[: len(name)] for row, name in zip(rows, NAMES)] == NAMES
    assert all(row.count(" ± ") == len(demo.LEVELS) for row in rows)
    assert "seeds as lanes of one vmapped program" in printed


def test_every_configuration_has_every_seed_and_level(fast):
    results, _, _ = fast
    assert [o.name for o in results.outcomes] == NAMES
    assert results.levels == demo.LEVELS
    for o in results.outcomes:
        assert o.test_accuracy.shape == o.test_loss.shape == o.epochs.shape == (demo.DEFAULT_SEEDS,)
        assert o.pruned_accuracy.shape == (demo.DEFAULT_SEEDS, len(demo.LEVELS))
        assert o.train_loss.shape == o.val_loss.shape == (demo.DEFAULT_SEEDS, demo.FAST_EPOCHS)
        assert np.all(np.isfinite(o.val_loss))
    # The seeds are different runs: not one lane copied five times.
    assert len(set(by_seed.tobytes() for by_seed in results.outcomes[0].train_loss)) == demo.DEFAULT_SEEDS


def test_the_numbers_tell_the_story(by_name):
    chance = 0.1
    for o in by_name.values():
        assert np.all(o.test_accuracy > 0.8) and np.all(o.pruned_accuracy[:, 0] > 5 * chance)
        np.testing.assert_array_equal(o.pruned_accuracy[:, 0], o.test_accuracy)  # pruning 0% changes nothing
    plain, l1 = by_name[demo.WATCHED], by_name[demo.L1]
    at = dict(zip(demo.LEVELS, plain.pruned_accuracy.mean(axis=0)))
    assert at[0.98] < at[0.0] - 0.3  # pruning 98% of plainly trained weights hurts
    l1_at = dict(zip(demo.LEVELS, l1.pruned_accuracy.mean(axis=0)))
    assert l1_at[0.9] > at[0.9] + 0.2  # training with L1 first moves the point where pruning hurts
    assert np.all(l1.sparsity > 0.3) and all(np.all(o.sparsity == 0) for o in by_name.values() if o is not l1)


def test_early_stopping_keeps_the_best_epoch_of_the_runs_it_watches(by_name):
    stopper, watched = by_name[demo.EARLY_STOPPING], by_name[demo.WATCHED]
    np.testing.assert_array_equal(stopper.val_loss, watched.val_loss)
    assert watched.kept_epoch is None and np.all(watched.epochs == demo.FAST_EPOCHS)
    seeds = np.arange(demo.DEFAULT_SEEDS)
    best = [np.argmin(loss[:stop]) + 1 for loss, stop in zip(watched.val_loss, stopper.epochs)]
    np.testing.assert_array_equal(stopper.kept_epoch, best)  # the lowest validation loss before it stopped
    stopped = stopper.epochs < demo.FAST_EPOCHS
    assert stopped.any()  # the message of the figure: it does stop
    patience = max(2, demo.FAST_EPOCHS // 6)
    np.testing.assert_array_equal((stopper.epochs - stopper.kept_epoch)[stopped], patience)
    assert np.all(watched.val_loss[seeds, stopper.kept_epoch - 1] <= watched.val_loss[seeds, stopper.epochs - 1])
    assert not np.array_equal(stopper.kernels, watched.kernels)  # its weights are the kept epoch's


def test_the_same_seed_gives_the_same_tables(fast):
    results, printed, _ = fast
    again = demo.run(demo.FAST_EPOCHS, demo.FAST_HIDDEN, SEED, demo.FAST_LEARNING_RATE)  # compiled programs reused
    assert demo.format_table(again.outcomes) == demo.format_table(results.outcomes)
    assert demo.format_pruning_table(again.outcomes, again.levels) in printed
    for a, b in zip(results.outcomes, again.outcomes):
        np.testing.assert_array_equal(a.train_loss, b.train_loss)


def test_the_figures_are_written(fast, figures):
    _, printed, out = fast
    assert list(figures) == ["loss_curves.png", "weight_histograms.png", "accuracy_vs_sparsity.png"]
    for png in figures:
        path = out / png
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 30_000
    assert f"figures written to {out}" in printed


def _curves(ax):
    """The lines of an axes that have markers (the configurations' means), by label."""
    return {line.get_label(): line for line in ax.get_lines() if line.get_marker() not in (None, "None", "")}


def test_accuracy_vs_sparsity_draws_a_band_per_configuration(fast, figures):
    results = fast[0]
    fig = figures["accuracy_vs_sparsity.png"]
    ax_focus, ax_all = fig.axes
    assert "?" in fig._suptitle.get_text() and ax_all.get_xlabel() and ax_focus.get_ylabel()
    assert list(_curves(ax_focus)) == list(FOCUS) and list(_curves(ax_all)) == NAMES
    assert len(ax_all.collections) == len(NAMES) and len(ax_focus.collections) == len(FOCUS)  # the std bands
    for o in results.outcomes:
        line = _curves(ax_all)[o.name]
        np.testing.assert_allclose(line.get_xdata(), 1 - np.asarray(results.levels))
        np.testing.assert_allclose(line.get_ydata(), o.pruned_accuracy.mean(axis=0))
    styles = {(line.get_color(), line.get_linestyle(), line.get_marker()) for line in _curves(ax_all).values()}
    assert len(styles) == len(NAMES)  # every curve tells itself apart


def test_loss_curves_mark_where_early_stopping_stopped(figures, by_name):
    fig = figures["loss_curves.png"]
    ax_train, ax_val = fig.axes
    assert "early stopping" in fig._suptitle.get_text() and ax_val.get_xlabel() == "epoch"
    trained = [n for n in NAMES if n != demo.EARLY_STOPPING]
    assert list(_curves(ax_train)) == trained and len(ax_train.collections) == len(trained)
    stopper = by_name[demo.EARLY_STOPPING]
    stars = _curves(ax_val)[f"{demo.EARLY_STOPPING}: each seed's best epoch (weights kept)"]
    np.testing.assert_array_equal(stars.get_xdata(), stopper.kept_epoch)
    (stop_line,) = [line for line in ax_val.get_lines() if line.get_label().endswith("stopped here (mean ± std)")]
    assert stop_line.get_xdata()[0] == pytest.approx(stopper.epochs.mean())
    low, high = ax_val.get_ylim()
    assert low < min(o.val_loss.mean(axis=0).min() for o in by_name.values()) < high


def test_weight_histograms_have_one_panel_per_configuration(figures):
    fig = figures["weight_histograms.png"]
    panels = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title().split("\n")[0] for ax in panels] == NAMES
    assert all(len(ax.patches) == 80 for ax in panels)
    assert "L1" not in panels[0].get_title() and "0% exactly zero" in panels[0].get_title()


def test_missing_scikit_learn_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(SystemExit, match=r"jaxreg.demo needs sklearn for the digits data; install it with pip install"):
        demo.main(["--fast"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "0"], "--epochs must be a positive int, got 0"),
        (["--seeds", "1"], "--seeds must be an int >= 2 (a standard deviation needs two runs), got 1"),
    ],
)
def test_bad_sizes_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        demo.parse_args(argv)
    assert message in capsys.readouterr().err


def test_an_out_folder_that_cannot_be_written_is_refused_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "run", lambda *args: pytest.fail("trained before checking --out"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit, match=r"jaxreg.demo: cannot write the plots to --out .*file/plots"):
        demo.main(["--fast", "--out", str(blocker / "plots")])


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_a_seed_outside_numpys_range_is_an_argparse_error(seed, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.parse_args(["--seed", seed])
    assert exit_info.value.code == 2
    assert f"--seed must lie in [0, {2**32 - 1}]" in capsys.readouterr().err
    assert demo.parse_args(["--seed", str(2**32 - 1)]).seed == 2**32 - 1
