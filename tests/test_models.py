import pytest
import torch
import torch_geometric.nn as pyg_nn

from pyg_gatv2 import GATv2Conv
from pyg_gatv2.models import (
    GAT,
    GATv2,
    seed_prefixes,
    sparse_feature_dropout,
)


def random_graph(num_nodes=30, num_edges=120, num_features=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_nodes, num_features, generator=gen)
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=gen)
    return x, edge_index


def test_defaults_are_the_gat_cora_setting():
    model = GATv2(1433, 7)
    assert len(model.convs) == 2
    hidden, output = model.convs
    assert isinstance(hidden, GATv2Conv) and isinstance(output, GATv2Conv)
    assert (hidden.in_channels, hidden.out_channels) == (1433, 8)
    assert (hidden.heads, hidden.concat) == (8, True)
    assert (output.in_channels, output.out_channels) == (64, 7)
    assert (output.heads, output.concat) == (1, False)
    assert hidden.dropout == output.dropout == 0.6
    assert model.dropout == 0.6
    assert str(model) == ('GATv2(1433, 7, hidden_channels=8, heads=8, '
                          'output_heads=1, num_layers=2)')


@pytest.mark.parametrize('num_layers', [1, 2, 3])
@pytest.mark.parametrize('heads', [1, 4])
@pytest.mark.parametrize('output_heads', [1, 3])
def test_output_shape_and_layer_sizes(num_layers, heads, output_heads):
    x, edge_index = random_graph()
    model = GATv2(16, 5, hidden_channels=6, heads=heads,
                  output_heads=output_heads, num_layers=num_layers)
    assert len(model.convs) == num_layers
    assert model.convs[0].in_channels == 16
    for conv in model.convs[1:]:
        assert conv.in_channels == 6 * heads
    assert model.convs[-1].heads == output_heads
    assert not model.convs[-1].concat
    assert model(x, edge_index).shape == (30, 5)


def test_pyg_layers_draw_the_same_weights_and_outputs():
    x, edge_index = random_graph()
    kwargs = dict(hidden_channels=4, heads=3, output_heads=2)
    torch.manual_seed(0)
    model = GATv2(16, 5, **kwargs).eval()
    torch.manual_seed(0)
    reference = GATv2(16, 5, conv=pyg_nn.GATv2Conv, **kwargs).eval()
    assert all(isinstance(conv, pyg_nn.GATv2Conv)
               for conv in reference.convs)
    state, ref_state = model.state_dict(), reference.state_dict()
    assert state.keys() == ref_state.keys()
    for key in state:
        assert torch.equal(state[key], ref_state[key]), key
    torch.testing.assert_close(model(x, edge_index),
                               reference(x, edge_index))


def test_dropout_acts_in_training_only():
    x, edge_index = random_graph()
    model = GATv2(16, 5)
    model.eval()
    torch.testing.assert_close(model(x, edge_index), model(x, edge_index),
                               rtol=0, atol=0)
    model.train()
    assert not torch.equal(model(x, edge_index), model(x, edge_index))
    no_dropout = GATv2(16, 5, dropout=0.0, attention_dropout=0.0)
    torch.testing.assert_close(no_dropout(x, edge_index),
                               no_dropout.eval()(x, edge_index))


def test_seed_prefixes_hold_every_node_the_seeds_depend_on():
    # 0 <- 1 <- 3, 0 <- 2, 4 <- 5: two layers from seed 0 need nodes 0-3.
    edge_index = torch.tensor([[1, 2, 3, 5], [0, 0, 1, 4]])
    assert seed_prefixes(edge_index, 1, 2, 6) == [1, 3, 4]
    assert seed_prefixes(edge_index, 1, 3, 6) == [1, 3, 4, 4]
    # A source numbered after later nodes widens the prefix to it.
    edge_index = torch.tensor([[4], [0]])
    assert seed_prefixes(edge_index, 2, 1, 5) == [2, 5]
    # No edges into the seeds: the seeds alone.
    assert seed_prefixes(torch.tensor([[0], [3]]), 2, 2, 5) == [2, 2, 2]


