# mmens: the two commands are `make demo` and `make test`; both set up .venv when it is missing
# or when the requirements or the set-up script changed since it was made.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mmens-setup
WORK_DIR ?= work_dirs/demo

.PHONY: setup demo test budget-study bench clean-venv

$(STAMP): scripts/setup.sh setup.py $(wildcard requirements/*.txt) $(wildcard mmens/ops/csrc/*.cpp)
	bash scripts/setup.sh
	touch $(STAMP)

# Idempotent: creates .venv (first time: builds mmcv 2.1.0, 9-21 min, cached in ~/.cache/mmens).
setup:
	bash scripts/setup.sh
	touch $(STAMP)

# The main job: the out-of-fold results table on the embedded real data.
demo: $(STAMP)
	$(PY) tools/analysis_tools/demo.py --work-dir $(WORK_DIR)

test: $(STAMP)
	$(PY) -m pytest tests -q -n 2

# The full e2e-CEL budget study: k = 1..5 members and 0.2 s / 0.4 s of member compute.
budget-study: $(STAMP)
	$(PY) tools/analysis_tools/cel_budget.py --work-dir work_dirs/cel_budget

bench: $(STAMP)
	$(PY) tools/analysis_tools/benchmark_fusion.py

clean-venv:
	rm -rf $(VENV)
