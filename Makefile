# The two commands a new user needs: `make demo` and `make test`; `make check` while iterating.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Two install stamps: `make demo` needs sagakit alone; the checks need the dev and docs tools.
STAMP  := $(VENV)/.installed
DEV    := $(VENV)/.installed-dev

.PHONY: demo test check lint typecheck imports unit docs install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

$(DEV): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,docs]'
	touch $(STAMP) $(DEV)

install: $(DEV)

demo: $(STAMP)
	$(BIN)/sagakit demo --db sqlite:///demo.db

lint: $(DEV)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(DEV)
	$(BIN)/mypy --strict src/sagakit
	$(BIN)/mypy --strict tests

imports: $(DEV)
	$(BIN)/lint-imports

test: lint typecheck imports docs
	$(BIN)/pytest

# The documentation site, with strict warnings: a broken link or anchor, a page missing from
# the nav, or a docstring the API reference cannot read fails the build.
docs: $(DEV)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

unit: $(DEV)
	$(BIN)/pytest tests/unit -q

# Quick iteration: everything `make test` checks, but only the unit tests (no PostgreSQL, no
# subprocesses); run `make test` before you push.
check: lint typecheck imports unit

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis demo.db* site

# `make bench` and `make bench-quick`: sagakit against DBOS (bench/SPEC.md).
include bench/bench.mk
