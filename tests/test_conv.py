import itertools
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch_geometric.nn as pyg_nn
from _fused_cases import BACKENDS, assert_close_all, spy_on_backends
from torch_geometric import EdgeIndex
from torch_geometric.typing import WITH_TORCH_SPARSE, SparseTensor
from torch_geometric.utils import (
    coalesce,
    to_torch_coo_tensor,
    to_torch_csc_tensor,
    to_torch_csr_tensor,
)

from pyg_gatv2 import (
    GATv2,
    GATv2Conv,
    available_backends,
    get_validation,
    use_backends,
    validation,
)
from pyg_gatv2 import softmax as softmax_module
from pyg_gatv2.fused import clear_layout_cache, edge_layout

TOLERANCE = {torch.float64: 1e-8, torch.float32: 1e-5}


def random_graph(num_src=12, num_dst=None, num_edges=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    num_dst = num_src if num_dst is None else num_dst
    src = torch.randint(0, num_src, (num_edges, ), generator=gen)
    dst = torch.randint(0, num_dst, (num_edges, ), generator=gen)
    return torch.stack([src, dst])


def both_layers(*args, dtype=torch.float64, **kwargs):
    """Our layer and PyG's, with PyG's weights copied into ours."""
    ref = pyg_nn.GATv2Conv(*args, **kwargs).to(dtype)
    ours = GATv2Conv(*args, **kwargs).to(dtype)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def randn(*shape, gen, dtype=torch.float64):
    return torch.randn(*shape, generator=gen, dtype=dtype)


def run(conv, x, edge_index, edge_attr):
    """Output, attention and the gradient of every input and parameter."""
    x = tuple(t.detach().requires_grad_() for t in x)
    inputs = list(x)
    if edge_attr is not None:
        edge_attr = edge_attr.detach().requires_grad_()
        inputs.append(edge_attr)
    conv.zero_grad()
    x_in = x[0] if len(x) == 1 else x
    out, (ei, alpha) = conv(x_in, edge_index, edge_attr,
                            return_attention_weights=True)
    # A loss that weighs every output and attention entry differently.
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype)
    loss = (out.flatten() * weight).sum() + (alpha**2).sum()
    loss.backward()
    grads = [t.grad for t in inputs]
    grads += [p.grad for p in conv.parameters()]
    return out, ei, alpha, grads


OPTIONS = list(
    itertools.product(
        [1, 3],  # heads
        [True, False],  # concat
        [False, True],  # share_weights
        [True, False],  # add_self_loops
        [(None, 'mean'), (1, 'mean'), (4, 'mean'), (1, 0.5), (4, 0.5)],
        [False, True],  # residual
        [True, False],  # bias
        [False, True],  # bipartite
    ))


# The fused path on its automatic choice of kernels, and message passing on
# each softmax backend.
PATHS = ['fused'] + [f'message_passing-{b}'
                     for b in available_backends()['softmax']]
# Every implementation with a backward of its own: the fused operator on
# each of its CPU kernel backends (Triton's, here only in its interpreter,
# is too slow for grids; tests/test_fused_backends_triton.py covers it),
# and message passing on each softmax backend.
KERNEL_PATHS = [f'fused-{b}' for b in BACKENDS] + PATHS[1:]


def path_backends(path):
    """The ``fused`` flag of the layer and the ``use_backends`` arguments
    of a path: ``'fused'``, ``'fused-<kernels>'`` or
    ``'message_passing-<softmax>'``."""
    kind, _, name = path.partition('-')
    if kind == 'fused':
        return True, dict(fused=name or 'auto')
    return False, dict(softmax=name)


@pytest.fixture
def kernels_used(monkeypatch):
    """The fused backends and the softmax backends that ran during the
    test, so that a test parametrized over them can check that each case
    ran what it names."""
    fused_calls = spy_on_backends(monkeypatch)
    softmax_used = set()

    def softmax_spy(backend):
        name = resolve(backend)
        softmax_used.add(name)
        return name

    resolve = softmax_module._resolve
    monkeypatch.setattr(softmax_module, '_resolve', softmax_spy)
    return lambda: {'fused': {name for name, _ in fused_calls},
                    'softmax': softmax_used}


def assert_ran_on(path, kernels_used):
    fused, chosen = path_backends(path)
    used = kernels_used()
    if not fused:
        assert used == {'fused': set(), 'softmax': {chosen['softmax']}}
    elif chosen['fused'] == 'auto':
        assert used['fused'] and not used['softmax'], used
    else:
        assert used == {'fused': {chosen['fused']}, 'softmax': set()}


def check_parity(heads, concat, share_weights, self_loops, edge, residual,
                 bias, bipartite, path, dtype, negative_slope, used):
    """Output, attention weights and every gradient of our layer on
    ``path`` against PyG's layer with the same weights."""
    edge_dim, fill_value = edge
    fused, chosen = path_backends(path)
    num_src, num_dst = (12, 9) if bipartite else (12, 12)
    in_src, in_dst = 8, (8 if share_weights else 6)
    in_channels = (in_src, in_dst) if bipartite else in_src
    ours, ref = both_layers(in_channels, 5, heads=heads, concat=concat,
                            share_weights=share_weights,
                            add_self_loops=self_loops, edge_dim=edge_dim,
                            fill_value=fill_value, residual=residual,
                            bias=bias, negative_slope=negative_slope,
                            dtype=dtype)
    ours.fused = fused
    gen = torch.Generator().manual_seed(1)
    edge_index = random_graph(num_src, num_dst, 40)
    if bipartite:
        x = (randn(num_src, in_src, gen=gen, dtype=dtype),
             randn(num_dst, in_dst, gen=gen, dtype=dtype))
    else:
        x = (randn(num_src, in_src, gen=gen, dtype=dtype), )
    edge_attr = None
    if edge_dim is not None:
        shape = (40, ) if edge_dim == 1 else (40, edge_dim)
        edge_attr = randn(*shape, gen=gen, dtype=dtype)

    with use_backends(**chosen):
        out, ei, alpha, grads = run(ours, x, edge_index, edge_attr)
    assert_ran_on(path, used)
    ref_out, ref_ei, ref_alpha, ref_grads = run(ref, x, edge_index,
                                                edge_attr)
    tol = TOLERANCE[dtype]
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref_out, atol=tol, rtol=tol)
    assert torch.equal(ei, ref_ei)
    torch.testing.assert_close(alpha, ref_alpha, atol=tol, rtol=tol)
    assert len(grads) == len(ref_grads)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        assert grad is not None and ref_grad is not None
        torch.testing.assert_close(grad, ref_grad, atol=tol, rtol=tol)


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize(
    'heads,concat,share_weights,self_loops,edge,residual,bias,bipartite',
    OPTIONS)
def test_parity_with_pyg(heads, concat, share_weights, self_loops, edge,
                         residual, bias, bipartite, path, dtype,
                         kernels_used):
    check_parity(heads, concat, share_weights, self_loops, edge, residual,
                 bias, bipartite, path, dtype, 0.2, kernels_used)


# The slopes where LeakyReLU is a ReLU, the identity and steeper on the
# negative side than on the positive one, on every backward implementation,
# with and without edge features and self-loops; the other options keep
# one setting each (the grid above crosses them at the default slope).
@pytest.mark.parametrize('path', KERNEL_PATHS)
@pytest.mark.parametrize('negative_slope', [0.0, 1.0, 3.0])
@pytest.mark.parametrize('self_loops', [True, False])
@pytest.mark.parametrize('edge', [(None, 'mean'), (4, 'mean')],
                         ids=['no_edge_attr', 'edge_dim_4'])
