# Benchmark targets (bench/SPEC.md). The top-level Makefile includes this file after it has
# defined BIN and STAMP (the project's venv), e.g. as its last line:
#     include bench/bench.mk
# DBOS runs from its own virtual environment, bench/.venv-dbos, never from the project's .venv,
# so `make test` is never affected by it.

DBOS_VENV    := bench/.venv-dbos
DBOS_STAMP   := $(DBOS_VENV)/.installed
DBOS_VERSION ?= 3.4.*
BENCH_PYTHON ?= python3
BENCH_ARGS   ?=

.PHONY: bench bench-quick bench-scale bench-venv bench-workers

$(DBOS_STAMP): bench/bench.mk
	test -x $(DBOS_VENV)/bin/python || $(BENCH_PYTHON) -m venv $(DBOS_VENV)
	$(DBOS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DBOS_VENV)/bin/python -m pip install --quiet 'dbos==$(DBOS_VERSION)' 'uvloop>=0.19'
	touch $(DBOS_STAMP)

bench-venv: $(STAMP) $(DBOS_STAMP)

# Every point: SQLite and PostgreSQL, C = 1, 16, 64, three interleaved rounds each (sagakit,
# DBOS async, DBOS sync), then the scale checks (10,000 sagas in flight; a million finished
# instances, bulk-loaded once into bench/cache/million.db and schema bench_million, then
# cached) (< 15 min).
bench: bench-venv
	$(BIN)/python bench/run.py --sagakit-python $(BIN)/python \
		--dbos-python $(DBOS_VENV)/bin/python $(BENCH_ARGS)
	$(BIN)/python bench/workers.py --workers 1,2,4 --sagas 4000

# 1, 2 and 4 worker processes sharing one PostgreSQL (bench/workers.py).
bench-workers: $(STAMP)
	$(BIN)/python bench/workers.py --workers 1,2,4 --sagas 4000

# C = 64 only, one round each (< 3 min).
bench-quick: bench-venv
	$(BIN)/python bench/run.py --quick --sagakit-python $(BIN)/python \
		--dbos-python $(DBOS_VENV)/bin/python $(BENCH_ARGS)

# The scale checks alone (SPEC.md section 10): no DBOS, no pgbench.
bench-scale: $(STAMP)
	$(BIN)/python bench/run.py --scale-tests-only --sagakit-python $(BIN)/python $(BENCH_ARGS)
