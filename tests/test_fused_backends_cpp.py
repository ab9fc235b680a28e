"""The C++ backend of the fused attention (pyg_gatv2/fused/backends/cpp.py
and the kernels in pyg_gatv2/fused/_kernels/): its float32 kernels of
fixed shapes against its float64 ones, the same results for any number of
threads and at every CPU level, and how it was built and what it loads."""
import json
import subprocess
import sys

import pytest
import torch
from _fused_cases import (
    BACKENDS,
    assert_close_all,
    cpp_chunk_edges,
    dropout_mask,
    features,
    needs_cpp,
    outputs_and_grads,
    random_graph,
    reference,
)

from pyg_gatv2.fused import cpp_library, fused_gatv2_attention
from pyg_gatv2.fused.backends import cpp


def test_cpp_kernels_are_built_where_the_package_was_installed():
    # make setup builds them; a build that failed would silently leave the
    # slower torch backend in place.
    assert cpp_library.library_path() is not None, (
        'pyg_gatv2/fused/_cpp.*.so is missing: rebuild it with '
        "'pip install -e .' (it needs a C++ compiler with OpenMP)")
    assert 'cpp' in BACKENDS


def run_both_dtypes(inputs, edge_index, mask, weights, edge_terms, dtype,
                    self_loops=True):
    """Output, attention weights and every gradient on the C++ kernels in
    ``dtype``, from float64 ``inputs`` and loss ``weights``; ``mask`` may
    be :obj:`None` (no dropout). With ``self_loops=False`` the self-loop
    edge terms are left out."""
    args = [t.detach().to(dtype).requires_grad_() for t in inputs]
    if not self_loops:
        args = args[:4]
    et, loop_et = (args[3:] + [None])[:2] if edge_terms else (None, None)
    out, alpha = fused_gatv2_attention(
        *args[:3], edge_index, et, loop_edge_term=loop_et,
        add_self_loops=self_loops,
        dropout_mask=None if mask is None else mask.to(dtype),
        return_attention_weights=True, backend='cpp')
    w_out, w_alpha = weights
    w_alpha = w_alpha[:alpha.size(0)]
    loss = (out * w_out.to(dtype)).sum() + (alpha * w_alpha.to(dtype)).sum()
    wrt = args if edge_terms else args[:3]
    return [t.double() for t in
            [out, alpha] + list(torch.autograd.grad(loss, wrt))]


def problem(heads, channels, seed):
    """A graph with existing self-loops, its features, a dropout mask and
    the weights of a loss over the output and attention weights."""
    edge_index = random_graph(17, 11, 60, seed=seed)
    edge_index[:, :4] = torch.arange(4).repeat(2, 1)
    inputs = list(features(17, 11, 60, heads, channels, torch.float64))
    # Logits of order one, as with trained weights: with att of N(0, 1)
    # entries over tens of channels the softmax saturates, and gradients
    # cancel to below float32's rounding of their terms.
    inputs[2] = inputs[2].detach() / channels ** 0.5
    mask = dropout_mask(60 + 11, heads, torch.float64)
    gen = torch.Generator().manual_seed(3)
    weights = (torch.randn(11, heads, channels, generator=gen,
                           dtype=torch.float64),
               torch.randn(60 + 11, heads, generator=gen,
                           dtype=torch.float64))
    return inputs, edge_index, mask, weights


@needs_cpp
@pytest.mark.parametrize('heads', [1, 2, 4, 8])
@pytest.mark.parametrize('channels', [8, 16, 32, 64])
@pytest.mark.parametrize('chunk_edges', [None, 3],
                         ids=['whole_nodes', 'chunks_of_3'])
def test_cpp_kernels_of_each_fixed_shape_match_float64(heads, channels,
                                                       chunk_edges):
    # Against the float64 kernels, which take the shape at run time and
    # match the reference within 1e-10 (test_fused_op.py); with chunks of
    # 3 edges, most nodes of the graph run in chunks, in both dtypes.
    assert cpp_library.compiled_shape(heads, channels) == (heads, channels,
                                                           channels)
    case = problem(heads, channels, seed=heads + channels)
    with cpp_chunk_edges(chunk_edges or cpp.CHUNK_EDGES):
        for edge_terms in (False, True):
            expected = run_both_dtypes(*case, edge_terms, torch.float64)
            actual = run_both_dtypes(*case, edge_terms, torch.float32)
            assert_close_all(actual, expected, torch.float32)