@pytest.mark.parametrize('bipartite', [False, True])
def test_parity_with_pyg_at_other_slopes(negative_slope, path, self_loops,
                                         edge, bipartite, kernels_used):
    check_parity(3, True, False, self_loops, edge, True, True, bipartite,
                 path, torch.float64, negative_slope, kernels_used)


def test_dropout_matches_pyg_under_the_same_seed():
    ours, ref = both_layers(8, 4, heads=2, dropout=0.5)
    ours.train()
    ref.train()
    x = randn(10, 8, gen=torch.Generator().manual_seed(0))
    edge_index = random_graph(10, num_edges=30)
    torch.manual_seed(7)
    out = ours(x, edge_index)
    torch.manual_seed(7)
    ref_out = ref(x, edge_index)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=0)
    ours.eval()
    assert not torch.allclose(ours(x, edge_index), out)


@pytest.mark.parametrize('path', KERNEL_PATHS)
def test_gradcheck(path, kernels_used):
    # Edge features (whose self-loop features are the mean of the incoming
    # ones), a residual and self-loops, one of them already in the graph;
    # the gradients of x, edge_attr and att.
    fused, chosen = path_backends(path)
    conv = GATv2Conv(4, 3, heads=2, edge_dim=2, residual=True,
                     fused=fused).double()
    gen = torch.Generator().manual_seed(2)
    edge_index = random_graph(6, num_edges=14, seed=2)
    edge_index[:, 0] = 3
    inputs = [randn(6, 4, gen=gen), randn(14, 2, gen=gen),
              conv.att.detach().clone()]

    def layer(x, edge_attr, att):
        return torch.func.functional_call(conv, {'att': att},
                                          (x, edge_index, edge_attr))

    with use_backends(**chosen):
        assert torch.autograd.gradcheck(
            layer, [t.requires_grad_() for t in inputs])
    assert_ran_on(path, kernels_used)


@pytest.mark.parametrize('heads,channels', [(1, 10), (1, 7), (4, 10)])
def test_gradients_have_the_strides_of_their_parameters(heads, channels):
    # Heads of 7 or 10 channels run padded; DDP copies (and warns about)
    # any gradient whose strides differ from its parameter's, even along
    # dimensions of size one.
    conv = GATv2Conv(16, channels, heads=heads, fused=True)
    x = torch.randn(30, 16)
    conv(x, torch.randint(0, 30, (2, 90))).square().sum().backward()
    for name, param in conv.named_parameters():
        assert param.grad.stride() == param.stride(), name


@pytest.mark.parametrize('fill_value', ['mean', 0.5])
def test_int32_indices_where_torch_sorts_the_layout(fill_value, monkeypatch):
    # As on a GPU: without the C++ library an int32 edge_index gets an
    # int32 layout. Every option that reads the layout gives what int64
    # indices give: edge features and their loops' fill, dropout under one
    # seed, the attention weights and the gradients.
    from pyg_gatv2.fused import cpp_library
    monkeypatch.setattr(cpp_library, 'load', lambda: None)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(12, 5, generator=gen, dtype=torch.float64)
    edge_index = torch.randint(0, 12, (2, 40), generator=gen)
    edge_attr = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    conv = GATv2Conv(5, 4, heads=2, edge_dim=3, dropout=0.3,
                     fill_value=fill_value, fused=True).double()
    results = []
    for index in (edge_index, edge_index.int()):
        torch.manual_seed(0)
        inputs = x.clone().requires_grad_()
        out, (returned, alpha) = conv(inputs, index, edge_attr,
                                      return_attention_weights=True)
        grads = torch.autograd.grad(out.square().sum() + alpha.sum(),
                                    [inputs, *conv.parameters()])
        results.append([out, returned.long(), alpha, *grads])
    for i, (a, b) in enumerate(zip(*results, strict=True)):
        assert torch.equal(a, b), i
    assert edge_layout(index, 12, 12, True).dst_col.dtype == torch.int32


@pytest.mark.parametrize('fused', [None, False])
def test_gradcheck_with_int32_indices(fused):
    conv = GATv2Conv(1, 2, share_weights=True, add_self_loops=False,
                     bias=False, fused=fused).double()
    edge_index = torch.tensor([[0, 0, 0], [0, 0, 1]], dtype=torch.int32)
    x = randn(2, 1, gen=torch.Generator().manual_seed(0)).requires_grad_()
    weight = torch.linspace(-1, 1, 4, dtype=torch.float64)

    def loss(x):
        out, (_, alpha) = conv(x, edge_index, return_attention_weights=True)
        return (out.flatten() * weight).sum() + alpha.square().sum()

    assert torch.autograd.gradcheck(loss, [x])
    assert torch.autograd.gradgradcheck(loss, [x])


@pytest.mark.parametrize('fused', [None, False])
def test_self_loop_features_of_a_bipartite_graph(fused):
    # Two sources, four targets: targets 0 and 1 get a self-loop. PyG's
    # layer fails here (an index error inside its loop-feature reduction,
    # which only sizes its output for the loops).
    ours = GATv2Conv((3, 3), 2, heads=2, edge_dim=2, fill_value='mean',
                     fused=fused).double()
    ref = pyg_nn.GATv2Conv((3, 3), 2, heads=2, edge_dim=2,
                           add_self_loops=False).double()
    ref.load_state_dict(ours.state_dict())
    gen = torch.Generator().manual_seed(0)
    x = (randn(2, 3, gen=gen), randn(4, 3, gen=gen))
    edge_index = torch.tensor([[0, 1, 0, 1, 1, 0], [0, 0, 2, 3, 1, 3]])
    edge_attr = randn(6, 2, gen=gen)
    # By hand: the existing loops 0->0 and 1->1 are dropped; node 0's loop
    # takes the mean over its one other in-edge (1->0), node 1 has none and
    # gets zeros; the in-edges of targets 2 and 3 count for nothing.
    explicit_index = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 2, 3, 3, 0, 1]])
    explicit_attr = torch.cat([edge_attr[[1, 2, 3, 5]], edge_attr[[1]],
                               torch.zeros(1, 2, dtype=torch.float64)])
    out, (index, alpha) = ours(x, edge_index, edge_attr,
                               return_attention_weights=True)
    ref_out, (_, ref_alpha) = ref(x, explicit_index, explicit_attr,
                                  return_attention_weights=True)
    assert torch.equal(index, explicit_index)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(alpha, ref_alpha)


def test_fused_forward_sorts_the_edges_before_projecting(monkeypatch):
    # A large graph's first step then never holds the sort's work space and
    # the projections at once: the layout comes before the first
    # projection, and the operator gets that layout.
    from pyg_gatv2 import conv as conv_module
    conv = GATv2Conv(8, 4, heads=2, fused=True)
    x = torch.randn(10, 8)
    edge_index = torch.randint(0, 10, (2, 30))
    reference = GATv2Conv(8, 4, heads=2, fused=False)
    reference.load_state_dict(conv.state_dict())
    expected = reference(x, edge_index)
    calls = []
    build = conv_module.edge_layout
    monkeypatch.setattr(conv_module, 'edge_layout', lambda *a, **k: (
        calls.append('layout') or build(*a, **k)))
    project = GATv2Conv._project
    monkeypatch.setattr(GATv2Conv, '_project', lambda *a: (
        calls.append('project') or project(*a)))
    torch.testing.assert_close(conv(x, edge_index), expected)
    assert calls == ['layout', 'project', 'project']


