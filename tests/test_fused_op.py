"""The fused attention operator (pyg_gatv2/fused/op.py): its results and
gradients against the edge-wise reference on each CPU backend, its checks
of the input, and its torch custom ops (schema, fake tensors, autograd)
as compile and export see them."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from _fused_cases import (
    BACKENDS,
    assert_close_all,
    compare,
    dropout_mask,
    features,
    graph,
    lower_precision_runs,
    outputs_and_grads,
    random_graph,
    reference,
    spy_on_backends,
)

from pyg_gatv2 import use_backends
from pyg_gatv2.fused import edge_layout, fused_gatv2_attention


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
    mask = dropout_mask(60 + num_loops, 3, dtype) if dropout else None
    compare(x_l, x_r, att, edge_index, et if edge_term else None,
            loop_et if edge_term and add_self_loops else None, mask,
            add_self_loops, backend, dtype)


@pytest.mark.parametrize('channels', [16, 37])
def test_backends_agree_on_a_larger_graph(channels):
    # 37 channels: the C++ kernels' sums over lanes of 8 with a remainder.
    if len(BACKENDS) < 2:
        pytest.skip('only the torch backend is installed')
    edge_index = random_graph(300, 200, 5000, seed=3)
    x_l, x_r, att, et, loop_et = features(300, 200, 5000, 4, channels,
                                          torch.float32, seed=3)
    mask = dropout_mask(5000 + 200, 4, torch.float32, seed=4)
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


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('add_self_loops', [False, True])
def test_gradcheck(backend, add_self_loops):
    edge_index = random_graph(6, 5, 14, seed=4)
    edge_index[:, 0] = 2  # an existing self-loop
    x_l, x_r, att, et, loop_et = features(6, 5, 14, 2, 3, torch.float64,
                                          seed=4)
    num_virtual = 14 + (5 if add_self_loops else 0)
    mask = dropout_mask(num_virtual, 2, torch.float64, seed=5, p=0.25)

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
def test_double_backward_matches_the_reference(backend):
    edge_index = random_graph(9, 9, 30, seed=8)
    x_l, x_r, att, et, loop_et = features(9, 9, 30, 2, 3, torch.float64,
                                          seed=8)
    inputs = [x_l, x_r, att, et, loop_et]
    mask = dropout_mask(39, 2, torch.float64, seed=9)

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


@pytest.mark.skipif(not {'cpp', 'torch'} <= set(BACKENDS),
                    reason='needs the C++ kernels')
@pytest.mark.parametrize('forward,backward', [('cpp', 'torch'),
                                              ('torch', 'cpp')])
def test_backward_runs_on_the_backend_forward_ran_on(forward, backward,
                                                     monkeypatch):
    # The C++ backend keeps no output for backward, the torch backend
    # needs it: a backward on another backend than forward's would fail or
    # read what forward did not keep.
    edge_index = random_graph(30, 30, 200)
    inputs = features(30, 30, 200, 2, 8, torch.float64)[:3]
    calls = spy_on_backends(monkeypatch)

    def ours():
        with use_backends(fused=forward):
            out, alpha = fused_gatv2_attention(
                *inputs, edge_index, add_self_loops=True,
                return_attention_weights=True)
        return out, alpha

    with use_backends(fused=backward):
        actual = outputs_and_grads(ours, inputs)
    assert calls == [(forward, 'forward'), (forward, 'backward')]
    expected = outputs_and_grads(
        lambda: reference(*inputs, edge_index, add_self_loops=True), inputs)
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


@pytest.mark.parametrize('backend', BACKENDS)
def test_tiny_graph_by_hand(backend):
    # Node 0 receives from 1 and 2 with logits a.lrelu(x_1 + x_0) etc.;
    # with att = 1, slope 0.2 and one channel the logits are 3 and -0.2, so
    # alpha = softmax([3, -0.2]); node 1 and 2 receive nothing.
    x = torch.tensor([[[1.0]], [[2.0]], [[-2.0]]])
    att = torch.ones(1, 1)
    edge_index = torch.tensor([[1, 2], [0, 0]])
    out, alpha = fused_gatv2_attention(x, x, att, edge_index,
                                       return_attention_weights=True,
                                       backend=backend)
    expected = torch.softmax(torch.tensor([3.0, -0.2]), dim=0)
    torch.testing.assert_close(alpha.view(-1), expected)
    torch.testing.assert_close(
        out.view(-1), torch.stack([expected @ torch.tensor([2.0, -2.0]),
                                   torch.tensor(0.0), torch.tensor(0.0)]))


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


def half(*shape):
    return torch.ones(*shape, dtype=torch.float16)


BAD_INPUTS = {
    'source_out_of_range': (
        dict(edge_index=torch.tensor([[0, 9], [1, 1]])), ValueError,
        r'source node index 9 .* \[0, 4\)'),
    'target_out_of_range': (
        dict(edge_index=torch.tensor([[0, 1], [1, 5]])), ValueError,
        r'target node index 5 .* \[0, 4\)'),
    'negative_index': (
        dict(edge_index=torch.tensor([[0, -1], [1, 1]])), ValueError,
        'negative'),
    'float_edge_index': (
        dict(edge_index=torch.tensor([[0.0, 1.0], [1.0, 1.0]])), TypeError,
        'integer'),
    'edge_index_shape': (
        dict(edge_index=torch.tensor([0, 1])), ValueError,
        r'\[2, num_edges\]'),
    'x_r_shape': (
        dict(x_r=torch.ones(4, 3, 3)), ValueError, r"'x_r' \[num_dst, "),
    'att_shape': (dict(att=torch.ones(3, 3)), ValueError, "'att'"),
    'no_heads': (
        dict(x_l=torch.ones(4, 0, 3), x_r=torch.ones(4, 0, 3),
             att=torch.ones(0, 3)), ValueError, 'at least one head'),
    'no_channels': (
        dict(x_l=torch.ones(4, 2, 0), x_r=torch.ones(4, 2, 0),
             att=torch.ones(2, 0)), ValueError, 'one channel'),
    'loop_edge_term_alone': (
        dict(loop_edge_term=torch.ones(4, 2, 3), add_self_loops=True),
        ValueError, "'loop_edge_term' without 'edge_term'"),
    'edge_term_shape': (
        dict(edge_term=torch.ones(5, 2, 3)), ValueError, "'edge_term'"),
    'loop_edge_term_shape': (
        dict(edge_term=torch.ones(2, 2, 3),
             loop_edge_term=torch.ones(3, 2, 3), add_self_loops=True),
        ValueError, r"'loop_edge_term' of shape \[4, 2, 3\]"),
    'dropout_mask_shape': (
        dict(dropout_mask=torch.ones(3, 2)), ValueError, "'dropout_mask'"),
    'x_r_dtype': (
        dict(x_r=torch.ones(4, 2, 3, dtype=torch.float64)), TypeError,
        "'x_r'"),
    'edge_index_device': (
        dict(x_l=torch.ones(4, 2, 3, device='meta'),
             x_r=torch.ones(4, 2, 3, device='meta'),
             att=torch.ones(2, 3, device='meta')),
        TypeError, r"'edge_index' on the device of 'x_l' \(meta\); got cpu"),
    'att_of_lower_precision': (
        dict(x_l=torch.ones(4, 2, 3, dtype=torch.float64),
             x_r=torch.ones(4, 2, 3, dtype=torch.float64)), TypeError,
        r"computes in the dtype of 'att' .* got 'att' torch.float32 and "
        r"'x_l' torch.float64 \(cast 'att'"),
    'integer_features': (
        dict(x_l=torch.ones(4, 2, 3, dtype=torch.long),
             x_r=torch.ones(4, 2, 3, dtype=torch.long)), TypeError,
        "expects floating features"),
    'edge_term_of_higher_precision': (
        dict(edge_term=torch.ones(2, 2, 3, dtype=torch.float64)), TypeError,
        r"'edge_term' on the device of 'att' \(cpu\), floating, in its "
        r"dtype \(torch.float32\) or a lower precision; got torch.float64"),
    'integer_loop_edge_term': (
        dict(edge_term=torch.ones(2, 2, 3), add_self_loops=True,
             loop_edge_term=torch.ones(4, 2, 3, dtype=torch.long)),
        TypeError, r"'loop_edge_term' .* got torch.int64"),
    'dropout_mask_in_the_features_dtype': (
        dict(x_l=half(4, 2, 3), x_r=half(4, 2, 3),
             dropout_mask=half(2, 2)), TypeError,
        r"'dropout_mask' with the dtype and device of 'att' \(torch.float32"),
    'chunk_size': (
        dict(chunk_size=0), ValueError, "positive 'chunk_size'"),
    'unknown_backend': (
        dict(backend='cuda'), ValueError,
        "got fused backend 'cuda'; choose one of 'auto', 'cpp'"),
    'backend_without_the_dtype': (
        dict(backend='cpp', x_l=half(4, 2, 3), x_r=half(4, 2, 3),
             att=half(2, 3)), ValueError,
        r"fused backend 'cpp': it runs float32, float64, not float16"),
}


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_lower_precision_features(backend, dtype):
    # Features in bfloat16 or float16 beside a float32 'att' (autocast's
    # projections) give exactly what float32 copies of them give; their
    # gradients come rounded to nearest in their own dtype.
    lower, full = lower_precision_runs(dtype, backend)
    for i, (a, b) in enumerate(zip(lower, full, strict=True)):
        if i in (2, 3):  # the gradients of x_l and x_r
            assert a.dtype == dtype
            assert torch.equal(a, b.to(dtype)), i
        else:
            assert a.dtype == torch.float32
            assert torch.equal(a, b), i


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_lower_precision_edge_terms(backend, dtype):
    # Edge terms in bfloat16 or float16 beside a float32 'att' (autocast's
    # edge projections) give exactly what float32 copies of them give;
    # their gradients come rounded to nearest in their own dtype.
    lower, full = lower_precision_runs(dtype, backend, edge_terms=True)
    for i, (a, b) in enumerate(zip(lower, full, strict=True)):
        if i in (2, 3, 5, 6):  # the gradients of x_l, x_r and edge terms
            assert a.dtype == dtype
            assert torch.equal(a, b.to(dtype)), i
        else:
            assert a.dtype == torch.float32
            assert torch.equal(a, b), i


@pytest.mark.parametrize('compiled', [False, True],
                         ids=['eager', 'compiled'])
@pytest.mark.parametrize('case', list(BAD_INPUTS))
def test_bad_input(case, compiled):
    # Compiled, the checks run while dynamo traces the operator.
    override, error, match = BAD_INPUTS[case]
    args = dict(x_l=torch.ones(4, 2, 3), x_r=torch.ones(4, 2, 3),
                att=torch.ones(2, 3), edge_index=torch.tensor([[0, 1],
                                                               [1, 2]]))
    args.update(override)
    op = fused_gatv2_attention
    if compiled:
        torch._dynamo.reset()
        op = torch.compile(op, backend='eager')
    with pytest.raises(error, match=match) as info:
        op(**args)
    assert "'fused_gatv2_attention'" in str(info.value)


# The custom ops -------------------------------------------------------------


def operands(num_src, num_dst, num_edges, loops, edge, mask, dtype,
             heads=2, channels=3):
    gen = torch.Generator().manual_seed(1)

    def randn(*shape, grad=True):
        return torch.randn(*shape, generator=gen,
                           dtype=dtype).requires_grad_(grad)

    num_loops = min(num_src, num_dst) if loops else 0
    return dict(
        x_l=randn(num_src, heads, channels), x_r=randn(num_dst, heads,
                                                       channels),
        att=randn(heads, channels),
        edge_term=randn(num_edges, heads, channels) if edge else None,
        loop_term=randn(num_loops, heads, channels) if edge else None,
        mask=(torch.rand(num_edges + num_loops, heads, generator=gen,
                         dtype=dtype) > 0.3).to(dtype) * 2 if mask else None)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('loops,edge,mask,want_alpha', [
    (False, False, False, False),
    (True, True, True, True),
    (True, False, False, True),
])
@pytest.mark.parametrize('features', [torch.float64, torch.float32])
def test_opcheck(backend, loops, edge, mask, want_alpha, features):
    """torch.library.opcheck: the schema, the fake implementation against
    the real one, the autograd registration, and tracing with dynamic
    shapes; with features and edge terms in the dtype of 'att' and in a
    lower one."""
    edge_index = graph()
    ops = operands(9, 7, edge_index.size(1), loops, edge, mask,
                   torch.float64)
    for name in ('x_l', 'x_r', 'edge_term', 'loop_term'):
        if ops[name] is not None:
            ops[name] = ops[name].detach().to(features).requires_grad_()
    csr = torch.ops.pyg_gatv2.edge_layout(edge_index, 9, 7, loops, 'test')
    args = (ops['x_l'], ops['x_r'], ops['att'], *csr, ops['edge_term'],
            ops['loop_term'], ops['mask'], edge_index.size(1), loops, 0.2,
            want_alpha, backend, None)
    torch.library.opcheck(torch.ops.pyg_gatv2.gatv2_attention.default, args)
    torch.library.opcheck(torch.ops.pyg_gatv2.edge_layout.default,
                          (edge_index, 9, 7, loops, 'test'))
    # The backward op, on what forward kept; its gradients come in the
    # dtypes of the inputs.
    with torch.no_grad():
        out, lse, alpha = torch.ops.pyg_gatv2.gatv2_attention(*args)
    grad_out = torch.randn(out.shape, dtype=out.dtype)
    grad_alpha = torch.randn(alpha.shape, dtype=alpha.dtype)
    tensors = [t if t is None else t.detach() for t in args[:9]]
    backward = (grad_out, grad_alpha if want_alpha else None, *tensors, out,
                lse, alpha, edge_index.size(1), loops, 0.2, backend, None,
                True, edge)
    torch.library.opcheck(
        torch.ops.pyg_gatv2.gatv2_attention_backward.default, backward,
        test_utils=('test_schema', 'test_faketensor'))


def attention_model(loops, edge):
    class Attention(torch.nn.Module):
        def forward(self, x_l, x_r, att, edge_index, edge_term):
            return fused_gatv2_attention(
                x_l, x_r, att, edge_index, edge_term, add_self_loops=loops,
                return_attention_weights=True)
    return Attention()


@pytest.mark.parametrize('loops', [False, True])
def test_compiled_operator_without_graph_breaks(loops):
    torch._dynamo.reset()
    edge_index = graph()
    ops = operands(9, 7, 40, loops, True, False, torch.float32)
    args = (ops['x_l'], ops['x_r'], ops['att'], edge_index, ops['edge_term'])
    model = attention_model(loops, True)
    explanation = torch._dynamo.explain(model)(*args)
    assert explanation.graph_break_count == 0
    targets = {str(node.target) for g in explanation.graphs
               for node in g.graph.nodes}
    assert 'pyg_gatv2.gatv2_attention' in targets
    assert 'pyg_gatv2.edge_layout' in targets

    expected = model(*args)
    grads = torch.autograd.grad(expected[0].sum() + expected[1].sum(),
                                args[:3] + args[4:])
    out = torch.compile(model)(*args)
    for got, want in zip(out, expected, strict=True):
        torch.testing.assert_close(got, want)
    compiled_grads = torch.autograd.grad(out[0].sum() + out[1].sum(),
                                         args[:3] + args[4:])
    for got, want in zip(compiled_grads, grads, strict=True):
        torch.testing.assert_close(got, want)


def test_exported_operator_runs_on_other_graphs():
    edge_index = graph()
    ops = operands(9, 7, 40, True, True, False, torch.float32)
    args = (ops['x_l'], ops['x_r'], ops['att'], edge_index, ops['edge_term'])
    model = attention_model(True, True)
    program = torch.export.export(model, args)
    targets = {str(node.target) for node in program.graph.nodes}
    assert 'pyg_gatv2.gatv2_attention.default' in targets
    other = graph(seed=3)
    args = args[:3] + (other, ) + args[4:]
    for got, want in zip(program.module()(*args), model(*args),
                         strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize('backend', BACKENDS)
def test_backend_is_chosen_when_the_op_runs(backend, monkeypatch):
    """A compiled graph takes the backend selected at call time."""
    torch._dynamo.reset()
    calls = spy_on_backends(monkeypatch)
    edge_index = graph()
    ops = operands(9, 7, 40, True, False, False, torch.float32)
    model = torch.compile(attention_model(True, False))
    with use_backends(fused=backend):
        model(ops['x_l'], ops['x_r'], ops['att'], edge_index, None)
    assert calls == [(backend, 'forward')]


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason='needs a CUDA GPU')


@pytest.mark.cuda
@needs_cuda
def test_steady_state_training_step_does_not_wait_for_the_gpu():
    """Once the layout of an edge_index is cached, a training step of the
    layer queues its work without a host synchronisation."""
    from pyg_gatv2 import GATv2Conv
    conv = GATv2Conv(16, 8, heads=4).cuda()
    x = torch.randn(300, 16, device='cuda')
    edge_index = graph(300, 300, 3000).cuda()
    conv(x, edge_index).sum().backward()  # builds and caches the layout
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        conv(x, edge_index).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode('default')


@pytest.mark.cuda
@needs_cuda
def test_compiled_model_on_the_gpu_runs_triton():
    from pyg_gatv2 import GATv2
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = GATv2(16, 4, hidden_channels=8, heads=4, dropout=0.0,
                  attention_dropout=0.0).cuda()
    x = torch.randn(300, 16, device='cuda')
    edge_index = graph(300, 300, 3000).cuda()
    explanation = torch._dynamo.explain(model)(x, edge_index)
    assert explanation.graph_break_count == 0
    expected = model(x, edge_index)
    torch.testing.assert_close(torch.compile(model)(x, edge_index),
                               expected)
