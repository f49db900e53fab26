"""The documentation site stays true to the code.

* The version: ``jaxreg.__version__`` is ``pyproject.toml``'s.
* The API reference documents every name of every public ``__all__`` (the plan that
  ``docs/_ext/jaxreg_docs.py`` builds the pages from; ``tests/test_api.py`` checks
  that those names have docstrings with Args and Returns).
* Code runs: the ``>>>`` examples in every jaxreg docstring (``doctest``, as
  ``pytest --doctest-modules`` would), and every ```` ```python ```` block of the
  guides in ``docs/`` and ``docs/guide/`` (the README's are ``tests/test_readme.py``'s).
* The inventories stay complete: the tests page names every test file, and every
  notebook has a thumbnail and a card in the gallery.
* The build (slow): ``sphinx-build -W --keep-going`` as ``make docs`` runs it, into a
  temporary folder, with notebook execution off (``tests/test_examples.py`` runs the
  notebooks); then every documented name is in the built inventory, every notebook has
  its page, every internal link resolves, and, where Chromium is installed, the home
  page, an API page and a notebook page render in headless Chromium
  (``scripts/docs_check.py``, what ``make docs-check`` runs on the executed build).
"""

from __future__ import annotations

import ast
import doctest
import importlib
import importlib.util
import inspect
import pathlib
import pkgutil
import re
import subprocess
import sys
import tomllib
import types
import typing

import jax
import pytest
from sphinx.util.inventory import InventoryFile

import jaxreg

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GUIDES = sorted(DOCS.glob("*.md")) + sorted(DOCS.glob("guide/*.md"))
BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)


