"""The generated parts of jaxreg's documentation site, and its coverage check.

Nothing here is written by hand per symbol or per notebook, so the site follows the
code as others change it:

* **API reference** (``docs/api/``): one page per group of the package (clipping, decay,
  proximal, projections, masks, penalties, schedules, pruning, nn, training, then any
  other public module listed in ``jaxreg.__all__``), each listing exactly the names of
  its module's ``__all__``. Modules without an ``__all__`` (the flat transform modules)
  contribute the names of ``jaxreg.__all__`` that they define. Every public object is
  documented once, under its public name: ``jaxreg.clip`` for the flat groups,
  ``jaxreg.pruning.magnitude_mask`` for the subpackages; top-level aliases such as
  ``jaxreg.keep_pruned`` are listed on the index page with a link.
* **Coverage**: :func:`missing` lists every name in any public module's ``__all__`` (and
  in ``jaxreg.__all__``) whose object the reference does not document. The build warns
  on each (an error under ``-W``) and ``tests/test_docs.py`` asserts the list is empty.
* **Notebooks** (``docs/notebooks/``): every ``examples/[0-9]*.py`` is copied in (and a
  copy whose source is gone is removed); myst-nb reads them through jupytext.
* **Gallery** (``docs/_generated/gallery.md``, included by ``docs/notebooks.md``): one
  card per notebook, with its thumbnail ``examples/thumbnails/<NN>_*.png``.
* **Benchmarks**: every ``bench/results/*.md`` table, headings shifted under the page's.
* ``python docs/_ext/jaxreg_docs.py`` (``make notebooks``): every notebook executed into
  an ``.ipynb`` beside it, and its thumbnail refreshed from the figures it saved.
* The ``{notebook}`` role: ``{notebook}`05``` links to the notebook whose file name
  starts with ``05``, titled by its first heading (``{notebook}`text <05>``` gives the
  link its own text); a notebook not written yet renders as plain text (logged, not a
  warning), so guides may point at notebooks in preparation.

This module imports without Sphinx (only :func:`setup` and the role need it), so that
the tests can check the plan without building the site and ``make notebooks`` can run
it as a script.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import inspect
import os
import pathlib
import pkgutil
import re
import shutil
import types
from typing import Any

DOCS = pathlib.Path(__file__).resolve().parents[1]
ROOT = DOCS.parent
EXAMPLES = ROOT / "examples"
BENCH_RESULTS = ROOT / "bench" / "results"
API_DIR = DOCS / "api"
NOTEBOOK_DIR = DOCS / "notebooks"
GENERATED = DOCS / "_generated"
NOTEBOOK_GLOB = "[0-9]*.py"

# (page, module): the package's groups, in the order the reference shows them.
GROUPS: list[tuple[str, str]] = [
    ("clipping", "jaxreg.clipping"),
    ("decay", "jaxreg.decay"),
    ("proximal", "jaxreg.proximal"),
    ("projections", "jaxreg.projections"),
    ("noise", "jaxreg.noise"),
    ("privacy", "jaxreg.privacy"),
    ("optimizers", "jaxreg.optimizers"),
    ("masks", "jaxreg.masks"),
    ("penalties", "jaxreg.penalties"),
    ("schedules", "jaxreg.schedules"),
    ("pruning", "jaxreg.pruning"),
    ("nn", "jaxreg.nn"),
    ("training", "jaxreg.training"),
]
TITLES = {
    "clipping": "Clipping",
    "decay": "Weight decay",
    "proximal": "Proximal steps",
    "projections": "Projections",
    "noise": "Gradient noise",
    "privacy": "Differential privacy (DP-SGD aggregation)",
    "optimizers": "Optimizers (fusable adam, sgd)",
    "masks": "Masks",
    "penalties": "Penalties",
    "schedules": "Schedules",
    "pruning": "Pruning",
    "nn": "Models (nn)",
    "training": "Training",
}


@dataclasses.dataclass
class Entry:
    """One documented object: ``name`` is the public name it is documented under."""

    name: str
    kind: str  # "function", "class" or "data": the autodoc directive
    obj: Any


@dataclasses.dataclass
class Page:
    """One page of the API reference."""

    slug: str
    module: str | None  # None for the index page's "other top-level names"
    entries: list[Entry]


def _kind(obj: Any) -> str:
    if inspect.isclass(obj):
        return "class"
    if callable(obj) and not isinstance(obj, types.GenericAlias) and getattr(obj, "__module__", "") != "typing":
        return "function"
    return "data"


def public_modules() -> list[types.ModuleType]:
    """``jaxreg`` and every submodule whose dotted path has no ``_``-prefixed part."""
    import jaxreg

    modules = [jaxreg]
    for info in pkgutil.walk_packages(jaxreg.__path__, "jaxreg."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        modules.append(importlib.import_module(info.name))
    return modules


def _group_names(module: types.ModuleType) -> list[str]:
    import jaxreg

    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [
        name
        for name in jaxreg.__all__
        if not inspect.ismodule(getattr(jaxreg, name))
        and getattr(getattr(jaxreg, name), "__module__", None) == module.__name__
    ]


def plan() -> list[Page]:
    """The API reference: the group pages, then the index page's other top-level names."""
    import jaxreg

    exported_modules = {getattr(jaxreg, n).__name__ for n in jaxreg.__all__ if inspect.ismodule(getattr(jaxreg, n))}
    groups = list(GROUPS)
    known = {module for _, module in groups}
    groups += [(m.rsplit(".", 1)[1], m) for m in sorted(exported_modules - known)]

    pages, placed = [], set()
    for slug, module_name in groups:
        module = importlib.import_module(module_name)
        entries = []
        for name in _group_names(module):
            obj = getattr(module, name)
            flat = module_name not in exported_modules and name in jaxreg.__all__ and getattr(jaxreg, name) is obj
            entries.append(Entry(f"jaxreg.{name}" if flat else f"{module_name}.{name}", _kind(obj), obj))
            placed.add(identity(obj, name))
        pages.append(Page(slug, module_name, entries))
    others = [
        Entry(f"jaxreg.{name}", _kind(getattr(jaxreg, name)), getattr(jaxreg, name))
        for name in jaxreg.__all__
        if not inspect.ismodule(getattr(jaxreg, name)) and identity(getattr(jaxreg, name), name) not in placed
    ]
    pages.append(Page("index", None, others))
    return pages


