# cx-monitor: `make run` shows the monitor on a local broker; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Prometheus, Alertmanager and openssl (test certificates) from Debian, for the real thing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: venv ops-tools run test lint typecheck unit e2e faults bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,broker]'
	touch $(STAMP)

venv: $(STAMP)

ops-tools:
	@command -v promtool >/dev/null && command -v prometheus-alertmanager >/dev/null && \
	  command -v openssl >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    prometheus prometheus-alertmanager openssl >/dev/null; }

run: venv
	$(BIN)/cxmon demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

unit: venv ops-tools
	$(BIN)/pytest -q -m "not broker"

e2e: venv ops-tools
	$(BIN)/pytest -q -m broker

# kill -9, a rebalance, a broker restart, a replay: part of `make test`, alone here.
faults: venv
	$(BIN)/pytest -q -n $(TEST_PROCESSES) --dist worksteal tests/test_faults.py

# Throughput, alert latency, memory, state and restore time of the real worker (README
# "Performance"); a smaller run: make bench BENCH_ARGS="--no-scale-out --restore-keys 0".
BENCH_ARGS ?=
bench: venv
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# Two test processes (pytest-xdist): the broker tests spend much of their time waiting on
# workers and brokers, so two at once finish the suite in about two thirds of the time on
# two cores. Work stealing keeps the long fault scenarios from ending up in one queue.
# The 15 slowest tests are listed at the end of every run, so their cost stays in view.
TEST_PROCESSES ?= 2
test: lint typecheck ops-tools
	$(BIN)/pytest -q -n $(TEST_PROCESSES) --dist worksteal --durations=15

clean:
	rm -rf $(VENV) .cxmon .mypy_cache .ruff_cache .pytest_cache tests/asyncapi/node_modules