def test_hand_made_graph():
    # Node 2 receives from 0 and 1 with equal logits when x_0 == x_1, so it
    # gets the plain mean of their projections; node 0 and 1 get nothing.
    conv = GATv2Conv(2, 2, add_self_loops=False, bias=False).double()
    x = torch.tensor([[1., 2.], [1., 2.], [5., -1.]], dtype=torch.float64)
    edge_index = torch.tensor([[0, 1], [2, 2]])
    out, (_, alpha) = conv(x, edge_index, return_attention_weights=True)
    torch.testing.assert_close(alpha, torch.full((2, 1), 0.5,
                                                 dtype=torch.float64))
    expected = conv.lin_l(x[0])
    torch.testing.assert_close(out[2], expected)
    assert torch.equal(out[:2], torch.zeros(2, 2, dtype=torch.float64))


def test_edge_permutation_invariance():
    conv = GATv2Conv(8, 4, heads=2, edge_dim=3).double()
    gen = torch.Generator().manual_seed(0)
    x = randn(15, 8, gen=gen)
    edge_index = random_graph(15, num_edges=50)
    edge_attr = randn(50, 3, gen=gen)
    perm = torch.randperm(50, generator=gen)
    out = conv(x, edge_index, edge_attr)
    out_perm = conv(x, edge_index[:, perm], edge_attr[perm])
    torch.testing.assert_close(out, out_perm, atol=1e-12, rtol=0)


def test_node_permutation_equivariance():
    conv = GATv2Conv(8, 4, heads=3, residual=True).double()
    gen = torch.Generator().manual_seed(0)
    x = randn(15, 8, gen=gen)
    edge_index = random_graph(15, num_edges=50)
    perm = torch.randperm(15, generator=gen)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(15)
    out = conv(x, edge_index)
    out_perm = conv(x[perm], inverse[edge_index])
    torch.testing.assert_close(out_perm, out[perm], atol=1e-12, rtol=0)


def adjacency_inputs(edge_index, num_nodes):
    size = (num_nodes, num_nodes)
    # Sparse adjacencies are indexed [target, source].
    flipped = edge_index.flip(0)
    inputs = {
        'coo': to_torch_coo_tensor(flipped, size=size),
        'csr': to_torch_csr_tensor(flipped, size=size),
        'csc': to_torch_csc_tensor(flipped, size=size),
        'edge_index_class': EdgeIndex(edge_index.contiguous(),
                                      sparse_size=size),
    }
    if WITH_TORCH_SPARSE:
        inputs['sparse_tensor'] = SparseTensor.from_edge_index(
            edge_index, sparse_sizes=size).t()
    return inputs


@pytest.mark.parametrize('self_loops', [False, True])
@pytest.mark.parametrize('kind', ['coo', 'csr', 'csc', 'edge_index_class'])
def test_adjacency_inputs_agree_with_edge_index(kind, self_loops):
    conv = GATv2Conv(8, 4, heads=2, add_self_loops=self_loops).double()
    x = randn(12, 8, gen=torch.Generator().manual_seed(0))
    edge_index = torch.unique(random_graph(12, num_edges=40), dim=1)
    expected = conv(x, edge_index)
    adj = adjacency_inputs(edge_index, 12)[kind]
    out, attention = conv(x, adj, return_attention_weights=True)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    assert attention is not None


def test_sparse_tensor_input_agrees_with_edge_index():
    # torch-sparse comes with the sampling extra, which make setup installs.
    import torch_sparse  # noqa: F401
    conv = GATv2Conv(8, 4, heads=2).double()
    x = randn(12, 8, gen=torch.Generator().manual_seed(0))
    edge_index = torch.unique(random_graph(12, num_edges=40), dim=1)
    adj = adjacency_inputs(edge_index, 12)['sparse_tensor']
    torch.testing.assert_close(conv(x, adj), conv(x, edge_index))


@pytest.mark.parametrize('kind', ['coo', 'csr', 'csc'])
def test_sparse_attention_weights_hold_alpha(kind):
    conv = GATv2Conv(8, 4, heads=2, add_self_loops=False).double()
    x = randn(12, 8, gen=torch.Generator().manual_seed(0))
    edge_index = torch.unique(random_graph(12, num_edges=40), dim=1)
    _, (_, alpha) = conv(x, edge_index, return_attention_weights=True)
    expected = torch.zeros(12, 12, 2, dtype=torch.float64)
    expected[edge_index[1], edge_index[0]] = alpha
    adj = adjacency_inputs(edge_index, 12)[kind]
    _, (adj_out, sparse_alpha) = conv(x, adj, return_attention_weights=True)
    assert adj_out.layout == adj.layout
    torch.testing.assert_close(adj_out.to_dense(), expected)
    if kind != 'csc':
        ref = pyg_nn.GATv2Conv(8, 4, heads=2, add_self_loops=False).double()
        ref.load_state_dict(conv.state_dict())
        _, (_, ref_alpha) = ref(x, adj, return_attention_weights=True)
        torch.testing.assert_close(sparse_alpha, ref_alpha)


def graph_with_duplicates(num_src, num_dst, seed=0):
    """Random edges, some twice, and self-loops among them."""
    edge_index = random_graph(num_src, num_dst, 40, seed)
    loops = torch.arange(min(num_src, num_dst, 3)).repeat(2, 1)
    return torch.cat([edge_index, edge_index[:, :4], loops], dim=1)


def sparse_adjacency(kind, edge_index, num_src, num_dst):
    """The sparse adjacency ``[num_dst, num_src]`` of ``kind`` whose
    entries are the edges of ``edge_index``, duplicates kept."""
    size = (num_dst, num_src)
    row, col = edge_index[1], edge_index[0]
    values = torch.ones(row.numel(), dtype=torch.float64)
    if kind == 'sparse_tensor':
        return SparseTensor(row=row, col=col, sparse_sizes=size)
    if kind == 'coo':
        return to_torch_coo_tensor(edge_index.flip(0), size=size)
    if kind == 'csr':
        order = torch.argsort(row, stable=True)
        ptr = torch.cat([torch.zeros(1, dtype=torch.long),
                         torch.bincount(row, minlength=num_dst).cumsum(0)])
        return torch.sparse_csr_tensor(ptr, col[order], values, size)
    order = torch.argsort(col, stable=True)
    ptr = torch.cat([torch.zeros(1, dtype=torch.long),
                     torch.bincount(col, minlength=num_src).cumsum(0)])
    return torch.sparse_csc_tensor(ptr, row[order], values, size)


def sparse_parts(adj):
    """The index tensors and the values of a sparse adjacency, in the
    order it stores them."""
    if isinstance(adj, SparseTensor):
        row, col, value = adj.coo()
        return [row, col, value]
    if adj.layout == torch.sparse_coo:
        return [adj._indices(), adj._values()]
    if adj.layout == torch.sparse_csr:
        return [adj.crow_indices(), adj.col_indices(), adj.values()]
    return [adj.ccol_indices(), adj.row_indices(), adj.values()]


def output_and_grads(conv, x, edge_index):
    """Output, attention weights (the parts of the sparse adjacency that
    holds them) and the gradient of the node features and every parameter
    (the attention weights in the loss), with the dropout stream seeded."""
    x = tuple(t.detach().requires_grad_() for t in x)
    conv.zero_grad()
    torch.manual_seed(0)
    out, attention = conv(x[0] if len(x) == 1 else x, edge_index,
                          return_attention_weights=True)
    if isinstance(attention, SparseTensor):
        alpha, parts = attention.storage.value(), sparse_parts(attention)
    else:
        (adj, alpha), parts = attention, sparse_parts(attention[0])
        assert adj.layout == edge_index.layout
        if adj.layout != torch.sparse_csc:
            # A CSC adjacency's values are in its order; alpha stays in
            # that of message passing's CSR conversion.
            assert torch.equal(parts[-1], alpha)
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype)
    ((out.flatten() * weight).sum() + (alpha**2).sum()).backward()
    return ([out, alpha] + parts + [t.grad for t in x]
            + [p.grad for p in conv.parameters()])


