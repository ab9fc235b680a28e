import json
import math

import matplotlib.image
import pytest
import torch
from torch_geometric.data import Batch

from pyg_gatv2.cli import main
from pyg_gatv2.datasets import DictionaryLookup, dictionary_lookup_graph
from pyg_gatv2.models import DictionaryLookupNet
from pyg_gatv2.plots import plot_dictionary_lookup
from pyg_gatv2.train import evaluate_lookup, train_lookup


def pairs(perm):
    return {(key, value) for key, value in enumerate(perm.tolist())}


# The generator.


def test_graph_layout_by_hand():
    data = dictionary_lookup_graph(torch.tensor([2, 0, 1]))
    assert data.x.dtype == torch.long
    assert data.x.tolist() == [[0, 2], [1, 0], [2, 1],
                               [0, 3], [1, 3], [2, 3]]
    assert data.query_mask.tolist() == [False] * 3 + [True] * 3
    assert data.y.tolist() == [2, 0, 1]
    assert data.edge_index.tolist() == [[0, 0, 0, 1, 1, 1, 2, 2, 2],
                                        [3, 4, 5, 3, 4, 5, 3, 4, 5]]


@pytest.mark.parametrize('k', [2, 5, 12])
def test_graph_structure(k):
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(k))
    data = dictionary_lookup_graph(perm)
    assert data.num_nodes == 2 * k
    assert int(data.query_mask.sum()) == k
    src, dst = data.edge_index
    assert data.num_edges == k * k
    # Every key node sends exactly one edge to every query node.
    assert not data.query_mask[src].any() and data.query_mask[dst].all()
    assert len(set(zip(src.tolist(), dst.tolist(), strict=True))) == k * k
    keys, queries = data.x[~data.query_mask], data.x[data.query_mask]
    assert torch.equal(keys[:, 0], torch.arange(k))
    assert torch.equal(keys[:, 1], perm)
    assert torch.equal(queries[:, 0], torch.arange(k))
    assert (queries[:, 1] == k).all()
    assert torch.equal(data.y, perm)


@pytest.mark.parametrize('perm, error', [
    (torch.tensor([0, 0, 1]), ValueError),
    (torch.tensor([0, 1, 3]), ValueError),
    (torch.tensor([0]), ValueError),
    (torch.tensor([[0, 1], [1, 0]]), ValueError),
    (torch.tensor([0.0, 1.0]), TypeError),
])
def test_graph_rejects_bad_permutations(perm, error):
    with pytest.raises(error, match="'dictionary_lookup_graph'"):
        dictionary_lookup_graph(perm)


@pytest.mark.parametrize('k', [3, 4, 5, 6])
def test_all_permutations_when_few(k):
    dataset = DictionaryLookup(k)
    assert len(dataset) == math.factorial(k)
    assert dataset.permutations.unique(dim=0).size(0) == len(dataset)
    assert len(dataset.train_dataset) + len(dataset.test_dataset) == len(
        dataset)
    assert (dataset.num_embeddings, dataset.num_classes,
            dataset.empty_id) == (k + 1, k, k)
    for data in dataset.train_dataset[:3] + dataset.test_dataset[:3]:
        assert data.num_nodes == 2 * k and data.num_edges == k * k


def test_random_sample_when_many():
    dataset = DictionaryLookup(9, max_graphs=3000, seed=1)
    assert len(dataset) == 3000 < math.factorial(9)
    perms = dataset.permutations
    assert perms.unique(dim=0).size(0) == 3000
    assert torch.equal(perms.sort(dim=1).values,
                       torch.arange(9).expand(3000, 9))
    assert torch.equal(dataset[5].y, perms[5])


def test_deterministic_under_seed():
    a, b = DictionaryLookup(8, max_graphs=2000, seed=3), DictionaryLookup(
        8, max_graphs=2000, seed=3)
    assert torch.equal(a.permutations, b.permutations)
    assert torch.equal(a.train_mask, b.train_mask)
    assert torch.equal(a.unseen_pairs, b.unseen_pairs)
    c = DictionaryLookup(8, max_graphs=2000, seed=4)
    assert not torch.equal(a.permutations, c.permutations)
    # All permutations: the seed only moves the held-out pairs.
    d, e = DictionaryLookup(5, seed=0), DictionaryLookup(5, seed=1)
    assert torch.equal(d.permutations, e.permutations)
    assert not torch.equal(d.unseen_pairs, e.unseen_pairs)


