# Set-up and entry points. `make train` and `make test` each build the
# virtual environment first, so both work on a fresh machine with Python 3.11.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch that the package is tested with. An unpinned torch
# pulls the newest CUDA build, several gigabytes.
TORCH_VERSION ?= 2.13.0
# Raw Planetoid files for offline runs (the shared data folder on the
# project's machines); left alone when the folder does not exist.
RAW_DIR ?= $(wildcard ../shared/data/planetoid)
ifneq ($(RAW_DIR),)
export PYG_GATV2_RAW_DIR ?= $(abspath $(RAW_DIR))
endif

.PHONY: setup train test mutations bench lint clean

setup: $(STAMP)

$(STAMP): setup.cfg setup.py pyproject.toml pyg_gatv2/fused/_cpp_kernels.cpp
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install torch==$(TORCH_VERSION)
	# Builds the C++ kernels (pyg_gatv2/fused/_cpp_kernels.cpp) in place.
	$(BIN)/python -m pip install -e '.[test]'
	# torch-scatter and torch-sparse (the extras scatter and sampling) have
	# no wheels for this torch: build them against the installed torch
	# instead of a fresh one in an isolated environment, torch-scatter first
	# (about 10 and 14 minutes on two cores; pip caches the built wheels).
	$(BIN)/python -m pip install --no-build-isolation 'torch-scatter>=2.1'
	$(BIN)/python -m pip install --no-build-isolation 'torch-sparse>=0.6.18'
	touch $@

train: $(STAMP)
	$(BIN)/pyg-gatv2 train --dataset Cora --seeds 10

test: $(STAMP)
	$(BIN)/python -m pytest tests
	$(BIN)/python tests/mutations.py

# Deliberate faults in copies of the kernels, the layout and the layer,
# each of which a test must catch (tests/mutations.py).
mutations: $(STAMP)
	$(BIN)/python tests/mutations.py

bench: $(STAMP)
	$(BIN)/python benchmarks/kernels.py
	$(BIN)/python benchmarks/sparse_vs_dense.py
	$(BIN)/python benchmarks/accuracy.py

lint: $(STAMP)
	$(BIN)/ruff check pyg_gatv2 tests examples benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
