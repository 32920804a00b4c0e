# `make curriculum` and `make test` do everything on a fresh clone: set-up first, when needed.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# dvc.yaml runs `python`: the environment's own interpreter, here the venv's.
export PATH := $(CURDIR)/$(BIN):$(PATH)
# Offline, no telemetry, tool state in .cache: pixart/settings.py's project_env, which `pixart` applies
# before it starts dvc (so every stage inherits it) and the tests' conftest before any test.

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
