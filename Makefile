# Two commands for a new machine: `make run` and `make test`. Both create .venv from uv.lock if
# missing; all they need is python3 (uv comes from PATH, or is bootstrapped into .tools/uv).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
SOURCES := pyproject.toml uv.lock setup.py mlcore/nn/_fast.pyx mlcore/nn/_gemm.h mlcore/nn/_gemm_impl.h \
	mlcore/nn/_conv_impl.h mlcore/nn/_layers_impl.h mlcore/nn/_threads.h \
	mlcore/nn/_precision.h

# uv: the one on PATH if it is at least UV_VERSION, else UV_VERSION installed with python3's pip
# into .tools/uv (not system-wide). `make UV=/path/to/uv` picks another.
UV_VERSION := 0.13.9
UV_BOOT := .tools/uv
ifeq ($(origin UV),undefined)
UV := $(shell v=$$(uv --version 2>/dev/null | cut -d' ' -f2); \
	if [ -n "$$v" ] && printf '%s\n' $(UV_VERSION) "$$v" | sort -V -C; then command -v uv; \
	else echo $(UV_BOOT)/bin/uv; fi)
endif
# uv never downloads a Python build: the venv is made with $(PYTHON). The lock pins every
# package's file by URL and sha256 on PyPI (uv's default index), so pip's local extra indexes
# and find-links (pip config list) are not needed for it; torch, the one package that lives only
# on local disk, stays outside the lock (see bench).
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(PYTHON)
export UV_PROJECT_ENVIRONMENT := $(VENV)
# Installed packages get their bytecode (.pyc) at install time, as pip does: uv skips it by
# default, and where PYTHONDONTWRITEBYTECODE is set (this machine, many CI images) every new
# interpreter then compiles Prefect's, MLflow's and pandas' sources again (about 17 s of each
# `mlcore` command, server, worker and test subprocess here).
export UV_COMPILE_BYTECODE := 1

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180

.PHONY: run test lint lock lock-check bench install clean docs

$(UV_BOOT)/bin/uv:
	rm -rf $(UV_BOOT)
	PIP_ROOT_USER_ACTION=ignore $(PYTHON) -m pip install --quiet --target $(UV_BOOT) \
		uv==$(UV_VERSION)
	$@ --version

# uv sync builds the project editable, which compiles the Cython fast layers into mlcore/nn
# (build requirements in pyproject.toml; tool.uv.cache-keys rebuilds them when _fast.pyx
# changes). uv may reuse its cached editable build, which does not hold the compiled module:
# if it is missing (make clean), the project is rebuilt. The sync is exact: .venv holds the
# lock's packages and nothing else, plus the test extras once `make test` has installed them.
SYNC = $(UV) sync --frozen $(if $(wildcard $(TEST_STAMP)),--extra test)
$(STAMP): $(SOURCES) | $(UV)
	$(SYNC)
	$(BIN)/python -c 'import mlcore.nn._fast' 2>/dev/null || $(SYNC) --reinstall-package mlcore
	$(BIN)/python -c 'import mlcore.nn._fast'
	touch $@

$(TEST_STAMP): $(STAMP)
	$(UV) sync --frozen --extra test
	touch $@

install: $(STAMP)

## make run: the main job (housing regression, gradient checks, ConvNet on digits)
run: $(STAMP)
	$(BIN)/mlcore run pipeline

## make test: the lock matches pyproject.toml, lint, format check, then the test suite on three
## pytest-xdist workers: on two cores, most of a test's time is spent waiting on the servers and
## subprocesses it starts, and a third worker fills it (measured: 14.3 min of pytest on 3 workers,
## 17.5 on 2)
PYTEST_ARGS ?= -n 3 --dist load --maxschedchunk 1 --durations=25
test: lock-check lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## make lock: re-resolve uv.lock after editing pyproject.toml's dependencies (keeps the other
## pins; make lock LOCK_ARGS=--upgrade moves everything to the newest allowed versions)
LOCK_ARGS ?=
lock: | $(UV)
	$(UV) lock $(LOCK_ARGS)

# fails when pyproject.toml and uv.lock disagree ("The lockfile at `uv.lock` needs to be
# updated"); it reaches PyPI only then, to say so rather than fail to resolve offline
lock-check: | $(UV)
	$(UV) lock --check

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## make bench: the fast-layer benchmark against PyTorch CPU. The [bench] extra's torch==2.13.0
## is a CPU wheel on local disk, outside uv.lock: .venv's pip (locked in the dev group; it reads
## pip's configuration: find-links, constraints) installs it on top of the lock; the next exact
## sync removes it again.
## Writes bench/results/layers.{json,md}. Extra flags through BENCH_ARGS, e.g.
## make bench BENCH_ARGS=--quick (smoke test), BENCH_ARGS=--memory (an epoch's peak memory),
## BENCH_ARGS="--threads 4 --rounds 25".
BENCH_ARGS ?=
# as in pyproject.toml's [bench] extra (tests/tasks/test_environment.py checks they agree)
BENCH_TORCH := torch==2.13.0
bench: $(STAMP)
	$(UV) sync --frozen --inexact --extra bench $(if $(wildcard $(TEST_STAMP)),--extra test)
	$(BIN)/python -m pip install --quiet '$(BENCH_TORCH)'
	$(BIN)/python -m bench.layers $(BENCH_ARGS)

## make docs: regenerate docs/experiments.md's parameter tables from flows/experiments.py
docs: $(STAMP)
	$(BIN)/python -m flows.parameter_docs docs/experiments.md

clean:
	rm -rf build *.egg-info mlcore/nn/_fast.c mlcore/nn/_fast*.so
