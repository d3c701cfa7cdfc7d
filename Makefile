# Bunsui — every target sets itself up: a fresh clone needs only `make demo` / `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
SAM_VENV := .venv-sam
CHECKOV_VENV := .venv-checkov
BIN := $(VENV)/bin
SAM := $(SAM_VENV)/bin/sam
CHECKOV := $(CHECKOV_VENV)/bin/checkov
# pip warns about index folders of this machine's global config that do not exist; keep the log readable.
PIP_QUIET := 2>&1 | { grep -v -e 'is ignored: it is neither a file nor a directory' || true; }
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export SAM_CLI_TELEMETRY := 0

.PHONY: bench demo test lint unit sam-validate checkov sam-build clean lock openapi

$(VENV)/.installed: pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	set -o pipefail; PIP_CONSTRAINT=requirements/constraints.txt $(BIN)/pip install -q -e '.[dev,ml]' $(PIP_QUIET)
	touch $@

$(SAM_VENV)/.installed: requirements/sam.txt
	$(PYTHON) -m venv $(SAM_VENV)
	set -o pipefail; $(SAM_VENV)/bin/pip install -q -r requirements/sam.txt $(PIP_QUIET)
	touch $@

$(CHECKOV_VENV)/.installed: requirements/checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	set -o pipefail; $(CHECKOV_VENV)/bin/pip install -q -r requirements/checkov.txt $(PIP_QUIET)
	touch $@

# The product's ML pipeline, run for real on the local backend (see examples/ml-pipeline).
demo: $(VENV)/.installed
	cd examples/ml-pipeline && ../../$(BIN)/python demo.py

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

unit: $(VENV)/.installed
	$(BIN)/pytest -q

EXAMPLE_TEMPLATE := examples/ml-pipeline/template.yml

sam-validate: $(VENV)/.installed $(SAM_VENV)/.installed
	$(BIN)/cfn-lint template.yaml $(EXAMPLE_TEMPLATE)
	$(SAM) validate --lint --template template.yaml
	$(SAM) validate --region us-east-1 --template template.yaml
	$(SAM) validate --lint --template $(EXAMPLE_TEMPLATE)
	$(SAM) validate --region us-east-1 --template $(EXAMPLE_TEMPLATE)

# The security scanner on both templates: any finding fails, unless the template fixes it or
# skips it in the resource with its reason (# checkov:skip=CKV_...:reason). --skip-download:
# nothing is fetched from the scanner vendor's service (no account, no network needed).
checkov: $(CHECKOV_VENV)/.installed
	$(CHECKOV) --quiet --compact --skip-download --framework cloudformation \
	  --file template.yaml --file $(EXAMPLE_TEMPLATE)

# sam build packages src/ for python3.13, the functions' runtime. pyenv's 3.13 goes first on
# PATH when pyenv has one (3.13.0, else the latest 3.13.x); otherwise python3.13 must be on PATH.
PY313_PREFIX = $(shell pyenv prefix 3.13.0 2>/dev/null || pyenv prefix 3.13 2>/dev/null)
PY313_PATH = $(if $(PY313_PREFIX),$(PY313_PREFIX)/bin:)$$PATH

sam-build: $(SAM_VENV)/.installed
	@PATH="$(PY313_PATH)" python3.13 -c 'import sys' 2>/dev/null || { \
	  echo "sam-build: python3.13 (the functions' runtime) is not on PATH; install it, e.g. 'pyenv install 3.13.0'." >&2; \
	  exit 1; }
	PATH="$(PY313_PATH)" $(SAM) build --template template.yaml --build-dir .aws-sam/build

test: lint unit sam-validate checkov sam-build

# Every benchmark of docs/benchmarks.md, one after the other (over an hour on 2 cores: the
# AWS shapes of 10,000 jobs and the other engines dominate). Benchmarks are not tests.
bench: $(VENV)/.installed
	$(BIN)/python bench/language.py
	$(BIN)/python bench/engine.py --cli
	$(BIN)/python bench/compare/run.py
	$(BIN)/python bench/aws_requests.py
	$(BIN)/python bench/aws_cost.py
	$(BIN)/python bench/coldstart.py --runs 7

# The API's OpenAPI document, generated from the handler's routes and models.
openapi: $(VENV)/.installed
	cd src && ../$(BIN)/python -m handlers.api --openapi > ../docs/openapi.json

lock:
	rm -rf .lock-venv .lock-venv-sam .lock-venv-checkov
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q -U setuptools wheel && .lock-venv/bin/pip install -q -e '.[dev,ml]'
	{ echo "# Pinned versions for the project venv (.venv). Regenerate with: make lock"; \
	  .lock-venv/bin/pip freeze --all --exclude-editable | grep -v '^pip=='; } > requirements/constraints.txt
	$(PYTHON) -m venv .lock-venv-sam && .lock-venv-sam/bin/pip install -q aws-sam-cli
	{ echo "# Pinned SAM CLI and its dependencies for the tool venv (.venv-sam). Regenerate with: make lock"; \
	  .lock-venv-sam/bin/pip freeze; } > requirements/sam.txt
	$(PYTHON) -m venv .lock-venv-checkov && .lock-venv-checkov/bin/pip install -q checkov
	{ echo "# Pinned checkov and its dependencies for the tool venv (.venv-checkov). Regenerate with: make lock"; \
	  .lock-venv-checkov/bin/pip freeze; } > requirements/checkov.txt
	rm -rf .lock-venv .lock-venv-sam .lock-venv-checkov

clean:
	rm -rf $(VENV) $(SAM_VENV) $(CHECKOV_VENV) .aws-sam .pytest_cache .ruff_cache .hypothesis