@pytest.mark.parametrize('num_seeds', [0, 31, 2.0, True])
def test_seed_prefixes_bad_num_seeds(num_seeds):
    x, edge_index = random_graph()
    with pytest.raises(ValueError, match='pass the number of seed nodes'):
        GATv2(16, 5)(x, edge_index, num_seeds=num_seeds)


EDGES = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 0]])


@pytest.mark.parametrize('edge_index,error,message', [
    (EDGES.t(), ValueError, r'shape \[2, num_edges\] \(got \(6, 2\)\)'),
    (EDGES.tolist(), TypeError, "'edge_index' to be a .* tensor"),
    (EDGES.float(), TypeError, r'edge_index\.long\(\)'),
    (EDGES.view(2, 3, 2), ValueError, r'got \(2, 3, 2\)'),
    (torch.sparse_coo_tensor(EDGES, torch.ones(6), (6, 6)), ValueError,
     'sparse adjacency'),
])
def test_seeds_with_a_bad_edge_index(edge_index, error, message):
    # The prefixes are read from edge_index: it is checked before, and
    # reported as it was given.
    with pytest.raises(error, match=message) as info:
        GATv2(16, 5)(torch.randn(6, 16), edge_index, num_seeds=2)
    assert "'GATv2'" in str(info.value)


@pytest.mark.parametrize('conv', [GATv2Conv, pyg_nn.GATv2Conv])
@pytest.mark.parametrize('num_layers', [1, 2, 3])
def test_seed_outputs_and_gradients_equal_the_whole_graph_s(conv,
                                                            num_layers):
    x, edge_index = random_graph(num_nodes=60, num_edges=150)
    x = x.double()
    torch.manual_seed(0)
    model = GATv2(16, 5, hidden_channels=4, heads=2, num_layers=num_layers,
                  dropout=0.0, attention_dropout=0.0, conv=conv).double()
    whole = model(x, edge_index)[:7]
    grads = torch.autograd.grad(whole.square().sum(), model.parameters())
    seeds = model(x, edge_index, num_seeds=7)
    assert seeds.shape == (7, 5)
    torch.testing.assert_close(seeds, whole)
    for got, want in zip(
            torch.autograd.grad(seeds.square().sum(), model.parameters()),
            grads, strict=True):
        torch.testing.assert_close(got, want)


def test_reset_parameters_draws_new_weights():
    model = GATv2(16, 5)
    before = [p.clone() for p in model.parameters()]
    model.reset_parameters()
    assert any(not torch.equal(a, b)
               for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize('kwargs', [
    {'hidden_channels': 0},
    {'heads': -1},
    {'output_heads': 0},
    {'num_layers': 0},
    {'num_layers': 2.0},
    {'dropout': 1.0},
    {'attention_dropout': -0.1},
])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="'GATv2' expects"):
        GATv2(16, 5, **kwargs)