@pytest.mark.parametrize('dropout', [0.0, 0.5])
@pytest.mark.parametrize('bipartite', [False, True])
@pytest.mark.parametrize('self_loops', [True, False])
@pytest.mark.parametrize('kind', ['sparse_tensor', 'coo', 'csr', 'csc'])
def test_sparse_adjacency_runs_fused_and_matches_pyg(kind, self_loops,
                                                     bipartite, dropout,
                                                     monkeypatch):
    """Output, attention weights and gradients of PyG's layer given the
    same adjacency, on the fused operator: self-loops added as PyG adds
    them to each kind (merging duplicate entries of a torch.sparse
    adjacency), existing ones kept without, the weights returned in the
    adjacency message passing returns, and the same weights dropped under
    the same seed. PyG's message passing does not read CSC: ours returns
    a CSC adjacency where PyG's returns the CSR one of its conversion."""
    num_src, num_dst = (11, 8) if bipartite else (11, 11)
    gen = torch.Generator().manual_seed(1)
    x = ((randn(num_src, 6, gen=gen), randn(num_dst, 6, gen=gen))
         if bipartite else (randn(num_src, 6, gen=gen), ))
    adj = sparse_adjacency(kind, graph_with_duplicates(num_src, num_dst),
                           num_src, num_dst)
    ours, ref = both_layers(6, 4, heads=3, add_self_loops=self_loops,
                            dropout=dropout)
    assert ours.fused_path_blocker(adj) is None
    expected = output_and_grads(
        ref, x, adj.to_sparse_csr() if kind == 'csc' else adj)
    fused_calls = spy_on_backends(monkeypatch)
    actual = output_and_grads(ours, x, adj)
    assert {'forward', 'backward'} == {method for _, method in fused_calls}
    if kind == 'csc':
        # The adjacency PyG returns for the CSR conversion, as CSC.
        expected[2:5] = sparse_parts(torch.sparse_csr_tensor(
            *expected[2:5], adj.shape).to_sparse_csc())
    for got, want in zip(actual, expected, strict=True):
        if not got.is_floating_point():
            assert torch.equal(got, want)
    assert_close_all(actual, expected, torch.float64)


@pytest.mark.parametrize('self_loops', [True, False])
def test_uncoalesced_coo_adjacency_is_read_as_pyg_reads_it(self_loops):
    """With self-loops PyG merges its duplicate entries, as the fused path
    does; without, PyG refuses it, and so does the layer, on message
    passing."""
    edge_index = graph_with_duplicates(11, 11)
    adj = torch.sparse_coo_tensor(edge_index.flip(0),
                                  torch.ones(edge_index.size(1)), (11, 11))
    assert not adj.is_coalesced()
    ours, ref = both_layers(6, 4, heads=2, add_self_loops=self_loops)
    x = randn(11, 6, gen=torch.Generator().manual_seed(0))
    if self_loops:
        assert ours.fused_path_blocker(adj) is None
        torch.testing.assert_close(ours(x, adj), ref(x, adj))
        return
    assert 'uncoalesced' in ours.fused_path_blocker(adj)
    with pytest.raises(RuntimeError, match='uncoalesced'):
        ref(x, adj)
    with pytest.raises(RuntimeError, match='uncoalesced'):
        ours(x, adj)


def test_sparse_tensor_adjacency_compiles_to_one_graph():
    torch._dynamo.reset()
    conv = GATv2Conv(6, 4, heads=2)
    x = torch.randn(11, 6)
    adj = sparse_adjacency('sparse_tensor', graph_with_duplicates(11, 11),
                           11, 11)
    explanation = torch._dynamo.explain(conv)(x, adj)
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1
    targets = graph_targets(explanation.graphs)
    assert 'pyg_gatv2.gatv2_attention' in targets
    torch.testing.assert_close(torch.compile(conv)(x, adj), conv(x, adj))


def two_layer_model():
    torch.manual_seed(0)
    return GATv2(8, 3, hidden_channels=4, heads=2, dropout=0.0,
                 attention_dropout=0.0)


def graph_targets(graphs):
    return [str(node.target) for g in graphs for node in g.graph.nodes]


def test_compiled_model_keeps_the_fused_path():
    """torch.compile(model) on a 2-layer model with self-loops: one graph,
    the fused op in it for each layer and no message passing, and the
    output and gradients of eager mode."""
    torch._dynamo.reset()
    model = two_layer_model()
    x = torch.randn(20, 8)
    edge_index = random_graph(20, num_edges=60)
    explanation = torch._dynamo.explain(model)(x, edge_index)
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1
    targets = graph_targets(explanation.graphs)
    assert targets.count('pyg_gatv2.gatv2_attention') == 2
    assert not any('scatter' in t for t in targets)

    expected = model(x, edge_index)
    expected.pow(2).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out = torch.compile(model)(x, edge_index)
    torch.testing.assert_close(out, expected)
    out.pow(2).sum().backward()
    for p, grad in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, grad)


@pytest.mark.parametrize('kwargs,inputs', [
    (dict(edge_dim=2), 'edge_attr'),
    (dict(edge_dim=2, fill_value='max'), 'edge_attr'),
    (dict(concat=False, share_weights=True), 'plain'),
    (dict(in_channels=(8, 5)), 'bipartite'),
    (dict(), 'attention'),
    (dict(add_self_loops=False), 'attention'),
])
def test_compiled_layer_matches_eager(kwargs, inputs):
    """Every option gives eager's answer; attention weights with
    self-loops, whose edge count depends on the data, may break the
    graph."""
    torch._dynamo.reset()
    in_channels = kwargs.pop('in_channels', 8)
    conv = GATv2Conv(in_channels, 4, heads=2, **kwargs)
    x = torch.randn(12, 8)
    edge_index = random_graph(12, num_edges=40)
    args, options = (x, edge_index), {}
    if inputs == 'edge_attr':
        options['edge_attr'] = torch.randn(40, 2)
    elif inputs == 'bipartite':
        args = ((x, torch.randn(9, 5)), random_graph(12, 9, num_edges=40))
    elif inputs == 'attention':
        options['return_attention_weights'] = True
    expected = conv(*args, **options)
    got = torch.compile(conv)(*args, **options)
    if inputs == 'attention':
        (got, (got_index, got_alpha)) = got
        (expected, (index, alpha)) = expected
        assert torch.equal(got_index, index)
        torch.testing.assert_close(got_alpha, alpha)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize('fill_value', ['mean', 'max', 'mul', 0.5])
def test_edge_features_with_self_loops_compile_to_one_graph(fill_value):
    """The features of the added loops are reduced from every edge, the
    graph's own self-loops into a row that is dropped: no edge is removed,
    so no shape depends on the data, and the compiled layer is one graph
    with PyG's answer."""
    torch._dynamo.reset()
    ours, ref = both_layers(8, 4, heads=2, edge_dim=3,
                            fill_value=fill_value, dtype=torch.float32)
    x = torch.randn(12, 8)
    edge_index = random_graph(12, num_edges=40)
    edge_index[:, :4] = torch.tensor([[0, 0, 3, 5], [0, 0, 3, 5]])
    edge_attr = torch.randn(40, 3)
    explanation = torch._dynamo.explain(ours)(x, edge_index, edge_attr)
    assert explanation.graph_break_count == 0
    assert explanation.graph_count == 1
    torch.testing.assert_close(torch.compile(ours)(x, edge_index, edge_attr),
                               ref(x, edge_index, edge_attr))


