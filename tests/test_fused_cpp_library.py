"""The interface of the C++ kernels (pyg_gatv2/fused/cpp_library.py): the
argument records and their check against the library when it loads, the
library and CPU level the environment names, the checks the kernels make
of a record, and the edge layouts it builds."""
import ctypes
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _fused_cases import needs_cpp, torch_threads

import pyg_gatv2
from pyg_gatv2.fused import cpp_library, edge_layout, fused_gatv2_attention
from pyg_gatv2.fused.cpp_library import (
    CAPABILITY_ENV,
    DTYPES,
    LIBRARY_ENV,
    Args,
    LayoutArgs,
    LibraryMismatch,
    call,
    pointer,
)

pytestmark = needs_cpp

HEADER = Path(cpp_library.__file__).parent / '_kernels' / 'gatv2.h'
REBUILD = (r"rebuild it from this package's sources: 'pip install \.' "
           r"\(or 'make setup' in a checkout\)")


@pytest.fixture
def reloaded():
    """load() looks for the library again, in the test and after it (once
    monkeypatch has restored the environment)."""
    cpp_library.load.cache_clear()
    yield
    cpp_library.load.cache_clear()


def fields(layout):
    """``[(name, offset, size), ...]`` of one record in the library's
    report."""
    return [(name, int(offset), int(size)) for name, offset, size in
            (field.split(':') for field in layout.split(',') if field)]


def test_the_records_match_the_library():
    lib = cpp_library.load()
    assert lib.gatv2_abi_version() == cpp_library.ABI_VERSION
    reported = lib.gatv2_args_layout().decode().split(';')
    assert len(reported) == 2
    for record, layout in zip((Args, LayoutArgs), reported, strict=True):
        expected = [(name, getattr(record, name).offset,
                     getattr(record, name).size)
                    for name, _ in record._fields_]
        assert fields(layout) == expected
        name, offset, size = expected[-1]
        assert ctypes.sizeof(record) == offset + size


def test_the_records_follow_the_header():
    # The fields of gatv2.h, in order, as the ctypes records declare them:
    # a mismatch here is one that a build would report at load.
    header = HEADER.read_text()
    assert re.search(r'#define GATV2_ABI_VERSION (\d+)', header).group(1) == (
        str(cpp_library.ABI_VERSION))
    for macro, record in (('GATV2_ARGS_FIELDS', Args),
                          ('GATV2_LAYOUT_FIELDS', LayoutArgs)):
        body = header.split(f'#define {macro}(X)')[1].split('\n\n')[0]
        names = re.findall(r'X\([^,]+,\s*(\w+)\)', body)
        assert names == [name for name, _ in record._fields_], macro


# A library that exports the entry points, none of which does anything,
# and reports the ABI version and record layout it is given. Its CPU lacks
# AVX-512.
FAKE_LIBRARY = r'''
#include <stdint.h>
#include <string.h>

extern "C" {
int64_t gatv2_abi_version(void) { return VERSION; }
const char* gatv2_args_layout(void) { return LAYOUT; }
const char* gatv2_capabilities(void) { return "avx512,avx2,default"; }
const char* gatv2_supported_capabilities(void) { return "avx2,default"; }
const char* gatv2_capability(void) { return "avx2"; }
int gatv2_set_capability(const char* name) {
  if (strcmp(name, "avx512") == 0) return -2;
  return strcmp(name, "avx2") == 0 || strcmp(name, "default") == 0 ? 0 : -1;
}
int gatv2_compiled_shape(int64_t, int64_t, int64_t*) { return 0; }
int gatv2_forward(const void*) { return 0; }
int gatv2_backward_dst(const void*) { return 0; }
int gatv2_backward_src(const void*) { return 0; }
int gatv2_layout_by_destination(const void*) { return 0; }
#ifndef WITHOUT_SOURCE_LAYOUT
int gatv2_layout_by_source(const void*) { return 0; }
#endif
int gatv2_count_nonzero(int64_t, const void*, int64_t, int64_t, int64_t,
                        int64_t*) { return 0; }
int gatv2_drop_nonzero(int64_t, const void*, int64_t, int64_t, int64_t,
                       const int64_t*, const uint8_t*, double, void*) {
  return 0;
}
int gatv2_sparse_linear(int64_t, const void*, int64_t, int64_t, const void*,
                        const void*, int64_t, int64_t, void*) {
  return 0;
}
int gatv2_sparse_linear_weight_grad(int64_t, const void*, int64_t, int64_t,
                                    const void*, int64_t, int64_t, int64_t,
                                    void*, void*) {
  return 0;
}
}
'''


