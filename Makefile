# core_models: the doors into the kit. `make test` and `make install` work on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lab export clean-nbs help bench

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/'

# nbdev-export rewrites pyproject.toml (same content, new mtime), so the stamp records the file's hash
# rather than relying on timestamps: a second `make install` with nothing changed does nothing.
install:  ## create or update .venv from pyproject.toml (pip, editable, with the dev extra)
	@hash=$$(sha256sum pyproject.toml | cut -d' ' -f1); \
	if [ -x $(PY) ] && [ "$$(cat $(STAMP) 2>/dev/null)" = "$$hash" ]; then \
	  echo "make install: .venv is up to date with pyproject.toml"; \
	else \
	  set -e; test -x $(PY) || python3 -m venv $(VENV); \
	  $(PY) -m pip install --quiet --upgrade "pip>=24"; \
	  $(PY) -m pip install --quiet -e ".[dev]"; \
	  echo "$$hash" > $(STAMP); \
	fi

export: install  ## regenerate core_models/ from the notebooks
	$(BIN)/nbdev-export

clean-nbs: install  ## strip metadata noise (execution counts, kernel info) from the notebooks
	$(BIN)/nbdev-clean

test: install  ## export the package, run every notebook, then pytest
	$(BIN)/nbdev-export
	$(BIN)/nbdev-test --n-workers 2
	$(BIN)/python -m pytest tests/ -q

lab: install  ## JupyterLab on this repo with the venv's kernel
	$(BIN)/jupyter lab --notebook-dir=.

bench: install  ## not tests: backbone throughput vs torchvision, then proof of learning on digits and shapes
	$(BIN)/python benchmarks/backbones.py
	$(BIN)/python benchmarks/learning.py
