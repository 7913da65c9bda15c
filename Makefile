# Two commands for a new machine: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench faults clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/nexus-bedrock local up
	$(BIN)/python -m nexus_bedrock_tasks.demo
	@echo "The local stack keeps running so the next command is fast; stop it with: $(BIN)/nexus-bedrock local down"

lint: $(STAMP)
	$(BIN)/ruff check nexus_bedrock_tasks flows tests benchmarks
	$(BIN)/ruff format --check nexus_bedrock_tasks flows tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m benchmarks.run

faults: $(STAMP)
	NBT_FAULTS_SCALE=full NBT_FAULTS_REPORT=RELIABILITY.md $(BIN)/pytest -q tests/faults

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
