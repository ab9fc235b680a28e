"""The kernels' large CPU buffers (pyg_gatv2.fused.buffers): advised for
transparent huge pages where offered, ordinary elsewhere; reused once every
tensor over them has died and never before, held within the most that was
live at once, unmapped on request or with their tensor where the cache is
off; and the same results every way."""
import gc

import pytest
import torch
import torch.nn.functional as F

from pyg_gatv2 import GATv2Conv
from pyg_gatv2.fused import buffers, cpp_library

LARGE = buffers.MIN_BYTES // 4  # float32 entries of the smallest large one
MiB = 1 << 20
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
def test_small_buffers_use_torch_and_the_switch_drops_the_advice(
        cache, monkeypatch):
    small = buffers.empty((LARGE // 128 - 1, 128), torch.float32)
    assert 'hg' not in mapping_flags(small.data_ptr())
    monkeypatch.setenv(buffers.ENV, '0')
    assert not buffers.enabled()
    large = buffers.empty((LARGE, ), torch.float32)
    assert 'hg' not in mapping_flags(large.data_ptr())


@pytest.fixture
def cache():
    """An empty cache, emptied again after the test."""
    buffers.empty_cache()
    yield
    buffers.empty_cache()


def is_mapped(address):
    return bool(mapping_flags(address))


def test_a_buffer_is_reused_once_its_last_view_died(cache):
    out = buffers.empty((4 * MiB, ), torch.uint8)
    address = out.data_ptr()
    view = out[MiB:]
    del out
    gc.collect()
    other = buffers.empty((4 * MiB, ), torch.uint8)
    assert other.data_ptr() != address
    del view
    gc.collect()
    assert buffers.cached_bytes() == 4 * MiB
    again = buffers.empty((4 * MiB - 1000, ), torch.uint8)
    assert again.data_ptr() == address
    assert buffers.cached_bytes() == 0


def test_a_reused_buffer_has_a_storage_of_its_own_size(cache):
    buffers.empty((8 * MiB, ), torch.uint8)
    out = buffers.empty((7 * MiB // 4, ), torch.float32)
    assert out.untyped_storage().nbytes() == 7 * MiB
    with pytest.raises(RuntimeError, match='not resizable'):
        out.resize_(8 * MiB // 4)


def test_a_buffer_is_not_handed_out_for_much_less(cache):
    out = buffers.empty((16 * MiB, ), torch.uint8)
    address = out.data_ptr()
    del out
    small = buffers.empty((4 * MiB, ), torch.uint8)
    assert small.data_ptr() != address


def test_outputs_kept_by_the_caller_stay_intact(cache, monkeypatch):
    # The output (kept for backward) and the projections autograd saved (of
    # a mostly-zero input: the C++ library's buffers), held within a call
    # and across later calls, are never written by those calls: the same
    # results as with every buffer mapped afresh.
    if cpp_library.load() is None:
        pytest.skip('C++ library not built')
    torch.manual_seed(0)
    n = LARGE // 64 + 1

    def features():
        x = torch.randn(n, 16)
        x[torch.rand(n, 16) < 0.95] = 0.0
        return x

    x = features()
    edge_index = torch.randint(n, (2, 4 * n))
    conv = GATv2Conv(16, 16, heads=4, bias=False)
    grad = torch.randn(n, 4 * 16)

    def first_step(later_steps):
        conv.zero_grad()
        first = conv(x, edge_index)
        output = first.detach().clone()
        for _ in range(later_steps):
            (conv(features(), edge_index) * grad).sum().backward()
        conv.zero_grad()
        first.backward(grad)
        return [output] + [p.grad.clone() for p in conv.parameters()]

    monkeypatch.setenv(buffers.CACHE_ENV, '0')
    expected = first_step(0)
    monkeypatch.setenv(buffers.CACHE_ENV, '1')
    conv(x, edge_index)
    assert buffers.cached_bytes() >= 3 * buffers.MIN_BYTES
    for got, want in zip(first_step(3), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_free_buffers_beyond_the_most_live_are_unmapped(cache):
    # One buffer at a time, each too large for the free ones: at each
    # request the free ones beyond the most bytes live at once go, the
    # longest unused first.
    for size in (10, 12, 14, 16):
        buffers.empty((size * MiB, ), torch.uint8)
    assert buffers.cached_bytes() == (14 + 16) * MiB
    live = buffers.empty((18 * MiB, ), torch.uint8)
    assert buffers.cached_bytes() == 16 * MiB
    kept = buffers.empty((16 * MiB, ), torch.uint8)
    assert buffers.cached_bytes() == 0
    assert live.data_ptr() != kept.data_ptr()


def test_empty_cache_unmaps_free_buffers_only(cache):
    kept = buffers.empty((4 * MiB, ), torch.uint8)
    freed = buffers.empty((4 * MiB, ), torch.uint8)
    address = freed.data_ptr()
    del freed
    assert is_mapped(address)
    buffers.empty_cache()
    assert not is_mapped(address)
    assert buffers.cached_bytes() == 0
    kept.fill_(3)
    assert kept.sum().item() == 3 * 4 * MiB


def test_without_the_cache_a_buffer_is_unmapped_with_its_last_view(
        cache, monkeypatch):
    monkeypatch.setenv(buffers.CACHE_ENV, '0')
    out = buffers.empty((LARGE, ), torch.float64)
    view = out[LARGE // 2:]
    address = view.data_ptr()
    del out
    gc.collect()
    assert is_mapped(address)
    del view
    gc.collect()
    assert not is_mapped(address)
    assert buffers.cached_bytes() == 0


def test_with_both_switches_off_buffers_come_from_torch(monkeypatch):
    monkeypatch.setenv(buffers.CACHE_ENV, '0')
    monkeypatch.setenv(buffers.ENV, '0')
    out = buffers.empty((LARGE, ), torch.float32)
    assert out.untyped_storage().resizable()


def test_a_buffer_is_reused_only_with_its_own_advice(cache, monkeypatch):
    out = buffers.empty((4 * MiB, ), torch.uint8)
    address = out.data_ptr()
    del out
    monkeypatch.setenv(buffers.ENV, '0')
    plain = buffers.empty((4 * MiB, ), torch.uint8)
    assert (plain.data_ptr() == address) == (not buffers._offered())
    if buffers._offered():
        assert 'hg' not in mapping_flags(plain.data_ptr())


def test_the_switches_reject_other_values(monkeypatch):
    monkeypatch.setenv(buffers.ENV, 'yes')
    with pytest.raises(ValueError, match='PYG_GATV2_HUGE_PAGES.*set it to 1'):
        buffers.enabled()
    monkeypatch.setenv(buffers.CACHE_ENV, 'on')
    with pytest.raises(ValueError, match='BUFFER_CACHE.*set it to 1'):
        buffers.cache_enabled()


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
