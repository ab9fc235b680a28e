"""The torch custom ops behind the fused attention: their registration
(schema, fake tensors, autograd) and what compile and export make of them."""
import pytest
import torch

from pyg_gatv2.fused import (
    available_backends,
    clear_layout_cache,
    edge_layout,
    fused_gatv2_attention,
    use_backend,
)
from pyg_gatv2.fused.csr import layout_of

BACKENDS = [b for b in available_backends() if b != 'triton']


def graph(num_src=9, num_dst=7, num_edges=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    edge_index = torch.stack([
        torch.randint(0, num_src, (num_edges, ), generator=gen),
        torch.randint(0, num_dst, (num_edges, ), generator=gen),
    ])
    # Edges i -> i, for the self-loops to replace.
    edge_index[:, :4] = torch.arange(4).repeat(2, 1)
    return edge_index


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
def test_opcheck(backend, loops, edge, mask, want_alpha):
    """torch.library.opcheck: the schema, the fake implementation against
    the real one, the autograd registration, and tracing with dynamic
    shapes."""
    edge_index = graph()
    ops = operands(9, 7, edge_index.size(1), loops, edge, mask,
                   torch.float64)
    csr = torch.ops.pyg_gatv2.edge_layout(edge_index, 9, 7, loops, 'test')
    args = (ops['x_l'], ops['x_r'], ops['att'], *csr, ops['edge_term'],
            ops['loop_term'], ops['mask'], edge_index.size(1), loops, 0.2,
            want_alpha, backend, None)
    torch.library.opcheck(torch.ops.pyg_gatv2.gatv2_attention.default, args)
    torch.library.opcheck(torch.ops.pyg_gatv2.edge_layout.default,
                          (edge_index, 9, 7, loops, 'test'))


def test_layout_tensors_have_sizes_that_do_not_depend_on_the_data():
    edge_index = graph()
    layout = edge_layout(edge_index, 9, 7, add_self_loops=True)
    ptr, col, eid = layout.csr_tensors
    assert col.numel() == eid.numel() == 40 + 7
    # The edges i -> i are replaced: they follow the CSR positions.
    replaced = (edge_index[0] == edge_index[1]).nonzero().view(-1)
    assert replaced.numel() >= 4
    assert layout.num_kept == 40 - replaced.numel() + 7 == int(ptr[-1])
    assert torch.equal(eid[layout.num_kept:].sort().values, replaced)
    assert layout_of(ptr, col, eid, 9, 40, True) is layout


def test_layout_of_rebuilds_a_freed_layout_from_its_tensors():
    edge_index = graph()
    clear_layout_cache()
    layout = edge_layout(edge_index, 9, 7, add_self_loops=True)
    tensors, kept = layout.csr_tensors, layout.num_kept
    row, col = layout.dst_row.clone(), layout.dst_col.clone()
    clear_layout_cache()
    del layout
    again = layout_of(*tensors, 9, 40, True)
    assert again.num_kept == kept
    assert torch.equal(again.dst_row, row)
    assert torch.equal(again.dst_col, col)


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
    from pyg_gatv2.fused import op
    calls = []
    real = op._run_forward
    monkeypatch.setattr(op, '_run_forward',
                        lambda name, *a: calls.append(name) or real(name, *a))
    edge_index = graph()
    ops = operands(9, 7, 40, True, False, False, torch.float32)
    model = torch.compile(attention_model(True, False))
    with use_backend(backend):
        model(ops['x_l'], ops['x_r'], ops['att'], edge_index, None)
    assert calls == [backend]


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
