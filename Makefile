# The two commands the README starts with: `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= local,test
PAPER_SEEDS ?= ../shared/data/self_instruct_seed_tasks.jsonl

.PHONY: help demo test test-fast lint format bench services clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "installing selfinstruct[$(EXTRAS)] (the first time compiles llama-cpp-python: about 4 minutes)"
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

demo: $(STAMP) ## Generate a small dataset with the local model, nothing else needed
	$(BIN)/selfinstruct demo $(ARGS)

test: $(STAMP) ## Run the whole test suite (starts PostgreSQL and Redis when TEST_* are unset)
	@if [ -z "$$TEST_DATABASE_URL" ] || [ -z "$$TEST_REDIS_URL" ]; then \
	  eval "$$(bash scripts/test-services.sh)"; \
	fi; \
	SELFINSTRUCT_PAPER_SEEDS=$(PAPER_SEEDS) $(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) ## Unit tests only
	$(BIN)/python -m pytest tests/unit -q

lint: $(STAMP) ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP) ## Run the benchmarks in bench/ (results go in BENCHMARKS.md)
	$(BIN)/python bench/bench_rouge.py --seeds $(PAPER_SEEDS)

services: ## Start PostgreSQL and Redis on loopback; prints the TEST_* exports
	bash scripts/test-services.sh

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
