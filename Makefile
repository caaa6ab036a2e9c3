# The two commands the README starts with: `make demo` and `make test`. `make help` lists the rest.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Reinstalled whenever pyproject.toml changes.
STAMP := $(VENV)/.installed
# llama-cpp-python (the `local` extra) is compiled once per machine and set of build flags, into a
# wheel kept outside pip's cache (which is keyed by version only, not by flags). On x86-64 it is
# built for AVX2 rather than -march=native: native builds use AMX tile instructions wherever the
# CPU advertises them, and those fault on virtual machines that do not enable AMX state (the
# local model server then dies on its first completion; seen on our CI machines).
LLAMA_CPP := llama-cpp-python[server]==0.3.36
ifeq ($(shell uname -m),x86_64)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
else
LLAMA_CMAKE_ARGS ?=
endif
WHEELHOUSE := $(HOME)/.cache/selfinstruct/wheels/$(shell printf '%s' '$(LLAMA_CPP) $(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-12)
EXTRAS ?= local,report,test
PAPER_SEEDS ?= $(abspath ../shared/data/self_instruct_seed_tasks.jsonl)
# The suite runs in two parts: everything but the chaos tests on two xdist workers (most tests
# wait on leases, timeouts and slow answers rather than on the CPU: 7-8 minutes instead of about
# 20), then the chaos tests alone, since they restart the PostgreSQL and Redis every test shares.
PYTEST_ARGS ?=
PARALLEL_ARGS ?= -n 2 --dist loadfile
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
	if [[ ",$(EXTRAS)," == *,local,* ]] && ! ls $(WHEELHOUSE)/llama_cpp_python-*.whl >/dev/null 2>&1; then \
	  echo "compiling llama-cpp-python once for this machine (4-8 min)"; \
	  CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' $(BIN)/python -m pip wheel --quiet --no-cache-dir --no-deps \
	    -w $(WHEELHOUSE) '$(LLAMA_CPP)'; \
	fi
	@echo "installing selfinstruct[$(EXTRAS)]"
	$(BIN)/python -m pip install --quiet --find-links $(WHEELHOUSE) -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project with the local model and test tools

demo: $(STAMP) ## Generate a small dataset with the local model, nothing else needed
	$(BIN)/selfinstruct demo $(ARGS)

test: $(STAMP) ## Run the whole suite (starts PostgreSQL and Redis when TEST_* URLs are unset)
	if [ -z "$${TEST_DATABASE_URL:-}" ] || [ -z "$${TEST_REDIS_URL:-}" ]; then \
	  services_env="$$(bash scripts/test-services.sh)"; \
	  eval "$$services_env"; \
	fi; \
	first=0; $(BIN)/python -m pytest $(PARALLEL_ARGS) -m 'not chaos' $(PYTEST_ARGS) || first=$$?; \
	second=0; $(BIN)/python -m pytest -m chaos $(PYTEST_ARGS) || second=$$?; \
	echo "tests: $$first (all but chaos), $$second (chaos); 5 means that part had no test"; \
	[[ "$$first $$second" =~ ^[05]\ [05]$$ && "$$first $$second" != "5 5" ]]

test-unit: $(STAMP) ## Unit tests only: no services, no model
	$(BIN)/python -m pytest tests/unit -q -m 'not integration' $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check and ruff format --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP) ## Run every bench/bench_*.py (results go in BENCHMARKS.md)
	for script in bench/bench_*.py; do \
	  [ -e "$$script" ] || continue; \
	  echo "==== $$script"; \
	  $(BIN)/python "$$script" $(BENCH_ARGS); \
	done

services: ## Start PostgreSQL and Redis on loopback and print the TEST_* exports
	bash scripts/test-services.sh

clean: ## Remove the virtual environment and tool caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
