import matplotlib.image
import pytest

from pyg_gatv2.plots import _accuracy_floor, plot_training_curves
from pyg_gatv2.train import SeedResult, TrainResult


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
def test_writes_a_png(tmp_path, lengths):
    result = TrainResult([run(s, n) for s, n in enumerate(lengths)])
    path = plot_training_curves(result, tmp_path / 'sub' / 'c.png',
                                title='toy')
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (504, 1320)  # 11 x 4.2 inches at 120 dpi
    assert image[..., :3].std() > 0.05


def test_accuracy_axis_starts_below_the_plateau():
    # The climb of the first tenth is left out: the plateau is 0.8.
    assert _accuracy_floor(TrainResult([run(0, 100)])) == pytest.approx(0.7)
    assert _accuracy_floor(TrainResult([run(0, 100, 0.05)])) == 0.0


def test_no_runs():
    with pytest.raises(ValueError, match='without runs'):
        plot_training_curves(TrainResult([]), 'unused.png')
