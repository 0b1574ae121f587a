# The README's two commands: `make demo` (install + the demo study + its report) and `make test`.
PYTHON ?= python3
STORAGE ?= results/studies

.PHONY: install demo test test-fast bench

install:
	bash scripts/setup.sh

demo: install
	ablation sweep experiments/demo.yaml --storage $(STORAGE)
	ablation report $(STORAGE)/demo

test:
	$(PYTHON) -m pytest -q

test-fast:
	$(PYTHON) -m pytest -q -m "not slow"

bench:
	ablation bench --device auto --json results/bench.json
