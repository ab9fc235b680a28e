"""What training reports: per-epoch metrics, per-seed and per-run results.

Plots and reports import these records; the trainer fills them.
"""
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

__all__ = ['TrainingDivergedError', 'EpochMetrics', 'SeedResult',
           'TrainResult', 'HISTORY_KEYS', 'diverged']

#: The curves that every run's history records, one value per evaluated
#: epoch.
HISTORY_KEYS = ('epoch', 'loss', 'train_acc', 'val_loss', 'val_acc',
                'test_acc')


class TrainingDivergedError(RuntimeError):
    """The training loss or the parameters became NaN or infinite."""


def diverged(what: str, epoch: int, seed: Optional[int], lr: float,
             weight_decay: float,
             cause: Optional[Exception] = None) -> TrainingDivergedError:
    """The error for ``what`` (e.g. ``'the training loss'``) turning NaN or
    infinite at ``epoch``, with what to try."""
    where = f'epoch {epoch}' + ('' if seed is None else f' (seed {seed})')
    because = '' if cause is None else f" ({' '.join(str(cause).split())})"
    return TrainingDivergedError(
        f'Training diverged at {where}: {what} became NaN or infinite'
        f'{because}. Try a smaller learning rate (now {lr:g}), more weight '
        f'decay (now {weight_decay:g}) or more dropout, and check that the '
        'node features have a sensible scale (e.g. rows normalised to sum '
        'to one).')


@dataclass
class EpochMetrics:
    """The metrics of one epoch.

    :obj:`loss` is the training loss of the epoch's (dropout) forward pass;
    the accuracies and :obj:`val_loss` come from the evaluation pass that
    follows the optimizer step.
    """
    epoch: int
    loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    test_acc: float


@dataclass
class SeedResult:
    """The outcome of training one seed.

    Attributes:
        seed (int): The seed of :func:`torch.manual_seed`.
        best_epoch (int): The epoch chosen on the validation nodes.
        val_acc (float): Validation accuracy at :obj:`best_epoch`.
        val_loss (float): Validation loss at :obj:`best_epoch`.
        test_acc (float): Test accuracy at :obj:`best_epoch`.
        epochs (int): Epochs trained, early stopping included.
        seconds (float): Training time in seconds, summed over resumptions.
        history (dict): One list per metric of :class:`EpochMetrics`, one
            entry per epoch.
    """
    seed: int
    best_epoch: int
    val_acc: float
    val_loss: float
    test_acc: float
    epochs: int
    seconds: float
    history: dict[str, list[float]] = field(repr=False)


@dataclass
class TrainResult:
    """The results of several seeds, with their mean and standard deviation.

    Standard deviations are over the seeds, with ``ddof=0``.
    """
    runs: list[SeedResult]

    @property
    def test_accs(self) -> list[float]:
        return [run.test_acc for run in self.runs]

    @property
    def test_acc_mean(self) -> float:
        return _mean(self.test_accs)

    @property
    def test_acc_std(self) -> float:
        return _std(self.test_accs)

    @property
    def val_acc_mean(self) -> float:
        return _mean([run.val_acc for run in self.runs])

    @property
    def val_acc_std(self) -> float:
        return _std([run.val_acc for run in self.runs])

    def summary(self) -> dict[str, Any]:
        """Means and standard deviations over the seeds."""
        return {
            'num_seeds': len(self.runs),
            'seeds': [run.seed for run in self.runs],
            'test_acc_mean': self.test_acc_mean,
            'test_acc_std': self.test_acc_std,
            'val_acc_mean': self.val_acc_mean,
            'val_acc_std': self.val_acc_std,
            'epochs_mean': _mean([run.epochs for run in self.runs]),
            'seconds_total': sum(run.seconds for run in self.runs),
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary: the summary and every run."""
        return {'summary': self.summary(),
                'runs': [asdict(run) for run in self.runs]}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _std(values: Sequence[float]) -> float:
    if not values:
        return math.nan
    mean = _mean(values)
    return math.sqrt(sum((v - mean)**2 for v in values) / len(values))
