import math

import pytest
import torch

from pyg_gatv2.experiments.datasets import (
    DictionaryLookup,
    dictionary_lookup_graph,
)


def pairs(perm):
    return {(key, value) for key, value in enumerate(perm.tolist())}


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
    (dict(k=4, values='random'), "values='random'"),
])
def test_dataset_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DictionaryLookup(**kwargs)


def test_split_permutations_follow_the_datasets():
    dataset = DictionaryLookup(5, seed=2)
    assert torch.equal(dataset.train_permutations,
                       torch.stack([g.y for g in dataset.train_dataset]))
    assert torch.equal(dataset.test_permutations,
                       torch.stack([g.y for g in dataset.test_dataset]))


@pytest.mark.parametrize('k', [2, 3, 5])
def test_every_row_with_replacement_when_few(k):
    dataset = DictionaryLookup(k, values='with_replacement')
    rows = dataset.permutations
    assert len(dataset) == k**k == rows.unique(dim=0).size(0)
    assert rows.min() == 0 and rows.max() == k - 1
    # Repeated values: rows that are not permutations, a constant one too.
    assert (rows == 0).all(dim=1).any()
    assert torch.equal(dataset[len(dataset) - 1].y, rows[-1])
    assert 'with_replacement' in repr(dataset)
    assert 'values' not in repr(DictionaryLookup(k + 1))


def test_random_rows_with_replacement_when_many():
    dataset = DictionaryLookup(9, max_graphs=3000, seed=1,
                               values='with_replacement')
    rows = dataset.permutations
    assert len(dataset) == rows.unique(dim=0).size(0) == 3000
    assert rows.min() == 0 and rows.max() == 8
    # Uniform draws: about 1 - (8/9)^9 = 65% of a row's values show up,
    # where a permutation shows all of them.
    distinct = torch.tensor([row.unique().numel() for row in rows])
    assert 0.55 < distinct.float().mean() / 9 < 0.75
    again = DictionaryLookup(9, max_graphs=3000, seed=1,
                             values='with_replacement')
    assert torch.equal(again.permutations, rows)
    assert torch.equal(again.train_mask, dataset.train_mask)


@pytest.mark.parametrize('k, max_graphs', [(4, 32000), (10, 3000)])
def test_every_test_graph_with_replacement_holds_an_unseen_pair(
        k, max_graphs):
    dataset = DictionaryLookup(k, max_graphs=max_graphs, seed=3,
                               values='with_replacement')
    seen = set().union(*(pairs(g.y) for g in dataset.train_dataset))
    unseen = {tuple(p) for p in dataset.unseen_pairs.tolist()}
    assert unseen and not unseen & seen
    for data in dataset.test_dataset:
        assert pairs(data.y) - seen
    fraction = len(dataset.train_dataset) / len(dataset)
    assert 0.6 < fraction < 0.95