@pytest.mark.parametrize('kwargs', [
    dict(),
    dict(edge_dim=3, add_self_loops=False),
    dict(edge_dim=-1, add_self_loops=False),
    dict(edge_dim=3),
    dict(edge_dim=3, fill_value='max'),
    dict(in_channels=(8, 5)),
], ids=['plain', 'edge_attr', 'lazy_edge_dim', 'edge_attr_self_loops',
        'edge_attr_self_loops_max', 'bipartite'])
def test_layer_compiled_for_dynamic_shapes_is_one_graph(kwargs):
    """Every input check holds for symbolic sizes: one graph for graphs of
    any size (a check that compared a symbolic size by identity raised
    while tracing, and the layer fell back to eager)."""
    torch._dynamo.reset()
    in_channels = kwargs.pop('in_channels', 8)
    conv = GATv2Conv(in_channels, 4, heads=2, **kwargs)
    compiled = torch.compile(conv, dynamic=True, fullgraph=True)
    for num_nodes, num_edges in ((10, 30), (17, 50)):
        x = torch.randn(num_nodes, 8)
        edge_index = random_graph(num_nodes, num_nodes - 1,
                                  num_edges=num_edges)
        args = [x, edge_index]
        if in_channels != 8:
            args[0] = (x, torch.randn(num_nodes - 1, 5))
        if 'edge_dim' in kwargs:
            args.append(torch.randn(num_edges, 3))
        expected = conv(*args)  # first, for a lazy edge_dim
        torch.testing.assert_close(compiled(*args), expected)


def test_compiled_layer_under_autocast_matches_eager():
    """Under bfloat16 autocast the fused op takes the bfloat16
    projections beside a float32 'att': the compiled layer traces that
    (fake outputs in float32, gradients in bfloat16) and gives eager's
    output and gradients."""
    torch._dynamo.reset()
    conv = GATv2Conv(8, 4, heads=2, edge_dim=3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20, 8, generator=gen)
    edge_index = random_graph(20, num_edges=60)
    edge_attr = torch.randn(60, 3, generator=gen)

    def step(layer):
        conv.zero_grad()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = layer(x, edge_index, edge_attr)
        out.pow(2).sum().backward()
        return [out] + [p.grad.clone() for p in conv.parameters()]

    expected = step(conv)
    got = step(torch.compile(conv))
    assert got[0].dtype == torch.float32
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


def test_exported_model_runs_on_other_graphs():
    model = two_layer_model().eval()
    x = torch.randn(20, 8)
    program = torch.export.export(model, (x, random_graph(20,
                                                         num_edges=60)))
    assert graph_targets([program]).count(
        'pyg_gatv2.gatv2_attention.default') == 2
    other = random_graph(20, num_edges=60, seed=5)
    torch.testing.assert_close(program.module()(x, other), model(x, other))


@pytest.mark.parametrize('exported_under_autocast', [False, True])
def test_exported_layer_runs_under_either_autocast_setting(
        exported_under_autocast):
    """A program exported with or without bfloat16 autocast runs in the
    other setting too, as PyG's layer does, giving what the eager layer
    gives there: the casts that change nothing are left out of it."""
    torch.manual_seed(0)
    conv = GATv2Conv(8, 4, heads=2, edge_dim=3).eval()
    x = torch.randn(20, 8)
    edge_index = random_graph(20, num_edges=60)
    edge_attr = torch.randn(60, 3)
    with torch.autocast('cpu', dtype=torch.bfloat16,
                        enabled=exported_under_autocast):
        program = torch.export.export(conv, (x, edge_index, edge_attr))
    other = random_graph(20, num_edges=60, seed=5)
    for autocast in (False, True):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            got = program.module()(x, other, edge_attr)
            expected = conv(x, other, edge_attr)
        assert got.dtype == expected.dtype == torch.float32
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize('edge_dim', [None, 3])
@pytest.mark.parametrize('share_weights', [False, True])
def test_state_dict_round_trip(edge_dim, share_weights):
    kwargs = dict(heads=2, edge_dim=edge_dim, share_weights=share_weights,
                  residual=True)
    ours = GATv2Conv(8, 4, **kwargs)
    ref = pyg_nn.GATv2Conv(8, 4, **kwargs)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ref.load_state_dict(ours.state_dict(), strict=True)
    for key, value in ours.state_dict().items():
        assert torch.equal(ref.state_dict()[key], value)
    back = GATv2Conv(8, 4, **kwargs)
    back.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(10, 8)
    edge_index = random_graph(10, num_edges=30)
    edge_attr = None if edge_dim is None else torch.randn(30, edge_dim)
    torch.testing.assert_close(back(x, edge_index, edge_attr),
                               ours(x, edge_index, edge_attr))


def test_lazy_initialisation():
    ours = GATv2Conv(-1, 4, heads=2)
    x = torch.randn(10, 8)
    edge_index = random_graph(10, num_edges=30)
    out = ours(x, edge_index)
    assert out.shape == (10, 8)
    assert ours.lin_l.weight.shape == (8, 8)
    ref = pyg_nn.GATv2Conv(8, 4, heads=2)
    ref.load_state_dict(ours.state_dict(), strict=True)
    torch.testing.assert_close(ref(x, edge_index), out)


@pytest.mark.parametrize('path', KERNEL_PATHS)
def test_isolated_nodes_get_zero_messages(path, kernels_used):
    fused, chosen = path_backends(path)
    conv = GATv2Conv(4, 3, heads=2, add_self_loops=False, bias=False,
                     fused=fused)
    x = randn(6, 4, gen=torch.Generator().manual_seed(0),
              dtype=torch.float32)
    edge_index = torch.tensor([[0, 1, 2], [1, 2, 0]])
    with use_backends(**chosen):
        out = conv(x, edge_index)
    assert_ran_on(path, kernels_used)
    assert torch.isfinite(out).all()
    assert torch.equal(out[3:], torch.zeros(3, 6))
    assert out[:3].abs().sum() > 0


@pytest.mark.parametrize('self_loops', [False, True])
def test_graph_without_edges(self_loops):
    conv = GATv2Conv(4, 3, heads=2, add_self_loops=self_loops, edge_dim=2)
    ref = pyg_nn.GATv2Conv(4, 3, heads=2, add_self_loops=self_loops,
                           edge_dim=2)
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(5, 4, requires_grad=True)
    edge_index = torch.empty(2, 0, dtype=torch.long)
    edge_attr = torch.empty(0, 2)
    out = conv(x, edge_index, edge_attr)
    assert out.shape == (5, 6)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref(x, edge_index, edge_attr))
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_empty_node_set():
    conv = GATv2Conv(4, 3)
    out = conv(torch.empty(0, 4), torch.empty(2, 0, dtype=torch.long))
    assert out.shape == (0, 3)


def test_repr():
    assert repr(GATv2Conv(8, 32, heads=2)) == 'GATv2Conv(8, 32, heads=2)'
    assert repr(GATv2Conv((8, 4), 16)) == 'GATv2Conv((8, 4), 16, heads=1)'


