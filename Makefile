# certbroker — the two commands: `make run` and `make test`.
VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# Tests run in parallel, one Pebble per worker: the suite is CPU-bound (a certbroker process per
# CLI call), so one worker per core, at most four. `loadgroup`: tests marked with one
# xdist_group run on one worker (the step-ca tests share one Caddy and HTTP-01 on port 80).
TEST_WORKERS ?= auto

.PHONY: install run test lint format demo bench screenshots clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Start the broker on the embedded SQLite store under ./var.
run: install
	$(BIN)/certbroker serve

## Install what the tests need (Python packages into .venv, Debian packages such as pebble) and run them.
test: install
	bash scripts/ensure-test-deps.sh
	$(BIN)/pytest -n $(TEST_WORKERS) --maxprocesses 4 --dist loadgroup $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/mypy

format: install
	$(BIN)/ruff format src tests bench scripts
	$(BIN)/ruff check --fix src tests bench scripts

## A full issuance against a local Pebble, no public domain needed.
demo: install
	bash scripts/ensure-test-deps.sh
	$(BIN)/python scripts/demo.py

## Each console page as PNG under docs/screenshots/ (desktop and phone width), with Chromium.
screenshots: install
	bash scripts/ensure-test-deps.sh
	$(BIN)/python scripts/screenshots.py

## Benchmarks side by side with certbot, lego, uacme and nginx (not part of `make test`);
## figures go to docs/benchmarks.md. QUICK=1 for a short run.
bench: install
	bash scripts/ensure-test-deps.sh
	bash scripts/ensure-bench-deps.sh
	$(BIN)/python bench/issuance.py $(if $(QUICK),--quick) $(BENCH_ARGS)
	$(BIN)/python bench/scheduler.py $(if $(QUICK),--quick) $(SCHEDULER_ARGS)
	$(BIN)/python bench/scheduler.py --postgres $(if $(QUICK),--quick) $(SCHEDULER_ARGS)
	$(BIN)/python bench/dns01.py $(if $(QUICK),--quick,--write)
	$(BIN)/python bench/startup.py $(if $(QUICK),--quick)
	$(BIN)/python bench/responder.py $(if $(QUICK),--quick)
	$(BIN)/python bench/heal.py $(if $(QUICK),--quick,--write)
	$(BIN)/python bench/api.py $(if $(QUICK),--quick,--write)
	$(BIN)/python bench/devices.py $(if $(QUICK),--quick,--write)
	$(BIN)/python bench/agents.py $(if $(QUICK),--quick,--write)
	$(BIN)/python bench/nodes.py $(if $(QUICK),--quick,--write)
	$(BIN)/python bench/summary.py $(if $(QUICK),--no-write)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
