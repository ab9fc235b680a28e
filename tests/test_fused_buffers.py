"""The buffers that the CPU kernels write (pyg_gatv2/fused/buffers.py):
large ones advised for huge pages, as the system's own record of the
mapping shows."""
import sys
from pathlib import Path

import pytest
import torch

from pyg_gatv2.fused import buffers

SMAPS = Path('/proc/self/smaps')


def vm_flags(address: int) -> list[str]:
    """The flags of the mapping that holds ``address``
    (``/proc/self/smaps``: ``hg`` marks memory advised for huge pages)."""
    inside = False
    for line in SMAPS.read_text().splitlines():
        head = line.split()[0]
        if '-' in head and not head.endswith(':'):
            start, end = (int(part, 16) for part in head.split('-'))
            inside = start <= address < end
        elif inside and head == 'VmFlags:':
            return line.split()[1:]
    raise AssertionError(f'no mapping holds {address:#x}')


needs_smaps = pytest.mark.skipif(
    not sys.platform.startswith('linux') or not SMAPS.exists(),
    reason='reads the mappings of the process from /proc/self/smaps')


@pytest.fixture
def advice(monkeypatch):
    """Sets PYG_GATV2_HUGE_PAGES for the test, read afresh."""
    def set_to(value):
        monkeypatch.setenv('PYG_GATV2_HUGE_PAGES', value)
        buffers._madvise.cache_clear()
    yield set_to
    buffers._madvise.cache_clear()


def test_shapes_dtypes_and_zeros():
    like = torch.ones(3, dtype=torch.float64)
    t = buffers.zeros((1 << 22, 2), like)
    assert t.shape == (1 << 22, 2) and t.dtype == torch.float64
    assert not t.any()
    small = buffers.empty((4, 5), like, torch.float32)
    assert small.shape == (4, 5) and small.dtype == torch.float32


@needs_smaps
def test_large_buffers_are_advised_for_huge_pages(advice):
    advice('1')
    like = torch.empty(0)
    large = buffers.zeros((buffers.MIN_BYTES // 4 + 1000, ), like)
    middle = large.data_ptr() + large.nbytes // 2
    assert 'hg' in vm_flags(middle)


@needs_smaps
def test_small_buffers_and_the_switch_leave_memory_alone(advice):
    advice('0')
    large = buffers.zeros((buffers.MIN_BYTES // 4 + 1000, ), torch.empty(0))
    assert 'hg' not in vm_flags(large.data_ptr() + large.nbytes // 2)
    advice('1')
    del large
    small = buffers.zeros((buffers.MIN_BYTES // 8, ), torch.empty(0))
    assert 'hg' not in vm_flags(small.data_ptr() + small.nbytes // 2)
