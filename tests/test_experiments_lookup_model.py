import pytest
import torch
from _training_cases import rankings
from torch_geometric.data import Batch
from torch_geometric.nn import GATConv

from pyg_gatv2.experiments.datasets import DictionaryLookup
from pyg_gatv2.experiments.lookup_model import (
    LOOKUP_CONVS,
    DictionaryLookupNet,
    _dropout16,
)


@pytest.fixture(scope='module')
def small():
    return DictionaryLookup(5)


@pytest.mark.parametrize('conv', LOOKUP_CONVS)
@pytest.mark.parametrize('readout', ['linear', 'tied'])
@pytest.mark.parametrize('heads', [1, 2])
def test_net_shapes(small, conv, readout, heads):
    model = DictionaryLookupNet(5, hidden_channels=8, heads=heads,
                                conv=conv, readout=readout)
    batch = Batch.from_data_list(small.train_dataset[:7])
    logits = model(batch.x, batch.edge_index, batch.query_mask, batch.batch)
    assert logits.shape == (7 * 5, 5)
    att = model.attention_matrix(small.test_dataset[0])
    assert att.shape == (heads, 5, 5)
    rows = att.sum(dim=-1)
    if conv.endswith('gatv2'):
        assert torch.allclose(rows, torch.ones(heads, 5))
    else:
        # GAT's self-loop takes the rest of each query's attention.
        assert (rows > 0).all() and (rows < 1).all()


@pytest.mark.parametrize('conv', ['gatv2', 'gat'])
def test_attention_matrix_holds_each_edges_weight(small, conv):
    torch.manual_seed(0)
    model = DictionaryLookupNet(5, hidden_channels=8, heads=2, conv=conv)
    graph = small.test_dataset[1]
    att = model.attention_matrix(graph)
    assert model.training  # back in the mode it was in
    model.eval()
    _, ((src, dst), alpha) = model(graph.x, graph.edge_index,
                                   graph.query_mask,
                                   return_attention_weights=True)
    expected = torch.zeros(2, 5, 5)
    for s, d, a in zip(src.tolist(), dst.tolist(), alpha, strict=True):
        if s < 5 <= d:  # a key-to-query edge, not one of GAT's self-loops
            expected[:, d - 5, s] = a
    assert torch.equal(att, expected)


def test_key_attention_rejects_another_layout(small):
    model = DictionaryLookupNet(5, hidden_channels=8)
    graph = small.test_dataset[0]
    with pytest.raises(ValueError, match='5 key nodes followed by 5 query'):
        model.key_attention(graph.x, graph.edge_index,
                            graph.query_mask.flip(0))


def test_net_is_the_authors_model():
    gatv2 = DictionaryLookupNet(10, heads=8)
    assert (gatv2.hidden_channels, gatv2.readout, gatv2.dropout) == (
        128, 'linear', 0.5)
    conv = gatv2.conv
    assert (conv.heads, conv.out_channels) == (8, 16)
    assert conv.share_weights and not conv.add_self_loops
    assert conv.bias is None
    assert tuple(gatv2.lin.weight.shape) == (10, 128)
    assert gatv2.lin.bias is None
    gat = DictionaryLookupNet(10, conv='gat').conv
    assert isinstance(gat, GATConv)
    assert gat.add_self_loops and gat.bias is not None
    assert (gat.heads, gat.out_channels) == (1, 128)


def test_net_repr():
    assert repr(DictionaryLookupNet(10)) == (
        "DictionaryLookupNet(k=10, hidden_channels=128, heads=1, "
        "conv='gatv2', readout='linear', dropout=0.5)")


@pytest.mark.parametrize('sparse_conv, dense_conv', [
    ('gatv2', 'dense_gatv2'),
    ('gat', 'dense_gat'),
])
@pytest.mark.parametrize('readout', ['linear', 'tied'])
def test_dense_matches_sparse(small, sparse_conv, dense_conv, readout):
    # Under one seed both draw the same initial weights.
    torch.manual_seed(0)
    sparse = DictionaryLookupNet(5, hidden_channels=16, heads=2,
                                 conv=sparse_conv, readout=readout)
    torch.manual_seed(0)
    dense = DictionaryLookupNet(5, hidden_channels=16, heads=2,
                                conv=dense_conv, readout=readout)
    for (name, a), (_, b) in zip(sparse.state_dict().items(),
                                 dense.state_dict().items(), strict=True):
        assert torch.equal(a.flatten(), b.flatten()), name
    sparse.eval(), dense.eval()  # no dropout
    batch = Batch.from_data_list(small.train_dataset[:4])
    args = (batch.x, batch.edge_index, batch.query_mask, batch.batch)
    assert torch.allclose(sparse(*args), dense(*args), atol=1e-5)
    graph = small.test_dataset[0]
    assert torch.allclose(sparse.attention_matrix(graph),
                          dense.attention_matrix(graph), atol=1e-6)


def test_dropout_acts_in_training_only(small):
    model = DictionaryLookupNet(5, hidden_channels=16)
    batch = Batch.from_data_list(small.train_dataset[:8])
    args = (batch.x, batch.edge_index, batch.query_mask)
    model.eval()
    assert torch.equal(model(*args), model(*args))
    model.train()
    assert not torch.equal(model(*args), model(*args))


@pytest.mark.parametrize('p', [0.5, 0.2])
def test_dropout16_drops_p_and_rescales(p):
    torch.manual_seed(0)
    x = torch.rand(400, 250) + 1.0
    out = _dropout16(x, p, training=True)
    dropped = out == 0
    assert abs(float(dropped.float().mean()) - p) < 0.01
    kept = ~dropped
    assert torch.allclose(out[kept], x[kept] / (1 - p))
    assert _dropout16(x, p, training=False) is x
    assert _dropout16(x, 0.0, training=True) is x


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_gat_attention_is_static_and_gatv2_is_not(seed):
    dataset = DictionaryLookup(6, seed=seed)
    torch.manual_seed(seed)
    gat = DictionaryLookupNet(6, hidden_channels=32, conv='gat')
    torch.manual_seed(seed)
    gatv2 = DictionaryLookupNet(6, hidden_channels=32, conv='gatv2')
    for graph in dataset.test_dataset[:5]:
        # The same key ranking for every query, whatever the weights.
        assert len(rankings(gat.attention_matrix(graph)[0])) == 1
        assert len(rankings(gatv2.attention_matrix(graph)[0])) > 1


@pytest.mark.parametrize('kwargs, match', [
    (dict(k=0), 'k to be a positive integer'),
    (dict(k=4, heads=3), 'does not divide'),
    (dict(k=4, conv='gcn'), "conv='gcn'"),
    (dict(k=4, readout='mlp'), "readout='mlp'"),
    (dict(k=4, dropout=1.0), 'dropout in'),
])
def test_net_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DictionaryLookupNet(**kwargs)


def test_net_rejects_ids_of_another_k(small):
    model = DictionaryLookupNet(3, hidden_channels=8)
    data = small.train_dataset[0]
    with pytest.raises(ValueError, match='built for k=3'):
        model(data.x, data.edge_index, data.query_mask)
    with pytest.raises(ValueError, match=r'\[num_nodes, 2\]'):
        model(data.x.float(), data.edge_index, data.query_mask)
