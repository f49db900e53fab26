"""python -m jaxreg.demo: --help, a --fast run (table, plots, pruning), and the same seed gives the same table."""

import sys

import numpy as np
import pytest

from jaxreg import demo


def test_help_documents_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--epochs", "--out", "--fast", "--seed"):
        assert option in out


def test_fast_run_prints_the_table_writes_plots_and_repeats_exactly(tmp_path, capsys):
    first = demo.main(["--fast", "--seed", "3", "--out", str(tmp_path / "a")])
    out = capsys.readouterr().out
    names = [o.name for o in first]
    assert names == [c.name for c in demo.configurations(1e-3, 1, 1, 2)]
    for name in names:
        assert name in out
    assert "test acc" in out and "sparsity" in out and f"plots written to {tmp_path / 'a'}" in out
    for png in ("loss_curves.png", "weight_histograms.png", "accuracy_vs_sparsity.png"):
        path = tmp_path / "a" / png
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    by_name = {o.name: o for o in first}
    assert by_name["L1 prox + pruning 90%"].sparsity == pytest.approx(0.9, abs=0.01)
    assert all(o.sparsity == 0.0 for o in first if "pruning" not in o.name)
    assert all(o.test_accuracy > 0.8 for o in first)  # a few epochs already learn the digits

    second = demo.main(["--fast", "--seed", "3", "--out", str(tmp_path / "b")])
    for a, b in zip(first, second):
        assert (a.name, a.test_accuracy, a.test_loss, a.sparsity, a.epochs) == (
            b.name,
            b.test_accuracy,
            b.test_loss,
            b.sparsity,
            b.epochs,
        )
        np.testing.assert_array_equal(a.history.train_loss, b.history.train_loss)
        np.testing.assert_array_equal(a.history.val_loss, b.history.val_loss)
    table = [line.rsplit(None, 1)[0] for line in demo.format_table(first).splitlines()]  # all but the time
    assert table == [line.rsplit(None, 1)[0] for line in demo.format_table(second).splitlines()]


def test_missing_scikit_learn_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(SystemExit, match=r"jaxreg.demo needs sklearn for the digits data; install it with pip install"):
        demo.main(["--fast"])


def test_bad_epochs_is_refused(capsys):
    with pytest.raises(SystemExit):
        demo.parse_args(["--epochs", "0"])
    assert "--epochs must be a positive int, got 0" in capsys.readouterr().err


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


def test_plotting_leaves_the_matplotlib_backend_alone(tmp_path, monkeypatch):
    import matplotlib

    monkeypatch.setattr(matplotlib, "use", lambda *args, **kwargs: pytest.fail("the demo switched the backend"))
    history = demo.History(np.array([1.0, 0.5]), np.array([1.1, 0.6]), np.full(2, np.nan), np.ones(2), False, None, 0)
    outcome = demo.Outcome("plain", 0.9, 0.3, 0.0, 2, 1.0, history, np.linspace(-1, 1, 50))
    paths = demo.write_plots([outcome, outcome._replace(name="other", sparsity=0.5)], tmp_path)
    assert [p.name for p in paths] == ["loss_curves.png", "weight_histograms.png", "accuracy_vs_sparsity.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
