# mmens: the two commands are `make demo` and `make test`; both set up .venv when it is missing
# or when the requirements or the set-up script changed since it was made.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mmens-setup
WORK_DIR ?= work_dirs/demo

.PHONY: setup demo test bench clean-venv

$(STAMP): scripts/setup.sh setup.py $(wildcard requirements/*.txt)
	bash scripts/setup.sh
	touch $(STAMP)

# Idempotent: creates .venv (first time: builds mmcv 2.1.0, ~10-15 min, cached in ~/.cache/mmens).
setup:
	bash scripts/setup.sh
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/analysis_tools/demo.py --work-dir $(WORK_DIR)

test: $(STAMP)
	$(PY) -m pytest tests -q

bench: $(STAMP)
	$(PY) tools/analysis_tools/benchmark_fusion.py

clean-venv:
	rm -rf $(VENV)
