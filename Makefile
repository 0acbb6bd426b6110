# Quick start: `make demo` (a federation of 8 clients with baselines) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-all lint format docs bench bench-engines bench-generation bench-robustness reproduce clean

$(BIN)/fedumm: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,all]'
	touch $@

demo: $(BIN)/fedumm  ## run the default federation; results in runs/quickstart/
	$(BIN)/fedumm run configs/quickstart.yaml -o runs/quickstart

# pytest-xdist workers: each test trains on one thread (tests/conftest.py), and on 2 cores a
# third worker fills the core the FLARE and Flower tests leave idle while they wait on their
# processes (5 min 14 s against 6 min 12 s with two, back to back); --dist loadgroup
# (pyproject.toml) keeps each engine's process runs on one worker.
TEST_WORKERS ?= 3
TEST_OPTIONS := -q -n $(TEST_WORKERS)

test: $(BIN)/fedumm  ## the fast test suite (every feature end to end at tiny scale)
	$(BIN)/python -m pytest $(TEST_OPTIONS) --durations=15  # the slowest, for whoever trims it

test-all: $(BIN)/fedumm  ## including the slow end-to-end runs
	$(BIN)/python -m pytest $(TEST_OPTIONS) -m ""

lint: $(BIN)/fedumm
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(BIN)/fedumm
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

docs: $(BIN)/fedumm  ## the documentation site in site/ (open site/index.html); fails on any warning
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(BIN)/fedumm  ## engine overhead, memory scaling and throughput
	$(BIN)/python benchmarks/engine_overhead.py

bench-engines: $(BIN)/fedumm  ## embedded vs FLARE (simulator, POC) vs Flower (simulation, deployment)
	$(BIN)/python benchmarks/engine_comparison.py

bench-generation: $(BIN)/fedumm  ## text-to-image images/s and scorer speed
	$(BIN)/python benchmarks/generation.py

bench-robustness: $(BIN)/fedumm  ## accuracy under attack x aggregator, and against DP epsilon
	$(BIN)/fedumm bench robustness --quiet
	$(BIN)/fedumm bench privacy --quiet

reproduce: $(BIN)/fedumm  ## FedUMM's three findings at laptop scale (about an hour on 2 cores)
	$(BIN)/fedumm bench clients-alpha --quiet
	$(BIN)/fedumm bench communication --quiet
	$(BIN)/fedumm bench compute-communication --quiet

clean:
	rm -rf runs .pytest_cache
