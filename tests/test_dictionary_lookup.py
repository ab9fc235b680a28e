import dataclasses
import json
import math

import matplotlib.image
import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.nn import GATConv

from pyg_gatv2.cli import main
from pyg_gatv2.datasets import DictionaryLookup, dictionary_lookup_graph
from pyg_gatv2.lookup import (
    LookupBatcher,
    LookupRecipe,
    LookupResult,
    LookupRun,
    evaluate_lookup,
    run_lookup_sweep,
    train_lookup,
)
from pyg_gatv2.models import LOOKUP_CONVS, DictionaryLookupNet, _dropout16
from pyg_gatv2.plots import plot_dictionary_lookup


@pytest.fixture(autouse=True)
def one_thread():
    # Training here is many small steps, which a second thread slows down on
    # a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def test_split_permutations_follow_the_datasets():
    dataset = DictionaryLookup(5, seed=2)
    assert torch.equal(dataset.train_permutations,
                       torch.stack([g.y for g in dataset.train_dataset]))
    assert torch.equal(dataset.test_permutations,
                       torch.stack([g.y for g in dataset.test_dataset]))


# Batches.


@pytest.mark.parametrize('k, num_graphs', [(2, 1), (3, 4), (6, 9)])
def test_batcher_equals_pyg_collation(k, num_graphs):
    perms = torch.rand(num_graphs, k,
                       generator=torch.Generator().manual_seed(k)).argsort(1)
    batch = LookupBatcher(k)(perms)
    reference = Batch.from_data_list(
        [dictionary_lookup_graph(perm) for perm in perms])
    for key in ('x', 'edge_index', 'query_mask', 'batch', 'y'):
        assert torch.equal(getattr(batch, key), reference[key]), key


def test_batcher_reuses_the_structure_of_a_batch_size():
    batcher = LookupBatcher(4)
    perms = torch.rand(6, 4).argsort(1)
    first, second = batcher(perms), batcher(perms.flip(0))
    # The same tensor object, so the fused kernels' layout cache hits.
    assert first.edge_index is second.edge_index
    assert batcher(perms[:2]).edge_index is not first.edge_index
    assert not torch.equal(first.x, second.x)


@pytest.mark.parametrize('kwargs, perms, match', [
    (dict(k=1), None, 'k >= 2'),
    (dict(k=4), torch.zeros(3, 5, dtype=torch.long), r'\[num_graphs, 4\]'),
    (dict(k=4), torch.zeros(4, dtype=torch.long), r'\[num_graphs, 4\]'),
])
def test_batcher_rejects_bad_input(kwargs, perms, match):
    with pytest.raises(ValueError, match=match):
        LookupBatcher(**kwargs)(perms)


# The network.


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


def test_recipe_defaults_are_the_authors_but_the_monitor():
    assert LookupRecipe() == LookupRecipe(
        max_epochs=50_000, eval_every=10, patience=20, min_improvement=1e-4,
        monitor='accuracy_then_loss', min_loss_improvement=0.01,
        batch_size=1024, lr=0.001,
        lr_factor=0.5, lr_patience=10, clip_norm=1.0)


@pytest.mark.parametrize('kwargs, match', [
    (dict(max_epochs=0), 'max_epochs'),
    (dict(eval_every=1.5), 'eval_every'),
    (dict(lr=0.0), 'lr > 0'),
    (dict(lr_factor=1.0), 'lr_factor'),
    (dict(monitor='test_accuracy'), 'monitor'),
    (dict(min_loss_improvement=1.0), 'min_loss_improvement'),
])
def test_recipe_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LookupRecipe(**kwargs)


BEST = {'train_node_acc': 0.9, 'train_loss': 0.2}


@pytest.mark.parametrize('accuracy, loss, then_loss, accuracy_only', [
    (0.9002, 0.3, True, True),      # higher accuracy, whatever the loss
    (0.90005, 0.3, False, False),   # a rise below min_improvement
    (0.9, 0.197, True, False),      # same accuracy, loss 1.5% lower
    (0.90005, 0.197, True, False),
    (0.9, 0.199, False, False),     # a fall below min_loss_improvement
    (0.8999, 0.1, False, False),    # lower accuracy, however low the loss
])
def test_what_improves(accuracy, loss, then_loss, accuracy_only):
    entry = {'train_node_acc': accuracy, 'train_loss': loss,
             'test_node_acc': 1.0}
    assert LookupRecipe().improves(entry, BEST) is then_loss
    assert LookupRecipe(monitor='accuracy').improves(
        entry, BEST) is accuracy_only


def test_train_lookup_rejects_bad_calls(small, tmp_path):
    with pytest.raises(ValueError, match='k=4'):
        train_lookup(DictionaryLookupNet(4), small, progress=False)
    with pytest.raises(ValueError, match='checkpoint_path'):
        train_lookup(DictionaryLookupNet(5), small, resume=True,
                     progress=False)