BAD_INPUTS = {
    'edge_index_shape': (
        dict(edge_index=torch.zeros(3, 4, dtype=torch.long)),
        ValueError, r'shape \[2, num_edges\].*t\(\)'),
    'edge_index_one_dim': (
        dict(edge_index=torch.tensor([0, 1, 2, 3])),
        ValueError, r'shape \[2, num_edges\]'),
    'edge_index_transposed': (
        dict(edge_index=torch.zeros(4, 2, dtype=torch.long)),
        ValueError, r'shape \[2, num_edges\]'),
    'edge_index_float': (
        dict(edge_index=torch.zeros(2, 4)),
        TypeError, r'integer dtype.*long\(\)'),
    'edge_index_out_of_range': (
        dict(edge_index=torch.tensor([[0, 1], [1, 10]])),
        ValueError, r'target node index 10.*only 5 target nodes'),
    'edge_index_source_out_of_range': (
        dict(edge_index=torch.tensor([[7, 1], [1, 2]])),
        ValueError, r'source node index 7.*only 5 source nodes'),
    'edge_index_negative': (
        dict(edge_index=torch.tensor([[0, -1], [1, 2]])),
        ValueError, r'negative node index'),
    'edge_attr_without_edge_dim': (
        dict(edge_attr=torch.randn(4, 3)),
        ValueError, r'built with edge_dim=None; build it with edge_dim='),
    'x_features': (
        dict(x=torch.randn(5, 7)),
        ValueError, r'built for 8 source input features but got 7'),
    'x_dtype': (
        dict(x=torch.randn(5, 8, dtype=torch.float64)),
        TypeError, r"dtype 'torch.float64' but its parameters are"),
    'x_integer': (
        dict(x=torch.ones(5, 8, dtype=torch.long)),
        TypeError, r'floating-point'),
    'x_three_dims': (
        dict(x=torch.randn(2, 5, 8)),
        ValueError, r'\[num_nodes, num_features\]'),
    'x_pair_with_none': (
        dict(x=(torch.randn(5, 8), None)),
        TypeError, r'bipartite input'),
    'x_not_tensor': (
        dict(x=[[1.0] * 8] * 5),
        TypeError, r"expects 'x' to be a tensor"),
    'sparse_adjacency_size': (
        dict(edge_index=torch.eye(6).to_sparse()),
        ValueError, r'\[num_targets, num_sources\] = \[5, 5\]'),
}
# Reported in strict validation only; by default NaN propagates, as in PyG.
NAN_INPUTS = {
    'x_nan': (
        dict(x=torch.full((5, 8), float('nan'))),
        ValueError, r'NaN in its source node features'),
    'x_one_nan_among_huge_values': (
        dict(x=torch.full((5, 8), 3e38).index_put_(
            (torch.tensor(2), torch.tensor(5)), torch.tensor(float('nan')))),
        ValueError, r'NaN in its source node features'),
}


@pytest.mark.parametrize('mode,case', [
    (mode, case) for mode in ('default', 'strict', 'compiled')
    for case in BAD_INPUTS
] + [('strict', case) for case in NAN_INPUTS])
def test_bad_input_is_reported(mode, case):
    override, error, pattern = {**BAD_INPUTS, **NAN_INPUTS}[case]
    conv = GATv2Conv(8, 4)
    args = dict(x=torch.randn(5, 8),
                edge_index=torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]]),
                edge_attr=None)
    args.update(override)
    names = ["'GATv2Conv'"]
    if mode == 'compiled':
        torch._dynamo.reset()
        conv = torch.compile(conv, backend='eager')
        # Compiled, the operator reads the index range as it sorts the
        # edges, and names itself.
        names.append("'fused_gatv2_attention'")
    with validation('strict' if mode == 'strict' else 'default'), \
            pytest.raises(error, match=pattern) as info:
        conv(**args)
    assert any(name in str(info.value) for name in names)


EDGE_ATTR_CASES = {
    'wrong_width': (torch.randn(4, 2), r'edge_dim=3.*\[num_edges, 3\]'),
    'dtype': (torch.randn(4, 3, dtype=torch.float64),
              r"dtype 'torch.float64' but its parameters are "
              r"'torch.float32'.*edge_attr.to\(torch.float32\)"),
    'device': (torch.randn(4, 3, device='meta'),
               r"'edge_attr' on 'meta' but its parameters are on 'cpu'"),
    'wrong_count': (torch.randn(6, 3), r"for 6 edges but 'edge_index' has 4"),
    'integer': (torch.ones(4, 3, dtype=torch.long), r'floating-point'),
    'nan': (torch.full((4, 3), float('nan')), r"NaN in 'edge_attr'"),
}


@pytest.mark.parametrize('case', list(EDGE_ATTR_CASES))
def test_bad_edge_attr_is_reported(case):
    edge_attr, pattern = EDGE_ATTR_CASES[case]
    conv = GATv2Conv(8, 4, edge_dim=3)
    edge_index = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
    with validation('strict'), pytest.raises((ValueError, TypeError),
                                             match=pattern):
        conv(torch.randn(5, 8), edge_index, edge_attr)


def test_an_edge_index_of_another_size_is_reported():
    # As PyG's layer reports it: the EdgeIndex's sparse size is the graph's.
    conv = GATv2Conv(8, 4)
    edge_index = EdgeIndex(torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]]),
                           sparse_size=(9, 9))
    with pytest.raises(ValueError, match=r"EdgeIndex of 9 source nodes "
                       r"\(sparse_size\) but 5 source nodes in 'x'"):
        conv(torch.randn(5, 8), edge_index)
    edge_index = EdgeIndex(edge_index.as_tensor(), sparse_size=(5, 9))
    with pytest.raises(ValueError, match='9 target nodes'):
        conv(torch.randn(5, 8), edge_index)
    # A size left open is taken from 'x'.
    edge_index = EdgeIndex(edge_index.as_tensor(), sparse_size=(5, None))
    assert conv(torch.randn(5, 8), edge_index).shape == (5, 4)


def test_a_sparse_adjacency_of_another_layout_is_reported():
    adj = torch.eye(5).to_sparse_bsr((1, 1))
    with pytest.raises(TypeError, match=r"layout 'torch.sparse_bsr'.*"
                       r"to_sparse_csr\(\)"):
        GATv2Conv(8, 4)(torch.randn(5, 8), adj)


def test_edge_features_with_a_torch_sparse_adjacency_and_self_loops():
    # PyG's layer fails on an assertion inside remove_self_loops.
    adj = torch.eye(5).to_sparse()
    conv = GATv2Conv(8, 4, edge_dim=2)
    with pytest.raises(NotImplementedError, match=r"torch.sparse adjacency "
                       r"with edge features; pass 'edge_index' as a \[2, E\]"):
        conv(torch.randn(5, 8), adj, torch.randn(5, 2))


@pytest.mark.parametrize('fused', [None, False])
@pytest.mark.parametrize('p', [-0.5, 1.5])
def test_a_dropout_outside_0_and_1_is_refused(p, fused):
    # As PyG's layer refuses it (F.dropout, in training and evaluation), on
    # the fused path as on message passing.
    conv = GATv2Conv(8, 4, dropout=p, fused=fused)
    x, edge_index = torch.randn(5, 8), torch.tensor([[0, 1], [1, 2]])
    for mode in (conv.train, conv.eval):
        mode()
        with pytest.raises(ValueError, match=r'dropout probability has to '
                           r'be between 0 and 1'):
            conv(x, edge_index)


