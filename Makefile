# Set-up and entry points. `make train` and `make test` each build the
# virtual environment they need first, so both work on a fresh machine with
# Python 3.11: `make train` installs only what training needs, `make test`
# everything the tests need.

PYTHON ?= python3
CXX ?= g++
VENV := .venv
BIN := $(VENV)/bin
# The torch that the package is tested with (its CPU build). An unpinned
# torch pulls the newest CUDA build, several gigabytes; from PyPI on Linux
# x86-64 this pin is a CUDA build too, and the CPU build comes from
# PyTorch's own index: make train TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
TORCH_FROM = $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
KERNELS := $(wildcard pyg_gatv2/fused/_kernels/*)
TRAIN_STAMP := $(VENV)/.train-installed
TEST_STAMP := $(VENV)/.test-installed
# pytest processes (pytest-xdist) that share out the tests: the suite's time
# is mostly Python, one core per process, so two keep two cores busy. More
# on a larger machine: make test TEST_WORKERS=auto (one per core); each
# process then runs torch on its share of the cores (tests/conftest.py).
TEST_WORKERS ?= 2
# The flags every build of the C++ kernels shares (setup.py's too).
KERNEL_FLAGS := $(strip $(shell sed 's/\#.*//' \
	pyg_gatv2/fused/_kernels/compile_flags.txt))
# The C++ kernels built with AddressSanitizer and UndefinedBehaviorSanitizer.
SANITIZED := build/sanitize/_cpp_sanitized.so
ASAN_PRELOAD = $(shell $(CXX) -print-file-name=libasan.so) \
	$(shell $(CXX) -print-file-name=libstdc++.so)
# The tests that run the C++ kernels, run again on the sanitized build.
SANITIZE_TESTS := tests/test_fused_backends_cpp.py tests/test_fused_layout.py \
	tests/test_fused_op_random.py \
	tests/test_fused_op.py tests/test_fused_cpp_library.py
# Raw Planetoid files for offline runs (the shared data folder on the
# project's machines); left alone when the folder does not exist.
RAW_DIR ?= $(wildcard ../shared/data/planetoid)
ifneq ($(RAW_DIR),)
export PYG_GATV2_RAW_DIR ?= $(abspath $(RAW_DIR))
endif

.PHONY: setup setup-train train test test-fast docs sanitize mutations \
	bench lint clean

setup: $(TEST_STAMP)
setup-train: $(TRAIN_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

# torch, then the package with the train extra; pip builds the C++ kernels
# (pyg_gatv2/fused/_kernels/) in place.
$(TRAIN_STAMP): setup.cfg setup.py pyproject.toml $(KERNELS) | $(BIN)/python
	$(BIN)/python -m pip install $(TORCH_FROM) torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -e '.[train]'
	touch $@

# torch, then the package with the test extra, which holds the train
# extra's packages (one build of the kernels, not one per extra); then
# torch-scatter and torch-sparse (the extras scatter and sampling), which
# have no wheels for this torch: built against the installed torch instead
# of a fresh one in an isolated environment, torch-scatter first (together
# most of the 17 minutes a first set-up took on two cores; pip caches the
# built wheels). What training
# needs is then installed too.
$(TEST_STAMP): setup.cfg setup.py pyproject.toml $(KERNELS) | $(BIN)/python
	$(BIN)/python -m pip install $(TORCH_FROM) torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -e '.[test]'
	$(BIN)/python -m pip install --no-build-isolation 'torch-scatter>=2.1'
	$(BIN)/python -m pip install --no-build-isolation 'torch-sparse>=0.6.18'
	touch $@ $(TRAIN_STAMP)

train: $(TRAIN_STAMP)
	$(BIN)/pyg-gatv2 train --dataset Cora --seeds 10 --overwrite

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) tests
	$(MAKE) docs
	$(MAKE) sanitize
	$(BIN)/python tests/mutations.py

# Everything but the cases marked slow: a few minutes.
test-fast: $(TEST_STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) tests -m 'not slow'

# The documentation site (docs/) into docs/_build/html, read afresh, with
# warnings as errors and every cross-reference checked, then the examples
# of its pages and docstrings as doctests; no network. The site check in a
# browser (docs/check_site.py) needs Debian's chromium and Playwright (the
# docs extra) and is run by hand. The test extra has what the build needs.
docs: $(TEST_STAMP)
	$(BIN)/python -m sphinx -E -W --keep-going -n -b html \
		-d docs/_build/doctrees docs docs/_build/html
	$(BIN)/python -m sphinx -W --keep-going -n -b doctest \
		-d docs/_build/doctrees docs docs/_build/doctest

$(SANITIZED): $(KERNELS)
	mkdir -p $(@D)
	$(CXX) $(KERNEL_FLAGS) -O1 -g -fno-omit-frame-pointer \
		-fsanitize=address,undefined -fno-sanitize-recover=all \
		-fPIC -shared pyg_gatv2/fused/_kernels/gatv2.cpp -o $@

# Python is not built with AddressSanitizer, so its runtime is preloaded
# (with libstdc++, whose exceptions it intercepts); leaks are not checked
# (the interpreter keeps its own memory to the end). pytest captures only
# Python's streams, so that a sanitizer's report, written to the process's
# stderr as it aborts, reaches the terminal.
sanitize: $(TEST_STAMP) $(SANITIZED)
	LD_PRELOAD="$(ASAN_PRELOAD)" \
	ASAN_OPTIONS=detect_leaks=0:alloc_dealloc_mismatch=0 \
	UBSAN_OPTIONS=print_stacktrace=1 \
	PYG_GATV2_CPP_LIBRARY=$(abspath $(SANITIZED)) \
		$(BIN)/python -m pytest -q --capture=sys -p no:cacheprovider \
			$(SANITIZE_TESTS)

# Deliberate faults in copies of the kernels, the layout and the layer,
# each of which a test must catch (tests/mutations.py).
mutations: $(TEST_STAMP)
	$(BIN)/python tests/mutations.py

bench: $(TEST_STAMP)
	$(BIN)/python benchmarks/kernels.py
	$(BIN)/python benchmarks/sparse_vs_dense.py
	$(BIN)/python benchmarks/accuracy.py

lint: $(TEST_STAMP)
	$(BIN)/ruff check pyg_gatv2 tests examples benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
