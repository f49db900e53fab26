# A newcomer needs two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test notebooks bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m jaxreg.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The notebooks live as jupytext percent-format .py files; this renders .ipynb beside them.
notebooks: $(STAMP)
	$(BIN)/jupytext --to ipynb examples/[0-9]*.py

# Benchmarks: JSON lines and a markdown table in bench/results/<machine>.{json,md}.
bench: $(STAMP)
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