def fake_library(directory, version=None, layout=None,
                 without_source_layout=False):
    """Builds :data:`FAKE_LIBRARY` in ``directory`` reporting ``version``
    and ``layout`` (by default those of the real library)."""
    compiler = shutil.which(os.environ.get('CXX', 'g++'))
    if compiler is None:
        pytest.skip('no C++ compiler to build a stand-in library with')
    lib = cpp_library.load()
    version = lib.gatv2_abi_version() if version is None else version
    layout = lib.gatv2_args_layout().decode() if layout is None else layout
    source = directory / 'fake.cpp'
    source.write_text(f'#define VERSION {version}\n'
                      f'#define LAYOUT {json.dumps(layout)}\n'
                      + FAKE_LIBRARY)
    path = directory / 'fake.so'
    subprocess.run([compiler, '-shared', '-fPIC', str(source), '-o',
                    str(path)] + (['-DWITHOUT_SOURCE_LAYOUT']
                                  if without_source_layout else []),
                   check=True, capture_output=True, timeout=120)
    return path


def swapped_heads_and_channels(layout):
    args, edges = layout.split(';')
    found = dict((name, (offset, size)) for name, offset, size in
                 fields(args))
    (h_offset, h_size), (c_offset, c_size) = (found['heads'],
                                              found['channels'])
    old = f'heads:{h_offset}:{h_size},channels:{c_offset}:{c_size},'
    new = f'channels:{h_offset}:{c_size},heads:{c_offset}:{h_size},'
    assert old in args
    return args.replace(old, new) + ';' + edges


def with_a_layout_field_more(layout):
    args, edges = layout.split(';')
    name, offset, size = fields(edges)[-1]
    return f'{args};{edges}extra:{offset + size}:8,'


MISMATCHES = {
    'abi_version': (
        dict(version=cpp_library.ABI_VERSION + 1),
        rf'built for ABI version {cpp_library.ABI_VERSION + 1} with '
        rf'argument records .*; this package needs version '
        rf'{cpp_library.ABI_VERSION} with .*: {REBUILD}$'),
    'args_layout': (
        dict(layout=swapped_heads_and_channels),
        rf"built for ABI version {cpp_library.ABI_VERSION} with argument "
        rf"records '[^']*channels:\d+:8,heads:\d+:8,[^']*'; this package "
        rf"needs version {cpp_library.ABI_VERSION} with "
        rf"'[^']*heads:\d+:8,channels:\d+:8,[^']*': {REBUILD}$"),
    'layout_args_layout': (
        dict(layout=with_a_layout_field_more),
        rf"with argument records '[^']*extra:\d+:8,'; this package needs "
        rf'.*: {REBUILD}$'),
    'entry_point_missing': (
        dict(without_source_layout=True),
        rf'lack an entry point \(.*gatv2_layout_by_source.*\); {REBUILD}$'),
}


@pytest.mark.parametrize('case', list(MISMATCHES))
def test_a_library_built_from_other_sources_is_refused(
        case, tmp_path, monkeypatch, reloaded):
    options, match = MISMATCHES[case]
    options = dict(options)
    if callable(options.get('layout')):
        options['layout'] = options['layout'](
            cpp_library.load().gatv2_args_layout().decode())
    path = fake_library(tmp_path, **options)
    monkeypatch.setenv(LIBRARY_ENV, str(path))
    cpp_library.load.cache_clear()
    with pytest.raises(LibraryMismatch, match=match) as info:
        cpp_library.load()
    assert f'the C++ kernels at {path} ' in str(info.value)
    # Nothing runs on it, nor falls back to another backend unannounced.
    x = torch.randn(3, 1, 2)
    with pytest.raises(LibraryMismatch):
        fused_gatv2_attention(x, x, torch.randn(1, 2),
                              torch.tensor([[0, 1], [1, 2]]))


