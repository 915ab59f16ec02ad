# One command per task: make run | make test | make lint | make bench
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench mutants services services-stop clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch node_modules/.installed

## run: the service on the embedded default (SQLite store and key file under DATASOURCES_HOME),
## with the sample folder registered and a fresh API key printed
run: $(STAMP)
	$(VENV)/bin/datasources serve --demo

## test: install, start PostgreSQL and Azurite, run the whole suite
test: $(STAMP) node_modules/.installed
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
	$(VENV)/bin/mypy src

$(VENV)/.bench-installed: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.bench-installed node_modules/.installed
	bash scripts/services.sh start
	set -a && . .cache/services.env && set +a && $(PY) -m bench $(BENCH)

services: node_modules/.installed
	bash scripts/services.sh start

services-stop:
	bash scripts/services.sh stop

clean:
	rm -rf $(VENV) node_modules .cache .pytest_cache .mypy_cache .ruff_cache
