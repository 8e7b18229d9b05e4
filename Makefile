# core_models: the doors into the kit. `make test` and `make install` work on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast chromium lab export clean-nbs help bench run release docs

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

# JOBS at a time, pytest's workers (pytest-xdist): a unit of work is a test module, or one notebook of
# tests/test_notebooks.py (each runs as nbdev-test runs it, in a fresh process); units go out in the order
# tests/conftest.py sets (longest first). `make test JOBS=8` on a bigger machine.
JOBS ?= 2
PYTEST := $(BIN)/python -m pytest tests/ -q -n $(JOBS) --dist loadfile --no-loadscope-reorder

test: install chromium  ## the whole truth (CI): export, then pytest: every notebook (with its `#| slow` cells) and every test
	$(BIN)/nbdev-export
	$(PYTEST) --durations=15

test-fast: install  ## the edit loop (~3 min): export, pytest -m "not slow": the notebooks that train nothing, the quick test modules
	$(BIN)/nbdev-export
	$(PYTEST) -m 'not slow' --durations=10

# The browser test (tests/test_widgets_browser.py) drives Debian's chromium; Playwright's own download fails offline.
chromium:  ## install Debian's chromium for the browser test when it is missing (apt-get, as root)
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "make: installing chromium for the browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "make: /usr/bin/chromium missing and cannot apt-get it (not root); the browser test will skip"; fi

# dvc runs each stage's `core-models ...` command through the shell: the venv's bin must be on PATH (the README
# says `source .venv/bin/activate` for the commands a user types). `dvc status -q` exits 1 when a stage must run;
# `dvc repro -q` keeps the stages' own lines and drops DVC's hints (`git add dvc.lock`, `dvc push`, autostage),
# which the next step the run prints (commit, then make release) takes care of.
run: export PATH := $(abspath $(BIN)):$(PATH)
run: install  ## the main job: dvc repro (prepare digits -> train -> evaluate), then the run's numbers and how to release
	@echo "make run: dvc repro (prepare digits -> train -> evaluate; a stage whose inputs did not change is skipped)"
	@if $(BIN)/dvc status -q; then echo "make run: nothing changed since the last run (dvc.lock): no stage runs"; \
	else $(BIN)/dvc repro -q; fi
	@echo; $(BIN)/core-models metrics
	@echo; echo "To make this model a version: commit the run (it holds dvc.lock), then release it (it runs dvc push):"
	@echo "  git add -A && git commit -m 'Train digits-cnn'"
	@echo "  make release NAME=digits-cnn VERSION=1.0.0   # registry commit + GTO tag digits-cnn@v1.0.0"

NAME ?= digits-cnn
release: export PATH := $(abspath $(BIN)):$(PATH)
release: install  ## register HEAD's model as NAME VERSION (e.g. make release NAME=digits-cnn VERSION=1.0.0)
	@test -n "$(VERSION)" || { echo "make release: give VERSION=X.Y.Z (and NAME=..., default digits-cnn)"; exit 2; }
	$(BIN)/core-models release $(NAME) $(VERSION) --push

# Quarto present: nbdev-docs. Absent (our machines): nbdev's processed notebooks rendered by nbconvert, with a sidebar.
docs: install  ## README.md from nbs/index.ipynb, then the docs site in _docs/ (open _docs/index.html); see tools/
	$(PY) tools/readme.py
	$(PY) tools/build_docs.py --strict

# Jupyter refuses to start as root without --allow-root (containers, cloud notebooks): pass it only there.
LAB_AS_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
lab: install  ## JupyterLab on this repo with the venv's kernel
	$(BIN)/jupyter lab --notebook-dir=. $(LAB_AS_ROOT)

bench: install  ## not tests: backbone throughput vs torchvision, then proof of learning on digits and shapes
	$(BIN)/python benchmarks/backbones.py
	$(BIN)/python benchmarks/learning.py
