# Quick start: `make run` (the default simulation) and `make test` (the test suite).
# Both create .venv and install the package into it on first use.
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed

.PHONY: run test lint docs docs-build flwr-run clean

run: $(STAMP)
	$(VENV)/bin/fl-ee run

test: lint docs-build
	$(VENV)/bin/python -m pytest -q

# Lint (ruff) and type-check (mypy), as CI does before the tests.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The documentation site (MkDocs, Material): `make docs` serves it on http://127.0.0.1:8000,
# `make docs-build` builds it into build/site, failing on any broken link or reference (as CI does).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve -a 127.0.0.1:8000

docs-build: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# The same apps under Flower's CLI: a local SuperLink in simulation mode (started on
# first use, on 127.0.0.1:39091) runs them with this venv's packages. NODES simulated
# nodes, whatever data.num_clients is: the clients take turns on them (fl_ee/wire/exchange.py).
NODES ?= 8
flwr-run: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0 FLWR_TELEMETRY_ENABLED=0 \
	  flwr run . --stream --run-config "out='$(CURDIR)/runs/flwr-$$(date +%Y%m%d-%H%M%S)' set='$(SET)'" \
	  --federation-config "num-supernodes=$(NODES) client-resources-num-cpus=1"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs build
