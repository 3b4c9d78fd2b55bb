# mmens: the two commands are `make demo` and `make test`; both set up .venv when it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
WORK_DIR ?= work_dirs/demo

.PHONY: setup demo test bench clean-venv

$(PY):
	bash scripts/setup.sh

# Idempotent: creates .venv (first time: builds mmcv 2.1.0, ~15 min, cached in ~/.cache/mmens).
setup:
	bash scripts/setup.sh

demo: $(PY)
	$(PY) tools/demo.py --work-dir $(WORK_DIR)

test: $(PY)
	$(PY) -m pytest tests -q

bench: $(PY)
	$(PY) tools/benchmark_fusion.py

clean-venv:
	rm -rf $(VENV)
