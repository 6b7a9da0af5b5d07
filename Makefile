# One entry point for people and CI. `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG := config/local.toml

.PHONY: help demo test check lint format typecheck broker broker-stop broker-status tools simulate run-local clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "Python >= 3.11 is needed: set PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP) ## create .venv and install the project with its dev tools

broker: ## start the local Kafka broker (fetches the jars on first use)
	deploy/local/kafka.sh start

broker-stop: ## stop the local Kafka broker
	deploy/local/kafka.sh stop

broker-status: ## is the local broker ready?
	deploy/local/kafka.sh status

tools: ## make sure kcat (the test suite's independent Kafka client) is installed
	deploy/local/tools.sh

demo: $(STAMP) broker ## simulator + broker + worker on 1,000 sample ids, then a summary
	$(BIN)/enrich-worker --config $(CONFIG) demo

test: $(STAMP) broker tools ## the whole test suite (unit + integration on the real broker)
	$(BIN)/pytest

check: lint typecheck ## ruff + mypy --strict, as CI runs them

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy worker

format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

simulate: $(STAMP) ## serve the Cloudflare API simulator on 127.0.0.1:18787
	$(BIN)/enrich-worker simulate

run-local: $(STAMP) broker ## run the worker against the local broker and simulator
	$(BIN)/enrich-worker --config $(CONFIG) run

clean: ## remove the venv and the local broker's data (the jar cache is kept)
	-deploy/local/kafka.sh reset
	rm -rf $(VENV) .run .mypy_cache .ruff_cache .pytest_cache