def identity(obj: Any, name: str) -> Any:
    """What makes two public names the same documented object.

    A function, class or module of jaxreg is itself (``jaxreg.keep_pruned is
    jaxreg.pruning.keep_pruned``). Anything else is the object *and* its name: ``Mask``
    is ``typing.Any``, which must not make every ``Any`` the mask type.
    """
    own = getattr(obj, "__name__" if inspect.ismodule(obj) else "__module__", None) or ""
    if (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj)) and own.startswith("jaxreg"):
        return id(obj)
    return (id(obj), name.rpartition(".")[2])


def documented(pages: list[Page]) -> dict[Any, str]:
    """``identity(object, name) -> the name it is documented under``."""
    return {identity(entry.obj, entry.name): entry.name for page in pages for entry in page.entries}


def aliases(pages: list[Page]) -> list[tuple[str, str]]:
    """``(jaxreg.<name>, documented name)`` for top-level names documented elsewhere."""
    import jaxreg

    where = documented(pages)
    rows = []
    for name in jaxreg.__all__:
        obj = getattr(jaxreg, name)
        key = identity(obj, name)
        if not inspect.ismodule(obj) and where.get(key, f"jaxreg.{name}") != f"jaxreg.{name}":
            rows.append((f"jaxreg.{name}", where[key]))
    return rows