def test_a_stand_in_library_that_matches_is_loaded(tmp_path, monkeypatch,
                                                   reloaded):
    # The fake library reports what this package expects: it loads, so
    # what the cases above change is what gets them refused.
    path = fake_library(tmp_path)
    monkeypatch.setenv(LIBRARY_ENV, str(path))
    # The stand-in's CPU runs avx2 at best, whatever level the run asks of
    # the real library.
    monkeypatch.delenv(CAPABILITY_ENV, raising=False)
    cpp_library.load.cache_clear()
    assert cpp_library.load()._name == str(path)
    assert cpp_library.capability() == 'avx2'
    assert cpp_library.capabilities() == ('avx2', 'default')


@pytest.mark.parametrize('name,problem', [
    ('avx512', 'needs instructions this CPU does not have'),
    ('sse9', 'is not one the kernels were built for'),
])
def test_a_cpu_level_the_library_cannot_run_is_refused(
        name, problem, tmp_path, monkeypatch, reloaded):
    # The stand-in's CPU lacks AVX-512, which this one may have.
    path = fake_library(tmp_path)
    monkeypatch.setenv(LIBRARY_ENV, str(path))
    monkeypatch.setenv(CAPABILITY_ENV, name)
    cpp_library.load.cache_clear()
    with pytest.raises(ValueError, match=re.escape(
            f"{CAPABILITY_ENV}={name!r} {problem}; choose one of "
            "'avx2,default' on this CPU (built: 'avx512,avx2,default'), or "
            'unset it to take the best')):
        cpp_library.load()


def run_python(script, **env):
    return subprocess.run([sys.executable, '-c', script],
                          env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=300)


def test_the_cpu_level_named_by_the_environment_runs():
    # In a fresh process: the level is selected when the library loads.
    level = cpp_library.capabilities()[-1]
    proc = run_python('import pyg_gatv2; print(pyg_gatv2.cpu_capability())',
                      **{CAPABILITY_ENV: level})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [level]


def test_an_unknown_cpu_level_in_the_environment_is_an_error():
    proc = run_python('import pyg_gatv2; pyg_gatv2.cpu_capability()',
                      **{CAPABILITY_ENV: 'sse9'})
    assert proc.returncode != 0
    runs = ','.join(cpp_library.capabilities())
    assert re.search(
        rf"ValueError: {CAPABILITY_ENV}='sse9' is not one the kernels were "
        rf"built for; choose one of '{runs}' on this CPU \(built: "
        r"'[a-z0-9,]+'\), or unset it to take the best", proc.stderr), (
            proc.stderr[-2000:])


def test_the_library_named_by_the_environment_is_loaded(tmp_path,
                                                        monkeypatch,
                                                        reloaded):
    # As make sanitize loads the kernels built with sanitizers.
    copy = tmp_path / 'kernels.so'
    shutil.copy(cpp_library.library_path(), copy)
    monkeypatch.setenv(LIBRARY_ENV, str(copy))
    cpp_library.load.cache_clear()
    assert cpp_library.library_path() == copy
    assert cpp_library.load()._name == str(copy)


def test_a_missing_library_named_by_the_environment_is_an_error(
        tmp_path, monkeypatch, reloaded):
    missing = tmp_path / 'missing.so'
    monkeypatch.setenv(LIBRARY_ENV, str(missing))
    cpp_library.load.cache_clear()
    message = (f'{LIBRARY_ENV}={str(missing)!r}: no such file; unset it to '
               'load the kernels built with the package')
    with pytest.raises(FileNotFoundError, match=re.escape(message)):
        cpp_library.load()
    with pytest.raises(FileNotFoundError, match=re.escape(message)):
        pyg_gatv2.describe_backends()


@pytest.mark.parametrize('content', [b'', b'not a library\n'],
                         ids=['empty', 'text'])
