# Pilotfish: `make install`, `make demo`, `make test`. Works on a fresh machine with Python >= 3.11.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck unit integration bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/pilotfish up examples/quickstart

lint: install
	$(BIN)/ruff check src tests benchmarks examples tools
	$(BIN)/ruff format --check src tests benchmarks examples tools
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit -q

integration: install
	$(BIN)/pytest tests/integration -q

test: lint typecheck
	$(BIN)/pytest tests -q

bench: install
	$(BIN)/python benchmarks/control_plane.py
	$(BIN)/python benchmarks/data_plane.py
	$(BIN)/python benchmarks/ca.py
	$(BIN)/python benchmarks/identity_startup.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