def train(dataset, conv, seed=0, **recipe):
    torch.manual_seed(seed)
    model = DictionaryLookupNet(dataset.k, conv=conv)
    entries = []
    result = train_lookup(model, dataset, LookupRecipe(**recipe), seed=seed,
                          on_eval=entries.append, progress=False)
    return model, result, entries


@pytest.mark.parametrize('seed', [0, 1])
def test_gatv2_fits_what_gat_cannot(seed):
    # Static attention gives every query the same ranking of the keys, so
    # GAT cannot fit the training graphs; GATv2 fits them.
    # With k = 6, all 720 permutations, of which 504 train: GATv2 fits
    # them in 50-90 epochs of one step.
    dataset = DictionaryLookup(6, seed=seed)
    gatv2, fit, _ = train(dataset, 'gatv2', seed, max_epochs=100)
    assert fit.stop == 'max_epochs' and fit.best_epoch == 100
    assert fit.train_node_acc == fit.train_graph_acc == 1.0
    assert fit.test_node_acc >= 0.95
    gat, static, _ = train(dataset, 'dense_gat', seed, max_epochs=100)
    assert static.train_node_acc <= 0.6
    assert static.train_graph_acc == 0.0
    assert len(rankings(torch.tensor(static.attention[0]))) == 1
    # The models hold the weights of their best evaluation.
    for model, result in ((gatv2, fit), (gat, static)):
        assert evaluate_lookup(model, dataset.train_permutations) == (
            result.train_node_acc, result.train_graph_acc)
        assert evaluate_lookup(model, dataset.test_dataset) == (
            result.test_node_acc, result.test_graph_acc)


def test_training_goes_on_past_a_perfect_fit(small):
    # At 100% training accuracy the margins are still thin: a stop there
    # (the 'accuracy' monitor) leaves held-out pairs wrong, while training
    # on as long as the training loss falls gets them right.
    _, fit, _ = train(small, 'gatv2', max_epochs=200, monitor='accuracy')
    _, on, _ = train(small, 'gatv2', max_epochs=200)
    assert fit.stop == 'fit' and fit.train_node_acc == 1.0
    evals = len(fit.history['epoch'])
    for key in ('train_loss', 'train_node_acc', 'test_node_acc', 'lr'):
        assert on.history[key][:evals] == fit.history[key]
    assert on.epochs > fit.epochs and on.train_node_acc == 1.0
    assert on.history['train_loss'][-1] < fit.history['train_loss'][-1] / 10
    assert fit.test_node_acc < 0.97 and on.test_node_acc == 1.0


def test_training_numbers_alone_select_and_stop(small):
    recipe = dict(max_epochs=400, eval_every=5, patience=3, lr_patience=1,
                  min_loss_improvement=0.1)
    _, result, entries = train(small, 'gatv2', **recipe)
    history = result.history
    assert [e['epoch'] for e in entries] == history['epoch']
    assert result.stop == 'patience' and result.train_node_acc == 1.0
    # The best evaluation is the last that improved on the training numbers
    # of the best before it, whatever the test accuracy did; the run stops
    # after `patience` evaluations without improvement.
    best, improved = {'train_node_acc': -1.0, 'train_loss': math.inf}, []
    for entry in entries:
        improved.append(LookupRecipe(**recipe).improves(entry, best))
        if improved[-1]:
            best = entry
    assert result.best_epoch == best['epoch']
    assert result.test_node_acc == best['test_node_acc']
    assert improved[-4:] == [True, False, False, False]
    # The loss kept improving after the accuracy reached 100%.
    first_fit = history['train_node_acc'].index(1.0)
    assert best['epoch'] > history['epoch'][first_fit]
    # The learning rate halves after `lr_patience` + 1 evaluations without
    # improvement, and only then.
    lrs, bad = history['lr'], 0
    for i in range(1, len(entries)):
        bad = 0 if improved[i - 1] else bad + 1
        halved = math.isclose(lrs[i], lrs[i - 1] / 2)
        assert halved == (bad == 2), i
        if halved:
            bad = 0