def missing(pages: list[Page] | None = None) -> list[str]:
    """Every ``module.name`` of a public ``__all__`` that the reference does not document."""
    pages = plan() if pages is None else pages
    where = documented(pages)
    slugs = {page.module for page in pages}
    gaps = []
    for module in public_modules():
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name, None)
            if obj is None:
                gaps.append(f"{module.__name__}.{name} (in __all__ but not defined)")
            elif inspect.ismodule(obj):
                if obj.__name__ not in slugs:
                    gaps.append(f"{module.__name__}.{name} (a module with no page)")
            elif identity(obj, name) not in where:
                gaps.append(f"{module.__name__}.{name}")
    return gaps


# ------------------------------------------------------------------------ writing pages


def _write_if_changed(path: pathlib.Path, text: str) -> None:
    # Unchanged files keep their mtime, so Sphinx does not re-read them.
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _heading(text: str, char: str) -> str:
    return f"{text}\n{char * len(text)}\n"


def _entry_rst(entry: Entry) -> str:
    if entry.kind == "class":
        options = "   :members:\n   :show-inheritance:\n"
        if issubclass(entry.obj, tuple) and hasattr(entry.obj, "_fields"):
            # A NamedTuple state: its docstring names the fields; autodoc's "Alias for
            # field number 0" attributes add nothing.
            options = "   :show-inheritance:\n"
        return f".. autoclass:: {entry.name}\n{options}"
    return f".. auto{entry.kind}:: {entry.name}\n"


def _summary_rst(entries: list[Entry]) -> str:
    # Names relative to the entries' common module, which becomes the current module, so
    # that the summaries' own references (":func:`clip`") resolve as in the docstrings.
    if not entries:
        return ""
    prefix = entries[0].name.rpartition(".")[0]
    assert all(entry.name.rpartition(".")[0] == prefix for entry in entries), prefix
    names = "".join(f"   {entry.name.rpartition('.')[2]}\n" for entry in entries)
    return f".. py:currentmodule:: {prefix}\n\n.. autosummary::\n   :nosignatures:\n\n{names}\n"


def _group_rst(page: Page) -> str:
    flat = any(entry.name.count(".") == 1 for entry in page.entries)
    lines = [
        ".. This page is generated by docs/_ext/jaxreg_docs.py from the module's __all__; do not edit.\n",
        _heading(TITLES.get(page.slug, f"``{page.module}``"), "="),
        f".. automodule:: {page.module}\n   :no-members:\n",
    ]
    if flat:
        lines.append(
            f"The names below are exported flat, as ``jaxreg.<name>``; they can also be imported "
            f"from ``{page.module}``.\n"
        )
    else:
        lines.append(f"The names below live in ``{page.module}``.\n")
    if not page.entries:
        lines.append("This module exports no names yet.\n")
    lines.append(_summary_rst(page.entries))
    lines += [_entry_rst(entry) for entry in page.entries]
    return "\n".join(lines)


def _index_rst(pages: list[Page]) -> str:
    import jaxreg

    groups = [page for page in pages if page.module is not None]
    others = next(page for page in pages if page.module is None)
    lines = [
        ".. This page is generated by docs/_ext/jaxreg_docs.py from the package's __all__; do not edit.\n",
        _heading("API reference", "="),
        "Every public name of jaxreg, generated from the docstrings and grouped as the package is. "
        "Gradient-space transforms (clipping, coupled decay) go *before* the optimizer in an "
        "``optax.chain``; parameter-space transforms (decoupled decay, proximal steps, projections, "
        "pruning transforms) go *after* it and need ``params`` in ``update``.\n",
        ".. toctree::\n   :hidden:\n\n" + "".join(f"   {page.slug}\n" for page in groups),
        _heading("Groups", "-"),
    ]
    for page in groups:
        module = importlib.import_module(page.module)
        first = (inspect.getdoc(module) or "").split("\n\n")[0].replace("\n", " ")
        lines.append(f"* :doc:`{page.slug}` (``{page.module}``): {first}")
    lines.append("")
    rows = aliases(pages)
    if rows:
        lines.append(_heading("Top-level aliases", "-"))
        lines.append("These names of ``jaxreg.__all__`` are the same objects as the ones linked.\n")
        lines.append(".. list-table::\n   :header-rows: 1\n\n   * - name\n     - documented as")
        for alias, target in rows:
            role = ":class:" if inspect.isclass(_resolve(target)) else ":obj:"
            lines.append(f"   * - ``{alias}``\n     - {role}`{target}`")
        lines.append("")
    if others.entries:
        lines.append(_heading("Shared types", "-"))
        lines.append("Top-level names that belong to no single group.\n")
        lines.append(_summary_rst(others.entries))
        lines += [_entry_rst(entry) for entry in others.entries]
    lines.append(_heading("Version", "-"))
    lines.append(f"This reference documents jaxreg {jaxreg.__version__} (``jaxreg.__version__``).\n")
    return "\n".join(lines)


