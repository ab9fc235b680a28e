import csv
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch_geometric.nn as pyg_nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch_geometric.data import Batch, Data
from torch_geometric.utils import coalesce, to_dense_adj, to_dense_batch

import pyg_gatv2.dense
from pyg_gatv2 import DenseGATv2Conv, GATv2Conv

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


def random_batch(sizes=(5, 1, 9, 7), in_channels=6, degree=2.5, seed=0,
                 dtype=torch.float64):
    """Graphs of the given sizes with random edges (no duplicates), some
    self-loops and an isolated node or two, batched."""
    gen = torch.Generator().manual_seed(seed)
    graphs = []
    for n in sizes:
        num_edges = int(degree * n)
        edge_index = torch.randint(0, n, (2, num_edges), generator=gen)
        edge_index = coalesce(edge_index, num_nodes=n)
        x = torch.randn(n, in_channels, generator=gen, dtype=dtype)
        graphs.append(Data(x=x, edge_index=edge_index, num_nodes=n))
    return Batch.from_data_list(graphs)


def dense_inputs(batch):
    x, mask = to_dense_batch(batch.x, batch.batch)
    adj = to_dense_adj(batch.edge_index, batch.batch)
    return x, adj, mask


def layers(heads=2, concat=True, share_weights=False, add_self_loops=True,
           residual=False, bias=True, in_channels=6, out_channels=4,
           dtype=torch.float64, **kwargs):
    """A sparse layer and a dense one holding a copy of its weights."""
    options = dict(heads=heads, concat=concat, share_weights=share_weights,
                   add_self_loops=add_self_loops, residual=residual,
                   bias=bias)
    torch.manual_seed(0)
    sparse = GATv2Conv(in_channels, out_channels, **options).to(dtype)
    dense = DenseGATv2Conv(in_channels, out_channels, **options,
                           **kwargs).to(dtype)
    dense.load_state_dict(sparse.state_dict(), strict=True)
    return sparse, dense


def loss_weights(out):
    return torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)


OPTIONS = list(
    itertools.product(
        [1, 3],  # heads
        [True, False],  # concat
        [False, True],  # share_weights
        [True, False],  # add_self_loops
        [False, True],  # residual
    ))


@pytest.mark.parametrize('heads,concat,share_weights,add_self_loops,residual',
                         OPTIONS)
def test_batched_dense_equals_sparse_per_graph(heads, concat, share_weights,
                                               add_self_loops, residual):
    batch = random_batch()
    sparse, dense = layers(heads, concat, share_weights, add_self_loops,
                           residual)
    x, adj, mask = dense_inputs(batch)
    out, alpha = dense(x, adj, mask, return_attention_weights=True)
    assert out.shape == (4, 9, heads * 4 if concat else 4)
    assert alpha.shape == (4, 9, 9, heads)

    for b, graph in enumerate(batch.to_data_list()):
        n = graph.num_nodes
        expected, (edge_index, expected_alpha) = sparse(
            graph.x, graph.edge_index, return_attention_weights=True)
        torch.testing.assert_close(out[b, :n], expected, rtol=0, atol=1e-10)
        # to_dense_adj is indexed [source, target], the dense layer's
        # attention [target, source].
        expected_alpha = to_dense_adj(edge_index, edge_attr=expected_alpha,
                                      max_num_nodes=9)[0].transpose(0, 1)
        torch.testing.assert_close(alpha[b], expected_alpha, rtol=0,
                                   atol=1e-10)
    assert (out[~mask] == 0).all()


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_dense_gradients_equal_sparse(dtype):
    batch = random_batch(dtype=dtype)
    sparse, dense = layers(heads=2, residual=True, dtype=dtype)

    x = batch.x.clone().requires_grad_()
    out = sparse(x, batch.edge_index)
    out_dense, _ = to_dense_batch(out, batch.batch)
    (out_dense * loss_weights(out_dense)).sum().backward()

    x_pad, adj, mask = dense_inputs(batch)
    x_pad = x_pad.detach().requires_grad_()
    out = dense(x_pad, adj, mask)
    (out * loss_weights(out)).sum().backward()

    tol = TOLERANCE[dtype]
    torch.testing.assert_close(x_pad.grad, to_dense_batch(x.grad,
                                                          batch.batch)[0],
                               rtol=tol, atol=tol)
    sparse_grads = dict(sparse.named_parameters())
    for name, param in dense.named_parameters():
        torch.testing.assert_close(param.grad, sparse_grads[name].grad,
                                   rtol=tol, atol=tol, msg=name)


