# Two entry points for a fresh machine, both idempotent:
#   make repro   set up .venv and run the whole pipeline (dvc repro) on the default data
#   make test    set up .venv and run the test suite
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup repro test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

repro: setup
	dvc repro

test: setup
	python -m pytest