@pytest.mark.parametrize('k, max_graphs, seed', [
    (3, 32000, 0),
    (5, 32000, 2),
    (7, 32000, 1),
    (10, 4000, 0),
    (20, 2000, 5),
])
def test_every_test_graph_holds_an_unseen_pair(k, max_graphs, seed):
    dataset = DictionaryLookup(k, max_graphs=max_graphs, seed=seed)
    seen = set().union(*(pairs(g.y) for g in dataset.train_dataset))
    unseen = {tuple(p) for p in dataset.unseen_pairs.tolist()}
    assert unseen and not unseen & seen
    assert len(unseen) == k * k - int(0.8**(1 / k) * k * k)
    for data in dataset.test_dataset:
        assert pairs(data.y) - seen
    # The graphs split by the mask, in order.
    train = dataset.permutations[dataset.train_mask]
    assert torch.equal(torch.stack([g.y for g in dataset.train_dataset]),
                       train)


def test_split_fraction_is_near_the_target():
    dataset = DictionaryLookup(20, max_graphs=4000)
    fraction = len(dataset.train_dataset) / len(dataset)
    assert 0.6 < fraction < 0.95


@pytest.mark.parametrize('kwargs, match', [
    (dict(k=1), 'k >= 2'),
    (dict(k=2.5), 'k >= 2'),
    (dict(k=True), 'k >= 2'),
    (dict(k=4, train_fraction=1.0), 'train_fraction'),
    (dict(k=4, train_fraction=0.0), 'train_fraction'),
    (dict(k=4, max_graphs=1), 'max_graphs'),
    (dict(k=2, train_fraction=0.1), 'training set empty'),
])
def test_dataset_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DictionaryLookup(**kwargs)


# The network.


@pytest.fixture(scope='module')
def small():
    return DictionaryLookup(5)


@pytest.mark.parametrize('conv', ['gatv2', 'gat', 'dense_gatv2'])
@pytest.mark.parametrize('readout', ['tied', 'linear'])
@pytest.mark.parametrize('heads', [1, 2])
def test_net_shapes(small, conv, readout, heads):
    model = DictionaryLookupNet(5, hidden_channels=8, heads=heads,
                                conv=conv, readout=readout)
    batch = Batch.from_data_list(small.train_dataset[:7])
    logits = model(batch.x, batch.edge_index, batch.query_mask, batch.batch)
    assert logits.shape == (7 * 5, 5)
    att = model.attention_matrix(small.test_dataset[0])
    assert att.shape == (heads, 5, 5)
    assert torch.allclose(att.sum(dim=-1), torch.ones(heads, 5))


def test_net_repr():
    assert repr(DictionaryLookupNet(10)) == (
        "DictionaryLookupNet(k=10, hidden_channels=128, heads=1, "
        "conv='gatv2', readout='tied', dropout=0.5)")


def test_dense_matches_sparse(small):
    torch.manual_seed(0)
    sparse = DictionaryLookupNet(5, hidden_channels=16, heads=2)
    dense = DictionaryLookupNet(5, hidden_channels=16, heads=2,
                                conv='dense_gatv2')
    dense.load_state_dict(sparse.state_dict())
    sparse.eval(), dense.eval()  # no dropout
    batch = Batch.from_data_list(small.train_dataset[:4])
    args = (batch.x, batch.edge_index, batch.query_mask, batch.batch)
    assert torch.allclose(sparse(*args), dense(*args), atol=1e-5)
    graph = small.test_dataset[0]
    assert torch.allclose(sparse.attention_matrix(graph),
                          dense.attention_matrix(graph), atol=1e-6)


def rankings(att):
    return {tuple(row.argsort(descending=True, stable=True).tolist())
            for row in att}


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


