# The two commands a new user needs: `make demo` and `make test`; `make check` while iterating.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test check lint typecheck imports unit install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/sagakit demo --db sqlite:///demo.db

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy --strict src/sagakit
	$(BIN)/mypy --strict tests

imports: $(STAMP)
	$(BIN)/lint-imports

test: lint typecheck imports
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

# Quick iteration: everything `make test` checks, but only the unit tests (no PostgreSQL, no
# subprocesses); run `make test` before you push.
check: lint typecheck imports unit

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis demo.db*

# `make bench` and `make bench-quick`: sagakit against DBOS (bench/SPEC.md).
include bench/bench.mk
