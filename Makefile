# Every command a person runs. Nothing here needs a running service: when DATABASE_URL and
# REDIS_URL are unset, chordline starts its own Postgres (with pgvector) and Redis.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast test-faults lint format bench kb-bench clean up rescore-bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/chordline demo

test: setup
	$(BIN)/pytest

# Every test that needs no service (no Postgres, Redis or worker): about 20 s.
test-fast: setup
	$(BIN)/pytest -m "not integration"

# The fault-injection suite (a few minutes): workers, Redis and Postgres killed under load.
test-faults: setup
	CHORDLINE_FAULT_SUITE=1 $(BIN)/pytest tests/faults

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup
	$(BIN)/chordline bench --rate 25 --duration 20

kb-bench: setup
	$(BIN)/chordline kb bench --chunks 100000

# Re-scoring throughput (zero-latency simulated providers), then live p99 from
# `chordline bench` without and with a full-speed re-scoring run alongside.
rescore-bench: setup
	$(BIN)/chordline rescore bench --turns 10000 --rate 25 --duration 20

# The whole stack from the Procfile, Flower included; Ctrl-C stops all of it.
up: setup
	$(BIN)/chordline up

clean:
	rm -rf $(VENV) .chordline .pytest_cache .mypy_cache .ruff_cache
