"""Helpers shared by the example notebooks: the small-size switch, figures and result lines.

* ``JAXREG_SMALL=1`` makes every notebook use fewer steps and points, so that the test
  suite can run them all in seconds (``SMALL`` and :func:`pick`).
* ``JAXREG_FIGURES=<folder>`` says where figures go (default ``examples/figures/``,
  which git ignores); :func:`save_figure` writes a PNG there.
* :func:`report` prints ``RESULT name=value`` lines that ``tests/test_examples.py``
  parses to check that the numbers a notebook shows are sane.

Outside Jupyter, matplotlib draws with the Agg backend (no display needed); inside
Jupyter the inline backend is left alone so the figures appear in the notebook too.
"""

from __future__ import annotations

import os
import pathlib
import sys
from typing import Any, TypeVar

import matplotlib

_IN_JUPYTER = "ipykernel" in sys.modules
if not _IN_JUPYTER:
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

T = TypeVar("T")

SMALL: bool = os.environ.get("JAXREG_SMALL", "").strip().lower() not in ("", "0", "false", "no")
FIGURES: pathlib.Path = pathlib.Path(
    os.environ.get("JAXREG_FIGURES") or pathlib.Path(__file__).resolve().parent / "figures"
)

plt.rcParams.update(
    {
        "figure.dpi": 100,
        "savefig.dpi": 110,
        "font.size": 10,
        "axes.titlesize": 11,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "legend.fontsize": 9,
        "legend.framealpha": 0.9,
    }
)


def pick(full: T, small: T) -> T:
    """``small`` when ``JAXREG_SMALL`` is set, else ``full``.

    Args:
      full: the value for a normal run.
      small: the value for the quick run of the test suite.

    Returns:
      One of the two.
    """
    return small if SMALL else full


def save_figure(fig: Any, name: str) -> pathlib.Path:
    """Saves ``fig`` as ``<JAXREG_FIGURES>/<name>.png`` and shows or closes it.

    Args:
      fig: a matplotlib figure.
      name: file name without the ``.png``.

    Returns:
      The path of the PNG.
    """
    FIGURES.mkdir(parents=True, exist_ok=True)
    path = FIGURES / f"{name}.png"
    fig.savefig(path, bbox_inches="tight")
    print(f"FIGURE {path.name}")
    if _IN_JUPYTER:
        plt.show()
    else:
        plt.close(fig)
    return path


def report(**values: Any) -> None:
    """Prints one ``RESULT name=value`` line per keyword, for the tests to parse.

    Args:
      **values: numbers (or anything ``float()`` accepts, such as 0-d arrays).
    """
    for name, value in values.items():
        print(f"RESULT {name}={float(value):.6g}")