def test_a_file_named_by_the_environment_that_is_no_library_is_an_error(
        content, tmp_path, monkeypatch, reloaded):
    path = tmp_path / 'x.so'
    path.write_bytes(content)
    monkeypatch.setenv(LIBRARY_ENV, str(path))
    cpp_library.load.cache_clear()
    match = (re.escape(f'the C++ kernels at {path} could not be loaded (')
             + r'.*' + re.escape(f'); {LIBRARY_ENV} names it; point it at a '
                                 'library built by make sanitize or '
                                 'setup.py, or unset it'))
    with pytest.raises(LibraryMismatch, match=match):
        cpp_library.load()
    with pytest.raises(LibraryMismatch, match=match):
        pyg_gatv2.describe_backends()


def test_cpu_capability_is_the_best_level_this_cpu_runs():
    lib = cpp_library.load()
    built = lib.gatv2_capabilities().decode().split(',')
    if platform.machine() in ('x86_64', 'AMD64'):
        assert built == ['avx512', 'avx2', 'default']
    assert built[-1] == 'default'
    runs = cpp_library.capabilities()
    # Best first, as built, and the baseline runs anywhere.
    assert list(runs) == [level for level in built if level in runs]
    assert runs[-1] == 'default'
    chosen = os.environ.get(CAPABILITY_ENV) or runs[0]
    assert pyg_gatv2.cpu_capability() == cpp_library.capability() == chosen


def test_nothing_is_reported_without_the_library(without_cpp_library):
    assert pyg_gatv2.cpu_capability() is None
    assert cpp_library.capabilities() == ()
    assert cpp_library.compiled_shape(2, 16) == (0, 0, 0)
    assert 'C++ kernels: CPU level' not in pyg_gatv2.describe_backends()