@needs_cpp
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_cpp_kernels_spread_a_hub_over_chunks(dtype):
    # A star: node 0 the destination of every other node and the source of
    # an edge to each, more edges each way than a chunk holds, beside a
    # random graph; with edge terms, dropout and the attention weights in
    # the loss. Against the edge-wise reference in float64.
    n = cpp.CHUNK_EDGES * 2 + 100
    others = torch.arange(1, n)
    edge_index = torch.cat([
        torch.stack([others, torch.zeros_like(others)]),
        torch.stack([torch.zeros_like(others), others]),
        random_graph(n, n, 3 * n, seed=4)], dim=1)
    assert edge_index[1].bincount().max() > cpp.CHUNK_EDGES
    assert edge_index[0].bincount().max() > cpp.CHUNK_EDGES
    num_edges = edge_index.size(1)
    inputs = features(n, n, num_edges, 2, 8, torch.float64, seed=6)
    mask = dropout_mask(num_edges + n, 2, torch.float64)

    def ours():
        args = [t.to(dtype) for t in inputs]
        out, alpha = fused_gatv2_attention(
            *args[:3], edge_index, args[3], loop_edge_term=args[4],
            add_self_loops=True, dropout_mask=mask.to(dtype),
            return_attention_weights=True, backend='cpp')
        return out.double(), alpha.double()

    def theirs():
        return reference(*inputs[:3], edge_index, *inputs[3:], True, mask)

    assert_close_all(outputs_and_grads(ours, inputs),
                     outputs_and_grads(theirs, inputs), dtype)


# The shapes of benchmarks/kernels.py's shape sweep that the kernels do
# not fix whole; widths that pad to each fixed shape and to each other
# whole width, and each width of the last block; other whole widths; wider
# heads: (heads, channels, how the float32 kernels run them: the heads and
# the width fixed, the width padded to).
OTHER_SHAPES = [
    (1, 7, (1, 8, 8)), (2, 7, (2, 8, 8)), (3, 24, (0, 24, 24)),
    (3, 32, (0, 32, 32)), (6, 10, (0, 16, 16)), (1, 50, (0, 56, 56)),
    (3, 100, (0, 0, 104)), (2, 250, (0, 0, 256)), (1, 1, (1, 8, 8)),
    (5, 2, (0, 8, 8)), (2, 9, (2, 16, 16)), (3, 20, (0, 24, 24)),
    (2, 31, (2, 32, 32)), (1, 33, (0, 40, 40)), (3, 44, (0, 48, 48)),
    (1, 47, (0, 48, 48)), (2, 55, (0, 56, 56)), (8, 63, (8, 64, 64)),
    (1, 24, (0, 24, 24)), (5, 40, (0, 40, 40)), (3, 64, (0, 64, 64)),
    (1, 65, (0, 0, 72)), (2, 72, (0, 0, 72)), (1, 129, (0, 0, 136)),
]


@needs_cpp
@pytest.mark.parametrize('heads,channels,compiled', OTHER_SHAPES,
                         ids=[f'{h}x{c}' for h, c, _ in OTHER_SHAPES])
@pytest.mark.parametrize('self_loops', [True, False],
                         ids=['self_loops', 'no_self_loops'])
@pytest.mark.parametrize('dropout', [True, False],
                         ids=['dropout', 'no_dropout'])
def test_cpp_kernels_of_other_shapes_match_float64(heads, channels, compiled,
                                                   self_loops, dropout):
    # The kernels with part of the shape fixed and those that read it all
    # at run time, the heads padded with zero channels to whole blocks
    # where they are not.
    assert cpp_library.compiled_shape(heads, channels) == compiled
    inputs, edge_index, mask, weights = problem(heads, channels,
                                                seed=heads * channels)
    if not dropout:
        mask = None
    elif not self_loops:
        mask = mask[:edge_index.size(1)]
    case = inputs, edge_index, mask, weights
    for edge_terms in (False, True):
        expected = run_both_dtypes(*case, edge_terms, torch.float64,
                                   self_loops)
        actual = run_both_dtypes(*case, edge_terms, torch.float32,
                                 self_loops)
        assert_close_all(actual, expected, torch.float32)


@needs_cpp
@pytest.mark.parametrize('channels', [20, 32, 70])
@pytest.mark.parametrize('chunk_edges', [None, 8],
                         ids=['whole_nodes', 'chunks_of_8'])