@pytest.mark.parametrize('x', [
    torch.full((5, 8), 3e38),  # finite, but the sum overflows
    torch.tensor(float('inf')).repeat(5, 8),
    torch.tensor([float('inf'), -float('inf')]).repeat(5, 4),
], ids=['overflowing_sum', 'inf', 'inf_and_minus_inf'])
def test_features_without_nan_are_not_refused(x):
    conv = GATv2Conv(8, 4, fused=False)
    with validation('strict'):
        out = conv(x, torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]]))
    assert out.shape == (5, 4)


@pytest.mark.parametrize('kind', ['edge_index', 'csr', 'sparse_tensor'])
def test_device_mismatch_is_reported(kind):
    conv = GATv2Conv(8, 4).to('meta')
    edge_index = torch.tensor([[0], [1]])
    if kind != 'edge_index':
        edge_index = sparse_adjacency(kind, edge_index, 5, 5)
    with pytest.raises(ValueError, match=r"on 'cpu' but its parameters are "
                       r"on 'meta'"):
        conv(torch.randn(5, 8, device='cpu'), edge_index)


def gradient_penalty_grads(conv, x, edge_index, edge_attr=None):
    """Parameter and input gradients of a gradient penalty: the squared
    norm of d(output)/dx, which needs second derivatives of the layer."""
    x = x.detach().requires_grad_()
    conv.zero_grad()
    out = conv(x, edge_index, edge_attr)
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype)
    (grad_x, ) = torch.autograd.grad((out.flatten() * weight).sum() +
                                     out.square().sum(), x,
                                     create_graph=True)
    (grad_x.square().sum() + out.sum()).backward()
    return {name: p.grad for name, p in conv.named_parameters()}, x.grad


@pytest.mark.parametrize('fused', [None, True, False])
@pytest.mark.parametrize('edge_dim,self_loops', [(None, True), (2, True),
                                                 (2, False)])
def test_second_derivatives_match_pyg(fused, edge_dim, self_loops):
    ours, ref = both_layers(5, 3, heads=2, edge_dim=edge_dim,
                            add_self_loops=self_loops)
    ours.fused = fused
    gen = torch.Generator().manual_seed(0)
    x = randn(10, 5, gen=gen)
    edge_index = random_graph(10, num_edges=30)
    edge_attr = None if edge_dim is None else randn(30, edge_dim, gen=gen)
    ours_grads, ours_x = gradient_penalty_grads(ours, x, edge_index,
                                                edge_attr)
    ref_grads, ref_x = gradient_penalty_grads(ref, x, edge_index, edge_attr)
    assert ours_grads.keys() == ref_grads.keys()
    for name, expected in ref_grads.items():
        assert ours_grads[name] is not None, name
        torch.testing.assert_close(ours_grads[name], expected, msg=name)
    torch.testing.assert_close(ours_x, ref_x)


@pytest.mark.parametrize('edge_dim', [None, 2])
def test_gradgradcheck_on_the_default_path(edge_dim):
    conv = GATv2Conv(3, 2, heads=2, edge_dim=edge_dim).double()
    edge_index = random_graph(6, num_edges=14, seed=3)
    gen = torch.Generator().manual_seed(3)
    x = randn(6, 3, gen=gen).requires_grad_()
    att = conv.att.detach().clone().requires_grad_()
    inputs = [x, att]
    if edge_dim is not None:
        inputs.append(randn(14, edge_dim, gen=gen).requires_grad_())

    def layer(x, att, edge_attr=None):
        return torch.func.functional_call(conv, {'att': att},
                                          (x, edge_index, edge_attr))

    assert torch.autograd.gradcheck(layer, inputs)
    assert torch.autograd.gradgradcheck(layer, inputs)


@pytest.mark.parametrize('fused', [None, False])
@pytest.mark.parametrize('kwargs', [
    dict(),
    dict(residual=True, edge_dim=3),
    dict(concat=False, bias=False, share_weights=True),
])
def test_autocast_bfloat16_follows_pyg(fused, kwargs):
    ours, ref = both_layers(8, 4, heads=2, dtype=torch.float32, **kwargs)
    ours.fused = fused
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 8, generator=gen)
    edge_index = random_graph(30, num_edges=120, seed=1)
    edge_attr = (torch.randn(120, 3, generator=gen)
                 if 'edge_dim' in kwargs else None)
    full = ours(x, edge_index, edge_attr)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out, (_, alpha) = ours(x, edge_index, edge_attr,
                               return_attention_weights=True)
        ref_out, (_, ref_alpha) = ref(x, edge_index, edge_attr,
                                      return_attention_weights=True)
    assert out.dtype == ref_out.dtype == torch.float32
    assert alpha.dtype == ref_alpha.dtype
    # bfloat16 keeps 8 bits of mantissa: the projections are rounded to
    # about 0.4%, and the attention is accumulated in float32 from there.
    scale = full.abs().max().item()
    torch.testing.assert_close(out, full, atol=0.02 * scale, rtol=0.02)
    torch.testing.assert_close(out, ref_out, atol=0.01 * scale, rtol=0.01)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in ours.parameters())


@pytest.mark.parametrize('fused', [None, False])
def test_lazy_edge_dim(fused):
    conv = GATv2Conv(8, 4, heads=2, edge_dim=-1, fused=fused)
    x = torch.randn(12, 8)
    edge_index = random_graph(12, num_edges=40)
    edge_attr = torch.randn(40, 3)
    out = conv(x, edge_index, edge_attr)
    assert conv.lin_edge.weight.shape == (8, 3)
    ref = pyg_nn.GATv2Conv(8, 4, heads=2, edge_dim=3)
    ref.load_state_dict(conv.state_dict(), strict=True)
    torch.testing.assert_close(out, ref(x, edge_index, edge_attr))
    with pytest.raises(ValueError, match=r'edge_dim=-1.*\[num_edges, 3\]'):
        conv(x, edge_index, torch.randn(40, 2))


def test_lazy_edge_dim_in_to_hetero():
    from torch_geometric.nn import to_hetero

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = GATv2Conv((-1, -1), 4, edge_dim=-1,
                                  add_self_loops=False)

        def forward(self, x, edge_index, edge_attr):
            return self.conv(x, edge_index, edge_attr)

    metadata = (['paper', 'author'], [('paper', 'cites', 'paper'),
                                      ('author', 'writes', 'paper')])
    model = to_hetero(Net(), metadata)
    x_dict = {'paper': torch.randn(10, 6), 'author': torch.randn(5, 3)}
    edge_index_dict = {
        ('paper', 'cites', 'paper'): random_graph(10, num_edges=20),
        ('author', 'writes', 'paper'): random_graph(5, 10, num_edges=15),
    }
    edge_attr_dict = {
        ('paper', 'cites', 'paper'): torch.randn(20, 2),
        ('author', 'writes', 'paper'): torch.randn(15, 7),
    }
    out = model(x_dict, edge_index_dict, edge_attr_dict)
    assert out['paper'].shape == (10, 4)
    assert torch.isfinite(out['paper']).all()
    convs = model.conv
    assert convs['paper__cites__paper'].lin_edge.weight.shape == (4, 2)
    assert convs['author__writes__paper'].lin_edge.weight.shape == (4, 7)


@pytest.mark.parametrize('edit', ['numpy', 'data', 'no_grad'])
def test_edge_index_edited_in_place_is_never_stale(edit):
    ours, ref = both_layers(6, 4, heads=2, dtype=torch.float32)
    x = torch.randn(15, 6)
    edge_index = random_graph(15, num_edges=50)
    before = ours(x, edge_index)
    torch.testing.assert_close(before, ref(x, edge_index))
    new_src = (edge_index[0] + 3) % 15
    if edit == 'numpy':
        edge_index.numpy()[0] = new_src.numpy()
    elif edit == 'data':
        edge_index.data[0] = new_src
    else:
        with torch.no_grad():
            edge_index[0] = new_src
    after = ours(x, edge_index)
    expected = ref(x, edge_index)
    assert not torch.allclose(expected, before)
    torch.testing.assert_close(after, expected)


