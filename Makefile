# parley: `make demo` runs a server you can chat with; `make test` runs the tests.
# Both work on a fresh machine: they create .venv and install what is missing.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PYTEST_ARGS ?=
# Test processes (pytest-xdist), each with its own database cluster and Redis when its tests
# need them; the end-to-end tests all run in one (one model server). 0: one process.
PYTEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadgroup)

.PHONY: help install demo run test test-fast test-web lint format typecheck system-deps local-model check clean bench bench-peers

help:
	@echo "make demo        parley with a small local model (offline, no keys): chat at http://127.0.0.1:8000"
	@echo "make test        the whole test suite (unit, API, end-to-end with a real model server)"
	@echo "make run         parley serve (configure with MCP_LLM_* variables, see README)"
	@echo "make bench       parley (on SQLite, Redis, PostgreSQL) against a direct stream, a bare relay and LiteLLM: one table"
	@echo "make lint | typecheck | format | install"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,postgres]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/parley demo

run: install
	$(BIN)/parley serve

system-deps:
	@bash scripts/system-deps.sh

local-model: install
	$(BIN)/python -m parley.local.install

test: install system-deps local-model
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: install system-deps
	$(BIN)/python -m pytest -m "not e2e" $(XDIST) $(PYTEST_ARGS)

test-web: install system-deps
	$(BIN)/python -m pytest tests/web $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

bench: install
	$(BIN)/python -m bench.run

bench-peers:
	PYTHON=$(PYTHON) bash bench/install-peers.sh

typecheck: install
	$(BIN)/mypy src

check: lint typecheck test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