def test_cpp_kernels_give_the_same_bits_for_any_thread_count(channels,
                                                             chunk_edges):
    # Each thread owns whole rows, or whole chunks of a row's edges whose
    # partial sums are merged in chunk order, so only the partial sums of
    # the gradient of att, one per range of rows and per chunk, depend on
    # the number of ranges. 2 x 20 runs the kernels with the width fixed,
    # the heads padded to 24 channels; 2 x 32 those with the shape fixed;
    # 2 x 70 those that read it at run time, the heads padded to 72
    # channels. Chunks of 8 edges cut most nodes (20 in-edges and 15
    # out-edges on average).
    edge_index = random_graph(400, 300, 6000, seed=5)
    inputs = features(400, 300, 6000, 2, channels, torch.float32, seed=5)
    previous = torch.get_num_threads()
    results = []
    try:
        with cpp_chunk_edges(chunk_edges or cpp.CHUNK_EDGES):
            for threads in (1, 2):
                torch.set_num_threads(threads)
                results.append(outputs_and_grads(
                    lambda: fused_gatv2_attention(
                        *inputs[:3], edge_index, inputs[3],
                        loop_edge_term=inputs[4],
                        add_self_loops=True, return_attention_weights=True,
                        backend='cpp'), inputs))
    finally:
        torch.set_num_threads(previous)
    for i, (a, b) in enumerate(zip(*results, strict=True)):
        if i == 4:  # the gradient of att
            assert_close_all([a], [b], torch.float32)
        else:
            assert torch.equal(a, b), i


@pytest.fixture
def cpu_level():
    """Selects a CPU level of the loaded kernels for the test, checks that
    they report it, and restores the level they ran before."""
    lib = cpp_library.load()
    before = lib.gatv2_capability()

    def select(name):
        assert lib.gatv2_set_capability(name.encode()) == 0, name
        assert cpp_library.capability() == name

    try:
        yield select
    finally:
        assert lib.gatv2_set_capability(before) == 0
    assert lib.gatv2_capability() == before


@needs_cpp
@pytest.mark.parametrize('heads,channels', [(2, 16), (3, 5), (2, 70)],
                         ids=['fixed_shape', 'fixed_blocks', 'run_time_shape'])
def test_every_cpu_level_gives_the_results_of_the_others(heads, channels,
                                                         cpu_level):
    # Each level sums in the same order; with FMA a multiply and an add may
    # round once instead of twice, so float32 results agree to float32
    # rounding, between levels and with the float64 kernels.
    levels = cpp_library.capabilities()
    assert levels[-1] == 'default'
    case = problem(heads, channels, seed=7)
    results = {}
    for level in levels:
        cpu_level(level)
        results[level] = [run_both_dtypes(*case, True, dtype)
                          for dtype in (torch.float32, torch.float64)]
    baseline32, baseline64 = results['default']
    for level, (single, double) in results.items():
        assert_close_all(double, baseline64, torch.float64,
                         f'{level} float64')
        assert_close_all(single, baseline64, torch.float32,
                         f'{level} float32 against float64')
        assert_close_all(single, baseline32, torch.float32,
                         f'{level} float32')


def first_fused_call_in_a_fresh_process(backend, after=''):
    """Runs a first, tiny fused attention call on ``backend``, then
    ``after`` (Python statements) in a fresh Python process; returns what
    it printed."""
    script = (
        'import torch\n'
        'from pyg_gatv2.fused import fused_gatv2_attention\n'
        'x = torch.randn(6, 1, 3)\n'
        'edge_index = torch.tensor([[0, 1, 2], [1, 2, 3]])\n'
        'fused_gatv2_attention(x, x, torch.randn(1, 3), edge_index, '
        f'backend={backend!r})\n'
        f'{after}')
    # A bound on a process that never ends.
    return subprocess.run([sys.executable, '-c', script], check=True,
                          capture_output=True, text=True,
                          timeout=300).stdout


@pytest.mark.skipif('cpp' not in BACKENDS or sys.platform != 'linux',
                    reason='the C++ kernels are not built; /proc is Linux')
def test_cpp_kernels_share_torch_s_openmp_runtime():
    # The library asks for libgomp.so.1, which torch has loaded already:
    # one thread pool, not a second one competing with torch's for cores.
    runtimes = json.loads(first_fused_call_in_a_fresh_process(
        'cpp', after="import json\n"
        "print(json.dumps(sorted({line.split()[-1] for line in "
        "open('/proc/self/maps') if 'libgomp' in line or 'libiomp' in "
        'line})))\n'))
    assert len(runtimes) == 1, runtimes
