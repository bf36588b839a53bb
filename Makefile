# Everything a fresh machine needs is installed here: `make test` and `make demo` are the two entry points.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint unit integration e2e bench clean down

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found: install Python 3.11 (or run: make PYTHON=python3)"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/archdeploy up examples/architecture.yaml --json > .archdeploy-demo-result.json; \
	  code=$$?; if [ $$code -ne 0 ]; then cat .archdeploy-demo-result.json; exit $$code; fi
	$(BIN)/python examples/check.py .archdeploy-demo-result.json
	@echo "The example is running. Stop it with: make down"

down: $(STAMP)
	$(BIN)/archdeploy down examples/architecture.yaml

lint: $(STAMP)
	$(BIN)/ruff check shared functions tests examples $(wildcard benchmarks)
	$(BIN)/ruff format --check shared functions tests examples $(wildcard benchmarks)
	$(BIN)/mypy shared

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration

# The serverless topology on this machine: the Pub/Sub and Firestore emulators, push
# subscriptions, and the three functions under functions-framework. Ctrl-C stops it all.
.PHONY: dev
dev: $(STAMP)
	$(BIN)/archdeploy dev

# The functions under functions-framework, and the example deployed through the dev
# topology (plus a failed build); prints the runs' timelines.
e2e: $(STAMP)
	$(BIN)/python -m pytest -q tests/e2e

# The fan-out measured against its limit (docs/performance.md): synthetic architectures
# through the real core, embedded and (with the emulators) the dev topology; cold starts;
# aggregator throughput. Prints a table; JSON lands in benchmarks/results/. ~3-5 minutes.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .archdeploy .pytest_cache
