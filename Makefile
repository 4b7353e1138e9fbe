# Two commands do everything on a fresh machine: `make run` (the demo) and `make test`.
VENV := .venv
BIN := $(VENV)/bin
SRC := agent tests bench

.PHONY: setup setup-tests run test check bench bench-link clean

setup:
	@scripts/setup.sh

setup-tests:
	@scripts/setup.sh --tests

# The demo: a throwaway local mosquitto, the agent on a sample clip with the default model,
# and a live view of what the commune server receives.
run: setup
	$(BIN)/edge-agent demo

check: setup
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)
	$(BIN)/mypy

test: setup-tests
	$(MAKE) --no-print-directory check
	$(BIN)/pytest

bench: setup
	$(BIN)/python -m bench
	$(BIN)/python -m bench.light

# only the link-fault and wear part (about a minute): bench-results/link.json
bench-link: setup
	$(BIN)/python -m bench.link

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache bench-results