def test_unbatched_equals_pyg():
    torch.manual_seed(0)
    ref = pyg_nn.GATv2Conv(6, 4, heads=2).double()
    dense = DenseGATv2Conv(6, 4, heads=2).double()
    dense.load_state_dict(ref.state_dict(), strict=True)
    graph = random_batch(sizes=(11, ))
    adj = to_dense_adj(graph.edge_index, max_num_nodes=11)[0]
    torch.testing.assert_close(dense(graph.x, adj),
                               ref(graph.x, graph.edge_index))


def test_hand_made_graph():
    # 0 -> 2 and 1 -> 2 with equal scores: node 2 averages its neighbours
    # and itself; nodes 0 and 1 see only themselves.
    dense = DenseGATv2Conv(2, 2, bias=False).double()
    with torch.no_grad():
        dense.lin_l.weight.copy_(torch.eye(2))
        dense.lin_r.weight.zero_()
        dense.att.zero_()
    x = torch.tensor([[3., 0.], [0., 6.], [0., 0.]], dtype=torch.float64)
    adj = torch.zeros(3, 3)
    adj[0, 2] = adj[1, 2] = 1
    out, alpha = dense(x, adj, return_attention_weights=True)
    torch.testing.assert_close(out, torch.tensor(
        [[3., 0.], [0., 6.], [1., 2.]], dtype=torch.float64))
    torch.testing.assert_close(alpha[2, :, 0], torch.full(
        (3, ), 1 / 3, dtype=torch.float64))


