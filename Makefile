# torl: the commands a developer and CI run. Every target is idempotent.
.PHONY: setup protos test test-slow test-all lint demo clean

PY := .venv/bin/python

setup:
	bash scripts/setup.sh

protos:
	$(PY) scripts/gen_protos.py

lint: setup
	.venv/bin/ruff check services tests benchmarks scripts
	.venv/bin/mypy services

# The README's test command: setup, lint, then every test except those marked slow. --durations
# lists the slowest tests at the end, so a CI log shows where the time went.
test: setup lint
	bash scripts/test.sh -m "not slow and not gpu" --durations=25

# The slow scenarios only (vLLM-backed end-to-end runs: the demo, which is also the soak, faults, live Prometheus). CI runs
# `make test` and then this.
test-slow: setup
	bash scripts/test.sh -m "slow and not gpu" --durations=25

# Everything, slow scenarios included.
test-all: setup lint
	bash scripts/test.sh --durations=25

demo: setup
	bash scripts/demo.sh

clean:
	rm -rf .venv services/v1 .mypy_cache .ruff_cache .pytest_cache
