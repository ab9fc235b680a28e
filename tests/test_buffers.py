"""The kernels' large CPU buffers in transparent huge pages
(pyg_gatv2.fused.buffers): advised where offered, ordinary elsewhere, freed
with their tensor, and the same results either way."""
import gc

import pytest
import torch
import torch.nn.functional as F

from pyg_gatv2 import GATv2Conv
from pyg_gatv2.fused import buffers, cpp_library

LARGE = buffers.MIN_BYTES // 4  # float32 entries of the smallest large one
needs_huge_pages = pytest.mark.skipif(
    not buffers.enabled(),
    reason='this system offers no transparent huge pages (/sys/kernel/mm/'
    'transparent_hugepage/enabled is never, or missing)')
needs_library = pytest.mark.skipif(cpp_library.load() is None,
                                   reason='C++ library not built')


def mapping_flags(address):
    """The VmFlags of the mapping of /proc/self/smaps that holds
    :obj:`address`, or an empty list where no mapping does."""
    inside = False
    with open('/proc/self/smaps') as f:
        for line in f:
            head = line.split()[0]
            if '-' in head and not head.endswith(':'):
                start, end = (int(part, 16) for part in head.split('-'))
                inside = start <= address < end
            elif inside and head == 'VmFlags:':
                return line.split()[1:]
    return []


@needs_huge_pages
def test_large_buffers_are_advised_huge_pages():
    out = buffers.empty((LARGE // 128, 128), torch.float32)
    assert out.shape == (LARGE // 128, 128) and out.is_contiguous()
    assert 'hg' in mapping_flags(out.data_ptr())
    out.fill_(2.0)
    assert out.sum().item() == 2.0 * LARGE


@needs_huge_pages
def test_small_buffers_and_the_switch_use_torch(monkeypatch):
    small = buffers.empty((LARGE // 128 - 1, 128), torch.float32)
    assert 'hg' not in mapping_flags(small.data_ptr())
    monkeypatch.setenv(buffers.ENV, '0')
    assert not buffers.enabled()
    large = buffers.empty((LARGE, ), torch.float32)
    assert 'hg' not in mapping_flags(large.data_ptr())


@needs_huge_pages
def test_a_buffer_is_unmapped_with_its_last_view():
    out = buffers.empty((LARGE, ), torch.float64)
    view = out[LARGE // 2:]
    address = view.data_ptr()
    del out
    gc.collect()
    assert 'hg' in mapping_flags(address)
    del view
    gc.collect()
    assert 'hg' not in mapping_flags(address)


def test_the_switch_rejects_other_values(monkeypatch):
    monkeypatch.setenv(buffers.ENV, 'yes')
    with pytest.raises(ValueError, match='set it to 1'):
        buffers.enabled()


def test_other_devices_and_layouts_use_torch():
    base = torch.empty(4, LARGE // 4 + 1)
    strided = base.t()
    copy = buffers.empty_like(strided)
    assert copy.shape == strided.shape and copy.stride() == strided.stride()
    meta = torch.empty(LARGE, device='meta')
    assert buffers.empty_like(meta).device.type == 'meta'


@needs_library
def test_large_outputs_give_the_same_layer(monkeypatch):
    # 65536 sources x 4 heads x 32 channels: a projection and its gradient
    # of 32 MiB each, in huge pages or not.
    torch.manual_seed(0)
    n, features = 1 << 16, 16
    x = torch.randn(n, features)
    x[torch.rand(n, features) < 0.95] = 0.0
    src = torch.randint(n, (40_000, ))
    dst = torch.randint(512, (40_000, ))
    edge_index = torch.stack([src, dst])
    conv = GATv2Conv(features, 32, heads=4)
    weights = torch.randn(n, 4 * 32)
    results = []
    for setting in ('1', '0'):
        monkeypatch.setenv(buffers.ENV, setting)
        conv.zero_grad()
        out = conv(x, edge_index)
        (out * weights).sum().backward()
        results.append([out] + [p.grad.clone() for p in conv.parameters()])
        projected = cpp_library.sparse_linear(x, conv.lin_l.weight,
                                              conv.lin_l.bias)
        advised = 'hg' in mapping_flags(projected.data_ptr())
        assert advised == (setting == '1' and buffers.enabled())
        torch.testing.assert_close(
            projected, F.linear(x, conv.lin_l.weight, conv.lin_l.bias),
            rtol=1e-5, atol=1e-5)
    for huge, plain in zip(*results, strict=True):
        torch.testing.assert_close(huge, plain, rtol=0, atol=0)