def _resolve(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def write_api_pages() -> list[Page]:
    """Writes ``docs/api/*.rst`` from :func:`plan` and removes pages of vanished groups."""
    pages = plan()
    wanted = {f"{page.slug}.rst" for page in pages}
    for page in pages:
        text = _index_rst(pages) if page.module is None else _group_rst(page)
        _write_if_changed(API_DIR / f"{page.slug}.rst", text)
    for stale in API_DIR.glob("*.rst"):
        if stale.name not in wanted:
            stale.unlink()
    return pages


def notebooks() -> list[pathlib.Path]:
    """The teaching notebooks, ``examples/[0-9]*.py``, sorted."""
    return sorted(EXAMPLES.glob(NOTEBOOK_GLOB))


def copy_notebooks() -> None:
    """Mirrors ``examples/[0-9]*.py`` into ``docs/notebooks/``."""
    wanted = {path.name for path in notebooks()}
    for path in notebooks():
        _write_if_changed(NOTEBOOK_DIR / path.name, path.read_text())
    for stale in NOTEBOOK_DIR.glob("*.py"):
        if stale.name not in wanted:
            stale.unlink()


THUMBNAILS = EXAMPLES / "thumbnails"
THUMBNAIL_WIDTH = 480


def thumbnail(path: pathlib.Path) -> pathlib.Path | None:
    """The gallery picture of notebook ``path``: ``examples/thumbnails/<NN>_*.png``, or None."""
    found = sorted(THUMBNAILS.glob(f"{path.stem.split('_')[0]}_*.png"))
    return found[0] if found else None


def write_gallery() -> None:
    """``docs/_generated/gallery.md``: one card per notebook, its thumbnail linked to its page.

    The thumbnails are copied under ``docs/_generated/thumbnails/`` so that the page
    refers to them inside the source folder; a notebook without one gets a card with
    its title only.
    """
    cards = []
    for path in notebooks():
        doc = f"{{doc}}`/notebooks/{path.stem}`"
        picture = thumbnail(path)
        if picture is None:
            cards.append(f":::{{container}} jaxreg-card\n{doc}\n:::\n")
            continue
        copy = GENERATED / "thumbnails" / picture.name
        if not copy.exists() or copy.read_bytes() != picture.read_bytes():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(picture, copy)
        cards.append(
            f":::{{figure}} /_generated/thumbnails/{picture.name}\n:target: notebooks/{path.stem}.html\n"
            f":alt: {path.stem}\n\n{doc}\n:::\n"
        )
    _write_if_changed(GENERATED / "gallery.md", "::::{container} jaxreg-gallery\n" + "\n".join(cards) + "::::\n")


def write_benchmark_tables() -> None:
    """``docs/_generated/benchmark_tables.md``: every ``bench/results/*.md``, headings under H2."""
    parts = []
    for path in sorted(BENCH_RESULTS.glob("*.md")):
        text = path.read_text()
        levels = [len(m.group(1)) for m in re.finditer(r"^(#+) ", text, flags=re.M)]
        shift = "#" * (3 - min(levels) if levels else 0)
        text = re.sub(r"^(#+) ", rf"{shift}\1 ", text, flags=re.M)
        parts.append(f"## Results: `{path.stem}`\n\nFrom `bench/results/{path.name}`.\n\n{text.strip()}\n")
    if not parts:
        parts.append("No results yet: run `make bench`.\n")
    _write_if_changed(GENERATED / "benchmark_tables.md", "\n".join(parts))


def execution_cache_key() -> str:
    """A hash of what the notebooks' outputs depend on besides their own code.

    jupyter-cache keys an executed notebook by its code cells only; a change in jaxreg,
    in ``examples/_common.py`` or in the size setting must re-run them too, so the cache
    folder is named after this hash.
    """
    digest = hashlib.sha256()
    sources = sorted((ROOT / "jaxreg").rglob("*.py")) + sorted(EXAMPLES.glob("_*.py"))
    for path in sources:
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    digest.update(os.environ.get("JAXREG_SMALL", "").encode())
    return digest.hexdigest()[:16]


def prune_execution_caches(root: pathlib.Path, keep: str) -> None:
    """Removes the cache folders under ``root`` other than ``keep``."""
    if root.is_dir():
        for folder in root.iterdir():
            if folder.is_dir() and folder.name != keep:
                shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------- Sphinx


# The unions the library spells with one name. Params first: it contains the others' members.
NAMED_UNIONS = ("optax.Params", "chex.Numeric", "optax.Schedule")


@functools.cache
def _union_members(text: str, aliases: tuple[tuple[str, str], ...]) -> tuple:
    """The members of the union ``text`` evaluates to, with sphinx-autodoc-typehints' aliases."""
    import typing

    import chex
    import optax
    from sphinx_autodoc_typehints import MyTypeAliasForwardRef

    def probe(x):  # only its annotation is read
        pass

    probe.__annotations__ = {"x": text}
    localns = {key: MyTypeAliasForwardRef(value) for key, value in aliases}
    hint = typing.get_type_hints(probe, {"chex": chex, "optax": optax}, localns)["x"]
    return tuple(typing.get_args(hint)) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


class TypehintsFormatter:
    """``typehints_formatter`` for sphinx-autodoc-typehints: names instead of expansions.

    ``chex.Numeric | optax.Schedule`` evaluates to a union of a dozen types; this shows it
    as those two names (other members are formatted as usual). A class rather than a
    function, so that Sphinx can pickle it and compare it between builds (a function in
    the configuration makes every build a full rebuild).
    """

    def __call__(self, annotation: Any, config: Any) -> str | None:
        import typing

        from sphinx_autodoc_typehints import format_annotation

        aliases = tuple(sorted(config.autodoc_type_aliases.items()))
        union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
        members = list(typing.get_args(annotation)) if union else [annotation]
        names = []
        for name in NAMED_UNIONS:
            named = _union_members(name, aliases)
            if all(any(m == n for m in members) for n in named):
                names.append(f"``{name}``")
                members = [m for m in members if not any(m == n for n in named)]
        if not names:
            return None
        rest = ["``None``" if m is type(None) else format_annotation(m, config) for m in members]
        return " | ".join(names + rest)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self).__name__)


