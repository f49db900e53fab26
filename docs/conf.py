"""Sphinx configuration for jaxreg's documentation site (``make docs``).

Built offline: no intersphinx, no extension that downloads anything at build time.
The API reference, the notebook pages and their gallery, and the benchmark tables are
generated from the code, ``examples/`` and ``bench/results/`` by
``docs/_ext/jaxreg_docs.py``.

Notebooks are **executed at build time, at the small size** (``JAXREG_SMALL=1``, the
setting the test suite uses), and their outputs are **cached** by jupyter-cache under
``docs/_build/.jupyter_cache/<key>``: a notebook re-runs only when its code, jaxreg's
source, ``examples/_common.py`` or the size setting changed (the key hashes the last
three). ``make docs`` reads the pages in two processes (``sphinx-build -j 2``; myst-nb
is parallel-read safe), and a notebook executes in the process that reads it. ``JAXREG_SMALL=0 make docs``
renders the full-size runs instead.
"""

from __future__ import annotations

import os
import pathlib
import sys
import warnings

# sphinx-autodoc-typehints calls a Sphinx API that Sphinx 10 removes: not ours to fix.
warnings.filterwarnings("ignore", message=".*set_application.*is deprecated", module="sphinx_autodoc_typehints")

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
EXAMPLES = ROOT / "examples"
sys.path[:0] = [str(DOCS / "_ext"), str(ROOT)]

import jaxreg_docs  # noqa: E402  (from docs/_ext, put on the path just above)

import jaxreg  # noqa: E402

# The notebook kernels inherit this environment: the small size, `_common` importable
# from examples/, and figure files kept inside the build folder.
os.environ.setdefault("JAXREG_SMALL", "1")
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(EXAMPLES), str(ROOT), os.environ.get("PYTHONPATH")]))
os.environ.setdefault("JAXREG_FIGURES", str(DOCS / "_build" / "notebook_figures"))

project = "jaxreg"
author = "the jaxreg authors"
copyright = "the jaxreg authors; Apache-2.0"
release = jaxreg.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_autodoc_typehints",
    "myst_nb",
    "jaxreg_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".py": "myst-nb"}
exclude_patterns = ["_build", "_ext", "_generated", "conf.py", "**/.ipynb_checkpoints"]
root_doc = "index"

# --- autodoc, napoleon (Google style), type hints ----------------------------------
autodoc_member_order = "bysource"
autodoc_default_options = {"exclude-members": "__init__, __new__"}
autodoc_preserve_defaults = True
autosummary_generate = False  # the pages come from jaxreg_docs, not autosummary stubs
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
typehints_document_rtype = True
typehints_defaults = "comma"
typehints_use_signature = False
typehints_use_signature_return = False
always_use_bars_union = True
# Keep the short names of the library's type aliases instead of their expansions.
# ("ArrayTree" is the forward reference inside optax.Params.)
autodoc_type_aliases = {
    "Mask": "jaxreg.masks.Mask",
    "Score": "jaxreg.pruning.Score",
    "ArrayTree": "optax.ArrayTree",
}


# Shows ``chex.Numeric | optax.Schedule`` by those names instead of a dozen expanded types.
typehints_formatter = jaxreg_docs.TypehintsFormatter()

# --- myst and myst-nb ---------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_custom_formats = {".py": ["jupytext.reads", {"fmt": "py:percent"}]}
nb_execution_mode = "cache"
# One cache folder per key; jaxreg_docs removes the stale ones before executing.
nb_execution_cache_path = str(DOCS / "_build" / ".jupyter_cache" / jaxreg_docs.execution_cache_key())
nb_execution_timeout = 600
nb_execution_raise_on_error = False  # a failing notebook is a warning, so -W --keep-going reports them all
nb_execution_show_tb = True
nb_merge_streams = True
nb_output_stderr = "remove"  # JAX's and tqdm's progress chatter; failures still fail the build

# --- HTML ---------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = f"jaxreg {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": True,
    "navigation_with_keys": False,
}
html_last_updated_fmt = None
html_show_sourcelink = False
