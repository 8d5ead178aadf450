# Two commands for a new machine: `make run` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
SOURCES := pyproject.toml setup.py mlcore/nn/_fast.pyx

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180

.PHONY: run test lint bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# pip install -e . also compiles the Cython fast layers (build requirements in pyproject.toml)
$(STAMP): $(BIN)/python $(SOURCES)
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(STAMP)

## make run: the main job (housing regression, gradient checks, ConvNet on digits)
run: $(STAMP)
	$(BIN)/mlcore run pipeline

## make test: lint, format check, then the test suite
test: $(TEST_STAMP) lint
	$(BIN)/python -m pytest

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## make bench: the fast-layer benchmark against PyTorch CPU (installs the [bench] extra).
## Writes bench/results/layers.{json,md}. Extra flags through BENCH_ARGS, e.g.
## make bench BENCH_ARGS=--quick (smoke test), BENCH_ARGS=--memory (an epoch's peak memory),
## BENCH_ARGS="--threads 4 --rounds 25".
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/layers.py $(BENCH_ARGS)

clean:
	rm -rf build *.egg-info mlcore/nn/_fast.c mlcore/nn/_fast*.so