@pytest.mark.parametrize('budget', [1, 2000, 50_000])
def test_chunked_equals_unchunked(budget):
    batch = random_batch(sizes=(9, 4, 12))
    _, dense = layers(heads=3, residual=True)
    x, adj, mask = dense_inputs(batch)
    assert dense.chunk_size(3, 12, torch.float64, budget) < 12

    def run(memory_budget):
        dense.zero_grad()
        x_in = x.detach().requires_grad_()
        torch.manual_seed(1)
        out, alpha = dense(x_in, adj, mask, return_attention_weights=True,
                           memory_budget=memory_budget)
        ((out * loss_weights(out)).sum() + (alpha**2).sum()).backward()
        grads = [x_in.grad] + [p.grad.clone() for p in dense.parameters()]
        return out, alpha, grads

    whole = run(10**12)
    chunked = run(budget)
    torch.testing.assert_close(chunked[0], whole[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(chunked[1], whole[1], rtol=0, atol=1e-12)
    for got, expected in zip(chunked[2], whole[2], strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_recomputed_backward_reuses_the_dropout_mask(monkeypatch):
    # Chunks are recomputed in backward; the gradient must be that of the
    # forward pass that ran, dropout mask included. The same chunks run
    # without recomputation give the reference gradient.
    batch = random_batch(sizes=(9, 12))
    _, dense = layers(heads=2, dropout=0.5)
    dense.train()
    x, adj, mask = dense_inputs(batch)

    def run():
        dense.zero_grad()
        x_in = x.detach().requires_grad_()
        torch.manual_seed(3)
        out = dense(x_in, adj, mask, memory_budget=2000)
        (out * loss_weights(out)).sum().backward()
        return [out, x_in.grad] + [p.grad.clone() for p in dense.parameters()]

    recomputed = run()
    monkeypatch.setattr(pyg_gatv2.dense, 'checkpoint',
                        lambda fn, *args, **kwargs: fn(*args))
    stored = run()
    for got, expected in zip(recomputed, stored, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


class LargestTensor(TorchDispatchMode):
    """Records the largest storage any operator returns."""
    def __init__(self):
        super().__init__()
        self.nbytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.nbytes = max(self.nbytes, t.untyped_storage().nbytes())
        return out


def test_memory_budget_bounds_every_intermediate():
    B, N, H, C = 4, 48, 4, 8
    dense = DenseGATv2Conv(16, C, heads=H)
    x = torch.randn(B, N, 16)
    adj = (torch.rand(B, N, N) < 0.2).float()
    pairwise = B * N * N * H * C * 4  # one [B, N, N, H, C] float32 tensor

    sizes = {}
    for budget in (pairwise * 10, pairwise // 8):
        largest = LargestTensor()
        with largest:
            dense(x, adj, memory_budget=budget).sum().backward()
        sizes[budget] = largest.nbytes
    assert sizes[pairwise * 10] >= pairwise
    assert sizes[pairwise // 8] <= pairwise // 8
    # The adjacency itself is an input, not an intermediate.
    assert dense.chunk_size(B, N, memory_budget=pairwise // 8) < N


def test_gradcheck():
    batch = random_batch(sizes=(4, 2), in_channels=3, degree=1.5)
    x, adj, mask = dense_inputs(batch)
    _, dense = layers(heads=2, in_channels=3, out_channels=2, residual=True,
                      memory_budget=200)
    assert dense.chunk_size(2, 4, torch.float64) < 4
    names = [name for name, _ in dense.named_parameters()]

    def fn(x, *values):
        params = dict(zip(names, values, strict=True))
        return torch.func.functional_call(dense, params, (x, adj, mask))

    inputs = [x.detach().requires_grad_()]
    inputs += [p.detach().clone().requires_grad_() for p in dense.parameters()]
    assert torch.autograd.gradcheck(fn, inputs)


def test_from_sparse_shares_parameters():
    sparse = GATv2Conv(6, 4, heads=2, residual=True)
    dense = DenseGATv2Conv.from_sparse(sparse, memory_budget=1000)
    assert dense.memory_budget == 1000
    assert str(dense) == 'DenseGATv2Conv(6, 4, heads=2)'
    for name, param in dense.named_parameters():
        assert param is dict(sparse.named_parameters())[name]
    assert set(dense.state_dict()) == set(sparse.state_dict())

    # A step on the dense layer moves the sparse layer's parameters.
    before = sparse.att.detach().clone()
    optimizer = torch.optim.SGD(dense.parameters(), lr=0.1)
    graph = random_batch(sizes=(8, ), dtype=torch.float32)
    adj = to_dense_adj(graph.edge_index, max_num_nodes=8)[0]
    dense(graph.x, adj).pow(2).sum().backward()
    optimizer.step()
    assert not torch.equal(sparse.att, before)
    torch.testing.assert_close(dense(graph.x, adj),
                               sparse(graph.x, graph.edge_index))


@pytest.mark.parametrize('conv,match', [
    (GATv2Conv(6, 4, edge_dim=3), 'edge_dim=None'),
    (GATv2Conv((6, 5), 4), 'bipartite'),
])
def test_from_sparse_rejects(conv, match):
    with pytest.raises(ValueError, match=match):
        DenseGATv2Conv.from_sparse(conv)


def test_padding_is_inert():
    batch = random_batch(sizes=(3, 8, 5))
    _, dense = layers(heads=2, residual=True)
    with torch.no_grad():
        dense.bias.fill_(0.5)  # padded rows stay zero despite bias/residual
    x, adj, mask = dense_inputs(batch)
    out, alpha = dense(x, adj, mask, return_attention_weights=True)

    # Garbage in padded features and adjacency entries changes nothing.
    x_bad = x.masked_fill(~mask.unsqueeze(-1), float('nan'))
    pad = ~(mask.unsqueeze(1) & mask.unsqueeze(2))
    adj_bad = adj.masked_fill(pad, 1.)
    out_bad, alpha_bad = dense(x_bad, adj_bad, mask,
                               return_attention_weights=True)
    assert (out[~mask] == 0).all()
    assert (alpha[~mask] == 0).all()  # padded targets attend to nothing
    assert (alpha.transpose(1, 2)[~mask] == 0).all()  # nor are attended
    torch.testing.assert_close(out_bad, out, rtol=0, atol=0)
    torch.testing.assert_close(alpha_bad, alpha, rtol=0, atol=0)


@pytest.mark.parametrize('value', [float('inf'), float('-inf'),
                                   float('nan')])
@pytest.mark.parametrize('add_self_loops', [True, False])
def test_non_finite_feature_reaches_only_its_neighbours(value,
                                                         add_self_loops):
    # The path 0 -> 1 -> 2 -> 3 -> 4: node 4 sends no edge but (with
    # self-loops) to itself. A non-edge must contribute nothing, not
    # 0 * inf = NaN: outputs, attention and gradients are NaN where the
    # sparse layer's are, and only there.
    edge_index = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
    sparse, dense = layers(heads=2, add_self_loops=add_self_loops)
    x = random_batch(sizes=(5, )).x
    x[4, 0] = value

    def run(layer, graph):
        layer.zero_grad()
        x_in = x.clone().requires_grad_()
        out, alpha = layer(x_in, graph, return_attention_weights=True)
        (out * loss_weights(out)).sum().backward()
        return out, alpha, [x_in.grad] + [p.grad for p in layer.parameters()]

    out, (edges, alpha), grads = run(sparse, edge_index)
    adj = to_dense_adj(edge_index, max_num_nodes=5)[0]
    out_dense, alpha_dense, grads_dense = run(dense, adj)
    assert out.isnan().any(dim=1).tolist() == [False] * 4 + [True]
    torch.testing.assert_close(out_dense, out, equal_nan=True)
    alpha = to_dense_adj(edges, edge_attr=alpha,
                         max_num_nodes=5)[0].transpose(0, 1)
    torch.testing.assert_close(alpha_dense, alpha, equal_nan=True)
    assert grads[0][:3].isfinite().all()
    for got, expected in zip(grads_dense, grads, strict=True):
        torch.testing.assert_close(got, expected, equal_nan=True)


def test_infinite_scores_give_nan_as_in_sparse():
    # All weights one and x_0 = -inf, no self-loops: the edge 0 -> 1 scores
    # -inf and weighs zero, and zero times the source's -inf is NaN; node
    # 0's only score is -inf, and a softmax over it alone is NaN; node 2
    # has no incoming edge.
    sparse = GATv2Conv(1, 1, add_self_loops=False, bias=False).double()
    with torch.no_grad():
        for param in (sparse.lin_l.weight, sparse.lin_r.weight, sparse.att):
            param.fill_(1.)
    dense = DenseGATv2Conv.from_sparse(sparse)
    x = torch.tensor([[float('-inf')], [0.], [0.]], dtype=torch.float64)
    edge_index = torch.tensor([[0, 2, 1], [1, 1, 0]])
    out, alpha = dense(x, to_dense_adj(edge_index, max_num_nodes=3)[0],
                       return_attention_weights=True)
    nan = float('nan')
    expected = torch.tensor([[nan], [nan], [0.]], dtype=torch.float64)
    torch.testing.assert_close(out, expected, equal_nan=True)
    torch.testing.assert_close(sparse(x, edge_index), expected,
                               equal_nan=True)
    torch.testing.assert_close(alpha[..., 0], torch.tensor(
        [[0., nan, 0.], [0., 0., 1.], [0., 0., 0.]], dtype=torch.float64),
                               equal_nan=True)


@pytest.mark.parametrize('batched', [False, True])
def test_strict_validation_ignores_nan_in_padding(batched):
    # The layer zeroes the padded rows before use, so NaN there is no error;
    # NaN in a node the mask keeps still is.
    dense = DenseGATv2Conv(4, 3)
    x = torch.randn(2, 5, 4)
    adj = torch.ones(2, 5, 5)
    mask = torch.tensor([[True] * 4 + [False], [True] * 3 + [False] * 2])
    if not batched:
        x, adj, mask = x[0], adj[0], mask[0]
    x_nan = x.masked_fill(~mask.unsqueeze(-1), float('nan'))
    with pyg_gatv2.validation('strict'):
        out = dense(x_nan, adj, mask)
        torch.testing.assert_close(out, dense(x, adj, mask))
        x_nan[..., 0, 1] = float('nan')
        with pytest.raises(ValueError, match="'DenseGATv2Conv' got NaN in "
                           'its node features'):
            dense(x_nan, adj, mask)


def test_isolated_nodes_give_no_nan():
    # Without self-loops nodes 0 and 2 have no incoming edge.
    dense = DenseGATv2Conv(3, 2, heads=2, add_self_loops=False)
    with torch.no_grad():
        dense.bias.fill_(0.25)
    x = torch.randn(3, 3, requires_grad=True)
    adj = torch.zeros(3, 3)
    adj[0, 1] = 1
    out, alpha = dense(x, adj, memory_budget=1,
                       return_attention_weights=True)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in dense.parameters())
    torch.testing.assert_close(out[[0, 2]], torch.full((2, 4), 0.25))
    assert alpha[[0, 2]].abs().sum() == 0


@pytest.mark.parametrize('x_shape', [(0, 6), (2, 0, 6), (0, 5, 6)])
def test_empty_input(x_shape):
    dense = DenseGATv2Conv(6, 4, heads=2)
    x = torch.randn(x_shape, requires_grad=True)
    adj = torch.ones(x_shape[:-1] + (x_shape[-2], ))
    out, alpha = dense(x, adj, return_attention_weights=True)
    assert out.shape == x_shape[:-1] + (8, )
    assert alpha.shape == x_shape[:-1] + (x_shape[-2], 2)
    out.sum().backward()
    assert x.grad.shape == x.shape


def test_lazy_in_channels():
    dense = DenseGATv2Conv(-1, 4, heads=2)
    out = dense(torch.randn(2, 5, 7), torch.ones(2, 5, 5))
    assert out.shape == (2, 5, 8)
    assert dense.lin_l.in_channels == 7


x3 = torch.randn(2, 5, 6)
BAD_INPUTS = [
    # (x, adj, mask, error, message)
    (torch.randn(2, 3, 5, 6), torch.ones(2, 3, 5, 5), None, ValueError,
     r'\[N, F\] or \[B, N, F\]'),
    (x3.long(), torch.ones(2, 5, 5), None, TypeError, r'x\.float\(\)'),
    (x3, torch.ones(2, 5, 4), None, ValueError, r'must be \[B, N, N\]'),
    (x3, torch.ones(5, 5), None, ValueError, r'must be \[B, N, N\]'),
    (x3, torch.ones(3, 5, 5), None, ValueError, 'one per graph'),
    (x3[0], torch.ones(2, 2, dtype=torch.long), None, ValueError,
     'to_dense_adj'),
    (x3, torch.ones(2, 5, 5, dtype=torch.cfloat), None, TypeError,
     'real or boolean'),
    (x3, torch.ones(2, 5, 5).to_sparse(), None, TypeError, 'to_dense'),
    (x3, [[1, 0], [0, 1]], None, TypeError, "'adj' to be a tensor"),
    (x3, torch.ones(2, 5, 5), torch.ones(2, 5), TypeError, r'mask\.bool\(\)'),
    (x3, torch.ones(2, 5, 5), torch.ones(2, 4, dtype=torch.bool), ValueError,
     r'expects \[2, 5\]'),
    (x3, torch.ones(2, 5, 5), torch.ones(5, dtype=torch.bool), ValueError,
     'to_dense_batch'),
    (torch.randn(2, 5, 4), torch.ones(2, 5, 5), None, ValueError,
     'in_channels=4'),
    (x3.double(), torch.ones(2, 5, 5), None, TypeError, r'conv\.to\('),
]


@pytest.mark.parametrize('x,adj,mask,error,message', BAD_INPUTS)
def test_bad_input(x, adj, mask, error, message):
    dense = DenseGATv2Conv(6, 4)
    with pytest.raises(error, match=message) as info:
        dense(x, adj, mask)
    assert "'DenseGATv2Conv'" in str(info.value)


@pytest.mark.parametrize('budget', [0, -5, 1.5, True])
def test_bad_memory_budget(budget):
    with pytest.raises(ValueError, match='positive number of bytes'):
        DenseGATv2Conv(6, 4, memory_budget=budget)
    dense = DenseGATv2Conv(6, 4)
    with pytest.raises(ValueError, match="'DenseGATv2Conv'"):
        dense(x3, torch.ones(2, 5, 5), memory_budget=budget)


@pytest.mark.slow
def test_benchmark_quick_mode(tmp_path):
    script = ROOT / 'benchmarks' / 'sparse_vs_dense.py'
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [str(ROOT)] + [p for p in [env.get('PYTHONPATH')] if p])
    result = subprocess.run(
        [sys.executable, str(script), '--quick', '--out', str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    report = (tmp_path / 'sparse_vs_dense_quick.md').read_text()
    assert '--quick --out' in report.splitlines()[2]  # the exact command
    assert '### Forward + backward, median ms' in report
    assert '| single | 64 | 1 |' in report
    assert 'MISMATCH' not in report
    assert '## Crossovers and fitted slopes' in report
    assert report.split('\n\n', 1)[1] in result.stdout

    with open(tmp_path / 'sparse_vs_dense_quick.csv') as f:
        rows = list(csv.DictReader(f))
    impls = {row['impl'] for row in rows}
    assert {'dense', 'sparse', 'pyg'} <= impls
    timed = [row for row in rows if row['status'] == 'ok']
    # The smallest cases fit any budget: the reference implementations ran.
    assert {'dense', 'sparse', 'pyg'} <= {r['impl'] for r in timed
                                          if r['N'] == '64'}
    for row in timed:
        assert float(row['max_diff']) <= 1e-5
        assert float(row['train_ms']) > 0
        assert float(row['peak_train_mib']) >= 0
    assert {r['setting'] for r in timed} == {'single', 'batch'}

    png = (tmp_path / 'sparse_vs_dense_quick.png').read_bytes()
    assert png.startswith(b'\x89PNG') and len(png) > 10_000
