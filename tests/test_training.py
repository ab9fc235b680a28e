import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_geometric.nn as pyg_nn
from torch_geometric.data import Data

from pyg_gatv2.datasets import load_planetoid
from pyg_gatv2.models import GATv2
from pyg_gatv2.training import (
    EarlyStopping,
    SeedResult,
    TrainingDivergedError,
    TrainResult,
    evaluate,
    fit,
    resolve_device,
    train_epoch,
    train_node_classifier,
)

NUM_FEATURES, NUM_CLASSES = 12, 3


def toy_graph(num_nodes: int = 90, seed: int = 0) -> Data:
    """Noisy one-hot class features on a graph that mostly links nodes of
    the same class; 30 training, 30 validation and 30 test nodes."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(num_nodes) % NUM_CLASSES
    x = F.one_hot(y, NUM_FEATURES).float()
    x = x + torch.randn(num_nodes, NUM_FEATURES, generator=gen)
    src = torch.arange(num_nodes).repeat_interleave(4)
    hop = torch.randint(1, num_nodes // NUM_CLASSES, (src.numel(), ),
                        generator=gen)
    dst = (src + NUM_CLASSES * hop) % num_nodes  # same class
    noise = torch.randint(0, num_nodes, (2, num_nodes // 3), generator=gen)
    node = torch.arange(num_nodes)
    return Data(x=x, y=y,
                edge_index=torch.cat([torch.stack([src, dst]), noise], 1),
                train_mask=node < 30, val_mask=(node >= 30) & (node < 60),
                test_mask=node >= 60)


def build() -> GATv2:
    return GATv2(NUM_FEATURES, NUM_CLASSES)


def same_runs(a: TrainResult, b: TrainResult) -> None:
    """Every field of every run equal, the timing aside."""
    assert len(a.runs) == len(b.runs)
    for run_a, run_b in zip(a.runs, b.runs, strict=True):
        run_a.seconds = run_b.seconds = 0.0
        assert run_a == run_b
        assert run_a.history == run_b.history


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# (val_loss, val_acc) per epoch, then per criterion with patience 2: the best
# epoch and the epoch at which training stops.
VALIDATION = [(1.00, 0.50), (0.90, 0.48), (0.95, 0.52), (0.92, 0.52),
              (0.97, 0.51), (0.98, 0.50), (0.99, 0.49)]


@pytest.mark.parametrize('criterion,best,stop', [
    ('loss+acc', 1, 6),  # epochs 2-4 restart the count, none improves both
    ('loss', 2, 4),
    ('acc', 4, 6),  # epoch 4 ties the accuracy of epoch 3 at a lower loss
])
def test_early_stopping(criterion, best, stop):
    stopper = EarlyStopping(patience=2, criterion=criterion)
    bests = []
    for epoch, (loss, acc) in enumerate(VALIDATION, start=1):
        if stopper.step(epoch, loss, acc):
            bests.append(epoch)
        if stopper.should_stop:
            break
    assert epoch == stop
    assert stopper.best_epoch == bests[-1] == best

    copy = EarlyStopping(patience=2, criterion=criterion)
    copy.load_state_dict(stopper.state_dict())
    assert copy.state_dict() == stopper.state_dict()


@pytest.mark.parametrize('kwargs,match', [
    ({'patience': 0}, 'patience to be a positive integer, got 0'),
    ({'criterion': 'val_acc'}, "got criterion='val_acc'; choose one of"),
])
def test_early_stopping_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=f"'EarlyStopping' .*{match}"):
        EarlyStopping(**kwargs)


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
    result = fit(model, data, epochs=60, patience=20, seed=0,
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


def test_seeded_runs_are_deterministic():
    data = toy_graph()
    kwargs = dict(epochs=30, patience=10)
    a = train_node_classifier(build, data, seeds=[0, 1], **kwargs)
    b = train_node_classifier(build, data, seeds=[0, 1], **kwargs)
    same_runs(a, b)
    assert a.runs[0].history['loss'] != a.runs[1].history['loss']
    assert not torch.are_deterministic_algorithms_enabled()


def test_training_matches_pyg_layers_epoch_for_epoch():
    # Same seed, same initial weights and the same dropout masks: the network
    # built from PyG's layer follows the same trajectory.
    data = toy_graph()
    ours = train_node_classifier(build, data, epochs=20, patience=20)
    ref = train_node_classifier(
        lambda: GATv2(NUM_FEATURES, NUM_CLASSES, conv=pyg_nn.GATv2Conv),
        data, epochs=20, patience=20)
    for key, values in ours.runs[0].history.items():
        np.testing.assert_allclose(values, ref.runs[0].history[key],
                                   rtol=0, atol=1e-4, err_msg=key)


def test_summary_over_seeds():
    runs = [SeedResult(seed=s, best_epoch=10, val_acc=0.8, val_loss=0.5,
                       test_acc=acc, epochs=20, seconds=1.0,
                       history={'epoch': [1]})
            for s, acc in enumerate([0.80, 0.83, 0.86])]
    result = TrainResult(runs)
    assert result.test_acc_mean == pytest.approx(0.83)
    assert result.test_acc_std == pytest.approx(np.std([0.80, 0.83, 0.86]))
    summary = json.loads(json.dumps(result.to_dict()))['summary']
    assert summary['num_seeds'] == 3 and summary['seeds'] == [0, 1, 2]
    assert summary['test_acc_std'] == pytest.approx(result.test_acc_std)


def test_checkpoints_load_with_weights_only(tmp_path):
    data = toy_graph()
    result = train_node_classifier(build, data, seeds=[3], epochs=25,
                                   patience=10, checkpoint_dir=tmp_path,
                                   metadata={'dataset': 'toy'})
    best = torch.load(tmp_path / 'best_seed3.pt', weights_only=True)
    run = result.runs[0]
    assert best['seed'] == 3 and best['metadata'] == {'dataset': 'toy'}
    assert (best['epoch'], best['test_acc']) == (run.best_epoch, run.test_acc)
    model = build()
    model.load_state_dict(best['model'])
    metrics = evaluate(model, data)
    assert metrics['val_acc'] == run.val_acc
    assert metrics['test_acc'] == run.test_acc
    state = torch.load(tmp_path / 'state_seed3.pt', weights_only=True)
    assert state['finished'] and state['epoch'] == run.epochs


class Interrupt(Exception):
    pass


def test_resume_gives_the_uninterrupted_result(tmp_path):
    data = toy_graph()
    kwargs = dict(seeds=[0, 1], epochs=40, patience=15, checkpoint_every=5)
    reference = train_node_classifier(build, data,
                                      checkpoint_dir=tmp_path / 'ref',
                                      **kwargs)
    assert reference.runs[1].epochs > 23  # so the interruption is mid-run

    def interrupt(seed, metrics):
        if seed == 1 and metrics.epoch == 23:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_node_classifier(build, data, checkpoint_dir=tmp_path / 'run',
                              on_epoch=interrupt, **kwargs)
    state = torch.load(tmp_path / 'run' / 'state_seed1.pt', weights_only=True)
    assert state['epoch'] == 20 and not state['finished']

    torch.manual_seed(1234)  # resuming must restore the generator itself
    seen = []
    resumed = train_node_classifier(
        build, data, checkpoint_dir=tmp_path / 'run', resume=True,
        on_epoch=lambda seed, m: seen.append((seed, m.epoch)), **kwargs)
    # Seed 0 had finished and is not retrained; seed 1 goes on from 21.
    assert seen[0] == (1, 21) and {seed for seed, _ in seen} == {1}
    same_runs(resumed, reference)
    for name in ('best_seed1.pt', 'state_seed1.pt'):
        ref = torch.load(tmp_path / 'ref' / name, weights_only=True)
        new = torch.load(tmp_path / 'run' / name, weights_only=True)
        assert_same_state(ref['model'], new['model'])


def test_resume_refuses_other_settings(tmp_path):
    data = toy_graph()
    train_node_classifier(build, data, epochs=5, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r'other settings \(lr: 0.005 '):
        train_node_classifier(build, data, epochs=5, lr=0.01,
                              checkpoint_dir=tmp_path, resume=True)


def test_resume_needs_a_checkpoint_folder():
    with pytest.raises(ValueError, match='without a checkpoint_dir'):
        train_node_classifier(build, toy_graph(), resume=True)


def test_divergence_names_the_epoch_and_a_remedy():
    torch.manual_seed(0)
    model = build()
    with pytest.raises(TrainingDivergedError,
                       match=r'^Training diverged at epoch \d+ \(seed 7\): .*'
                       r'Try a smaller learning rate \(now 1e\+20\)'):
        fit(model, toy_graph(), lr=1e20, epochs=50, seed=7)


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
    ({'lr': 0.0}, 'lr=0.0'),
    ({'lr': math.nan}, 'lr=nan'),
    ({'weight_decay': -1.0}, 'weight_decay=-1.0'),
    ({'stop_on': 'val'}, "criterion='val'"),
    ({'resume': True}, 'without a state_path'),
])
def test_fit_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit(build(), toy_graph(), **kwargs)


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
        dataset[0], seeds=[0], epochs=200)
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


def test_old_module_name_still_imports():
    from pyg_gatv2 import train, training
    assert train.fit is training.fit
    assert train.TrainResult is training.TrainResult
    assert train.train_lookup.__module__ == 'pyg_gatv2.lookup'


def test_train_epoch_without_batches_is_an_error():
    model = GATv2(NUM_FEATURES, NUM_CLASSES)
    optimizer = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match="'train_epoch' got no batches"):
        train_epoch(model, model, optimizer, [])
