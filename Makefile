# `make curriculum` and `make test` do everything on a fresh clone: set-up first, when needed.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# dvc.yaml runs `python`: the environment's own interpreter, here the venv's.
export PATH := $(CURDIR)/$(BIN):$(PATH)
# Everything a stage or test process needs to stay offline and inside the project.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_HOME := $(CURDIR)/.cache/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export DVC_SITE_CACHE_DIR := $(CURDIR)/.cache/dvc-site
export DVC_GLOBAL_CONFIG_DIR := $(CURDIR)/.cache/dvc-global
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions

.PHONY: setup curriculum test lint clean

setup: $(STAMP)

# torch first and pinned: an unpinned resolve pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# the worker imports torch, diffusers, mlflow and DeepSpeed once for every stage process (pixart/worker.py)
curriculum: setup
	$(BIN)/pixart worker -- $(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check pixart stages flows tests bench

clean:
	rm -rf outputs metrics data .cache mlflow.db mlartifacts
