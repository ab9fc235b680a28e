import gc
import itertools
import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F
import torch_geometric.nn as pyg_nn
from torch_geometric import EdgeIndex
from torch_geometric.utils import coalesce, softmax, to_torch_csr_tensor

from pyg_gatv2 import GATv2Conv
from pyg_gatv2.fused import (
    available_backends,
    clear_layout_cache,
    csr,
    edge_layout,
    fused_gatv2_attention,
    get_backend,
    use_backend,
)

# Triton's kernels run here only in its interpreter, too slow for these
# sweeps; tests/test_fused_triton.py covers them on small graphs.
BACKENDS = [b for b in available_backends() if b != 'triton']
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


def random_graph(num_src, num_dst, num_edges, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([
        torch.randint(0, num_src, (num_edges, ), generator=gen),
        torch.randint(0, num_dst, (num_edges, ), generator=gen),
    ])


def features(num_src, num_dst, num_edges, heads, channels, dtype, seed=0,
             scale=1.0):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        t = torch.randn(*shape, generator=gen, dtype=dtype) * scale
        return t.requires_grad_()

    return (randn(num_src, heads, channels), randn(num_dst, heads, channels),
            randn(heads, channels), randn(num_edges, heads, channels),
            randn(min(num_src, num_dst), heads, channels))


def reference(x_l, x_r, att, edge_index, edge_term=None, loop_term=None,
              add_self_loops=False, mask=None, slope=0.2):
    """Edge-wise PyTorch with PyG's softmax, explicit self-loop edges; the
    attention weights in the operator's order (edges, then loops)."""
    num_edges = edge_index.size(1)
    vid = torch.arange(num_edges, device=edge_index.device)
    if add_self_loops:
        num_loops = min(x_l.size(0), x_r.size(0))
        loops = torch.arange(num_loops, device=edge_index.device)
        keep = (edge_index[0] != edge_index[1]).nonzero().view(-1)
        edge_index = torch.cat([edge_index[:, keep], loops.repeat(2, 1)], 1)
        vid = torch.cat([keep, loops + num_edges])
        if edge_term is not None:
            edge_term = torch.cat([edge_term[keep], loop_term])
    src, dst = edge_index
    z = x_l[src] + x_r[dst]
    if edge_term is not None:
        z = z + edge_term
    logit = (F.leaky_relu(z, slope) * att).sum(dim=-1)
    alpha = softmax(logit, dst, num_nodes=x_r.size(0))
    weight = alpha if mask is None else alpha * mask[vid]
    out = torch.zeros_like(x_r).index_add(0, dst,
                                          x_l[src] * weight.unsqueeze(-1))
    num_virtual = num_edges + (num_loops if add_self_loops else 0)
    alpha_all = alpha.new_zeros(num_virtual, alpha.size(1))
    return out, alpha_all.index_copy(0, vid, alpha)


def outputs_and_grads(fn, inputs, seed=1):
    """Runs ``fn``; returns its outputs and the gradients of a loss that
    weighs every output and attention entry differently."""
    out, alpha = fn()
    gen = torch.Generator().manual_seed(seed)
    # Drawn on the CPU, so that every device gets the same weights.
    w_out = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(
        out.device)
    w_alpha = torch.randn(alpha.shape, generator=gen, dtype=out.dtype).to(
        out.device)
    loss = (out * w_out).sum() + (alpha * w_alpha).sum()
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [out, alpha] + list(grads)


def assert_close_all(actual, expected, dtype):
    """Equal within ``TOLERANCE`` relative to the largest entry of each
    tensor: gradients are sums over many edges, with rounding to match."""
    for i, (a, b) in enumerate(zip(actual, expected, strict=True)):
        if b is None:
            assert a is None or bool((a == 0).all()), i
            continue
        scale = b.abs().max().item() if b.numel() else 1.0
        tol = TOLERANCE[dtype] * max(1.0, scale)
        torch.testing.assert_close(a, b, atol=tol, rtol=TOLERANCE[dtype],
                                   msg=lambda m, i=i: f'#{i}: {m}')


def compare(x_l, x_r, att, edge_index, et=None, loop_et=None, mask=None,
            add_self_loops=False, backend='auto', dtype=torch.float64,
            **kwargs):
    inputs = [t for t in (x_l, x_r, att, et, loop_et) if t is not None]

    def ours():
        return fused_gatv2_attention(
            x_l, x_r, att, edge_index, et, loop_edge_term=loop_et,
            add_self_loops=add_self_loops, dropout_mask=mask,
            return_attention_weights=True, backend=backend, **kwargs)

    def theirs():
        return reference(x_l, x_r, att, edge_index, et, loop_et,
                         add_self_loops, mask)

    actual = outputs_and_grads(ours, inputs)
    expected = outputs_and_grads(theirs, inputs)
    assert_close_all(actual, expected, dtype)
    return actual


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('bipartite,add_self_loops,edge_term,dropout',
                         list(itertools.product([False, True], repeat=4)))
def test_matches_reference(backend, dtype, bipartite, add_self_loops,
                           edge_term, dropout):
    num_src, num_dst = (17, 11) if bipartite else (13, 13)
    edge_index = random_graph(num_src, num_dst, 60)
    edge_index[:, :4] = torch.arange(4).repeat(2, 1)  # existing self-loops
    x_l, x_r, att, et, loop_et = features(num_src, num_dst, 60, 3, 5, dtype)
    num_loops = min(num_src, num_dst) if add_self_loops else 0
    mask = None
    if dropout:
        gen = torch.Generator().manual_seed(2)
        keep = torch.rand(60 + num_loops, 3, generator=gen) > 0.3
        mask = keep.to(dtype) / 0.7
    compare(x_l, x_r, att, edge_index, et if edge_term else None,
            loop_et if edge_term and add_self_loops else None, mask,
            add_self_loops, backend, dtype)


def test_torch_backend_chunks():
    # Chunks of 7 edges cut the in-edges of most nodes across chunks.
    edge_index = random_graph(20, 20, 90)
    x_l, x_r, att, et, loop_et = features(20, 20, 90, 2, 4, torch.float64)
    compare(x_l, x_r, att, edge_index, et, loop_et, add_self_loops=True,
            backend='torch', chunk_size=7)


@pytest.mark.parametrize('channels', [16, 37])
def test_backends_agree_on_a_larger_graph(channels):
    # 37 channels: the C++ kernels' sums over lanes of 8 with a remainder.
    if len(BACKENDS) < 2:
        pytest.skip('only the torch backend is installed')
    edge_index = random_graph(300, 200, 5000, seed=3)
    x_l, x_r, att, et, loop_et = features(300, 200, 5000, 4, channels,
                                          torch.float32, seed=3)
    mask = (torch.rand(5000 + 200, 4,
                       generator=torch.Generator().manual_seed(4)) > 0.3) / 0.7
    inputs = [x_l, x_r, att, et, loop_et]
    results = [
        outputs_and_grads(
            lambda b=b: fused_gatv2_attention(
                x_l, x_r, att, edge_index, et, loop_edge_term=loop_et,
                add_self_loops=True, dropout_mask=mask,
                return_attention_weights=True, backend=b), inputs)
        for b in BACKENDS
    ]
    for result in results[:-1]:
        assert_close_all(result, results[-1], torch.float32)


@pytest.mark.skipif('cpp' not in BACKENDS, reason='the C++ kernels are not '
                    'built')
@pytest.mark.parametrize('heads', [1, 2, 4, 8])
@pytest.mark.parametrize('channels', [8, 16, 32, 64])
def test_cpp_kernels_of_each_fixed_shape_match_float64(heads, channels):
    # Against the float64 kernels, which take the shape at run time and
    # match the reference within 1e-10 (test_matches_reference).
    from pyg_gatv2.fused import cpp
    assert cpp.fixed_shape(heads, channels)
    edge_index = random_graph(17, 11, 60, seed=heads + channels)
    edge_index[:, :4] = torch.arange(4).repeat(2, 1)  # existing self-loops
    inputs = features(17, 11, 60, heads, channels, torch.float64)
    mask = (torch.rand(60 + 11, heads, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(2)) > 0.3) / 0.7

    gen = torch.Generator().manual_seed(3)
    w_out = torch.randn(11, heads, channels, generator=gen,
                        dtype=torch.float64)
    w_alpha = torch.randn(60 + 11, heads, generator=gen, dtype=torch.float64)

    def run(dtype, edge_terms):
        args = [t.detach().to(dtype).requires_grad_() for t in inputs]
        et, loop_et = args[3:] if edge_terms else (None, None)
        out, alpha = fused_gatv2_attention(
            *args[:3], edge_index, et, loop_edge_term=loop_et,
            add_self_loops=True, dropout_mask=mask.to(dtype),
            return_attention_weights=True, backend='cpp')
        loss = ((out * w_out.to(dtype)).sum() +
                (alpha * w_alpha.to(dtype)).sum())
        wrt = args if edge_terms else args[:3]
        return [out, alpha] + list(torch.autograd.grad(loss, wrt))

    for edge_terms in (False, True):
        expected = run(torch.float64, edge_terms)
        actual = [t.double() for t in run(torch.float32, edge_terms)]
        assert_close_all(actual, expected, torch.float32)


@pytest.mark.skipif('cpp' not in BACKENDS, reason='the C++ kernels are not '
                    'built')
def test_cpp_kernels_take_other_shapes_at_run_time():
    from pyg_gatv2.fused import cpp
    assert not any(cpp.fixed_shape(h, c)
                   for h, c in ((3, 32), (4, 24), (16, 8), (0, 0)))


@pytest.mark.skipif('cpp' not in BACKENDS, reason='the C++ kernels are not '
                    'built')
@pytest.mark.parametrize('channels', [24, 32])
def test_cpp_kernels_give_the_same_bits_for_any_thread_count(channels):
    # Each thread owns whole rows, so only the partial sums of the gradient
    # of att, one per range of rows, depend on the number of ranges. 2 x 24
    # runs the kernels that take the shape at run time, 2 x 32 those with
    # the shape fixed.
    edge_index = random_graph(400, 300, 6000, seed=5)
    inputs = features(400, 300, 6000, 2, channels, torch.float32, seed=5)
    previous = torch.get_num_threads()
    results = []
    try:
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


def test_cpp_backend_that_was_not_built_is_reported(monkeypatch):
    from pyg_gatv2 import backends
    from pyg_gatv2.fused import cpp
    monkeypatch.setattr(cpp, 'library_path', lambda: None)
    cpp.load.cache_clear()
    backends.cpp_kernels_built.cache_clear()
    try:
        assert 'cpp' not in available_backends()
        x = torch.randn(4, 1, 2)
        with pytest.raises(ValueError, match=re.escape(
                "backend 'cpp' needs the C++ kernels, built when the "
                'package is installed')):
            fused_gatv2_attention(x, x, torch.randn(1, 2),
                                  torch.tensor([[0], [1]]), backend='cpp')
        assert fused_gatv2_attention(x, x, torch.randn(1, 2),
                                     torch.tensor([[0], [1]])).shape == (
                                         4, 1, 2)
    finally:
        monkeypatch.undo()
        cpp.load.cache_clear()
        backends.cpp_kernels_built.cache_clear()


def first_fused_call_in_a_fresh_process(backend, before='', after=''):
    """Runs ``before``, then a first, tiny fused attention call on
    ``backend``, then ``after`` (Python statements) in a fresh Python
    process; returns what it printed."""
    script = (
        'import torch\n'
        'from pyg_gatv2.fused import fused_gatv2_attention\n'
        f'{before}'
        'x = torch.randn(6, 1, 3)\n'
        'edge_index = torch.tensor([[0, 1, 2], [1, 2, 3]])\n'
        'fused_gatv2_attention(x, x, torch.randn(1, 3), edge_index, '
        f'backend={backend!r})\n'
        f'{after}')
    # A bound on a process that never ends (a first numba call compiles
    # for tens of seconds on a busy machine).
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


def test_cpp_kernels_are_built_where_the_package_was_installed():
    # make setup builds them; a build that failed would silently leave the
    # slower numba kernels in place.
    from pyg_gatv2.fused import cpp
    assert cpp.library_path() is not None, (
        'pyg_gatv2/fused/_cpp_kernels.*.so is missing: rebuild it with '
        "'pip install -e .' (it needs a C++ compiler with OpenMP)")
    assert 'cpp' in BACKENDS


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('add_self_loops', [False, True])
def test_gradcheck(backend, add_self_loops):
    edge_index = random_graph(6, 5, 14, seed=4)
    edge_index[:, 0] = 2  # an existing self-loop
    x_l, x_r, att, et, loop_et = features(6, 5, 14, 2, 3, torch.float64,
                                          seed=4)
    num_virtual = 14 + (5 if add_self_loops else 0)
    gen = torch.Generator().manual_seed(5)
    mask = (torch.rand(num_virtual, 2, generator=gen) > 0.25).double() * 2

    def fn(x_l, x_r, att, et, loop_et):
        out, alpha = fused_gatv2_attention(
            x_l, x_r, att, edge_index, et, loop_edge_term=loop_et,
            add_self_loops=add_self_loops, dropout_mask=mask,
            return_attention_weights=True, backend=backend)
        return out, alpha

    inputs = (x_l, x_r, att, et, loop_et if add_self_loops else None)
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize('backend', BACKENDS)
def test_only_the_cpp_backend_drops_the_output_for_backward(backend):
    # The C++ kernels sum D_i over the edges, so the output [N, H, C] need
    # not stay alive until backward; the other backends take D_i from it.
    edge_index = random_graph(30, 30, 200)
    x_l, x_r, att, _, _ = features(30, 30, 200, 2, 8, torch.float64)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fused_gatv2_attention(x_l, x_r, att, edge_index,
                                    add_self_loops=True, backend=backend)
    kept = any(t.data_ptr() == out.data_ptr() for t in saved)
    assert kept == (backend != 'cpp')


@pytest.mark.skipif(not {'cpp', 'numba'} <= set(BACKENDS),
                    reason='needs the C++ and numba kernels')
@pytest.mark.parametrize('forward,backward', [('cpp', 'numba'),
                                              ('numba', 'cpp')])
def test_backward_runs_on_the_backend_forward_ran_on(forward, backward):
    edge_index = random_graph(30, 30, 200)
    inputs = features(30, 30, 200, 2, 8, torch.float64)[:3]

    def ours():
        with use_backend(forward):
            out, alpha = fused_gatv2_attention(
                *inputs, edge_index, add_self_loops=True,
                return_attention_weights=True)
        return out, alpha

    with use_backend(backward):
        actual = outputs_and_grads(ours, inputs)
    expected = outputs_and_grads(
        lambda: reference(*inputs, edge_index, add_self_loops=True), inputs)
    assert_close_all(actual, expected, torch.float64)


@pytest.mark.parametrize('backend', BACKENDS)
def test_double_backward_matches_the_reference(backend):
    edge_index = random_graph(9, 9, 30, seed=8)
    x_l, x_r, att, et, loop_et = features(9, 9, 30, 2, 3, torch.float64,
                                          seed=8)
    inputs = [x_l, x_r, att, et, loop_et]
    mask = (torch.rand(39, 2, generator=torch.Generator().manual_seed(9))
            > 0.3).double() / 0.7

    def second_order(fn):
        out, alpha = fn()
        grads = torch.autograd.grad(out.square().sum() + alpha.sum(),
                                    inputs, create_graph=True)
        penalty = sum(g.square().sum() for g in grads)
        return torch.autograd.grad(penalty, inputs)

    actual = second_order(lambda: fused_gatv2_attention(
        x_l, x_r, att, edge_index, et, loop_edge_term=loop_et,
        add_self_loops=True, dropout_mask=mask,
        return_attention_weights=True, backend=backend))
    expected = second_order(lambda: reference(
        x_l, x_r, att, edge_index, et, loop_et, True, mask))
    assert_close_all(actual, expected, torch.float64)


def test_a_layout_can_be_passed_for_edge_index():
    edge_index = random_graph(8, 6, 25)
    x_l, x_r, att, _, _ = features(8, 6, 25, 2, 3, torch.float64)
    layout = edge_layout(edge_index, 8, 6, add_self_loops=True)
    out = fused_gatv2_attention(x_l, x_r, att, layout, add_self_loops=True)
    expected = fused_gatv2_attention(x_l, x_r, att, edge_index,
                                     add_self_loops=True)
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match=r'layout built for .* \(8, 6, '
                       r'True\) but was called with \(8, 6, False\)'):
        fused_gatv2_attention(x_l, x_r, att, layout)