def _notebook_for(key: str) -> pathlib.Path | None:
    found = [path for path in notebooks() if path.stem == key or path.stem.startswith(f"{key}_")]
    return found[0] if len(found) == 1 else None


def _notebook_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    from docutils import nodes
    from sphinx import addnodes
    from sphinx.util import logging

    titled = re.fullmatch(r"(.*?)\s*<(.+)>", text.strip())
    title, key = (titled.group(1), titled.group(2)) if titled else (None, text.strip())
    path = _notebook_for(key)
    if path is None:
        logging.getLogger(__name__).info(f"{{notebook}}`{text}`: no examples/{key}_*.py yet, rendered as text")
        return [nodes.emphasis(rawtext, f"notebook {key} (in preparation)")], []
    env = inliner.document.settings.env
    ref = addnodes.pending_xref(
        rawtext,
        refdomain="std",
        reftype="doc",
        reftarget=f"/notebooks/{path.stem}",
        refexplicit=title is not None,
        refwarn=True,
        refdoc=env.docname,
    )
    ref += nodes.inline(rawtext, title or path.stem)
    return [ref], []


def _on_config_inited(app, config) -> None:
    _PLAN.clear()
    write_api_pages()
    copy_notebooks()
    write_gallery()
    write_benchmark_tables()


