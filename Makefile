# feastflow: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROFILE ?= embedded
export FEASTFLOW_PROFILE := $(PROFILE)

.DEFAULT_GOAL := help
.PHONY: help setup install lock demo test test-fast lint format serve bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# requirements.lock pins what runs in production; requirements-dev.lock adds the dev extra (tests,
# lint) and the spark extra at the same pins. `make setup` (development, CI) installs both; `make install`
# only the first.
$(BIN)/uv:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || \
		{ echo "Python 3.11 is required (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv==0.13.8

$(BIN)/.installed: pyproject.toml requirements.lock requirements-dev.lock | $(BIN)/uv
	$(BIN)/uv pip install -q --python $(BIN)/python -r requirements.lock -r requirements-dev.lock
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	touch $@

setup: $(BIN)/.installed ## create .venv with the runtime and dev dependencies (tests, lint)

install: | $(BIN)/uv ## production: a fresh .venv with the runtime pins only, feastflow not editable
	$(BIN)/uv pip install -q --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps .
	rm -f $(BIN)/.installed

lock: | $(BIN)/uv ## re-resolve both locks after editing pyproject.toml (keeps the pins it can)
	$(BIN)/uv pip compile -q --python $(BIN)/python pyproject.toml -o requirements.lock
	$(BIN)/uv pip compile -q --python $(BIN)/python pyproject.toml --extra dev --extra spark \
		-c requirements.lock -o requirements-dev.lock

demo: setup ## run the flagship job end to end (PROFILE=redis for the Redis online store)
	$(BIN)/feastflow demo

test: setup ## run the whole test suite (needs Redis at REDIS_URL, default localhost:6379)
	$(BIN)/pytest

test-fast: setup ## the tests without the end-to-end ones
	$(BIN)/pytest -m "not e2e"

lint: setup ## ruff and mypy (feastflow/ and serving/, configured in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/mypy

format: setup ## ruff format and import sorting
	$(BIN)/ruff check --fix .

serve: setup ## start the prediction server on :8000 (after make demo)
	$(BIN)/feastflow serve

clean: ## remove generated state (var/), keep the virtual environment
	rm -rf var