@pytest.mark.parametrize('fused', [None, False])
def test_nan_features_propagate_as_in_pyg(fused):
    ours, ref = both_layers(6, 4, heads=2, dtype=torch.float32, edge_dim=2)
    ours.fused = fused
    x = torch.randn(15, 6)
    x[3, 1] = float('nan')
    edge_index = random_graph(15, num_edges=40)
    edge_attr = torch.randn(40, 2)
    edge_attr[7, 0] = float('nan')
    out = ours(x, edge_index, edge_attr)
    expected = ref(x, edge_index, edge_attr)
    assert out.isnan().any()
    assert torch.equal(out.isnan(), expected.isnan())
    torch.testing.assert_close(out.nan_to_num(0.0), expected.nan_to_num(0.0))


@pytest.mark.parametrize('fused', [None, False])
def test_strict_validation_rejects_nan(fused):
    conv = GATv2Conv(6, 4, heads=2, edge_dim=2, fused=fused)
    x = torch.randn(15, 6)
    edge_index = random_graph(15, num_edges=40)
    edge_attr = torch.randn(40, 2)
    bad_x = x.clone()
    bad_x[3, 1] = float('nan')
    bad_attr = edge_attr.clone()
    bad_attr[5, 0] = float('nan')
    with validation('strict'):
        with pytest.raises(ValueError, match='NaN in its source node'):
            conv(bad_x, edge_index, edge_attr)
        with pytest.raises(ValueError, match="NaN in 'edge_attr'"):
            conv(x, edge_index, bad_attr)
        assert torch.isfinite(conv(x, edge_index, edge_attr)).all()
    assert get_validation() == 'default'


@pytest.mark.parametrize('mode', ['default', 'strict'])
@pytest.mark.parametrize('fused', [None, False])
def test_out_of_range_index_is_an_error_in_every_mode(mode, fused):
    conv = GATv2Conv(6, 4, fused=fused)
    x = torch.randn(10, 6)
    edge_index = random_graph(10, num_edges=30)
    edge_index[1, 4] = 10
    with validation(mode):
        with pytest.raises(ValueError, match=r'target node index 10.*\[0, '
                           r'10\)'):
            conv(x, edge_index)


def test_concurrent_calls_match_serial_calls():
    torch.manual_seed(0)
    conv = GATv2Conv(8, 4, heads=2, edge_dim=2)
    x = torch.randn(200, 8)
    edge_index = random_graph(200, num_edges=1500)
    edge_attr = torch.randn(1500, 2)

    def step(seed):
        inputs = x * (1 + seed)
        inputs.requires_grad_()
        out = conv(inputs, edge_index, edge_attr)
        (grad, ) = torch.autograd.grad(out.square().sum(), inputs)
        return out.detach(), grad

    seeds = list(range(24))
    serial = [step(seed) for seed in seeds]
    clear_layout_cache()
    with ThreadPoolExecutor(max_workers=6) as pool:
        concurrent = list(pool.map(step, seeds))
    for (out, grad), (expected_out, expected_grad) in zip(
            concurrent, serial, strict=True):
        assert torch.equal(out, expected_out)
        assert torch.equal(grad, expected_grad)


# The fused path against PyG and message passing ------------------------------


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
def test_fused_path_matches_pyg_and_message_passing(heads, concat, bipartite,
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
    with use_backends(fused=backend):
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
def test_fused_path_in_float32_matches_pyg_on_a_larger_graph(backend):
    ref, fused, _ = layer_triplet(16, 8, heads=4, dtype=torch.float32)
    gen = torch.Generator().manual_seed(4)
    x = (torch.randn(2000, 16, generator=gen), )
    edge_index = random_graph(2000, 2000, 30000, seed=4)
    expected = layer_run(ref, x, edge_index, None)
    with use_backends(fused=backend):
        actual = layer_run(fused, x, edge_index, None)
    assert torch.equal(actual.pop(1), expected.pop(1))
    assert_close_all(actual[:2], expected[:2], torch.float32)
    # Parameter gradients sum over 32,000 edges: float32 rounding of such
    # sums, in different orders, differs by about 1e-5 of their size.
    for grad, ref_grad in zip(actual[2:], expected[2:], strict=True):
        scale = ref_grad.abs().max().item()
        torch.testing.assert_close(grad, ref_grad, atol=1e-4 * scale,
                                   rtol=1e-4)


def test_state_dict_and_repr_of_both_paths_are_pyg_s():
    ref, fused, mp = layer_triplet((6, 5), 4, heads=2, edge_dim=3,
                                   residual=True)
    assert list(fused.state_dict()) == list(ref.state_dict())
    assert list(mp.state_dict()) == list(ref.state_dict())
    assert repr(fused) == 'GATv2Conv((6, 5), 4, heads=2)'


def test_fused_path_reuses_the_layout_across_calls():
    clear_layout_cache()
    conv = GATv2Conv(6, 4, heads=2, fused=True)
    x = torch.randn(20, 6)
    edge_index = random_graph(20, 20, 60)
    conv(x, edge_index).sum().backward()
    layout = edge_layout(edge_index, 20, 20, add_self_loops=True)
    conv(x, edge_index).sum().backward()
    assert edge_layout(edge_index, 20, 20, add_self_loops=True) is layout


def test_fused_path_accepts_edge_index_objects():
    ref, fused, _ = layer_triplet(6, 4, heads=2)
    x = (torch.randn(10, 6, dtype=torch.float64), )
    edge_index = EdgeIndex(random_graph(10, 10, 30), sparse_size=(10, 10))
    expected = layer_run(ref, x, edge_index, None)
    actual = layer_run(fused, x, edge_index, None)
    assert isinstance(actual[1], EdgeIndex)
    assert torch.equal(actual.pop(1), expected.pop(1))
    assert_close_all(actual, expected, torch.float64)


def test_falls_back_to_message_passing():
    conv = GATv2Conv(6, 4, heads=2)
    x = torch.randn(10, 6)
    edge_index = coalesce(random_graph(10, 10, 30))
    expected = conv(x, edge_index)
    # So does a call with a registered hook, which then runs.
    calls = []
    conv.register_message_forward_hook(lambda *args: calls.append(1))
    torch.testing.assert_close(conv(x, edge_index), expected)
    assert calls


def test_fused_true_rejects_what_it_cannot_run():
    conv = GATv2Conv(6, 4, heads=2, fused=True)
    x = torch.randn(10, 6)
    adj = to_torch_csr_tensor(random_graph(10, 10, 30).flip(0),
                              size=(10, 10))
    with pytest.raises(ValueError, match='fused=True.*edge features with a '
                       'sparse adjacency'):
        GATv2Conv(6, 4, edge_dim=2, add_self_loops=False, fused=True)(x, adj)
    conv.decomposed_layers = 2
    with pytest.raises(ValueError, match='decomposed_layers'):
        conv(x, random_graph(10, 10, 30))
    with pytest.raises(TypeError, match='fused=None, True or False'):
        GATv2Conv(6, 4, fused='yes')


@pytest.mark.parametrize('concat', [True, False])
def test_fused_output_can_be_modified_in_place(concat):
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
