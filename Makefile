# One set of commands for people and CI: .ci/run calls `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck unit parts bench clean

# uv installs the same packages from PyPI about three times faster than pip;
# where it cannot be had, pip does the job.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	{ $(BIN)/python -m pip install --quiet uv && \
	  $(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[dev]'; } || \
	  $(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job on samples/, offline: live progress, results, the report.
# A few simulated transient faults and schema misses show retries and repairs at work.
demo: $(STAMP)
	@rm -rf demo-out && mkdir -p demo-out
	LLMBATCH_SIM_FAIL_RATE=0.03 LLMBATCH_SIM_INVALID_RATE=0.2 $(BIN)/llmbatch run samples/jobs.jsonl --model sim:claude-haiku-4-5 \
		--output demo-out/jobs.results.jsonl --report demo-out/report.json \
		--html demo-out/report.html --cache demo-out/cache.sqlite --max-cost 1.00
	@echo
	@echo "results: demo-out/jobs.results.jsonl   report: demo-out/report.json, demo-out/report.html"
	@echo "a structured result (the sentiment jobs carry a JSON Schema):"
	@grep -m 1 '"parsed":{' demo-out/jobs.results.jsonl

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

# Where the environment sets PYTHONDONTWRITEBYTECODE (this machine does), every Python
# the tests start — the workers, each CLI process — would compile every module it
# imports again (~1 s more a process). The test run writes bytecode (to __pycache__/,
# ignored by git), so each module compiles once; cheaper than compiling the whole venv.
# The benchmark too: it measures runs, not the compiler (Ray starts a dozen Pythons).
unit demo bench: export PYTHONDONTWRITEBYTECODE :=

# Two workers: most of the suite waits on subprocesses, sockets and the fake API.
unit: $(STAMP) parts
	$(BIN)/pytest -q -n 2

# Real parts some tests need: Debian's chromium (the HTML report is loaded in it) and
# redis-server (--shared). Missing ones are installed; if that fails, a clear message,
# and CI (CI set) stops here while elsewhere those tests skip.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
parts:
	@for pkg in chromium redis-server; do \
		command -v $$pkg >/dev/null 2>&1 && continue; \
		echo "installing $$pkg (apt-get install $$pkg): some tests need it"; \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$pkg; } >/dev/null 2>&1 || { \
			echo "could not install $$pkg: run 'sudo apt-get install $$pkg'; its tests" \
				"skip here and fail in CI" >&2; test -z "$$CI" || exit 1; }; \
	done

# mypy (one core, ~25 s from cold) runs beside pytest, whose workers mostly wait.
test: lint
	@$(MAKE) --no-print-directory -j 2 typecheck unit

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) demo-out .mypy_cache .pytest_cache .ruff_cache
