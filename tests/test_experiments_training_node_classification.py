import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_geometric.nn as pyg_nn
from _training_cases import (
    NUM_CLASSES,
    NUM_FEATURES,
    build,
    same_runs,
    toy_graph,
)

from pyg_gatv2.experiments.datasets import load_planetoid
from pyg_gatv2.experiments.training import (
    PAPER_SETTINGS,
    CheckpointFiles,
    Recipe,
    TrainingDivergedError,
    evaluate,
    fit,
    resolve_device,
    train_epoch,
    train_node_classifier,
)
from pyg_gatv2.models import GATv2


def test_evaluate_counts_correct_predictions():
    data = toy_graph()

    class Constant(torch.nn.Module):
        def forward(self, x, edge_index):
            return torch.tensor([[0.0, 1.0, 0.0]]).repeat(x.size(0), 1)

    metrics = evaluate(Constant(), data)
    for split in ('train', 'val', 'test'):
        mask = data[f'{split}_mask']
        expected = (data.y[mask] == 1).float().mean().item()
        assert metrics[f'{split}_acc'] == pytest.approx(expected)
    # Log-probabilities 1 - log(2 + e) for class 1 and -log(2 + e) else.
    ones = (data.y[data.val_mask] == 1).float().mean().item()
    assert metrics['val_loss'] == pytest.approx(math.log(2 + math.e) - ones)


def test_fit_learns_and_keeps_the_best_epoch():
    data = toy_graph()
    torch.manual_seed(0)
    model = build()
    epochs = []
    result = fit(model, data, Recipe(epochs=60, patience=20), seed=0,
                 callback=lambda m: epochs.append(m.epoch))
    assert epochs == result.history['epoch'] == list(
        range(1, result.epochs + 1))
    assert set(result.history) == {'epoch', 'loss', 'train_acc', 'val_loss',
                                   'val_acc', 'test_acc'}
    best = result.history['epoch'].index(result.best_epoch)
    assert result.test_acc == result.history['test_acc'][best]
    assert result.val_acc == result.history['val_acc'][best]
    # Chance is 1/3; the features alone separate most nodes.
    assert result.val_acc >= 0.7
    # The model ends with the weights of the best epoch.
    metrics = evaluate(model, data)
    assert metrics['val_acc'] == result.val_acc
    assert metrics['test_acc'] == result.test_acc


def test_recipe_defaults_are_the_papers_for_cora():
    recipe = Recipe()
    assert (recipe.epochs, recipe.patience, recipe.stop_on) == (
        1000, 100, 'loss+acc')
    assert (recipe.lr, recipe.weight_decay) == (
        PAPER_SETTINGS['Cora']['lr'], PAPER_SETTINGS['Cora']['weight_decay'])


@pytest.mark.slow
def test_seeded_runs_are_deterministic():
    data = toy_graph()
    recipe = Recipe(epochs=30, patience=10)
    a = train_node_classifier(build, data, [0, 1], recipe)
    b = train_node_classifier(build, data, [0, 1], recipe)
    same_runs(a, b)
    assert a.runs[0].history['loss'] != a.runs[1].history['loss']
    # Deterministic algorithms are on for the run only.
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.slow
def test_training_matches_pyg_layers_epoch_for_epoch():
    # Same seed, same initial weights and the same dropout masks: the network
    # built from PyG's layer follows the same trajectory.
    data = toy_graph()
    recipe = Recipe(epochs=20, patience=20)
    ours = train_node_classifier(build, data, recipe=recipe)
    ref = train_node_classifier(
        lambda: GATv2(NUM_FEATURES, NUM_CLASSES, conv=pyg_nn.GATv2Conv),
        data, recipe=recipe)
    for key, values in ours.runs[0].history.items():
        np.testing.assert_allclose(values, ref.runs[0].history[key],
                                   rtol=0, atol=1e-4, err_msg=key)


def test_divergence_names_the_epoch_and_a_remedy():
    torch.manual_seed(0)
    model = build()
    with pytest.raises(TrainingDivergedError,
                       match=r'^Training diverged at epoch \d+ \(seed 7\): .*'
                       r'Try a smaller learning rate \(now 1e\+20\)'):
        fit(model, toy_graph(), Recipe(lr=1e20, epochs=50), seed=7)


def test_nan_loss_is_reported_before_the_step():
    class NaNModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))

        def forward(self, x, edge_index):
            return self.weight * torch.full((x.size(0), 3), math.nan)

    model = NaNModel()
    with pytest.raises(TrainingDivergedError,
                       match='at epoch 1: the training loss'):
        fit(model, toy_graph())
    assert model.weight.item() == 1.0


