# Two entry points for a fresh machine, both idempotent:
#   make repro   set up .venv and run the whole pipeline (dvc repro) on the default data
#   make test    set up .venv and run the test suite
# and, for maintainers:
#   make refresh rerun the default pipeline from scratch and redraw every committed output it
#                feeds: dvc.lock, metrics/, plots/, dvclive/, docs/*.png, docs/results.md
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup repro test refresh

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

# Checkpoints are matched by params, not code: remove them so pretraining restarts with this code.
refresh: setup
	rm -rf checkpoints/pretrain checkpoints/finetune dvclive/pretrain
	dvc repro --force
	python experiments/docs_pictures.py
	python experiments/results_doc.py
