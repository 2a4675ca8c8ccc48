# One set of commands for people and CI: .ci/run calls `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck unit bench clean redis-server

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job on samples/, offline: live progress, results, the report.
# A few simulated transient faults and schema misses show retries and repairs at work.
demo: $(STAMP)
	@mkdir -p demo-out
	LLMBATCH_SIM_FAIL_RATE=0.03 LLMBATCH_SIM_INVALID_RATE=0.2 $(BIN)/llmbatch run samples/jobs.jsonl --model sim:claude-haiku-4-5 \
		--output demo-out/jobs.results.jsonl --report demo-out/report.json \
		--max-cost 1.00 --fresh
	@echo
	@echo "results: demo-out/jobs.results.jsonl   report: demo-out/report.json"
	@echo "a structured result (the sentiment jobs carry a JSON Schema):"
	@grep -m 1 '"parsed":{' demo-out/jobs.results.jsonl

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) redis-server
	$(BIN)/pytest -q

# The --shared tests need a real redis-server: install Debian's package when we can.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || \
		{ echo "redis-server not found: installing it (apt-get install redis-server)"; \
		  { apt-get update -qq && apt-get install -y -qq redis-server; } >/dev/null 2>&1 || \
		  { command -v sudo >/dev/null && sudo apt-get install -y -qq redis-server; } || \
		  echo "WARNING: could not install redis-server; the --shared tests will be skipped (they fail when CI is set). Install it with: sudo apt-get install redis-server"; }

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) demo-out .mypy_cache .pytest_cache .ruff_cache