@pytest.mark.parametrize('kwargs,match', [
    ({'epochs': 0}, 'epochs to be a positive integer, got 0'),
    ({'patience': 1.5}, 'patience to be a positive integer, got 1.5'),
    ({'lr': 0.0}, 'got lr=0.0; pass a positive number'),
    ({'lr': math.nan}, 'got lr=nan'),
    ({'weight_decay': -1.0}, 'got weight_decay=-1.0; pass a non-negative'),
    ({'stop_on': 'val'}, "got stop_on='val'; choose one of"),
])
def test_recipe_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=f"^'Recipe' .*{match}"):
        Recipe(**kwargs)


@pytest.mark.parametrize('kwargs,match', [
    ({'resume': True}, 'got resume=True without a state_path'),
    ({'every': 0}, 'expects every to be a positive integer, got 0'),
])
def test_checkpoint_files_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=f"^'CheckpointFiles' {match}"):
        CheckpointFiles(**kwargs)


@pytest.mark.parametrize('change,match', [
    (lambda d: delattr(d, 'val_mask'), 'needs data.val_mask'),
    (lambda d: setattr(d, 'train_mask', d.train_mask.repeat(2, 1).t()),
     '1-D boolean mask'),
    (lambda d: setattr(d, 'test_mask', torch.zeros_like(d.test_mask)),
     'empty data.test_mask'),
    (lambda d: d.x.__setitem__((0, 0), math.inf), 'infinite node features'),
])
def test_fit_bad_data(change, match):
    data = toy_graph()
    change(data)
    with pytest.raises(ValueError, match=match):
        fit(build(), data)


def test_fit_takes_full_or_neighbour_batches_only():
    with pytest.raises(ValueError, match=r"'fit' got batches=\[Data"):
        fit(build(), toy_graph(), batches=[toy_graph()])


def test_bad_seeds_and_devices():
    with pytest.raises(ValueError, match='seeds'):
        train_node_classifier(build, toy_graph(), seeds=[])
    with pytest.raises(ValueError, match="device='gpu'"):
        resolve_device('gpu')
    assert resolve_device('auto').type == (
        'cuda' if torch.cuda.is_available() else 'cpu')


@pytest.mark.slow
def test_cora_reaches_the_accuracy_floor(planetoid_raw_dir, tmp_path):
    # The GAT recipe cut to 200 epochs. Measured on seeds 0-9: 0.820 to 0.839
    # at the best validation epoch (0.839 for seed 0), and 0.833 on average
    # without the cut; the floor leaves two points for rounding differences
    # between machines.
    dataset = load_planetoid('Cora', root=tmp_path,
                             raw_dir=planetoid_raw_dir)
    result = train_node_classifier(
        lambda: GATv2(dataset.num_features, dataset.num_classes),
        dataset[0], seeds=[0], recipe=Recipe(epochs=200))
    assert result.test_acc_mean >= 0.80


def test_train_epoch_takes_one_step_per_batch():
    data = toy_graph()
    torch.manual_seed(0)
    model = GATv2(NUM_FEATURES, NUM_CLASSES, dropout=0.0,
                  attention_dropout=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    halves = [data.clone(), data.clone()]
    halves[0].train_mask = data.train_mask.clone()
    halves[0].train_mask[data.train_mask.nonzero()[10:]] = False
    halves[1].train_mask = data.train_mask & ~halves[0].train_mask
    before = [p.detach().clone() for p in model.parameters()]
    # The loss of each batch as train_epoch will see it: the first before
    # any step, the second after the first step.
    first = F.cross_entropy(model(data.x, data.edge_index)[
        halves[0].train_mask], data.y[halves[0].train_mask])
    loss = train_epoch(model, model, optimizer, halves)
    after_one = [p.detach().clone() for p in model.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(before, after_one,
                                                     strict=True))
    for p, value in zip(model.parameters(), before, strict=True):
        p.data.copy_(value)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_epoch(model, model, optimizer, halves[:1])
    second = F.cross_entropy(model(data.x, data.edge_index)[
        halves[1].train_mask], data.y[halves[1].train_mask])
    nodes = [int(h.train_mask.sum()) for h in halves]
    expected = (first * nodes[0] + second * nodes[1]) / sum(nodes)
    torch.testing.assert_close(loss, expected.detach())


def test_train_epoch_without_batches_is_an_error():
    model = GATv2(NUM_FEATURES, NUM_CLASSES)
    optimizer = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match="'train_epoch' got no batches"):
        train_epoch(model, model, optimizer, [])
