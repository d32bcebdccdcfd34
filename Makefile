# Segue: `make demo` and `make test` each set up everything they need on a fresh Debian machine.
VENV   := .venv
PY     := $(VENV)/bin/python
SEGUE  := $(VENV)/bin/segue
STAMP  := $(VENV)/.installed
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: setup deps venv image demo test test-slow unit component integration lint bench bench-warmup bench-switchover bench-faults bench-evacuate clean

setup: deps venv image

deps:
	@sh scripts/install-deps.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

image: deps venv
	$(SEGUE) image build

demo: setup
	$(SEGUE) lab demo

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy benchmarks
	$(VENV)/bin/lint-imports

unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

component: venv
	$(PY) -m pytest tests/component $(PYTEST_ARGS)

integration: setup
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

test: setup lint
	$(PY) -m pytest tests -ra -m "not slow" --durations=30 $(PYTEST_ARGS)

# The slow fault scenarios (each waits out the engine's patience around a switchover).
test-slow: setup
	$(PY) -m pytest tests -ra -m slow --durations=10 $(PYTEST_ARGS)

# Migration benchmark: Segue's policy against peers' defaults (tables, JSON and a PNG chart).
bench: setup
	$(VENV)/bin/pip install -q 'matplotlib==3.10.8'
	$(PY) benchmarks/migration.py $(BENCH_ARGS)

# Where the blackout goes, with and without the guest's idle=poll (tables and JSON).
bench-warmup: setup
	$(PY) benchmarks/warmup.py $(BENCH_ARGS)

# What an idle guest's switchover costs with each migration capability on and off.
bench-switchover: setup
	$(PY) benchmarks/switchover.py $(BENCH_ARGS)

# Fault loops: the fault matrix's scenarios repeated (50 times by default), summary table.
bench-faults: setup
	$(PY) benchmarks/faults.py $(BENCH_ARGS)

# A host of 6 guests evacuated by Segue's maintenance mode and by the peers' schedules.
bench-evacuate: setup
	$(PY) benchmarks/evacuate.py $(BENCH_ARGS)

clean:
	-$(SEGUE) lab down
	rm -rf $(VENV) build src/*.egg-info
