import dataclasses

import matplotlib.image
import pytest
import torch

from pyg_gatv2.experiments.lookup import LookupResult
from pyg_gatv2.experiments.plots import (
    _accuracy_floor,
    plot_dictionary_lookup,
    plot_training_curves,
)
from pyg_gatv2.experiments.training import SeedResult, TrainResult


def run(seed, epochs, plateau=0.8):
    """A run whose accuracies climb from 0.2 to the plateau in 10 epochs."""
    acc = [min(plateau, 0.2 + 0.06 * e) for e in range(1, epochs + 1)]
    history = {
        'epoch': list(range(1, epochs + 1)),
        'loss': [2.0 / e for e in range(1, epochs + 1)],
        'val_loss': [2.5 / e for e in range(1, epochs + 1)],
        'train_acc': [min(1.0, a + 0.1) for a in acc],
        'val_acc': acc,
        'test_acc': acc,
    }
    return SeedResult(seed=seed, best_epoch=epochs // 2, val_acc=acc[-1],
                      val_loss=0.1, test_acc=acc[-1], epochs=epochs,
                      seconds=1.0, history=history)


@pytest.mark.parametrize('lengths', [[40], [40, 55, 30]])
def test_training_curves_write_a_png(tmp_path, lengths):
    result = TrainResult([run(s, n) for s, n in enumerate(lengths)])
    path = plot_training_curves(result, tmp_path / 'sub' / 'c.png',
                                title='toy')
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (504, 1320)  # 11 x 4.2 inches at 120 dpi
    assert image[..., :3].std() > 0.05


def test_training_curves_accuracy_axis_starts_below_the_plateau():
    # The climb of the first tenth is left out: the plateau is 0.8.
    assert _accuracy_floor(TrainResult([run(0, 100)])) == pytest.approx(0.7)
    assert _accuracy_floor(TrainResult([run(0, 100, 0.05)])) == 0.0


def test_training_curves_need_runs():
    with pytest.raises(ValueError, match='without runs'):
        plot_training_curves(TrainResult([]), 'unused.png')


def test_lookup_plot_layout_and_bad_results(tmp_path):
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


def test_lookup_plot_marks_runs_cut_by_the_epoch_cap(tmp_path):
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
