# One command per task: make run | make test | make lint | make bench
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
GATEWAY_VENV ?= .venv-gateway

.PHONY: run test lint bench mutants services services-stop clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Jupyter Enterprise Gateway, in a virtualenv of its own (its pins are older than ours):
# the tests of DATASOURCES_SANDBOX=gateway run it on loopback.
$(GATEWAY_VENV)/.installed: scripts/gateway-requirements.txt
	$(PYTHON) -m venv $(GATEWAY_VENV)
	$(GATEWAY_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(GATEWAY_VENV)/bin/python -m pip install --quiet -r scripts/gateway-requirements.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch node_modules/.installed

## run: the service on the embedded default (SQLite store and key file under DATASOURCES_HOME),
## with the sample folder registered and a fresh API key printed
run: $(STAMP)
	$(VENV)/bin/datasources serve --demo

## test: install, start PostgreSQL and Azurite, run the whole suite
test: $(STAMP) node_modules/.installed $(GATEWAY_VENV)/.installed
	bash scripts/install-bwrap.sh
	bash scripts/install-chromium.sh
	bash scripts/services.sh start
	set -a && . .cache/services.env && set +a && $(PY) -m pytest $(PYTEST_ARGS)

## mutants: break the path checks, the read-only SQL layers and the quotas one at a time
## (in a temporary copy of the tree) and show the tests catch each; MUTANTS=name to pick
mutants: $(STAMP) node_modules/.installed
	bash scripts/services.sh start
	set -a && . .cache/services.env && set +a && $(PY) tests/mutants/run.py $(MUTANTS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy src tests bench

$(VENV)/.bench-installed: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $@

## bench: run every benchmark, keep each one's results in bench/results/<name>.json and render
## docs/performance.md from those files (~15 min on 2 cores). BENCH=name (or "a b") runs only
## those and re-renders the page; BENCH_QUICK=1 runs small sizes into .cache/bench-quick/.
bench: $(VENV)/.bench-installed node_modules/.installed
	bash scripts/install-bwrap.sh
	bash scripts/services.sh start
	set -a && . .cache/services.env && set +a && $(PY) -m bench $(BENCH)

services: node_modules/.installed
	bash scripts/services.sh start

services-stop:
	bash scripts/services.sh stop

clean:
	rm -rf $(VENV) $(GATEWAY_VENV) node_modules .cache .pytest_cache .mypy_cache .ruff_cache
