"""``make docs-check``: looks at the built documentation site the way a reader would.

1. **Links**: parses every HTML file of the site with :mod:`html.parser` and checks that
   each internal ``href``/``src`` (relative or root-relative; ``http:``, ``mailto:`` and
   the like are skipped) names a file that exists, and that a ``#fragment`` into a page
   of the site names an ``id`` in that page.
2. **Pages**: serves the site on ``127.0.0.1`` (a free port) and opens the home page,
   one API page and one notebook page in headless Chromium, saving a screenshot of each
   (``--screenshot``) and the DOM after scripts ran (``--dump-dom``). It fails when a
   page is missing (HTTP status other than 200), when Chromium does not produce the
   screenshot, when the rendered DOM lacks the page's article, or when the browser asked
   the server for anything that is not there (a 404 for a stylesheet, script or image).

Usage::

    python scripts/docs_check.py [SITE] [--screenshots DIR] [--no-browser] [--chromium PATH]

``SITE`` defaults to ``docs/_build/html`` and ``DIR`` to ``docs/_build/screenshots``.
Exit status 0 when everything holds, 1 otherwise (each problem printed).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import html.parser
import http.server
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

ROOT = pathlib.Path(__file__).resolve().parents[1]
SITE = ROOT / "docs" / "_build" / "html"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--virtual-time-budget=8000",
]
# Window sizes: a notebook page is shot tall enough to show its first outputs.
WINDOWS = {"home": "1280,1200", "api": "1280,1600", "notebook": "1280,4000"}
LINK_ATTRIBUTES = {"href", "src"}
EXTERNAL_SCHEMES = {"http", "https", "mailto", "ftp", "data", "javascript", "tel"}


class _LinkParser(html.parser.HTMLParser):
    """Collects the internal links and the ids of one HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name == "id" or (tag == "a" and name == "name"):
                self.ids.add(value)
            elif name in LINK_ATTRIBUTES and tag != "base":
                self.links.append(value)


def _parse(page: pathlib.Path) -> _LinkParser:
    parser = _LinkParser()
    parser.feed(page.read_text(encoding="utf-8", errors="replace"))
    return parser


def broken_links(site: pathlib.Path) -> list[str]:
    """Every internal link of ``site`` whose target file (or ``#id``) does not exist."""
    site = site.resolve()
    # The theme's template fragments under _static/ are not pages.
    pages = sorted(p for p in site.rglob("*.html") if "_static" not in p.relative_to(site).parts)
    parsed = {page: _parse(page) for page in pages}
    problems = []
    for page, parser in parsed.items():
        for link in parser.links:
            url = urllib.parse.urlsplit(link)
            if url.scheme in EXTERNAL_SCHEMES or url.netloc or (not url.path and not url.fragment):
                continue
            path = urllib.parse.unquote(url.path)
            if not path:
                target = page
            elif path.startswith("/"):
                target = site / path.lstrip("/")
            else:
                target = (page.parent / path).resolve()
            if target.is_dir():
                target = target / "index.html"
            where = f"{page.relative_to(site)}: {link}"
            if site not in target.parents and target != site:
                problems.append(f"{where} leaves the site")
            elif not target.is_file():
                problems.append(f"{where} -> {target.relative_to(site)} does not exist")
            elif url.fragment and target.suffix == ".html":
                ids = parsed[target].ids if target in parsed else _parse(target).ids
                if urllib.parse.unquote(url.fragment) not in ids:
                    problems.append(f"{where} -> no id '{url.fragment}' in {target.relative_to(site)}")
    return problems


def pages_to_open(site: pathlib.Path) -> dict[str, str]:
    """The three pages a reader opens first: ``{label: path relative to the site}``."""
    api = sorted(p.name for p in (site / "api").glob("*.html") if p.name != "index.html")
    notebooks = sorted(p.name for p in (site / "notebooks").glob("*.html"))
    return {
        "home": "index.html",
        "api": f"api/{'clipping.html' if 'clipping.html' in api else (api[0] if api else 'clipping.html')}",
        "notebook": f"notebooks/{notebooks[0] if notebooks else '01_functional_view.html'}",
    }


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the site and records every request's path and status."""

    requests: list[tuple[str, int]]

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.requests.append((urllib.parse.urlsplit(self.path).path, int(code) if str(code).isdigit() else 0))

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        # A browser that closes a connection early is no problem of the site.
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


