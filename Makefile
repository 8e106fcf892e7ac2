# Two entry points that work on a fresh machine with Python 3.11 and make:
#   make run   - set up .venv, train experiments/world_mixed.py (image/video/audio/audio-video on the
#                procedural world), write samples/plot/checkpoints under runs/world_mixed
#   make test  - set up .venv and run the default (fast) test suite
#   make lint  - set up .venv, lint (ruff check) and check formatting (ruff format --check)
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: setup run test test-slow lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (Python 3.11 is required; set PYTHON=...)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

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