@pytest.mark.parametrize('backend', BACKENDS)
def test_shared_source_and_target_features(backend):
    # share_weights passes the same tensor as x_l and x_r.
    edge_index = random_graph(10, 10, 30)
    x, _, att, _, _ = features(10, 10, 30, 2, 3, torch.float64)
    inputs = [x, att]
    actual = outputs_and_grads(
        lambda: fused_gatv2_attention(x, x, att, edge_index,
                                      add_self_loops=True,
                                      return_attention_weights=True,
                                      backend=backend), inputs)
    expected = outputs_and_grads(
        lambda: reference(x, x, att, edge_index, add_self_loops=True), inputs)
    assert_close_all(actual, expected, torch.float64)


def test_tiny_graph_by_hand():
    # Node 0 receives from 1 and 2 with logits a.lrelu(x_1 + x_0) etc.;
    # with att = 1, slope 0.2 and one channel the logits are 3 and -0.2, so
    # alpha = softmax([3, -0.2]); node 1 and 2 receive nothing.
    x = torch.tensor([[[1.0]], [[2.0]], [[-2.0]]])
    att = torch.ones(1, 1)
    edge_index = torch.tensor([[1, 2], [0, 0]])
    for backend in BACKENDS:
        out, alpha = fused_gatv2_attention(x, x, att, edge_index,
                                           return_attention_weights=True,
                                           backend=backend)
        expected = torch.softmax(torch.tensor([3.0, -0.2]), dim=0)
        torch.testing.assert_close(alpha.view(-1), expected)
        torch.testing.assert_close(
            out.view(-1), torch.stack([expected @ torch.tensor([2.0, -2.0]),
                                       torch.tensor(0.0),
                                       torch.tensor(0.0)]))


