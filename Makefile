# mmens: the two commands are `make demo` and `make test`; both set up .venv when it is missing
# or when the requirements or the set-up script changed since it was made.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mmens-setup
WORK_DIR ?= work_dirs/demo

.PHONY: setup demo test budget-study bench clean-venv

$(STAMP): scripts/setup.sh setup.py $(wildcard requirements/*.txt) $(wildcard mmens/ops/csrc/*.cpp) $(wildcard mmens/ops/csrc/*.h)
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

# The fusion kernel built with AddressSanitizer + UBSan into build/sanitize (the in-place
# mmens/_ext*.so is left alone), then the kernel tests and the fuzz test run on that build
# (ASan's runtime, and libstdc++ for its __cxa_throw interceptor, preloaded into Python; leak
# checks off for the interpreter; -s so that a sanitizer report is not captured away).
SAN := build/sanitize
.PHONY: sanitize
sanitize: $(STAMP)
	rm -rf $(SAN) && mkdir -p $(SAN)/py
	MMENS_SANITIZE=1 $(PY) setup.py -q build_ext --build-lib $(SAN)/lib --build-temp $(SAN)/tmp
	cp -r mmens $(SAN)/py/ && rm -f $(SAN)/py/mmens/_ext*.so && cp $(SAN)/lib/mmens/_ext*.so $(SAN)/py/mmens/
	cd $(SAN)/py && export LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libstdc++.so)" \
	  ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 PYTHONPATH=$(CURDIR)/$(SAN)/py && \
	  $(CURDIR)/$(PY) -c "import torch, mmens._ext as e; assert '$(SAN)' in e.__file__, e.__file__" && \
	  $(CURDIR)/$(PY) -m pytest -s -q -n 0 -p no:cacheprovider $(CURDIR)/tests/test_ops/test_kernel.py \
	    $(CURDIR)/tests/test_ops/test_fuzz_fusion.py
