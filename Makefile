# Everything a fresh machine needs is installed here: `make test` and `make demo` are the two entry points.
# What gets installed is decided by uv.lock (every dependency, transitive ones included,
# resolved once); `make lock` refreshes it on purpose.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# uv itself, pinned, in its own folder: `uv sync` makes .venv exactly the lock, so uv
# can't live there.
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
FUNCTIONS := aggregator dispatcher worker

.PHONY: install demo test lint unit integration e2e bench bench-capped clean down lock browser

$(UV):
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found: install Python 3.11 (or run: make PYTHON=python3)"; exit 2; }
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet uv==$(UV_VERSION)

# --locked: refuse a lock that no longer matches pyproject.toml, rather than install
# something no one tested.
# --compile-bytecode: pip writes bytecode at install, uv does not. Without it every process
# started where bytecode cannot be written (PYTHONDONTWRITEBYTECODE, a read-only tree)
# compiles every module it imports: `archdeploy validate` took 0.40 s instead of 0.19 s.
$(STAMP): $(UV) pyproject.toml uv.lock
	$(UV) sync --locked --all-extras --compile-bytecode --python $(PYTHON) --quiet
	$(BIN)/python -m compileall -q shared functions >/dev/null
	touch $(STAMP)

# Re-resolve every dependency to the newest allowed versions, then pin each function's
# requirements.txt (what terraform ships) to those same versions.
lock: $(UV)
	$(UV) lock --upgrade --python $(PYTHON)
	$(UV) export --frozen --all-extras --no-hashes --no-emit-project --no-header --quiet -o $(TOOLS)/constraints.txt
	for f in $(FUNCTIONS); do \
	  $(UV) pip compile --quiet --universal --python-version 3.11 --no-annotate \
	    --constraints $(TOOLS)/constraints.txt --custom-compile-command "make lock" \
	    functions/$$f/requirements.in -o functions/$$f/requirements.txt || exit 1; \
	done

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
	$(BIN)/lint-imports

test: $(STAMP) lint browser
	$(BIN)/python -m pytest -q

# tests/browser drive Debian's Chromium through Playwright (never `playwright install`):
# install it with apt when it is missing (sudo when not root), or stop saying what to do.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "make: chromium not found: installing it with apt-get (for tests/browser)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; \
	  else SUDO="none"; fi; \
	  [ "$$SUDO" != none ] && $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; \
	} || { echo "make: could not install chromium: the browser tests need it." \
	  "Install it yourself (Debian/Ubuntu: sudo apt-get install -y chromium) and run make test again."; exit 2; }
	@command -v chromium >/dev/null 2>&1 || { echo "make: chromium still not found on PATH:" \
	  "install it (sudo apt-get install -y chromium) and run make test again."; exit 2; }

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

# Admission under a cap (issue 19): critical path first vs FIFO vs the lower bound, 300
# heterogeneous services, cap 30, median of 5. ~1 minute.
bench-capped: $(STAMP)
	$(BIN)/python -m benchmarks.capped

clean:
	rm -rf $(VENV) $(TOOLS) .archdeploy .pytest_cache