@pytest.mark.parametrize('backend', BACKENDS)
def test_nodes_without_in_edges(backend):
    # Nodes 5..9 receive nothing: zero output, finite gradients.
    edge_index = random_graph(10, 5, 20)
    x_l, x_r, att, et, _ = features(10, 10, 20, 2, 3, torch.float64)
    out, _, *grads = compare(x_l, x_r, att, edge_index, et, backend=backend)
    assert bool((out[5:] == 0).all())
    assert all(bool(g.isfinite().all()) for g in grads)


@pytest.mark.parametrize('backend', BACKENDS)
def test_high_degree_node(backend):
    # A star: node 0 receives from 4000 sources, plus a sprinkle of edges.
    star = torch.stack([torch.arange(1, 4001), torch.zeros(4000).long()])
    edge_index = torch.cat([star, random_graph(4001, 4001, 500)], dim=1)
    x_l, x_r, att, _, _ = features(4001, 4001, 0, 2, 4, torch.float64)
    compare(x_l, x_r, att, edge_index, add_self_loops=True, backend=backend)


@pytest.mark.parametrize('backend', BACKENDS)
def test_duplicate_edges(backend):
    # A repeated edge counts twice in the softmax, as in PyG.
    edge_index = torch.tensor([[1, 1, 1, 2], [0, 0, 0, 0]])
    x_l, x_r, att, _, _ = features(3, 3, 0, 1, 2, torch.float64)
    _, alpha = compare(x_l, x_r, att, edge_index, backend=backend)[:2]
    torch.testing.assert_close(alpha[0], alpha[1])
    torch.testing.assert_close(alpha[:3].sum() + alpha[3].sum(),
                               torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_large_logits_do_not_overflow(backend, dtype):
    # Logits of order 1e4: exp would overflow without the running maximum.
    edge_index = random_graph(30, 30, 200)
    x_l, x_r, att, _, _ = features(30, 30, 0, 2, 4, dtype, scale=50.0)
    src, dst = edge_index
    logits = (F.leaky_relu(x_l[src] + x_r[dst], 0.2) * att).sum(dim=-1)
    assert logits.abs().max() > 5e3
    out, alpha = fused_gatv2_attention(x_l, x_r, att, edge_index,
                                       add_self_loops=True,
                                       return_attention_weights=True,
                                       backend=backend)
    grads = torch.autograd.grad(out.sum(), [x_l, x_r, att])
    assert all(bool(g.isfinite().all()) for g in (out, alpha) + grads)
    # Against float64 maths on the same inputs. A logit of 1e4 carries a
    # rounding error of about eps * 1e4 (2e-3 in float32), and so does
    # alpha, a softmax of logit differences; the output, a weighted mean of
    # the x_l, carries the error of alpha times their size. (Measured: at
    # most a fifteenth of either bound, in either dtype.)
    expected_out, expected_alpha = reference(
        *(t.detach().double() for t in (x_l, x_r, att)), edge_index,
        add_self_loops=True)
    tol = torch.finfo(dtype).eps * logits.abs().max().item()
    torch.testing.assert_close(alpha.double(), expected_alpha, atol=tol,
                               rtol=0)
    torch.testing.assert_close(out.double(), expected_out,
                               atol=tol * x_l.abs().max().item(), rtol=0)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('add_self_loops', [False, True])
def test_empty_graph(backend, add_self_loops):
    edge_index = torch.empty(2, 0, dtype=torch.long)
    x_l, x_r, att, et, loop_et = features(4, 3, 0, 2, 3, torch.float64)
    out, alpha = compare(x_l, x_r, att, edge_index, et,
                         loop_et if add_self_loops else None,
                         add_self_loops=add_self_loops, backend=backend)[:2]
    if add_self_loops:  # every node attends to itself only
        torch.testing.assert_close(out, x_l[:3].detach())
        assert bool((alpha == 1).all())
    else:
        assert bool((out == 0).all()) and alpha.numel() == 0


@pytest.mark.parametrize('backend', BACKENDS)
def test_edge_permutation_invariance(backend):
    edge_index = random_graph(15, 15, 70, seed=6)
    x_l, x_r, att, et, loop_et = features(15, 15, 70, 2, 3, torch.float64)
    perm = torch.randperm(70, generator=torch.Generator().manual_seed(7))
    out, alpha = fused_gatv2_attention(x_l, x_r, att, edge_index, et,
                                       loop_edge_term=loop_et,
                                       add_self_loops=True,
                                       return_attention_weights=True,
                                       backend=backend)
    out_p, alpha_p = fused_gatv2_attention(x_l, x_r, att,
                                           edge_index[:, perm], et[perm],
                                           loop_edge_term=loop_et,
                                           add_self_loops=True,
                                           return_attention_weights=True,
                                           backend=backend)
    torch.testing.assert_close(out_p, out)
    torch.testing.assert_close(alpha_p[:70], alpha[perm])
    torch.testing.assert_close(alpha_p[70:], alpha[70:])


def test_layout_cache_hit_and_invalidation():
    clear_layout_cache()
    edge_index = random_graph(8, 8, 20)
    first = edge_layout(edge_index, 8, 8, add_self_loops=True)
    assert edge_layout(edge_index, 8, 8, add_self_loops=True) is first
    # Other sizes or self-loop handling are other layouts.
    assert edge_layout(edge_index, 8, 8) is not first
    assert edge_layout(edge_index, 9, 8, add_self_loops=True) is not first
    # Equal content in a new tensor builds a new layout.
    assert edge_layout(edge_index.clone(), 8, 8,
                       add_self_loops=True) is not first
    # An in-place edit, here through a view, invalidates the entry.
    dst = edge_index[1]
    dst[:5] = 7
    second = edge_layout(edge_index, 8, 8, add_self_loops=True)
    assert second is not first
    fresh = edge_layout(edge_index.clone(), 8, 8, add_self_loops=True)
    assert torch.equal(second.dst_ptr, fresh.dst_ptr)
    assert not torch.equal(second.dst_ptr, first.dst_ptr)


@pytest.mark.parametrize('backend', BACKENDS)
def test_in_place_edit_changes_the_result(backend):
    edge_index = random_graph(10, 10, 30)
    x_l, x_r, att, _, _ = features(10, 10, 30, 2, 3, torch.float64)
    with torch.no_grad():
        before = fused_gatv2_attention(x_l, x_r, att, edge_index,
                                       backend=backend)
        edge_index[0] = (edge_index[0] + 1) % 10
        after = fused_gatv2_attention(x_l, x_r, att, edge_index,
                                      backend=backend)
        expected = reference(x_l, x_r, att, edge_index)[0]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected)


