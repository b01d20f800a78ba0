# Two entry points: `make run` and `make test`. Both create .venv, install, and pull the
# default models first; each step is skipped when already done.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test test-ray models lint bench-generate clean-models

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

models: $(STAMP)
	$(BIN)/atelier models pull

run: models
	$(BIN)/atelier serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: models lint
	$(BIN)/python -m pytest -q -m "not ray"

# The ray backend on a two-node local Ray cluster (~1 min more; .ci/run runs it too).
test-ray: models
	$(BIN)/python -m pytest -q -m ray

bench-generate: models
	$(BIN)/python bench/generate.py

clean-models:
	rm -rf models/cache
