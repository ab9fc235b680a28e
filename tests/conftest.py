import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

# Without a GPU, Triton's interpreter runs the Triton kernels on CPU
# tensors; it must be chosen before the kernels are first imported.
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

_SHARED_RAW = Path(__file__).resolve().parents[2] / 'shared' / 'data' / (
    'planetoid')


def pytest_configure(config):
    """Under pytest-xdist (``make test``), each worker process takes its
    share of the cores for torch's threads, not one thread per core each;
    at least two where torch would take two, so that the kernels'
    multi-threaded paths still run."""
    workers = os.environ.get('PYTEST_XDIST_WORKER_COUNT')
    if workers:
        share = len(os.sched_getaffinity(0)) // int(workers)
        torch.set_num_threads(min(torch.get_num_threads(), max(2, share)))


@pytest.fixture(autouse=True)
def seeded_random_state():
    """Every test starts from the same global random state, so that what it
    draws (weights, data, dropout masks) does not depend on which tests ran
    before it or on how the suite was split."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def without_cpp_library(monkeypatch):
    """The package as installed where no C++ compiler was found: no kernel
    library beside it."""
    from pyg_gatv2.fused import cpp_library
    monkeypatch.setattr(cpp_library, 'library_path', lambda: None)
    cpp_library.load.cache_clear()
    yield
    # Emptied, the cache loads the library again once monkeypatch has
    # restored library_path.
    cpp_library.load.cache_clear()


@pytest.fixture(scope='session')
def planetoid_raw_dir() -> Path:
    """The read-only folder of raw Planetoid files (``<dir>/Cora/raw/...``).

    Taken from ``PYG_GATV2_RAW_DIR``, else from the shared data folder beside
    the repository. Tests that need it are skipped on a machine that has
    neither, except in CI, where a missing folder is a failure.
    """
    env = os.environ.get('PYG_GATV2_RAW_DIR')
    path = Path(env) if env else _SHARED_RAW
    if (path / 'Cora' / 'raw').is_dir():
        return path
    message = (f'raw Planetoid files not found at {path}; set '
               'PYG_GATV2_RAW_DIR to a folder holding Cora/raw/ind.cora.*')
    if os.environ.get('CI'):
        pytest.fail(message)
    pytest.skip(message)


def pytest_report_header(config):
    from pyg_gatv2 import describe_backends
    return ['pyg_gatv2 backends under test:'] + [
        f'  {line}' for line in describe_backends().splitlines()]