@pytest.mark.parametrize('edit', ['numpy', 'data', 'no_grad'])
def test_layout_cache_sees_edits_that_bypass_the_version_counter(edit):
    clear_layout_cache()
    edge_index = random_graph(8, 8, 20)
    first = edge_layout(edge_index, 8, 8)
    version = edge_index._version
    new_dst = (edge_index[1] + 1) % 8
    if edit == 'numpy':
        edge_index.numpy()[1] = new_dst.numpy()
    elif edit == 'data':
        edge_index.data[1] = new_dst
    else:
        with torch.no_grad():
            edge_index[1] = new_dst
    assert (edge_index._version == version) == (edit != 'no_grad')
    second = edge_layout(edge_index, 8, 8)
    fresh = edge_layout(edge_index.clone(), 8, 8)
    assert second is not first
    assert torch.equal(second.dst_ptr, fresh.dst_ptr)
    assert torch.equal(second.dst_col, fresh.dst_col)
    # Unchanged since, the tensor finds the new layout again.
    assert edge_layout(edge_index, 8, 8) is second


def test_layout_cache_is_safe_under_threads():
    clear_layout_cache()
    graphs = [random_graph(30, 30, 90, seed=seed) for seed in range(12)]
    expected = [edge_layout(g.clone(), 30, 30, add_self_loops=True)
                for g in graphs]

    def lookup(i):
        layout = edge_layout(graphs[i % 12], 30, 30, add_self_loops=True)
        return i % 12, layout

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lookup, range(400)))
    for i, layout in results:
        assert torch.equal(layout.dst_col, expected[i].dst_col)
        assert torch.equal(layout.dst_eid, expected[i].dst_eid)
    assert len(csr._cache) <= 8


