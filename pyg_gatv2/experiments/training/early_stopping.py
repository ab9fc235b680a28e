"""Early stopping on the validation nodes, as in the GAT paper."""
import math
from typing import Any

from pyg_gatv2.checks import check_positive_ints

__all__ = ['EarlyStopping', 'STOP_CRITERIA']

#: The criteria of :class:`EarlyStopping`, described there.
STOP_CRITERIA = ('loss+acc', 'loss', 'acc')


class EarlyStopping:
    r"""Picks the best validation epoch and tells when to stop.

    Criteria:

    * ``'loss+acc'`` (the GAT paper's): the patience counter restarts when
      the validation accuracy reaches its best so far *or* the validation
      loss reaches its lowest so far; an epoch becomes the best one when it
      does both.
    * ``'loss'``: best and restart when the validation loss falls below its
      lowest so far.
    * ``'acc'``: best and restart when the validation accuracy rises above
      its best so far, or equals it at a lower validation loss.

    Args:
        patience (int, optional): Epochs without a restart before stopping.
            (default: :obj:`100`)
        criterion (str, optional): ``'loss+acc'``, ``'loss'`` or ``'acc'``.
            (default: ``'loss+acc'``)
    """
    def __init__(self, patience: int = 100,
                 criterion: str = 'loss+acc') -> None:
        check_positive_ints('EarlyStopping', patience=patience)
        if criterion not in STOP_CRITERIA:
            raise ValueError(f"'EarlyStopping' got criterion={criterion!r}; "
                             f"choose one of {', '.join(STOP_CRITERIA)}")
        self.patience = patience
        self.criterion = criterion
        self.best_loss = math.inf
        self.best_acc = -math.inf
        self.best_epoch = 0
        self.best_epoch_loss = math.inf
        self.counter = 0

    @property
    def should_stop(self) -> bool:
        return self.counter >= self.patience

    def step(self, epoch: int, val_loss: float, val_acc: float) -> bool:
        """Records an epoch; returns whether it is the new best epoch."""
        if self.criterion == 'loss+acc':
            better_acc = val_acc >= self.best_acc
            better_loss = val_loss <= self.best_loss
            restart = better_acc or better_loss
            best = better_acc and better_loss
        elif self.criterion == 'loss':
            restart = best = val_loss < self.best_loss
        else:
            restart = best = val_acc > self.best_acc or (
                val_acc == self.best_acc and val_loss < self.best_epoch_loss)
        self.best_acc = max(self.best_acc, val_acc)
        self.best_loss = min(self.best_loss, val_loss)
        self.counter = 0 if restart else self.counter + 1
        if best:
            self.best_epoch = epoch
            self.best_epoch_loss = val_loss
        return best

    def state_dict(self) -> dict[str, Any]:
        return {'best_loss': self.best_loss, 'best_acc': self.best_acc,
                'best_epoch': self.best_epoch,
                'best_epoch_loss': self.best_epoch_loss,
                'counter': self.counter}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)