def _load(name: str, path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


jaxreg_docs = _load("jaxreg_docs", DOCS / "_ext" / "jaxreg_docs.py")
docs_check = _load("docs_check", ROOT / "scripts" / "docs_check.py")

ALL_MODULES = [jaxreg] + [
    importlib.import_module(info.name)
    for info in pkgutil.walk_packages(jaxreg.__path__, "jaxreg.")
    if not info.name.endswith(".__main__")  # a command line, not an API
]


# ------------------------------------------------------------------------- version


def _pyproject_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_version_is_pyprojects():
    assert jaxreg.__version__ == _pyproject_version(), (
        "jaxreg.__version__ comes from the installed metadata: reinstall (make test does) after changing "
        "pyproject.toml's version"
    )


# ------------------------------------------------------------------- API coverage


def test_every_public_name_is_in_the_api_reference():
    gaps = jaxreg_docs.missing()
    assert not gaps, (
        "names in an __all__ that the API reference would not document:\n  "
        + "\n  ".join(gaps)
        + "\nre-export each from its package's __init__ (and its __all__), or add its module to GROUPS in "
        "docs/_ext/jaxreg_docs.py"
    )


def test_the_reference_is_grouped_as_the_package_is():
    pages = jaxreg_docs.plan()
    slugs = [page.slug for page in pages]
    assert slugs[: len(jaxreg_docs.GROUPS)] == [slug for slug, _ in jaxreg_docs.GROUPS]
    assert slugs[-1] == "index"
    names = [entry.name for page in pages for entry in page.entries]
    assert len(names) == len(set(names)), "an object is documented twice"
    for name in jaxreg.__all__:  # every top-level name: a group page, an entry, or an alias row
        obj = getattr(jaxreg, name)
        if inspect.ismodule(obj):
            assert obj.__name__ in {page.module for page in pages}, f"jaxreg.{name} has no page"
        else:
            assert jaxreg_docs.identity(obj, name) in jaxreg_docs.documented(pages), f"jaxreg.{name} is not documented"
    flat = {entry.name for page in pages[:4] for entry in page.entries}  # clipping, decay, proximal, projections
    assert {
        "jaxreg.clip_by_global_norm",
        "jaxreg.decoupled_weight_decay",
        "jaxreg.l1_prox",
        "jaxreg.project_box",
    } <= flat


def test_a_type_alias_is_not_everything_it_aliases():
    # jaxreg.masks.Mask is typing.Any: documenting it must not document (or link) every Any.
    where = jaxreg_docs.documented(jaxreg_docs.plan())
    assert where[jaxreg_docs.identity(jaxreg.masks.Mask, "Mask")] == "jaxreg.masks.Mask"
    assert jaxreg_docs.identity(typing.Any, "Any") not in where


def test_the_check_catches_a_name_not_re_exported(monkeypatch):
    # A public function of a submodule's __all__ that its package does not re-export.
    monkeypatch.setattr(jaxreg.pruning.scores, "__all__", [*jaxreg.pruning.scores.__all__, "uniform_leaf"])
    assert jaxreg_docs.missing() == ["jaxreg.pruning.scores.uniform_leaf"]


# -------------------------------------------------------------------- code that runs


def _failing_docstring_examples(module) -> str:
    """The doctest report of ``module``'s ``>>>`` examples; empty when all pass."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    # Examples are written for users, who run with default promotion.
    with jax.numpy_dtype_promotion("standard"):
        for test in finder.find(module, module.__name__):
            if test.examples and runner.run(test, out=report.append).failed:
                report.insert(0, f"{test.name} failed\n")
    return "".join(report)


@pytest.mark.parametrize("module", ALL_MODULES, ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    report = _failing_docstring_examples(module)
    assert not report, report


def test_a_wrong_docstring_example_fails():
    source = '''
def half(x):
    """Halves.

    >>> half(3.0)
    1.5
    """
    return x / 2
'''
    for result, report in [("1.5", ""), ("2.5", "Expected:\n    2.5\nGot:\n    1.5")]:
        module = types.ModuleType("fake")
        exec(source.replace("1.5", result), module.__dict__)
        assert report in _failing_docstring_examples(module)
        assert bool(report) == bool(_failing_docstring_examples(module))


GUIDE_BLOCKS = [(path, i, block) for path in GUIDES for i, block in enumerate(BLOCK.findall(path.read_text()))]


def test_the_guides_have_examples():
    assert {path.stem for path, _, _ in GUIDE_BLOCKS} >= {
        *("getting_started", "from_pytorch", "from_optax", "choosing", "two_spaces", "transforms", "masks"),
        *("penalties_schedules", "nnx", "model_selection", "augmentation", "scaling_out", "nonfinite", "one_pass"),
    }


@pytest.mark.parametrize("path, index, block", GUIDE_BLOCKS, ids=[f"{p.stem}-{i}" for p, i, _ in GUIDE_BLOCKS])
def test_guide_code_block_runs(path, index, block):
    with jax.numpy_dtype_promotion("standard"):
        exec(compile(block, f"docs/{path.name} block {index}", "exec"), {})


def _inline_jaxreg_code() -> list[tuple[str, str]]:
    """``(page, span)`` for every inline code span of the guides that is a Python expression using jaxreg.

    Code blocks are left out (they run above), and so are roles such as {func}`...`
    (Sphinx resolves those, and fails the build on a jaxreg name it cannot find).
    """
    spans = []
    for path in GUIDES:
        text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
        for span in re.findall(r"(?<![`}])`([^`\n]+)`(?!`)", text):
            expression = re.sub(r"^\w+=", "", span.strip())  # "mask=jaxreg.masks.weights_only"
            if "jaxreg." in expression:
                try:
                    ast.parse(expression, mode="eval")
                except SyntaxError:
                    continue
                spans.append((path.name, expression))
    return spans


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


INLINE = _inline_jaxreg_code()


def _misfit(expression: str) -> str | None:
    """Why ``expression`` does not fit jaxreg (a missing name, a call that does not bind), or None."""
    for node in ast.walk(ast.parse(expression, mode="eval")):
        name = _dotted(node.func) if isinstance(node, ast.Call) else _dotted(node)
        if not name or not name.startswith("jaxreg."):
            continue
        obj = jaxreg
        for part in name.split(".")[1:]:
            if not hasattr(obj, part):
                return f"{name} does not exist"
            obj = getattr(obj, part)
        if isinstance(node, ast.Call):
            ellipsis = [a for a in node.args if isinstance(a, ast.Constant) and a.value is Ellipsis]
            args = [None] * (len(node.args) - len(ellipsis))
            kwargs = dict.fromkeys(k.arg for k in node.keywords)
            signature = inspect.signature(obj)
            try:
                (signature.bind_partial if ellipsis else signature.bind)(*args, **kwargs)
            except TypeError as error:
                return f"it does not fit {name}{signature}: {error}"
    return None


@pytest.mark.parametrize("page, expression", INLINE, ids=[f"{p}:{e[:60]}" for p, e in INLINE])
def test_inline_code_names_real_functions_and_arguments(page, expression):
    # The mapping tables' `jaxreg.f(a, b=c)` spans: every jaxreg name exists, and every
    # call binds to its function's signature (names and arguments stay in step).
    problem = _misfit(expression)
    assert problem is None, f"{page}: `{expression}`: {problem}"


def test_the_mapping_tables_are_checked():
    pages = {page for page, _ in INLINE}
    assert {"from_pytorch.md", "from_optax.md"} <= pages and len(INLINE) >= 30
    assert _misfit("jaxreg.l1_prox(lam, lr=0.1)")  # a renamed argument
    assert _misfit("optax.chain(jaxreg.l1_proximal(lam))")  # a renamed function
    assert _misfit("jaxreg.pruning.magnitude_mask(..., scope='global')") is None


# ------------------------------------------------------------------ inventories


def test_the_tests_page_names_every_test_file():
    page = (DOCS / "guide" / "tests.md").read_text()
    unnamed = [path.name for path in sorted((ROOT / "tests").glob("test_*.py")) if f"tests/{path.name}" not in page]
    assert not unnamed, f"docs/guide/tests.md does not say what these test files guarantee: {unnamed}"


def test_every_notebook_has_a_thumbnail_and_a_card():
    jaxreg_docs.write_gallery()
    gallery = (DOCS / "_generated" / "gallery.md").read_text()
    for path in jaxreg_docs.notebooks():
        picture = jaxreg_docs.thumbnail(path)
        assert picture is not None, f"no examples/thumbnails/{path.stem.split('_')[0]}_*.png: run make notebooks"
        assert f"/notebooks/{path.stem}`" in gallery and f"/_generated/thumbnails/{picture.name}" in gallery


def test_a_thumbnail_is_refreshed_from_the_figures_saved(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setattr(jaxreg_docs, "THUMBNAILS", tmp_path / "thumbnails")
    (tmp_path / "thumbnails").mkdir()
    for name, width in [("07_first.png", 900), ("07_chosen.png", 300)]:
        Image.new("RGB", (width, 100)).save(tmp_path / name)
    notebook = tmp_path / "07_sweeps.py"
    saved = ["07_first.png", "07_chosen.png"]
    # No thumbnail yet: the first figure, scaled to THUMBNAIL_WIDTH.
    assert jaxreg_docs.refresh_thumbnail(notebook, saved, tmp_path).name == "07_first.png"
    assert Image.open(tmp_path / "thumbnails" / "07_first.png").width == jaxreg_docs.THUMBNAIL_WIDTH
    # A thumbnail named like one of the figures is kept, and the other one removed.
    (tmp_path / "thumbnails" / "07_first.png").rename(tmp_path / "thumbnails" / "07_chosen.png")
    assert jaxreg_docs.refresh_thumbnail(notebook, saved, tmp_path).name == "07_chosen.png"
    assert [p.name for p in (tmp_path / "thumbnails").iterdir()] == ["07_chosen.png"]
    assert Image.open(tmp_path / "thumbnails" / "07_chosen.png").width == 300


# -------------------------------------------------------------------- the build


def _inventory(path: pathlib.Path) -> dict[str, str]:
    """``name -> role`` (``py:function``, ...) from a Sphinx ``objects.inv``."""
    inventory = InventoryFile.loads(path.read_bytes(), uri="")
    return {name: role for role, entries in inventory.data.items() for name in entries}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("docs")
    command = [
        *(sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html"),
        *("-j", "2", "-D", "nb_execution_mode=off", "-d", str(out / "doctrees"), str(DOCS), str(out / "html")),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, f"sphinx-build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return out / "html"


@pytest.mark.slow
def test_docs_build_documents_every_public_name(site):
    inventory = _inventory(site / "objects.inv")
    pages = jaxreg_docs.plan()
    names = [entry.name for page in pages for entry in page.entries]
    absent = [name for name in names if not inventory.get(name, "").startswith("py:")]
    assert not absent, f"not in the built API reference: {absent}"
    index = (site / "api" / "index.html").read_text()
    for alias, _ in jaxreg_docs.aliases(pages):
        assert alias in index, f"{alias} is not listed among the top-level aliases"
    for page in pages:
        html = (site / "api" / f"{page.slug}.html").read_text()
        wrong = re.findall(r'href="[^"]*#jaxreg\.masks\.Mask"[^>]*><code[^>]*><span class="pre">Any<', html)
        assert not wrong, f"api/{page.slug}.html links typing.Any to jaxreg.masks.Mask"


@pytest.mark.slow
def test_docs_build_has_every_page_and_no_broken_link(site):
    for notebook in jaxreg_docs.notebooks():
        assert (site / "notebooks" / f"{notebook.stem}.html").is_file(), f"no page for {notebook.name}"
    for page in ["index", "getting_started", "choosing", "from_pytorch", "from_optax", "benchmarks", "changelog"]:
        assert (site / f"{page}.html").is_file(), f"no {page}.html"
    for guide in sorted((DOCS / "guide").glob("*.md")):
        assert (site / "guide" / f"{guide.stem}.html").is_file(), f"no guide/{guide.stem}.html"
    gallery = (site / "notebooks.html").read_text()
    for notebook in jaxreg_docs.notebooks():
        assert f'href="notebooks/{notebook.stem}.html"' in gallery, f"{notebook.name} has no card in the gallery"
    benchmarks = (site / "benchmarks.html").read_text()
    for table in sorted((ROOT / "bench" / "results").glob("*.md")):
        assert table.stem in benchmarks, f"bench/results/{table.name} is not on the Benchmarks page"
    assert "Changelog" in (site / "changelog.html").read_text()
    assert docs_check.broken_links(site) == []


@pytest.mark.slow
@pytest.mark.skipif(docs_check.find_chromium() is None, reason="no Chromium (apt-get install chromium)")
def test_docs_pages_render_in_headless_chromium(site, tmp_path):
    problems = docs_check.look_at_pages(site, tmp_path, docs_check.find_chromium())
    assert not problems, "\n".join(problems)
    assert {p.name for p in tmp_path.glob("*.png")} == {"home.png", "api.png", "notebook.png"}