def expected_compiled_shape(heads, channels):
    width = -(-channels // 8) * 8
    if heads in (1, 2, 4, 8) and width in (8, 16, 32, 64):
        return heads, width, width
    if width <= 64:
        return 0, width, width
    return 0, 0, width


def test_compiled_shapes():
    # Each width is rounded up to whole blocks of 8 channels; both the
    # heads and that width are fixed for 1, 2, 4 or 8 heads of 8, 16, 32
    # or 64 channels; the width for the other widths up to 64; nothing for
    # the others.
    for heads in range(1, 10):
        for channels in (1, 5, 7, 8, 9, 16, 24, 31, 32, 33, 37, 56, 63, 64,
                         65, 128):
            assert cpp_library.compiled_shape(heads, channels) == (
                expected_compiled_shape(heads, channels)), (heads, channels)


def forward_record(dtype=torch.float32):
    """The record of a valid forward pass over a 3-cycle, with 2 heads of
    4 channels, and what it points into (which must outlive it)."""
    edge_index = torch.tensor([[0, 1, 2], [1, 2, 0]])
    layout = edge_layout(edge_index, 3, 3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, generator=gen, dtype=dtype)
    att = torch.randn(2, 4, generator=gen, dtype=dtype)
    # Filled, so that a kernel that wrote them would show.
    out = torch.full((3, 2, 4), 7.0, dtype=dtype)
    lse = torch.full((3, 2), 7.0, dtype=dtype)
    bounds = layout.bounds('dst', 1)
    record = Args(
        dtype=DTYPES[dtype], heads=2, channels=4, num_edges=3,
        negative_slope=0.2, num_threads=1, x_l=pointer(x), x_r=pointer(x),
        att=pointer(att), dst_ptr=pointer(layout.dst_ptr),
        dst_col=pointer(layout.dst_col), dst_eid=pointer(layout.dst_eid),
        dst_bounds=pointer(bounds), num_dst_ranges=bounds.size - 1,
        out=pointer(out), lse=pointer(lse))
    return record, dict(x=x, att=att, out=out, layout=layout, bounds=bounds,
                        lse=lse, edge_index=edge_index)


def test_a_valid_record_runs():
    record, kept = forward_record()
    call('gatv2_forward', record)
    # Each node has one in-edge: its output is its source's features.
    x = kept['x']
    torch.testing.assert_close(kept['out'], x[[2, 0, 1]])
    torch.testing.assert_close(
        kept['out'], fused_gatv2_attention(x, x, kept['att'],
                                           kept['edge_index'],
                                           backend='torch'))


MISSING = 'a required array missing'
BROKEN_RECORDS = {
    'x_l_null': ('gatv2_forward', dict(x_l=None), MISSING),
    'att_null': ('gatv2_forward', dict(att=None), MISSING),
    'dst_bounds_null': ('gatv2_forward', dict(dst_bounds=None), MISSING),
    'out_null': ('gatv2_forward', dict(out=None), MISSING),
    'edge_term_without_loop_term': ('gatv2_forward',
                                    dict(edge_term='x'), MISSING),
    'dtype_unknown': ('gatv2_forward', dict(dtype=7), 'an unsupported dtype'),
    'heads_zero': ('gatv2_forward', dict(heads=0),
                   'a negative or zero size'),
    'threads_zero': ('gatv2_forward', dict(num_threads=0),
                     'a negative or zero size'),
    'edges_negative': ('gatv2_forward', dict(num_edges=-1),
                       'a negative or zero size'),
    # A forward record lacks what the backward passes read and write.
    'backward_dst_without_gradients': ('gatv2_backward_dst', dict(),
                                       MISSING),
    'backward_src_without_csc': ('gatv2_backward_src', dict(), MISSING),
}


@pytest.mark.parametrize('case', list(BROKEN_RECORDS))
def test_the_kernels_refuse_a_broken_record(case):
    entry, change, reason = BROKEN_RECORDS[case]
    record, kept = forward_record()
    for name, value in change.items():
        setattr(record, name, pointer(kept[value]) if isinstance(value, str)
                else value)
    before = kept['out'].clone()
    with pytest.raises(RuntimeError, match=re.escape(
            f"the C++ kernel '{entry}' refused its arguments ({reason}): a "
            'bug in pyg_gatv2, please report it')):
        call(entry, record)
    assert torch.equal(kept['out'], before)


def torch_layout(edge_index, num_src, num_dst, self_loops):
    """The CSR and CSC that the C++ library must build, by torch's stable
    sort: the edges i -> i that loops replace under the key num_dst."""
    src, dst = edge_index
    num_edges = src.numel()
    loops = torch.arange(min(num_src, num_dst) if self_loops else 0)
    eid = torch.arange(num_edges + loops.numel())
    key = torch.cat([dst.masked_fill((src == dst) & self_loops, num_dst),
                     loops])
    src = torch.cat([src, loops])
    order = torch.argsort(key, stable=True)
    ptr = torch.cat([torch.zeros(1, dtype=torch.long),
                     torch.bincount(key, minlength=num_dst + 1).cumsum(0)])
    kept = int(ptr[num_dst])
    col, row = src[order][:kept], key[order][:kept]
    pos = torch.argsort(col, stable=True)
    src_ptr = torch.cat([torch.zeros(1, dtype=torch.long),
                         torch.bincount(col, minlength=num_src).cumsum(0)])
    return (ptr, src[order], eid[order]), (src_ptr, pos, row[pos])


# Sizes (nodes, edges) beside threads: few edges over many nodes cut the
# threads of the sort; many edges use them all.
@pytest.mark.parametrize('threads', [1, 2, 3, 8])
@pytest.mark.parametrize('num_src,num_dst,num_edges', [
    (1, 1, 0), (5, 3, 1), (9, 7, 100), (1000, 600, 50), (30, 20, 20000),
    (20000, 500, 20000)])
@pytest.mark.parametrize('self_loops', [False, True])
def test_layouts_are_stable_counting_sorts(threads, num_src, num_dst,
                                           num_edges, self_loops):
    gen = torch.Generator().manual_seed(num_edges + threads)
    edge_index = torch.stack([
        torch.randint(0, num_src, (num_edges, ), generator=gen),
        torch.randint(0, num_dst, (num_edges, ), generator=gen)])
    # Plenty of edges i -> i for the loops to replace.
    edge_index[1, ::3] = edge_index[0, ::3] % num_dst
    edge_index[0, ::3] = edge_index[1, ::3]
    expected_csr, expected_csc = torch_layout(edge_index, num_src, num_dst,
                                              self_loops)
    copy = torch.full_like(edge_index, -1)
    with torch_threads(threads):
        csr = cpp_library.layout_by_destination(
            edge_index, num_src, num_dst, self_loops, copy)
        ptr = csr[0][:num_dst + 1]
        csc = cpp_library.layout_by_source(ptr, csr[1][:int(ptr[-1])],
                                           num_src)
    assert torch.equal(copy, edge_index)
    for ours, expected in zip(csr + csc, expected_csr + expected_csc,
                              strict=True):
        assert torch.equal(ours, expected)


@pytest.mark.parametrize('index', [(0, 0, -1), (0, 5, 9), (1, 7, 7),
                                   (1, 0, 2**40), (1, 3, -5)])
def test_layout_by_destination_finds_every_index_out_of_range(index):
    # Rows 9 x 7 nodes; one index of 20000 edges out of range, wherever it
    # lies among the threads' runs.
    edge_index = torch.stack([torch.arange(20000) % 9,
                              torch.arange(20000) % 7])
    row, at, value = index
    edge_index[row, at * 2857] = value
    with torch_threads(2):
        assert cpp_library.layout_by_destination(edge_index, 9, 7,
                                                 True) is None


def test_layout_by_source_refuses_a_source_out_of_range():
    ptr, col = torch.tensor([0, 2, 3]), torch.tensor([0, 4, 1])
    with pytest.raises(RuntimeError, match=re.escape(
            "the C++ kernel 'gatv2_layout_by_source' refused its arguments "
            '(a node index out of range)')):
        cpp_library.layout_by_source(ptr, col, 4)


def features(shape, dtype, density=0.05, seed=0):
    """Features with a ``density`` share of nonzero entries, among them
    negatives, NaN, infinities and a subnormal, and some entries -0.0."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    x *= torch.rand(shape, generator=gen, dtype=dtype) < density
    flat = x.view(-1)
    specials = [float('nan'), float('inf'), float('-inf'),
                torch.finfo(dtype).tiny / 4, -0.0]
    # As many of them as fit, one every 997 entries.
    for at, value in zip(range(3, flat.numel(), 997), specials,
                         strict=False):
        flat[at] = value
    return x


def dropout_of_nonzeros(x, p, seed):
    """The dropout of the nonzero entries that ``gatv2.h`` specifies, by
    torch: the draws ``torch.rand(k) >= p`` of the ``k`` entries that are
    not zero, in row-major order, after ``torch.manual_seed(seed)``."""
    flat = x.reshape(-1)
    nonzero = (flat != 0).nonzero().squeeze(1)
    torch.manual_seed(seed)
    keep = torch.rand(nonzero.numel()) >= p
    scale = keep.to(x.dtype) * (1.0 / (1.0 - p))
    out = torch.zeros_like(flat)
    out[nonzero] = flat[nonzero] * scale
    return out.view(x.shape)


# Sizes beside threads: no entries, fewer than a run (65536 entries), a
# few runs, and as many runs as the threads take with a short last one.
@pytest.mark.parametrize('threads', [1, 2, 3])
@pytest.mark.parametrize('shape', [(0, 4), (1, 1), (7, 9), (300, 257),
                                   (1100, 1433)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_the_nonzero_dropout_draws_as_the_header_says(threads, shape, dtype):
    x = features(shape, dtype, seed=threads)
    flat = x.reshape(-1)
    with torch_threads(threads):
        offsets = cpp_library.count_nonzero(flat)
        runs = offsets.numel() - 1
        bounds = [flat.numel() * r // runs for r in range(runs + 1)]
        expected = torch.tensor(
            [0] + [int((flat[:end] != 0).sum()) for end in bounds[1:]])
        assert torch.equal(offsets, expected)
        torch.manual_seed(5)
        keep = torch.rand(int(offsets[-1])) >= 0.6
        ours = cpp_library.drop_nonzero(flat, offsets, keep, 1 / 0.4)
    torch.testing.assert_close(ours.view(shape),
                               dropout_of_nonzeros(x, 0.6, seed=5),
                               rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_the_models_input_dropout_runs_the_kernels(dtype, monkeypatch):
    from pyg_gatv2.models import sparse_feature_dropout
    # Not contiguous, so that the kernels read a copy.
    x = features((900, 300), dtype).t()
    torch.manual_seed(3)
    ours = sparse_feature_dropout(x, 0.3, training=True)
    torch.testing.assert_close(ours, dropout_of_nonzeros(x, 0.3, seed=3),
                               rtol=0, atol=0, equal_nan=True)
    # Without the library, torch draws and writes the same.
    monkeypatch.setattr(cpp_library, 'load', lambda: None)
    torch.manual_seed(3)
    torch.testing.assert_close(
        sparse_feature_dropout(x, 0.3, training=True), ours, rtol=0, atol=0,
        equal_nan=True)


DROPOUT_REFUSALS = {
    'count_dtype_unknown': ('gatv2_count_nonzero', dict(dtype=7),
                            'an unsupported dtype'),
    'count_runs_zero': ('gatv2_count_nonzero', dict(runs=0),
                        'a negative or zero size'),
    'count_size_negative': ('gatv2_count_nonzero', dict(n=-1),
                            'a negative or zero size'),
    'count_x_null': ('gatv2_count_nonzero', dict(x=None), MISSING),
    'drop_threads_zero': ('gatv2_drop_nonzero', dict(threads=0),
                          'a negative or zero size'),
    'drop_offsets_null': ('gatv2_drop_nonzero', dict(offsets=None), MISSING),
    'drop_keep_null': ('gatv2_drop_nonzero', dict(keep=None), MISSING),
    'drop_out_null': ('gatv2_drop_nonzero', dict(out=None), MISSING),
}


@pytest.mark.parametrize('case', list(DROPOUT_REFUSALS))
def test_the_nonzero_dropout_refuses_broken_arguments(case):
    entry, change, reason = DROPOUT_REFUSALS[case]
    x = features((40, 30), torch.float32)
    offsets = cpp_library.count_nonzero(x.view(-1))
    keep = torch.ones(int(offsets[-1]), dtype=torch.bool)
    out = torch.full_like(x, 7.0)
    offsets_before = offsets.clone()
    args = dict(dtype=DTYPES[x.dtype], x=pointer(x), n=x.numel(),
                runs=offsets.numel() - 1, threads=2,
                offsets=pointer(offsets), keep=pointer(keep), scale=2.0,
                out=pointer(out))
    args.update(change)
    names = (['dtype', 'x', 'n', 'runs', 'threads', 'offsets']
             if entry == 'gatv2_count_nonzero' else
             ['dtype', 'x', 'n', 'runs', 'threads', 'offsets', 'keep',
              'scale', 'out'])
    status = getattr(cpp_library.load(), entry)(*(args[n] for n in names))
    with pytest.raises(RuntimeError, match=re.escape(
            f"the C++ kernel '{entry}' refused its arguments ({reason})")):
        cpp_library._refused(entry, status)
    assert torch.equal(out, torch.full_like(x, 7.0))
    assert torch.equal(offsets, offsets_before)


# Rows beside threads: none, one, fewer than a run of the weight gradient
# (512 rows), several runs with a short last one; widths beside the
# vector lengths.
@pytest.mark.parametrize('threads', [1, 3])
@pytest.mark.parametrize('rows,in_features,width', [
    (0, 5, 3), (1, 1, 1), (37, 130, 7), (1300, 64, 33), (2100, 9, 128)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_the_sparse_linear_kernels_match_the_dense_products(
        threads, rows, in_features, width, dtype):
    x = features((rows, in_features), dtype, seed=rows)
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(width, in_features, dtype=dtype,
                         generator=generator)
    bias = torch.randn(width, dtype=dtype, generator=generator)
    grad_out = torch.randn(rows, width, dtype=dtype, generator=generator)
    with torch_threads(threads):
        out = cpp_library.sparse_linear(x, weight, bias)
        no_bias = cpp_library.sparse_linear(x, weight, None)
        grad_weight, grad_bias = cpp_library.sparse_linear_grads(
            x, grad_out, with_bias=True)
        alone, absent = cpp_library.sparse_linear_grads(x, grad_out,
                                                        with_bias=False)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else {}
    torch.testing.assert_close(out, x @ weight.t() + bias, equal_nan=True,
                               **tol)
    torch.testing.assert_close(no_bias, x @ weight.t(), equal_nan=True,
                               **tol)
    torch.testing.assert_close(grad_weight, grad_out.t() @ x,
                               equal_nan=True, **tol)
    # Sums of up to 2100 rows, each run's in order.
    torch.testing.assert_close(
        grad_bias, grad_out.sum(0),
        **(dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else {}))
    torch.testing.assert_close(alone, grad_weight, rtol=0, atol=0,
                               equal_nan=True)
    assert absent is None


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_the_sparse_weight_gradient_is_the_same_on_any_number_of_threads(
        dtype):
    x = features((3000, 70), dtype)
    grad_out = torch.randn(3000, 20, dtype=dtype,
                           generator=torch.Generator().manual_seed(2))
    sums = []
    for threads in (1, 2, 3):
        with torch_threads(threads):
            sums.append(torch.cat([
                grad.reshape(-1) for grad in cpp_library.sparse_linear_grads(
                    x, grad_out, with_bias=True)]))
    assert sums[0].isnan().any()
    for other in sums[1:]:
        torch.testing.assert_close(other, sums[0], rtol=0, atol=0,
                                   equal_nan=True)


SPARSE_LINEAR_REFUSALS = {
    'linear_dtype_unknown': ('gatv2_sparse_linear', dict(dtype=7),
                             'an unsupported dtype'),
    'linear_rows_negative': ('gatv2_sparse_linear', dict(rows=-1),
                             'a negative or zero size'),
    'linear_threads_zero': ('gatv2_sparse_linear', dict(threads=0),
                            'a negative or zero size'),
    'linear_weight_null': ('gatv2_sparse_linear', dict(weight=None),
                           MISSING),
    'linear_out_null': ('gatv2_sparse_linear', dict(out=None), MISSING),
    'grad_runs_zero': ('gatv2_sparse_linear_weight_grad', dict(runs=0),
                       'a negative or zero size'),
    'grad_width_negative': ('gatv2_sparse_linear_weight_grad',
                            dict(width=-2), 'a negative or zero size'),
    'grad_grad_out_null': ('gatv2_sparse_linear_weight_grad',
                           dict(grad_out=None), MISSING),
    'grad_x_null': ('gatv2_sparse_linear_weight_grad', dict(x=None),
                    MISSING),
}


@pytest.mark.parametrize('case', list(SPARSE_LINEAR_REFUSALS))
def test_the_sparse_linear_kernels_refuse_broken_arguments(case):
    entry, change, reason = SPARSE_LINEAR_REFUSALS[case]
    x = features((40, 30), torch.float32)
    weight = torch.ones(6, 30)
    weight_t = weight.t().contiguous()
    grad_out = torch.ones(40, 6)
    out = torch.full((40, 6), 7.0)
    grad_weight_t = torch.full((30, 6), 7.0)
    args = dict(dtype=DTYPES[x.dtype], x=pointer(x), rows=40, in_features=30,
                weight=pointer(weight_t), bias=None, width=6, runs=2,
                threads=2, out=pointer(out), grad_out=pointer(grad_out),
                grad_weight=pointer(grad_weight_t), grad_bias=None)
    args.update(change)
    names = (['dtype', 'x', 'rows', 'in_features', 'weight', 'bias', 'width',
              'threads', 'out'] if entry == 'gatv2_sparse_linear' else
             ['dtype', 'x', 'rows', 'in_features', 'grad_out', 'width',
              'runs', 'threads', 'grad_weight', 'grad_bias'])
    status = getattr(cpp_library.load(), entry)(*(args[n] for n in names))
    with pytest.raises(RuntimeError, match=re.escape(
            f"the C++ kernel '{entry}' refused its arguments ({reason})")):
        cpp_library._refused(entry, status)
    assert torch.equal(out, torch.full((40, 6), 7.0))
    assert torch.equal(grad_weight_t, torch.full((30, 6), 7.0))
