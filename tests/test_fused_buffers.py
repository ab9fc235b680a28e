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


def test_the_advice_covers_the_whole_pages_of_large_buffers_only(
        monkeypatch):
    # Whether memory was advised before cannot be read back once the
    # allocator hands it out again (a heap keeps its advice), so the calls
    # are recorded instead.
    calls = []
    monkeypatch.setattr(buffers, '_madvise',
                        lambda: lambda *args: calls.append(args))
    like = torch.empty(0)
    large = buffers.empty((buffers.MIN_BYTES // 4 + 1000, ), like)
    assert len(calls) == 1
    start, length, flag = calls[0]
    assert start % 4096 == 0 and length % 4096 == 0 and flag == 14
    assert large.data_ptr() <= start
    assert start + length <= large.data_ptr() + large.nbytes
    assert length >= large.nbytes - 2 * 4096
    buffers.zeros((buffers.MIN_BYTES // 4 - 1, ), like)
    assert len(calls) == 1


@pytest.mark.skipif(not sys.platform.startswith('linux'),
                    reason='the advice is for Linux')
def test_the_environment_turns_the_advice_off(advice):
    advice('0')
    assert buffers._madvise() is None
    advice('1')
    assert buffers._madvise() is not None