def test_layout_of_inference_tensor_is_not_cached():
    with torch.inference_mode():
        edge_index = random_graph(5, 5, 10)
    first = edge_layout(edge_index, 5, 5)
    assert edge_layout(edge_index, 5, 5) is not first
    assert int(first.dst_ptr[-1]) == 10


def test_backend_selection():
    assert get_backend() == 'auto'
    with use_backend('torch'):
        assert get_backend() == 'torch'
    assert get_backend() == 'auto'
    with pytest.raises(ValueError,
                       match="got fused backend 'cuda'; choose one of"):
        with use_backend('cuda'):
            pass


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(edge_index=torch.tensor([[0, 9], [1, 1]])), ValueError,
     r'source node index 9 .* \[0, 4\)'),
    (dict(edge_index=torch.tensor([[0, 1], [1, 5]])), ValueError,
     r'target node index 5 .* \[0, 4\)'),
    (dict(edge_index=torch.tensor([[0, -1], [1, 1]])), ValueError,
     'negative'),
    (dict(edge_index=torch.tensor([[0.0, 1.0], [1.0, 1.0]])), TypeError,
     'integer'),
    (dict(edge_index=torch.tensor([0, 1])), ValueError, r'\[2, num_edges\]'),
    (dict(att=torch.ones(3, 3)), ValueError, "'att'"),
    (dict(edge_term=torch.ones(5, 2, 3)), ValueError, "'edge_term'"),
    (dict(dropout_mask=torch.ones(3, 2)), ValueError, "'dropout_mask'"),
    (dict(x_r=torch.ones(4, 2, 3, dtype=torch.float64)), TypeError, "'x_r'"),
    (dict(backend='cuda'), ValueError, 'backend'),
    (dict(backend='numba', x_l=torch.ones(4, 2, 3, dtype=torch.float16),
          x_r=torch.ones(4, 2, 3, dtype=torch.float16),
          att=torch.ones(2, 3, dtype=torch.float16)), ValueError, 'float16'),
])
def test_bad_input(kwargs, error, match):
    args = dict(x_l=torch.ones(4, 2, 3), x_r=torch.ones(4, 2, 3),
                att=torch.ones(2, 3), edge_index=torch.tensor([[0, 1],
                                                               [1, 2]]))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        fused_gatv2_attention(**args)


