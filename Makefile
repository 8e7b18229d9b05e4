# core_models: the doors into the kit. `make test` and `make install` work on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lab export clean-nbs help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/'

# The stamp is newer than pyproject.toml once the venv holds what it asks for: a second
# `make install` with nothing changed does nothing.
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)  ## create or update .venv from pyproject.toml (pip, editable, with the dev extra)

export: install  ## regenerate core_models/ from the notebooks
	$(BIN)/nbdev-export

clean-nbs: install  ## strip outputs and metadata noise from the notebooks
	$(BIN)/nbdev-clean

test: install  ## export the package, run every notebook, then pytest
	$(BIN)/nbdev-export
	$(BIN)/nbdev-test --n-workers 2
	$(BIN)/python -m pytest tests/ -q

lab: install  ## JupyterLab on this repo with the venv's kernel
	$(BIN)/jupyter lab --notebook-dir=.