@contextlib.contextmanager
def serve(site: pathlib.Path) -> Iterator[tuple[str, list[tuple[str, int]]]]:
    """Serves ``site`` on a free localhost port; yields the base URL and the request log."""
    log: list[tuple[str, int]] = []
    handler = type("Handler", (_Handler,), {"requests": log})
    server = _Server(("127.0.0.1", 0), functools.partial(handler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", log
    finally:
        server.shutdown()
        server.server_close()


def find_chromium(explicit: str | None = None) -> str | None:
    """The Chromium binary: ``explicit``, ``$CHROMIUM``, or ``chromium`` on the PATH."""
    for candidate in (explicit, os.environ.get("CHROMIUM"), "/usr/bin/chromium", "chromium", "chromium-browser"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def _chromium(chromium: str, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="docs-check-chromium-") as profile:
        return subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def look_at_pages(site: pathlib.Path, screenshots: pathlib.Path, chromium: str) -> list[str]:
    """Opens the three pages in headless Chromium; returns the problems seen."""
    screenshots.mkdir(parents=True, exist_ok=True)
    problems = []
    with serve(site) as (base, log):
        for label, path in pages_to_open(site).items():
            url = urllib.parse.urljoin(base, path)
            try:
                with urllib.request.urlopen(url, timeout=30) as response:
                    status = response.status
            except urllib.error.HTTPError as error:
                status = error.code
            if status != 200:
                problems.append(f"{label} page {path}: HTTP {status}")
                continue
            png = screenshots / f"{label}.png"
            png.unlink(missing_ok=True)
            shot = _chromium(chromium, [f"--window-size={WINDOWS[label]}", f"--screenshot={png}", url])
            if not png.is_file() or png.stat().st_size < 10_000:
                why = f"chromium exit {shot.returncode}: {shot.stderr[-500:]}"
                problems.append(f"{label} page {path}: no screenshot ({why})")
                continue
            dom = _chromium(chromium, [f"--window-size={WINDOWS[label]}", "--dump-dom", url]).stdout
            (screenshots / f"{label}.html").write_text(dom)
            if "bd-article" not in dom or "<h1" not in dom:
                problems.append(f"{label} page {path}: the rendered DOM has no article with a title")
            print(f"  {label:9s} {path}: screenshot {png} ({png.stat().st_size // 1024} KiB), DOM {len(dom)} chars")
        # Every browser asks for /favicon.ico on its own; the site has none.
        missing = sorted({path for path, code in log if code == 404 and path != "/favicon.ico"})
        problems += [f"the browser asked for {path}: 404" for path in missing]
    return problems


def main(argv: list[str] | None = None) -> int:
    """Runs the link check and, unless ``--no-browser``, the browser look; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("site", nargs="?", type=pathlib.Path, default=SITE)
    parser.add_argument("--screenshots", type=pathlib.Path, default=None)
    parser.add_argument("--no-browser", action="store_true", help="check the links only")
    parser.add_argument("--chromium", default=None, help="the Chromium binary (default: $CHROMIUM or chromium)")
    args = parser.parse_args(argv)
    site = args.site.resolve()
    if not (site / "index.html").is_file():
        print(f"docs-check: no site at {site} (run `make docs` first)")
        return 1

    problems = []
    for label, path in pages_to_open(site).items():
        if not (site / path).is_file():
            problems.append(f"{label} page {path} is missing")
    links = broken_links(site)
    problems += links
    crawled = [p for p in site.rglob("*.html") if "_static" not in p.relative_to(site).parts]
    print(f"docs-check: {len(crawled)} pages crawled, {len(links)} broken internal links")

    if not args.no_browser:
        chromium = find_chromium(args.chromium)
        if chromium is None:
            problems.append("no Chromium found (apt-get install chromium, or pass --chromium / set $CHROMIUM)")
        else:
            screenshots = (args.screenshots or site.parent / "screenshots").resolve()
            problems += look_at_pages(site, screenshots, chromium)

    for problem in problems:
        print(f"  FAIL {problem}")
    print("docs-check: OK" if not problems else f"docs-check: {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
