# The few commands people type. Every target bootstraps the virtualenv itself, so on a fresh
# machine `make run` and `make test` are the only set-up steps.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint typecheck unit rules bench bench-quick seed clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

## Serve on the embedded default (SQLite + in-process cache) at http://127.0.0.1:8000
run: $(BIN)/.installed
	$(BIN)/favorites serve

## Everything CI checks: lint, types, alert rules, the whole pytest suite
test: $(BIN)/.installed lint typecheck rules
	$(BIN)/pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check .

typecheck: $(BIN)/.installed
	$(BIN)/mypy

rules:
	@if [ -d deploy/prometheus ]; then scripts/check-rules.sh; fi

## Open-loop benchmark on PostgreSQL (see bench/README.md); extra options: make bench BENCH_ARGS='--rate 500'
bench: $(BIN)/.installed
	$(BIN)/python -m bench.run $(BENCH_ARGS)

## A 10-second smoke run of the benchmark on a small data set (results under var/bench-results)
bench-quick: $(BIN)/.installed
	$(BIN)/python -m bench.run --users 2000 --per-user 10 --rate 100 --duration 5 --warmup 2 \
		--results-dir var/bench-results $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