def test_training_accuracy_alone_selects_and_stops(small):
    _, result, entries = train(small, 'dense_gat', max_epochs=400,
                               eval_every=5, patience=3, lr_patience=1,
                               monitor='accuracy')
    history = result.history
    assert [e['epoch'] for e in entries] == history['epoch']
    assert history['epoch'] == list(range(5, result.epochs + 1, 5))
    assert result.stop == 'patience'
    # The best evaluation is the first that no later one beats on the
    # training accuracy, whatever the test accuracy did.
    train_accs = history['train_node_acc']
    best = history['epoch'].index(result.best_epoch)
    assert all(acc <= train_accs[best] + 1e-4 for acc in train_accs)
    assert all(acc <= train_accs[best] - 1e-4 for acc in train_accs[:best])
    assert len(train_accs) - 1 - best == 3
    assert result.test_node_acc == history['test_node_acc'][best]
    # The learning rate halves on the training accuracy's plateaus.
    lrs = history['lr']
    assert lrs[0] == 0.001 and lrs[-1] < lrs[0]
    assert all(any(math.isclose(lr, 0.001 * 0.5**n) for n in range(20))
               for lr in lrs)


def test_resume_reproduces_and_extends_a_run(small, tmp_path):
    path = tmp_path / 'state.pt'
    _, whole, _ = train(small, 'gatv2', max_epochs=30, eval_every=5)
    torch.manual_seed(0)
    model = DictionaryLookupNet(5)
    first = train_lookup(model, small, LookupRecipe(max_epochs=15,
                                                    eval_every=5),
                         checkpoint_path=path, progress=False)
    assert first.stop == 'max_epochs' and first.epochs == 15
    torch.manual_seed(123)  # the checkpoint restores the random state
    model = DictionaryLookupNet(5)
    again = train_lookup(model, small, LookupRecipe(max_epochs=30,
                                                    eval_every=5),
                         checkpoint_path=path, resume=True, progress=False)
    for key in ('history', 'train_node_acc', 'test_node_acc', 'best_epoch',
                'epochs', 'steps', 'stop', 'attention'):
        assert getattr(again, key) == getattr(whole, key), key
    with pytest.raises(ValueError, match='Cannot resume'):
        train_lookup(DictionaryLookupNet(5, heads=2), small,
                     LookupRecipe(max_epochs=30, eval_every=5),
                     checkpoint_path=path, resume=True, progress=False)


def test_sweep_keeps_finished_runs(tmp_path):
    json_path = tmp_path / 'sweep.json'
    recipe = LookupRecipe(max_epochs=4, eval_every=2)
    runs = [LookupRun(3, 'gatv2', 1, 0), LookupRun(3, 'gat', 1, 0)]
    first = run_lookup_sweep(runs[:1], json_path, recipe=recipe,
                             hidden_channels=8, report={'command': 'a'})
    saved = json.loads(json_path.read_text())
    assert saved['command'] == 'a' and saved['max_epochs'] == 4
    assert [r['conv'] for r in saved['results']] == ['gatv2']
    seen = []
    both = run_lookup_sweep(runs, json_path, recipe=recipe,
                            hidden_channels=8, resume=True,
                            on_result=seen.append)
    # The finished run is read back, not trained again.
    assert both[0].seconds == first[0].seconds
    assert [r.conv for r in both] == [r.conv for r in seen] == ['gatv2',
                                                                 'gat']
    saved = json.loads(json_path.read_text())
    assert [r['conv'] for r in saved['results']] == ['gatv2', 'gat']
    with pytest.raises(ValueError, match='other settings'):
        run_lookup_sweep(runs, json_path, recipe=recipe, hidden_channels=16,
                         resume=True)


def test_sweep_keeps_runs_cut_by_a_lower_cap(tmp_path):
    json_path, folder = tmp_path / 'sweep.json', tmp_path / 'checkpoints'
    first, second = LookupRun(3, 'gatv2', 1, 0), LookupRun(4, 'gatv2', 1, 0)

    def sweep(runs, max_epochs):
        return run_lookup_sweep(
            runs, json_path, recipe=LookupRecipe(max_epochs=max_epochs,
                                                 eval_every=2),
            hidden_channels=8, checkpoint_dir=folder, resume=True)

    cut = sweep([first], 4)[0]
    assert cut.stop == 'max_epochs' and cut.epochs == 4
    assert (folder / (first.name + '.pt')).exists()
    # A later command with a higher cap and other runs keeps the cut run
    # in the report, as it was.
    sweep([second], 6)
    saved = json.loads(json_path.read_text())['results']
    assert [(r['k'], r['epochs']) for r in saved] == [(4, 6), (3, 4)]
    assert LookupResult.from_dict(saved[1]) == cut
    # Naming it under the higher cap continues it from its checkpoint.
    assert sweep([first, second], 6)[0].epochs == 6


