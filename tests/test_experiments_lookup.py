import dataclasses
import json
import math

import pytest
import torch
from _training_cases import Interrupt, assert_same_state, rankings
from torch_geometric.data import Batch

from pyg_gatv2.experiments.datasets import (
    DictionaryLookup,
    dictionary_lookup_graph,
)
from pyg_gatv2.experiments.lookup import (
    LookupBatcher,
    LookupRecipe,
    LookupResult,
    LookupRun,
    SweepSetup,
    evaluate_lookup,
    own_key_attention,
    run_lookup_sweep,
    train_lookup,
)
from pyg_gatv2.experiments.lookup_model import DictionaryLookupNet
from pyg_gatv2.experiments.training.checkpoint import cpu_state


@pytest.fixture(autouse=True)
def one_thread():
    # Training here is many small steps, which a second thread slows down on
    # a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def small():
    return DictionaryLookup(5)


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


@pytest.mark.parametrize('conv', ['gat', 'gatv2', 'dense_gat',
                                  'dense_gatv2'])
@pytest.mark.parametrize('values', ['permutation', 'with_replacement'])
def test_own_key_attention_reads_every_graphs_attention_matrix(conv,
                                                                 values):
    dataset = DictionaryLookup(4, seed=1, values=values)
    torch.manual_seed(0)
    model = DictionaryLookupNet(4, hidden_channels=12, heads=3, conv=conv)
    model.train()
    graphs = dataset.test_dataset[:7]
    # Every graph's attention, its queries' own keys on the diagonal.
    att = torch.stack([model.attention_matrix(g) for g in graphs])
    diagonal = att.diagonal(dim1=-2, dim2=-1)  # [graphs, heads, k]
    on_top = att.argmax(dim=-1) == torch.arange(4)
    # Batches of 3 graphs: the last batch is short.
    top, weight = own_key_attention(model, graphs, batch_size=3)
    assert model.training  # back in the mode it was in
    assert top == pytest.approx(on_top.double().mean(dim=(0, 2)).tolist())
    assert weight == pytest.approx(diagonal.double().mean(dim=(0, 2))
                                   .tolist(), abs=1e-6)
    assert len(top) == len(weight) == 3


def test_own_key_attention_finds_the_lookup_and_rejects_other_sizes():
    # GATv2 fits k = 4 by looking each key up. GAT's static attention ranks
    # the keys of a graph the same way for every query, so exactly one
    # query in k finds its own key on top.
    dataset = DictionaryLookup(4, seed=0, values='with_replacement')
    gatv2, fit, _ = train(dataset, 'gatv2', 0, max_epochs=60)
    assert fit.train_node_acc == 1.0
    top, weight = own_key_attention(gatv2, dataset.train_permutations)
    assert min(top) == 1.0 and min(weight) > 0.5
    assert fit.own_key['train_top'] == top
    assert fit.own_key['test_weight'] == own_key_attention(
        gatv2, dataset.test_permutations)[1]
    gat, static, _ = train(dataset, 'dense_gat', 0, max_epochs=30)
    assert static.own_key['train_top'] == static.own_key['test_top'] == [
        0.25]
    with pytest.raises(ValueError, match='built for k=4'):
        own_key_attention(gatv2, DictionaryLookup(5).test_permutations)


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


def test_interrupted_run_resumes_to_the_uninterrupted_result(small,
                                                             tmp_path):
    recipe = LookupRecipe(max_epochs=30, eval_every=5)
    path = tmp_path / 'state.pt'

    def run(resume=False, on_eval=None):
        torch.manual_seed(0)
        model = DictionaryLookupNet(5)
        if resume:
            torch.manual_seed(123)  # the checkpoint restores the generator
        result = train_lookup(model, small, recipe, checkpoint_path=path,
                              resume=resume, on_eval=on_eval,
                              progress=False)
        return model, result

    model, whole = run()
    assert whole.stop == 'max_epochs'
    path.unlink()

    def interrupt(entry):
        if entry['epoch'] == 20:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(on_eval=interrupt)
    # The evaluation at epoch 20 was not saved: the run goes on from 15.
    state = torch.load(path, weights_only=True)
    assert (state['epoch'], state['stop']) == (15, None)
    assert state['helpers'].keys() == {'scheduler', 'plateau', 'order'}
    seen = []
    resumed_model, resumed = run(resume=True,
                                 on_eval=lambda e: seen.append(e['epoch']))
    assert seen == [20, 25, 30]
    # Bit for bit: every number of the result and every weight.
    assert dataclasses.replace(resumed, seconds=0.0) == dataclasses.replace(
        whole, seconds=0.0)
    assert_same_state(cpu_state(resumed_model), cpu_state(model))


def test_sweep_keeps_finished_runs(tmp_path):
    json_path = tmp_path / 'sweep.json'
    runs = [LookupRun(3, 'gatv2', 1, 0), LookupRun(3, 'gat', 1, 0)]
    setup = SweepSetup(LookupRecipe(max_epochs=4, eval_every=2),
                       hidden_channels=8)
    first = run_lookup_sweep(runs[:1], json_path, setup,
                             report={'command': 'a'})
    saved = json.loads(json_path.read_text())
    assert saved['command'] == 'a' and saved['max_epochs'] == 4
    assert [r['conv'] for r in saved['results']] == ['gatv2']
    seen = []
    both = run_lookup_sweep(runs, json_path, setup, resume=True,
                            on_result=seen.append)
    # The finished run is read back, not trained again.
    assert both[0].seconds == first[0].seconds
    assert [r.conv for r in both] == [r.conv for r in seen] == ['gatv2',
                                                                 'gat']
    saved = json.loads(json_path.read_text())
    assert [r['conv'] for r in saved['results']] == ['gatv2', 'gat']
    with pytest.raises(ValueError, match='other settings'):
        run_lookup_sweep(runs, json_path,
                         dataclasses.replace(setup, hidden_channels=16),
                         resume=True)


def test_sweep_keeps_runs_cut_by_a_lower_cap(tmp_path):
    json_path, folder = tmp_path / 'sweep.json', tmp_path / 'checkpoints'
    first, second = LookupRun(3, 'gatv2', 1, 0), LookupRun(4, 'gatv2', 1, 0)

    def sweep(runs, max_epochs):
        setup = SweepSetup(LookupRecipe(max_epochs=max_epochs,
                                        eval_every=2), hidden_channels=8)
        return run_lookup_sweep(runs, json_path, setup,
                                checkpoint_dir=folder, resume=True)

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