# The fused path of GATv2Conv --------------------------------------------------


def layer_triplet(*args, dtype=torch.float64, **kwargs):
    """PyG's layer and ours on the fused and message-passing paths, all with
    PyG's weights."""
    ref = pyg_nn.GATv2Conv(*args, **kwargs).to(dtype)
    fused = GATv2Conv(*args, **kwargs, fused=True).to(dtype)
    mp = GATv2Conv(*args, **kwargs, fused=False).to(dtype)
    for conv in (fused, mp):
        conv.load_state_dict(ref.state_dict(), strict=True)
    return ref, fused, mp


def layer_run(conv, x, edge_index, edge_attr, seed=0):
    """Output, edges, attention and every input and parameter gradient,
    with the dropout stream seeded."""
    x = tuple(t.detach().requires_grad_() for t in x)
    inputs = list(x)
    if edge_attr is not None:
        edge_attr = edge_attr.detach().requires_grad_()
        inputs.append(edge_attr)
    conv.zero_grad()
    torch.manual_seed(seed)
    out, (ei, alpha) = conv(x[0] if len(x) == 1 else x, edge_index,
                            edge_attr, return_attention_weights=True)
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype)
    loss = (out.flatten() * weight).sum() + (alpha**2).sum()
    loss.backward()
    grads = [t.grad for t in inputs] + [p.grad for p in conv.parameters()]
    return [out, ei, alpha] + grads


