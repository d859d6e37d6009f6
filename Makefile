# The two commands of the README. Both set up what they need in this checkout first
# (scripts/bootstrap: .venv for Python, node_modules for configurable-http-proxy).
.PHONY: demo test lint bench

demo:
	scripts/bootstrap demo
	.venv/bin/hubcull demo

test:
	scripts/bootstrap test
	.venv/bin/ruff check src tests benchmarks testkit
	.venv/bin/python -m pytest -q -n 2 --dist loadscope --durations=15

lint:
	.venv/bin/ruff check src tests benchmarks testkit
	.venv/bin/ruff format --check src tests benchmarks testkit

# The performance record (docs/benchmarks.md): about 90 minutes on 2 cores.
bench:
	scripts/bootstrap bench
	for b in completeness overrun scan_cost mass_cull slow_spawners probing; do \
		.venv/bin/python benchmarks/$$b.py || exit 1; \
	done