def _on_env_get_outdated(app, env, added, changed, removed) -> list[str]:
    """Drops stale execution caches and marks every notebook page outdated when the key changed.

    Sphinx re-reads a page when its source changes. A notebook's outputs also depend on
    jaxreg's source: a new cache key changes ``nb_execution_cache_path``, which makes
    Sphinx re-read everything; as a safety net, a key other than the one the environment
    was built with marks every notebook page outdated here too. myst-nb then executes
    the pages it reads, in the ``sphinx-build -j`` worker that reads them.
    """
    if app.config.nb_execution_mode != "cache":
        return []
    cache = pathlib.Path(app.config.nb_execution_cache_path)
    prune_execution_caches(cache.parent, keep=cache.name)
    pages = {f"notebooks/{path.stem}" for path in notebooks()}
    stale = [] if getattr(env, "jaxreg_notebook_key", None) == cache.name else sorted(pages - added - changed)
    env.jaxreg_notebook_key = cache.name
    return stale


def _resolve_any(dotted: str) -> Any:
    """The object a dotted path names (a module, or attributes of one), or None."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for name in parts[i:]:
                obj = getattr(obj, name)
        except AttributeError:
            return None
        return obj
    return None


def _on_missing_reference(app, env, node, contnode):
    """Resolves a docstring's reference to a jaxreg object by what it *is*.

    Docstrings name objects where they are defined (``:func:`~jaxreg.pruning.masks.apply_mask```)
    or relative to their module (``:class:`SparsityReport```); the reference documents each
    object once, under its public name (``jaxreg.pruning.apply_mask``). A reference that
    names a jaxreg object the reference does not document is a warning (an error under
    ``-W``): the docstring points at something a reader cannot find.
    """
    from sphinx.util import logging

    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    module, cls = node.get("py:module"), node.get("py:class")
    candidates = [f"{module}.{cls}.{target}"] if module and cls else []
    candidates += [f"{module}.{target}"] if module else []
    candidates += [target]
    where = documented(_plan_for(env))
    for candidate in candidates:
        obj = _resolve_any(candidate)
        if obj is None:
            continue
        if identity(obj, candidate) in where:
            py = env.get_domain("py")
            name = where[identity(obj, candidate)]
            return py.resolve_xref(env, node["refdoc"], app.builder, "obj", name, node, contnode)
        if inspect.ismodule(obj):  # a module: its group's page (jaxreg.pruning.scores -> pruning)
            pages = [p for p in _plan_for(env) if p.module and f"{obj.__name__}.".startswith(f"{p.module}.")]
            if pages:
                py = env.get_domain("py")
                return py.resolve_xref(env, node["refdoc"], app.builder, "mod", pages[0].module, node, contnode)
        if getattr(obj, "__module__", getattr(obj, "__name__", "")).startswith("jaxreg"):
            break  # a jaxreg object that is not documented
    else:
        if not target.startswith("jaxreg."):
            return None
    logging.getLogger(__name__).warning(
        f"reference to {target!r} (in {node['refdoc']}): no such public jaxreg object in the API reference",
        location=node,
        type="jaxreg",
        subtype="ref",
    )
    return None


_PLAN: list[Page] = []


def _plan_for(env) -> list[Page]:
    # One plan per build (reset when the configuration is read), not one per reference.
    if not _PLAN:
        _PLAN.extend(plan())
    return _PLAN


def _on_check_consistency(app, env) -> None:
    from sphinx.util import logging

    logger = logging.getLogger(__name__)
    pages = plan()
    for gap in missing(pages):
        logger.warning(
            f"API reference: {gap} is in an __all__ but not documented; re-export it from its package "
            "(and add it to that __all__), or add its module to GROUPS in docs/_ext/jaxreg_docs.py",
            type="jaxreg",
            subtype="api",
        )
    objects = env.get_domain("py").objects
    for page in pages:
        for entry in page.entries:
            if entry.name not in objects:
                logger.warning(f"API reference: {entry.name} produced no entry", type="jaxreg", subtype="api")


def setup(app) -> dict[str, Any]:
    """Registers the generators, the coverage check and the ``notebook`` role."""
    app.connect("config-inited", _on_config_inited)
    app.connect("env-get-outdated", _on_env_get_outdated)
    app.connect("env-check-consistency", _on_check_consistency)
    app.connect("missing-reference", _on_missing_reference)
    app.add_role("notebook", _notebook_role)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}


# ------------------------------------------------------------------ make notebooks


def _saved_figures(notebook: Any) -> list[str]:
    """The file names the notebook's ``save_figure`` calls printed (``FIGURE name.png``), in order."""
    text = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "stream"
    )
    return re.findall(r"^FIGURE (\S+\.png)$", text, flags=re.M)


