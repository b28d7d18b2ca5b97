# tinyexp-dagster: every target creates .venv and installs what it needs when missing,
# so `make run` and `make test` each work as the first command on a fresh machine.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export TINYEXP_STORAGE_ROOT ?= $(CURDIR)/.tinyexp
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: help install run dev test test-e2e test-nightly bench bench-smoke lint format clean stop-services

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,postgres,e2e]"
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with its dev extras

run: install $(DAGSTER_HOME)/dagster.yaml ## run the full training pipeline offline on embedded defaults (Ray, Redis, SQLite)
	$(VENV)/bin/dagster job execute -m tinyexp_dagster.definitions -j mnist_training_pipeline
	@$(PY) -m tinyexp_dagster.cli summary

dev: install $(DAGSTER_HOME)/dagster.yaml ## start the Dagster UI and daemon on http://127.0.0.1:3000
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# A local instance config when DAGSTER_HOME has none (an existing one is never replaced).
$(DAGSTER_HOME)/dagster.yaml:
	@mkdir -p $(DAGSTER_HOME)
	cp deploy/local/dagster.yaml $@

test: install ## run the test suite (embedded Redis unless TINYEXP_TEST_REDIS_URL is set)
	$(PY) -m pytest -q -m "not e2e and not slow and not nightly" --durations=25

test-e2e: install ## end-to-end tests: browser UI, CLI subprocesses, daemon, Postgres deployment; slow tests
	bash scripts/install_chromium.sh
	$(PY) -m pytest -q -m "(e2e or slow) and not nightly" --durations=25

# Not in CI (.ci/run): on a slow day each takes 5-8 min, and CI has 90 min for everything;
# CI's test-e2e runs their short variants (15-run soak, shorter steps and sensor intervals,
# the ResNet example with a small network in ResNet-50's place).
test-nightly: install ## the long variants: the 30-run soak, hang diagnosis, sweep end to end, ResNet-50 example
	bash scripts/install_chromium.sh
	$(PY) -m pytest -q -m nightly

bench: install ## benchmarks: results saved under bench/results/, docs/benchmarks.md regenerated
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) -m bench

bench-smoke: install ## every benchmark at tiny sizes (results in a temp dir, docs untouched)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) -m bench --smoke

lint: install ## ruff (relative imports banned) and format check, no import cycles, modules <= 400 lines, functions <= 60, examples read no environment
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) scripts/check_import_cycles.py tinyexp_core tinyexp_dagster
	$(PY) scripts/check_code_shape.py --max-module-lines 400 --max-function-lines 60 \
		--no-environ tinyexp_core/examples --debt scripts/code_shape_debt.txt tinyexp_core tinyexp_dagster

format: install ## ruff autofix and format
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

stop-services: install ## stop the embedded Redis and the warm local Ray (`tinyexp-dagster ray up`) of the storage root
	$(PY) -m tinyexp_dagster.cli redis stop
	$(PY) -m tinyexp_dagster.cli ray down

clean: ## remove run outputs (not .venv)
	rm -rf .tinyexp .dagster_home output test-artifacts
