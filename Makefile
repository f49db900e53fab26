# A newcomer needs two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint notebooks bench docs docs-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m jaxreg.demo

# Two workers (pytest-xdist), each test file on one of them: the suite is mostly
# single-threaded compiles and subprocesses, so this halves its time on 2 cores.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# Style: the linter and the formatter, as CI runs them.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The notebooks live as jupytext percent-format .py files; this executes each one and writes
# it as .ipynb beside it, with its outputs and figures, and refreshes its thumbnail in
# examples/thumbnails/ (the docs' gallery). Full size; JAXREG_SMALL=1 make notebooks runs
# them at the tests' size.
notebooks: $(STAMP)
	$(BIN)/python docs/_ext/jaxreg_docs.py

# Benchmarks: JSON lines and a markdown table in bench/results/<machine>.{json,md}.
bench: $(STAMP)
	$(BIN)/python -m bench.run_all

# The documentation site, into docs/_build/html; any Sphinx warning fails the build.
# Two processes read the pages (-j 2); a notebook executes in the process that reads it,
# at the small size, cached in docs/_build/.jupyter_cache until it or jaxreg changes.
# Prose only, without running them: make docs SPHINXOPTS="-D nb_execution_mode=off"
SPHINXOPTS ?=
docs: $(STAMP)
	$(BIN)/sphinx-build -j 2 -W --keep-going $(SPHINXOPTS) -b html docs docs/_build/html

# The built site in headless Chromium (apt-get install chromium): three pages
# screenshotted into docs/_build/screenshots, every internal link checked.
docs-check: docs
	$(BIN)/python scripts/docs_check.py docs/_build/html

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis docs/_build
