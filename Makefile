# Polyservice developer commands. `make up` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BUF    := node_modules/.bin/buf

.PHONY: install up test gen lint check-gen breaking bench status certs clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(VENV)/.installed node_modules/.installed  ## venv with the project and dev tools, plus buf

up: install  ## start every service on localhost (Ctrl-C stops them)
	$(VENV)/bin/poly up

status: $(VENV)/.installed
	$(VENV)/bin/poly status

certs: $(VENV)/.installed
	$(VENV)/bin/poly certs

test: install  ## the whole suite
	$(PY) -m pytest

gen: install  ## regenerate gen/ from protos/
	$(PY) -m services.cli.protogen

lint: install  ## buf lint + format, ruff, mypy --strict on services and gateway
	$(PY) -m services.cli.protogen --deps-only >/dev/null
	$(BUF) lint
	$(BUF) format --diff --exit-code protos
	$(PY) -m ruff check .
	$(PY) -m mypy services gateway

check-gen: gen  ## fail if gen/ differs from what `make gen` writes
	@git add --intent-to-add gen >/dev/null 2>&1 || true
	@git diff --exit-code --stat -- gen || (echo "gen/ is stale: run 'make gen' and commit" && exit 1)

breaking: install  ## buf breaking against the previous commit
	$(PY) -m services.cli.protogen --deps-only >/dev/null
	$(PY) -m services.cli.breaking

bench: install  ## bench/kit.py: server-model measurements (numbers, not pass/fail)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	$(PY) bench/kit.py
	$(PY) bench/bus.py
	$(PY) bench/edge.py

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
