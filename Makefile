# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev

.PHONY: demo test test-slow lint typecheck pytest completions bench soak clean

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed; install python3-venv (apt-get install -y python3-venv)" >&2; exit 1; }
	@$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hcbak demo

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check hcbak tests benchmarks
	$(BIN)/ruff format --check hcbak tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q -n 2 -m "not soak and not slow"

# Long crash scenarios on the Ceph gateway (prune killed at each step, the gateway killed
# mid-upload): CI runs them after `make test`, which stays under 5 minutes.
test-slow: $(STAMP)
	$(BIN)/pytest -q -n 2 -m slow

soak: $(STAMP)
	$(BIN)/pytest -q -m soak
	$(BIN)/python benchmarks/run.py --size 256MiB --no-peers --rss-scaling

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py --write-results $(BENCH_ARGS)

completions: $(STAMP)
	$(BIN)/python -m hcbak.cli.completions completions

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
