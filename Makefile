# Polyservice developer commands. `make up` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BUF    := node_modules/.bin/buf

# The installer: uv (PyPI's fast installer: parallel downloads, progress bars), taken from
# PATH or fetched once into build/uv at the version constraints.txt pins; plain pip when uv
# cannot be had, or with POLY_INSTALLER=pip.
POLY_INSTALLER ?= uv
UV_LOCAL := build/uv/bin/uv
UV        = $(or $(shell command -v uv 2>/dev/null),$(UV_LOCAL))
USE_UV    = [ "$(POLY_INSTALLER)" = uv ] && [ -x "$(UV)" ]

# $(call install,<what>,<pip arguments>): into the venv, with the installer's progress shown.
define install
	@if $(USE_UV); then \
	  echo "== installing $(1) with uv"; \
	  $(UV) pip install --python $(PY) --compile-bytecode -c constraints.txt $(2); \
	else \
	  echo "== installing $(1) with pip (POLY_INSTALLER=uv is several times faster)"; \
	  $(PY) -m pip install --disable-pip-version-check --progress-bar on -c constraints.txt $(2); \
	fi
endef

.PHONY: install runtime up test test-fast test-container image deploy-tools deploy-manifests gen lint check-gen breaking bench status certs clean

$(UV_LOCAL):
	@if [ "$(POLY_INSTALLER)" = uv ] && ! command -v uv >/dev/null; then \
	  echo "== fetching uv into build/uv (once)"; \
	  $(PYTHON) -m pip install -qq --disable-pip-version-check --root-user-action=ignore --target build/uv \
	    "uv==$$(sed -n 's/^uv==//p' constraints.txt)" \
	  || echo "   could not fetch uv; installing with pip instead"; \
	fi

$(PY): | $(UV_LOCAL)
	@echo "== creating $(VENV) with $$($(PYTHON) --version)"
	@if $(USE_UV); then $(UV) venv --quiet --seed --python $(PYTHON) $(VENV); \
	else $(PYTHON) -m venv $(VENV) && $(PY) -m pip install --quiet --upgrade pip; fi

$(VENV)/.runtime: pyproject.toml constraints.txt | $(PY)
	$(call install,the runtime dependencies,-e .)
	@touch $@

$(VENV)/.installed: $(VENV)/.runtime
	$(call install,the development tools,-e '.[dev]')
	@touch $@

node_modules/.installed: package.json package-lock.json
	@echo "== installing buf (npm ci)"
	@npm ci --no-audit --no-fund --loglevel=error
	@touch $@

install: $(VENV)/.installed node_modules/.installed  ## venv with the project and dev tools, plus buf

runtime: $(VENV)/.runtime node_modules/.installed  ## what `make up` needs: the project's runtime dependencies, plus buf for the examples

up: runtime  ## start every service on localhost (Ctrl-C stops them)
	@$(VENV)/bin/poly up

status: $(VENV)/.runtime
	@$(VENV)/bin/poly status

certs: $(VENV)/.runtime
	@$(VENV)/bin/poly certs

test: install deploy-tools  ## the whole suite
	$(PY) -m pytest

test-fast: install  ## the unit tests, in under a minute: everything not marked slow or container
	$(PY) -m pytest -m "not slow and not container"

DEPLOY_TOOLS := build/deploy-tools

$(DEPLOY_TOOLS)/.installed: deploy/k8s/tools.txt | $(UV_LOCAL)
	@echo "== installing the deploy checks' tools (checkov, kubernetes-validate) into $(DEPLOY_TOOLS)"
	@if $(USE_UV); then \
	  $(UV) venv --quiet --allow-existing --python $(PYTHON) $(DEPLOY_TOOLS) && \
	  $(UV) pip install --quiet --python $(DEPLOY_TOOLS)/bin/python -r deploy/k8s/tools.txt; \
	else \
	  $(PYTHON) -m venv $(DEPLOY_TOOLS) && \
	  $(DEPLOY_TOOLS)/bin/pip install --quiet --disable-pip-version-check -r deploy/k8s/tools.txt; \
	fi
	@touch $@

deploy-tools: $(DEPLOY_TOOLS)/.installed  ## checkov and kubernetes-validate, for tests/deploy/test_k8s.py

deploy-manifests: install  ## regenerate deploy/k8s/base's component manifests and network policies
	$(PY) deploy/k8s/generate.py

test-container: install  ## only the container test: build deploy/Dockerfile with Podman, run the system from it
	$(PY) -m pytest -m container

image:  ## build the image (deploy/Dockerfile) with Docker, else Podman
	@engine=$$(command -v docker >/dev/null && docker info >/dev/null 2>&1 && echo docker || echo podman); \
	  echo "== $$engine build -f deploy/Dockerfile -t polyservice ."; \
	  $$engine build -f deploy/Dockerfile -t polyservice .

gen: install  ## regenerate gen/ from protos/
	$(PY) -m services.cli.protogen

lint: install  ## buf lint + format, ruff, mypy --strict on services and gateway, import contracts, /openapi.json
	$(PY) -m services.cli.protogen --deps-only >/dev/null
	$(BUF) lint
	$(BUF) format --diff --exit-code protos
	$(PY) -m ruff check .
	$(PY) -m mypy services gateway
	$(VENV)/bin/lint-imports
	$(PY) -m services.cli.openapi build/openapi.json
	$(VENV)/bin/openapi-spec-validator build/openapi.json
	REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true node_modules/.bin/redocly lint build/openapi.json

check-gen: gen  ## fail if gen/ differs from what `make gen` writes
	@git add --intent-to-add gen >/dev/null 2>&1 || true
	@git diff --exit-code --stat -- gen || (echo "gen/ is stale: run 'make gen' and commit" && exit 1)

breaking: install  ## buf breaking against the previous commit
	$(PY) -m services.cli.protogen --deps-only >/dev/null
	$(PY) -m services.cli.breaking

bench: install  ## bench/kit.py: server-model measurements (numbers, not pass/fail)
	$(call install,the benchmark dependencies,-e '.[dev,bench]')
	$(PY) bench/kit.py
	$(PY) bench/bus.py
	$(PY) bench/edge.py

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
