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

## Open-loop benchmark on PostgreSQL (see bench/README.md)
bench: $(BIN)/.installed
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
