# Two entry points that work on a fresh machine with Python 3.11 and make:
#   make run   - set up .venv, train experiments/world_mixed.py (image/video/audio/audio-video on the
#                procedural world), write samples/plot/checkpoints under runs/world_mixed
#   make test  - set up .venv and run the default (fast) test suite
#   make lint  - set up .venv, lint (ruff check) and check formatting (ruff format --check)
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
# The tested set (pip freeze of the environment the suite passed in; requirements/README.md).
# LOCK= installs the newest releases that pyproject.toml's ranges admit, with the EXTRAS given:
#   make test PYTHON=/opt/python3.13/bin/python3.13 VENV=.venv313 LOCK= EXTRAS=test   (CI's second leg)
LOCK   ?= requirements/py3.11.lock
EXTRAS ?= dev

.PHONY: setup run test test-slow lint lock clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (Python 3.11 is required for the lock; set PYTHON=... LOCK=)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
ifeq ($(strip $(LOCK)),)
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
else
	$(BIN)/pip install --quiet -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
endif
	touch $@

# Writes the lock of this venv's Python (after the suite passed in it): requirements/py3.X.lock.
lock: setup
	./requirements/freeze.sh $(BIN)/python

run: setup
	$(BIN)/selfflow train experiments/world_mixed.py --run-dir runs/world_mixed

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf runs .pytest_cache