def test_plot_layout_and_bad_results(tmp_path):
    results = [
        LookupResult(k=k, conv=conv, heads=heads, seed=seed,
                     train_node_acc=acc, train_graph_acc=0.0,
                     test_node_acc=acc / 2, test_graph_acc=0.0,
                     best_epoch=10, epochs=10, steps=10, stop='fit',
                     seconds=1.0, history={}, attention=[
                         torch.eye(k).tolist()] * heads,
                     example_y=list(range(k)), example_pred=list(range(k)))
        for k in (3, 4) for conv in ('gat', 'gatv2') for heads in (1, 8)
        for seed, acc in ((0, 0.5), (1, 0.7))
    ]
    path = plot_dictionary_lookup(results, tmp_path / 'a.png')
    image = matplotlib.image.imread(path)
    # Train and test panels, then one attention panel per layer.
    assert image.shape[1] == round((8.4 + 4.6 * 2) * 110)
    assert image[..., :3].std() > 0.05
    with pytest.raises(ValueError, match='no results'):
        plot_dictionary_lookup([], tmp_path / 'b.png')
    with pytest.raises(ValueError, match='attention_k=7'):
        plot_dictionary_lookup(results, tmp_path / 'b.png', attention_k=7)


def test_plot_marks_runs_cut_by_the_epoch_cap(tmp_path):
    results = [
        LookupResult(k=k, conv=conv, heads=1, seed=0, train_node_acc=0.6,
                     train_graph_acc=0.0, test_node_acc=0.4,
                     test_graph_acc=0.0, best_epoch=10, epochs=10, steps=10,
                     stop='patience', seconds=1.0, history={},
                     attention=[torch.eye(k).tolist()],
                     example_y=list(range(k)), example_pred=list(range(k)))
        for k in (3, 4) for conv in ('gat', 'gatv2')
    ]
    cut = [dataclasses.replace(r, stop='max_epochs') if r.k == 4 else r
           for r in results]
    images = [matplotlib.image.imread(plot_dictionary_lookup(
        runs, tmp_path / f'{i}.png')) for i, runs in enumerate(
            (results, results, cut))]
    assert (images[0] == images[1]).all()
    assert images[2].shape == images[0].shape
    assert not (images[2] == images[0]).all()


# Command line.


def test_cli_writes_table_json_and_figure(tmp_path, capsys):
    out = tmp_path / 'out'
    status = main(['dictionary-lookup', '--ks', '3', '4', '--heads', '1',
                   '--max-epochs', '3', '--eval-every', '1', '--hidden', '8',
                   '--no-progress', '--device', 'cpu', '--out', str(out)])
    assert status == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ['k', 'layer', 'heads', 'seed']
    rows = [line.split() for line in lines[1:5]]
    assert [(row[0], row[1], row[2]) for row in rows] == [
        ('3', 'gat', '1'), ('3', 'gatv2', '1'), ('4', 'gat', '1'),
        ('4', 'gatv2', '1')]
    report = json.loads((out / 'dictionary_lookup.json').read_text())
    assert report['command'].startswith('pyg-gatv2 dictionary-lookup --ks 3')
    assert report['max_epochs'] == 3
    assert report['settings']['readout'] == 'linear'
    results = report['results']
    assert [(r['k'], r['conv']) for r in results] == [
        (3, 'gat'), (3, 'gatv2'), (4, 'gat'), (4, 'gatv2')]
    for row, result in zip(rows, results, strict=True):
        assert row[4:8] == [f"{result[key]:.4f}" for key in (
            'train_node_acc', 'train_graph_acc', 'test_node_acc',
            'test_graph_acc')]
        assert len(result['history']['epoch']) == result['epochs'] <= 3
    image = matplotlib.image.imread(out / 'dictionary_lookup.png')
    assert image.shape[0] > 100 and image.shape[1] > 300


@pytest.mark.parametrize('flags, message', [
    (['--ks', '1'], 'k >= 2'),
    (['--convs', 'gcn'], 'invalid choice'),
    (['--max-epochs', '0'], 'positive integer'),
    (['--heads', '0'], 'positive integer'),
    (['--readout', 'mlp'], 'invalid choice'),
])
def test_cli_usage_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(['dictionary-lookup', *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_one_line_errors(tmp_path, capsys):
    assert main(['dictionary-lookup', '--ks', '3', '--hidden', '10',
                 '--heads', '1', '3', '--out', str(tmp_path)]) == 1
    assert main(['dictionary-lookup', '--ks', '2', '--train-fraction', '0.1',
                 '--out', str(tmp_path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert 'multiple of every --heads' in err[0]
    assert 'training set empty' in err[1]
    assert not (tmp_path / 'dictionary_lookup.json').exists()


def test_old_import_paths():
    import pyg_gatv2
    from pyg_gatv2 import lookup, train
    for name in ('LookupResult', 'evaluate_lookup', 'train_lookup'):
        assert getattr(train, name) is getattr(lookup, name)
        assert getattr(pyg_gatv2, name) is getattr(lookup, name)
    with pytest.raises(ImportError, match='no_such_name'):
        from pyg_gatv2.train import no_such_name  # noqa: F401