# Training.


def test_train_lookup_rejects_a_model_of_another_k(small):
    with pytest.raises(ValueError, match='k=4'):
        train_lookup(DictionaryLookupNet(4), small, steps=1, progress=False)
    with pytest.raises(ValueError, match='steps'):
        train_lookup(DictionaryLookupNet(5), small, steps=0, progress=False)


@pytest.mark.parametrize('seed', [0, 1])
def test_gatv2_fits_what_gat_cannot(seed):
    # Static attention gives every query the same ranking of the keys, so
    # GAT cannot fit the training graphs; GATv2 fits them in a few steps.
    dataset = DictionaryLookup(5, seed=seed)
    results = {}
    for conv in ('gatv2', 'gat'):
        torch.manual_seed(seed)
        model = DictionaryLookupNet(5, conv=conv)
        results[conv] = train_lookup(model, dataset, steps=100, seed=seed,
                                     progress=False)
        assert evaluate_lookup(model, dataset.train_dataset) == (
            results[conv].train_node_acc, results[conv].train_graph_acc)
    assert results['gatv2'].train_node_acc == 1.0
    assert results['gatv2'].train_graph_acc == 1.0
    assert results['gat'].train_node_acc <= 0.6
    assert results['gat'].train_graph_acc == 0.0
    assert len(rankings(torch.tensor(results['gat'].attention[0]))) == 1
    assert len(results['gatv2'].losses) == 100


def test_plot_rejects_missing_results(tmp_path, small):
    torch.manual_seed(0)
    result = train_lookup(DictionaryLookupNet(5, hidden_channels=8), small,
                          steps=2, progress=False)
    with pytest.raises(ValueError, match='no results'):
        plot_dictionary_lookup([], tmp_path / 'a.png')
    with pytest.raises(ValueError, match='attention_k=7'):
        plot_dictionary_lookup([result], tmp_path / 'a.png', attention_k=7)


# Command line.


def test_cli_writes_table_json_and_figure(tmp_path, capsys):
    out = tmp_path / 'out'
    status = main(['dictionary-lookup', '--ks', '3', '4', '--steps', '3',
                   '--hidden', '8', '--no-progress', '--device', 'cpu',
                   '--out', str(out)])
    assert status == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ['k', 'layer', 'train']
    rows = [line.split() for line in lines[1:5]]
    assert [(row[0], row[1]) for row in rows] == [
        ('3', 'gat'), ('3', 'gatv2'), ('4', 'gat'), ('4', 'gatv2')]
    report = json.loads((out / 'dictionary_lookup.json').read_text())
    assert report['command'].startswith('pyg-gatv2 dictionary-lookup --ks 3')
    assert report['settings']['steps'] == 3
    results = report['results']
    assert [(r['k'], r['conv']) for r in results] == [
        (3, 'gat'), (3, 'gatv2'), (4, 'gat'), (4, 'gatv2')]
    for row, result in zip(rows, results, strict=True):
        assert row[2:6] == [f"{result[key]:.4f}" for key in (
            'train_node_acc', 'train_graph_acc', 'test_node_acc',
            'test_graph_acc')]
        assert len(result['losses']) == 3
    image = matplotlib.image.imread(out / 'dictionary_lookup.png')
    assert image.shape[0] > 100 and image.shape[1] > 300


@pytest.mark.parametrize('flags, message', [
    (['--ks', '1'], 'k >= 2'),
    (['--convs', 'gcn'], 'invalid choice'),
    (['--steps', '0'], 'positive integer'),
])
def test_cli_usage_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(['dictionary-lookup', *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_one_line_errors(tmp_path, capsys):
    assert main(['dictionary-lookup', '--ks', '3', '--hidden', '10',
                 '--heads', '3', '--out', str(tmp_path)]) == 1
    assert main(['dictionary-lookup', '--ks', '2', '--train-fraction', '0.1',
                 '--out', str(tmp_path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert 'multiple of --heads' in err[0]
    assert 'training set empty' in err[1]
    assert not (tmp_path / 'dictionary_lookup.json').exists()
