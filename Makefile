# The two commands of the README. Both set up what they need in this checkout first
# (scripts/bootstrap: .venv for Python, node_modules for configurable-http-proxy).
.PHONY: demo test lint

demo:
	scripts/bootstrap demo
	.venv/bin/hubcull demo

test:
	scripts/bootstrap test
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/python -m pytest -q

lint:
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/ruff format --check src tests benchmarks