def refresh_thumbnail(path: pathlib.Path, saved: list[str], figures: pathlib.Path) -> pathlib.Path | None:
    """Writes the thumbnail of notebook ``path`` from the figures it just saved.

    The picture kept is the figure named like the current thumbnail, if the notebook
    still saves one, else its first figure; it is scaled to ``THUMBNAIL_WIDTH`` pixels
    wide and the notebook's other thumbnails are removed.
    """
    from PIL import Image

    if not saved:
        return None
    current = thumbnail(path)
    name = current.name if current is not None and current.name in saved else saved[0]
    image = Image.open(figures / name)
    if image.width > THUMBNAIL_WIDTH:
        image = image.resize((THUMBNAIL_WIDTH, round(image.height * THUMBNAIL_WIDTH / image.width)), Image.LANCZOS)
    THUMBNAILS.mkdir(exist_ok=True)
    for old in THUMBNAILS.glob(f"{path.stem.split('_')[0]}_*.png"):
        if old.name != name:
            old.unlink()
    image.save(THUMBNAILS / name, optimize=True)
    return THUMBNAILS / name


def execute_notebooks(paths: list[pathlib.Path], timeout: int = 3600) -> None:
    """``make notebooks``: each ``examples/NN_name.py`` as an executed ``NN_name.ipynb`` beside it.

    The notebooks keep their outputs and figures (the PNGs also go to
    ``JAXREG_FIGURES``, by default ``examples/figures/``), run at the size
    ``JAXREG_SMALL`` says (full size unless it is set), and each one's thumbnail in
    ``examples/thumbnails/`` is refreshed from the figures it saved.
    """
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(EXAMPLES), str(ROOT), os.environ.get("PYTHONPATH")]))
    figures = pathlib.Path(os.environ.get("JAXREG_FIGURES") or EXAMPLES / "figures")
    for path in paths:
        notebook = jupytext.read(path, fmt="py:percent")
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        resources = {"metadata": {"path": str(path.parent)}}  # the kernel's working directory
        NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources=resources).execute()
        nbformat.write(notebook, path.with_suffix(".ipynb"))
        picture = refresh_thumbnail(path, _saved_figures(notebook), figures)
        print(f"{path.with_suffix('.ipynb').relative_to(ROOT)}: executed; thumbnail {picture and picture.name}")


if __name__ == "__main__":
    import sys

    execute_notebooks([pathlib.Path(arg).resolve() for arg in sys.argv[1:]] or notebooks())