LAYER_OPTIONS = list(itertools.product([1, 3], [True, False], [False, True],
                                       [True, False], [None, 3], [0.0, 0.4],
                                       [False, True]))


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize(
    'heads,concat,bipartite,self_loops,edge_dim,dropout,share_weights',
    LAYER_OPTIONS)
def test_layer_matches_pyg_and_message_passing(heads, concat, bipartite,
                                               self_loops, edge_dim,
                                               dropout, share_weights,
                                               backend):
    num_src, num_dst = (11, 8) if bipartite else (11, 11)
    in_dst = 7 if bipartite and not share_weights else 6
    in_channels = (6, in_dst) if bipartite else 6
    ref, fused, mp = layer_triplet(in_channels, 4, heads=heads,
                                   concat=concat, add_self_loops=self_loops,
                                   edge_dim=edge_dim, dropout=dropout,
                                   share_weights=share_weights)
    gen = torch.Generator().manual_seed(3)
    edge_index = random_graph(num_src, num_dst, 36, seed=3)
    edge_index[:, :3] = torch.tensor([[0, 1, 1], [0, 1, 1]])  # loops, dup
    x = (torch.randn(num_src, 6, generator=gen, dtype=torch.float64), )
    if bipartite:
        x += (torch.randn(num_dst, in_dst, generator=gen,
                          dtype=torch.float64), )
    edge_attr = None
    if edge_dim is not None:
        edge_attr = torch.randn(36, edge_dim, generator=gen,
                                dtype=torch.float64)
    for conv in (ref, fused, mp):
        conv.train(dropout > 0)
    expected = layer_run(ref, x, edge_index, edge_attr)
    with use_backend(backend):
        actual = layer_run(fused, x, edge_index, edge_attr)
    message_passing = layer_run(mp, x, edge_index, edge_attr)
    for name, other in (('PyG', expected), ('message passing',
                                            message_passing)):
        assert torch.equal(actual[1], other[1]), name
        del other[1]
    del actual[1]
    assert_close_all(actual, expected, torch.float64)
    assert_close_all(actual, message_passing, torch.float64)


@pytest.mark.parametrize('backend', BACKENDS)
def test_layer_float32_matches_pyg_on_a_larger_graph(backend):
    ref, fused, _ = layer_triplet(16, 8, heads=4, dtype=torch.float32)
    gen = torch.Generator().manual_seed(4)
    x = (torch.randn(2000, 16, generator=gen), )
    edge_index = random_graph(2000, 2000, 30000, seed=4)
    expected = layer_run(ref, x, edge_index, None)
    with use_backend(backend):
        actual = layer_run(fused, x, edge_index, None)
    assert torch.equal(actual.pop(1), expected.pop(1))
    assert_close_all(actual[:2], expected[:2], torch.float32)
    # Parameter gradients sum over 32,000 edges: float32 rounding of such
    # sums, in different orders, differs by about 1e-5 of their size.
    for grad, ref_grad in zip(actual[2:], expected[2:], strict=True):
        scale = ref_grad.abs().max().item()
        torch.testing.assert_close(grad, ref_grad, atol=1e-4 * scale,
                                   rtol=1e-4)


def test_layer_state_dict_and_repr_are_pyg_s():
    ref, fused, mp = layer_triplet((6, 5), 4, heads=2, edge_dim=3,
                                   residual=True)
    assert list(fused.state_dict()) == list(ref.state_dict())
    assert list(mp.state_dict()) == list(ref.state_dict())
    assert repr(fused) == 'GATv2Conv((6, 5), 4, heads=2)'


def test_layer_reuses_the_layout_across_calls():
    clear_layout_cache()
    conv = GATv2Conv(6, 4, heads=2, fused=True)
    x = torch.randn(20, 6)
    edge_index = random_graph(20, 20, 60)
    conv(x, edge_index).sum().backward()
    layout = edge_layout(edge_index, 20, 20, add_self_loops=True)
    conv(x, edge_index).sum().backward()
    assert edge_layout(edge_index, 20, 20, add_self_loops=True) is layout


