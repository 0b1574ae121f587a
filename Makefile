# The README's two commands: `make demo` (install + the demo study + its report) and `make test`.
PYTHON ?= python3
STORAGE ?= results/studies

.PHONY: install demo test test-fast bench

install:
	bash scripts/setup.sh

demo: install
	ablation sweep experiments/demo.yaml --storage $(STORAGE)
	ablation report $(STORAGE)/demo

# Two pytest-xdist workers on the 2 cores; the tests on Ray run one after another on one of them
# (tests/conftest.py). PYTEST_ARGS adds options, e.g. PYTEST_ARGS=--durations=0.
XDIST ?= -n 2 --dist loadgroup
PYTEST_ARGS ?=

test:
	$(PYTHON) -m pytest -q $(XDIST) $(PYTEST_ARGS)

test-fast:
	$(PYTHON) -m pytest -q -m "not slow" $(XDIST) $(PYTEST_ARGS)

bench:
	ablation bench --device auto --json results/bench.json