def bag_of_words(num_rows=400, num_cols=300, words=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.zeros(num_rows, num_cols)
    cols = torch.randint(0, num_cols, (num_rows, words), generator=gen)
    x.scatter_(1, cols, torch.rand(num_rows, words, generator=gen) + 0.5)
    return x


@pytest.mark.slow
@pytest.mark.parametrize('p', [0.2, 0.6])
def test_sparse_feature_dropout_has_the_dropout_distribution(p):
    x = bag_of_words()
    nonzero = x != 0
    torch.manual_seed(0)
    kept = torch.zeros_like(x)
    draws = 200
    for _ in range(draws):
        out = sparse_feature_dropout(x, p, training=True)
        assert torch.all(out[~nonzero] == 0)
        survived = out != 0
        assert torch.all(survived <= nonzero)
        torch.testing.assert_close(out[survived], x[survived] / (1 - p))
        kept += survived.float()
    # Each nonzero entry survives with probability 1 - p: over 200 draws of
    # ~2000 entries the pooled rate has a standard error below 0.001.
    rate = kept[nonzero].mean().item() / draws
    assert abs(rate - (1 - p)) < 0.01
    # and entries are dropped independently, not as whole rows or columns
    per_entry = kept[nonzero] / draws
    assert per_entry.std() < 0.1


def test_sparse_feature_dropout_passes_dense_input_to_torch():
    x = torch.rand(50, 40) + 0.1
    torch.manual_seed(1)
    ours = sparse_feature_dropout(x, 0.5, training=True)
    torch.manual_seed(1)
    torch.testing.assert_close(ours, torch.nn.functional.dropout(x, 0.5))


def test_sparse_feature_dropout_keeps_nan_and_infinity_as_dropout_does():
    # Dropped or kept, a NaN stays NaN and an infinity stays infinite or
    # turns NaN, as under F.dropout (x * 0): bad input is not hidden.
    x = torch.zeros(50, 40)
    x[::5, 3] = float('nan')
    x[1::5, 7] = float('inf')
    torch.manual_seed(0)
    out = sparse_feature_dropout(x, 0.5, training=True)
    assert torch.isnan(out[::5, 3]).all()
    assert (torch.isinf(out[1::5, 7]) | torch.isnan(out[1::5, 7])).all()
    assert torch.isnan(out[1::5, 7]).any()  # some were dropped
    assert (out[x == 0] == 0).all()


def test_sparse_feature_dropout_edge_cases():
    x = bag_of_words(20, 30)
    assert sparse_feature_dropout(x, 0.6, training=False) is x
    assert sparse_feature_dropout(x, 0.0, training=True) is x
    assert torch.all(sparse_feature_dropout(x, 1.0, training=True) == 0)
    with pytest.raises(ValueError, match='between 0 and 1'):
        sparse_feature_dropout(x, 1.5, training=True)


def test_sparse_feature_dropout_is_one_operator_to_torch_compile():
    # The search for nonzero entries sizes the draws: traced, it would
    # break the graph.
    x = bag_of_words()
    torch.library.opcheck(torch.ops.pyg_gatv2.nonzero_dropout.default,
                          (x, 0.5),
                          test_utils=('test_schema', 'test_faketensor'))
    compiled = torch.compile(
        lambda x: sparse_feature_dropout(x, 0.5, training=True),
        fullgraph=True, backend='eager')
    torch.manual_seed(4)
    ours = compiled(x)
    torch.manual_seed(4)
    assert torch.equal(ours, sparse_feature_dropout(x, 0.5, training=True))


def test_sparse_feature_dropout_leaves_gradients_to_torch():
    # Zeros of a learned input get a gradient through torch's dropout mask;
    # a mask drawn for the nonzeros only would starve them.
    x = bag_of_words(20, 30).requires_grad_()
    torch.manual_seed(2)
    ours = sparse_feature_dropout(x, 0.5, training=True)
    torch.manual_seed(2)
    torch.testing.assert_close(ours, torch.nn.functional.dropout(x, 0.5))


@pytest.mark.parametrize('kwargs', [
    dict(),
    dict(jk='cat', out_channels=5),
    dict(edge_dim=3, residual=True, share_weights=True),
])
def test_gat_v2_is_pyg_s_model_on_our_layer(kwargs):
    x = torch.randn(30, 16)
    edge_index = torch.randint(0, 30, (2, 100))
    edge_attr = torch.randn(100, 3) if 'edge_dim' in kwargs else None
    torch.manual_seed(0)
    ours = GAT(16, 32, num_layers=3, heads=4, v2=True, **kwargs)
    torch.manual_seed(0)
    ref = pyg_nn.models.GAT(16, 32, num_layers=3, heads=4, v2=True,
                            **kwargs)
    assert all(type(conv) is GATv2Conv for conv in ours.convs)
    # The same arguments, keys and, under one seed, the same weights.
    assert list(ours.state_dict()) == list(ref.state_dict())
    for key, value in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    ours.eval()
    ref.eval()
    torch.testing.assert_close(ours(x, edge_index, edge_attr=edge_attr),
                               ref(x, edge_index, edge_attr=edge_attr))


def test_gat_without_v2_keeps_pyg_s_gat_layers():
    model = GAT(16, 32, num_layers=2, heads=4)
    assert all(type(conv) is pyg_nn.GATConv for conv in model.convs)
    with pytest.raises(ValueError, match='pass v2=True'):
        GAT(16, 32, num_layers=2, fused=True)


def test_gat_passes_fused_to_its_layers():
    model = GAT(-1, 32, num_layers=2, heads=4, v2=True, fused=False)
    assert [conv.fused for conv in model.convs] == [False, False]
    out = model(torch.randn(10, 7), torch.randint(0, 10, (2, 30)))
    assert out.shape == (10, 32)


def whole_neighbourhood_loader(x, edge_index, batch_size, **kwargs):
    pytest.importorskip(
        'torch_sparse', reason='NeighborLoader needs torch-sparse; install '
        'the training extra')
    from torch_geometric.data import Data
    from torch_geometric.loader import NeighborLoader
    kwargs = {'num_neighbors': [-1], 'shuffle': False, **kwargs}
    return NeighborLoader(Data(x=x, edge_index=edge_index),
                          batch_size=batch_size, **kwargs)


@pytest.mark.parametrize('num_layers', [1, 2, 3])
@pytest.mark.parametrize('batch_size', [1, 37, 400])
def test_layer_wise_inference_equals_the_full_batch_pass(num_layers,
                                                         batch_size):
    # Self-loops and repeated edges included; hidden layers of 7 channels
    # (padded heads) and an output of 5.
    x, edge_index = random_graph(300, 3000, seed=num_layers)
    edge_index[:, :20] = torch.arange(20).repeat(2, 1)
    edge_index[:, 20:40] = edge_index[:, 40:60]
    x = x.double()
    torch.manual_seed(0)
    model = GATv2(16, 5, hidden_channels=7, heads=3, output_heads=2,
                  num_layers=num_layers).double().eval()
    loader = whole_neighbourhood_loader(x, edge_index, batch_size)
    expected = model(x, edge_index)
    actual = model.inference(loader)
    assert actual.shape == (300, 5)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_layer_wise_inference_gives_the_kernels_buffers_back():
    # Batches of 4096 nodes with 4 x 32 hidden channels: outputs and
    # projections of 2 MiB, from the kernels' buffer cache.
    from pyg_gatv2.fused import buffers
    x, edge_index = random_graph(8192, 40000)
    model = GATv2(16, 5, hidden_channels=32, heads=4).eval()
    loader = whole_neighbourhood_loader(x, edge_index, 4096)
    buffers.empty_cache()
    model(x, edge_index)
    assert buffers.cached_bytes() > 0
    model.inference(loader)
    assert buffers.cached_bytes() == 0


def test_layer_wise_inference_refuses_what_it_cannot_compute():
    x, edge_index = random_graph(50, 300)
    model = GATv2(16, 5)
    loader = whole_neighbourhood_loader(x, edge_index, 16)
    with pytest.raises(RuntimeError, match=r'call model\.eval\(\) first'):
        model.inference(loader)
    model.eval()
    with pytest.raises(TypeError, match='expects a NeighborLoader'):
        model.inference([x, edge_index])
    sampled = whole_neighbourhood_loader(x, edge_index, 16,
                                         num_neighbors=[5])
    with pytest.raises(ValueError, match=r'num_neighbors=\[-1\]'):
        model.inference(sampled)
    two_hops = whole_neighbourhood_loader(x, edge_index, 16,
                                          num_neighbors=[-1, -1])
    with pytest.raises(ValueError, match=r'num_neighbors=\[-1\]'):
        model.inference(two_hops)
    some = whole_neighbourhood_loader(x, edge_index, 16,
                                      input_nodes=torch.arange(10))
    with pytest.raises(ValueError, match='over all 50 nodes'):
        model.inference(some)
    torch.manual_seed(0)
    shuffled = whole_neighbourhood_loader(x, edge_index, 16, shuffle=True)
    with pytest.raises(ValueError, match='shuffle=False'):
        model.inference(shuffled)