def test_layer_accepts_edge_index_objects():
    ref, fused, _ = layer_triplet(6, 4, heads=2)
    x = (torch.randn(10, 6, dtype=torch.float64), )
    edge_index = EdgeIndex(random_graph(10, 10, 30), sparse_size=(10, 10))
    expected = layer_run(ref, x, edge_index, None)
    actual = layer_run(fused, x, edge_index, None)
    assert isinstance(actual[1], EdgeIndex)
    assert torch.equal(actual.pop(1), expected.pop(1))
    assert_close_all(actual, expected, torch.float64)


def test_layer_falls_back_to_message_passing():
    conv = GATv2Conv(6, 4, heads=2)
    x = torch.randn(10, 6)
    edge_index = coalesce(random_graph(10, 10, 30))
    expected = conv(x, edge_index)
    # A sparse adjacency takes the message-passing path, same numbers.
    adj = to_torch_csr_tensor(edge_index.flip(0), size=(10, 10))
    torch.testing.assert_close(conv(x, adj), expected)
    # So does a call with a registered hook, which then runs.
    calls = []
    conv.register_message_forward_hook(lambda *args: calls.append(1))
    torch.testing.assert_close(conv(x, edge_index), expected)
    assert calls


def test_layer_fused_true_rejects_what_it_cannot_run():
    conv = GATv2Conv(6, 4, heads=2, fused=True)
    x = torch.randn(10, 6)
    adj = to_torch_csr_tensor(random_graph(10, 10, 30).flip(0),
                              size=(10, 10))
    with pytest.raises(ValueError, match='fused=True.*sparse adjacency'):
        conv(x, adj)
    conv.decomposed_layers = 2
    with pytest.raises(ValueError, match='decomposed_layers'):
        conv(x, random_graph(10, 10, 30))
    with pytest.raises(TypeError, match='fused=None, True or False'):
        GATv2Conv(6, 4, fused='yes')


@pytest.mark.parametrize('concat', [True, False])
def test_layer_output_can_be_modified_in_place(concat):
    # As with message passing, even without bias or residual.
    ref, fused, _ = layer_triplet(6, 4, heads=2, concat=concat, bias=False)
    x = torch.randn(10, 6, dtype=torch.float64)
    edge_index = random_graph(10, 10, 30)
    grads = []
    for conv in (ref, fused):
        out = conv(x, edge_index)
        out.relu_()
        out.sum().backward()
        grads.append(conv.att.grad)
    torch.testing.assert_close(grads[1], grads[0])


def test_layout_cache_forgets_freed_tensors():
    clear_layout_cache()
    edge_index = random_graph(8, 8, 20)
    edge_layout(edge_index, 8, 8)
    assert len(csr._cache) == 1
    del edge_index
    gc.collect()
    assert len(csr._cache) == 0


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_runs_on_the_torch_backend(dtype):
    edge_index = random_graph(12, 12, 40)
    x_l, x_r, att, _, _ = features(12, 12, 0, 2, 4, torch.float32)
    half = [t.detach().to(dtype).requires_grad_() for t in (x_l, x_r, att)]
    out = fused_gatv2_attention(*half, edge_index, add_self_loops=True)
    out.float().sum().backward()
    assert out.dtype == dtype and half[0].grad.dtype == dtype
    expected = reference(*(t.detach().float() for t in half), edge_index,
                         add_self_loops=True)[0]
    torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=5e-2)


@pytest.mark.skipif('numba' not in BACKENDS, reason='numba is not installed')
def test_numba_kernels_use_torch_s_thread_count():
    import numba
    inputs = features(30, 30, 200, 2, 4, torch.float64)
    edge_index = random_graph(30, 30, 200)
    previous = torch.get_num_threads()
    try:
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
            torch.set_num_threads(threads)
            x_l, x_r, att = (t.detach().requires_grad_() for t in inputs[:3])
            out = fused_gatv2_attention(x_l, x_r, att, edge_index,
                                        backend='numba')
            assert numba.get_num_threads() == threads
            assert torch.get_num_threads() == threads
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
            out.sum().backward()
            assert numba.get_num_threads() == threads
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(previous)


@pytest.mark.skipif('numba' not in BACKENDS, reason='numba is not installed')
def test_first_numba_call_keeps_torch_s_thread_count():
    # Starting numba's OpenMP pool resets the count that torch shares with it;
    # only a fresh process shows whether the first call restores it.
    printed = first_fused_call_in_a_fresh_process(
        'numba', before='torch.set_num_threads(1)\n',
        after='import numba\n'
        'print(torch.get_num_threads(), numba.get_num_threads())\n')
    assert printed.split() == ['1', '1']


@pytest.mark.parametrize('num_keys,size', [(1, 0), (5, 1), (7, 100),
                                           (1000, 50)])
def test_bucket_order_is_a_stable_sort(num_keys, size):
    from pyg_gatv2.fused.cpu import bucket_order
    keys = torch.randint(0, num_keys, (size, ),
                         generator=torch.Generator().manual_seed(size))
    ptr, order = bucket_order(keys, num_keys)
    assert torch.equal(order, torch.argsort(keys, stable=True))
    assert torch.equal(ptr.diff(), torch.bincount(keys, minlength=num_keys))
    assert ptr[0] == 0
