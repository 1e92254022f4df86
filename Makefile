# cx-monitor: `make run` shows the monitor on a local broker; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test lint typecheck unit e2e clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,broker]'
	touch $(STAMP)

venv: $(STAMP)

run: venv
	$(BIN)/cxmon demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -q -m "not broker"

e2e: venv
	$(BIN)/pytest -q -m broker

test: lint typecheck
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .cxmon .mypy_cache .ruff_cache .pytest_cache
