"""The state of a training run, and its two kinds of checkpoint.

* the *best model*, a plain dictionary of tensors and numbers that loads
  with ``torch.load(path, weights_only=True)``;
* the *training state* (model, optimizer, random number generators, early
  stopping, metrics), from which an interrupted run resumes to the result an
  uninterrupted one gives, bit for bit on the CPU.

Both are written aside and renamed, so that an interruption leaves the
previous checkpoint intact. In a run of several processes (see
:mod:`pyg_gatv2.experiments.training.distributed`) process 0 writes them, with the
random number generators of every process, and every process reads them.
"""
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from .distributed import all_gather_objects, is_main, world
from .early_stopping import EarlyStopping
from .results import HISTORY_KEYS, EpochMetrics, SeedResult

__all__ = ['RunState', 'Checkpoints', 'cpu_state', 'rng_state',
           'set_rng_state', 'save_atomic']


def cpu_state(module: torch.nn.Module) -> dict[str, Tensor]:
    """A copy of ``module``'s state dict on the CPU."""
    return {k: v.detach().to('cpu', copy=True)
            for k, v in module.state_dict().items()}


def rng_state(device: torch.device) -> dict[str, Any]:
    """The states of torch's random number generators on the CPU and on
    ``device``."""
    state = {'cpu': torch.get_rng_state()}
    if device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restores what :func:`rng_state` returned."""
    torch.set_rng_state(state['cpu'])
    if 'cuda' in state:
        torch.cuda.set_rng_state(state['cuda'], device)


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """Saves ``obj`` aside and renames it to ``path``, so that an
    interruption leaves the previous file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + '.part')
    torch.save(obj, part)
    os.replace(part, path)


@dataclass
class RunState:
    """Everything a run carries from one epoch to the next.

    Attributes:
        model: The model being trained.
        optimizer: Its optimizer.
        stopper: The early stopping.
        history: One list per metric of :class:`EpochMetrics`.
        best_state: The model's weights at the best epoch (on the CPU).
        best_metrics: The metrics of the best epoch so far.
        epoch: The last epoch done.
        seconds: Training time so far.
        finished: Whether early stopping or the epoch limit ended the run.
    """
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    stopper: EarlyStopping
    history: dict[str, list[float]] = field(
        default_factory=lambda: {key: [] for key in HISTORY_KEYS})
    best_state: Optional[dict[str, Tensor]] = None
    best_metrics: Optional[EpochMetrics] = None
    epoch: int = 0
    seconds: float = 0.0
    finished: bool = False

    def __post_init__(self) -> None:
        if self.best_state is None:
            self.best_state = cpu_state(self.model)

    def record(self, metrics: EpochMetrics, seconds: float,
               max_epochs: int) -> None:
        """Adds an epoch: its metrics, time, and the early-stopping step."""
        for key, value in asdict(metrics).items():
            self.history[key].append(value)
        self.seconds += seconds
        self.epoch = metrics.epoch
        if self.stopper.step(metrics.epoch, metrics.val_loss,
                             metrics.val_acc):
            self.best_state = cpu_state(self.model)
            self.best_metrics = metrics
        self.finished = (self.stopper.should_stop
                         or metrics.epoch == max_epochs)

    def result(self, seed: Optional[int]) -> SeedResult:
        """Loads the best weights into the model; returns the outcome."""
        self.model.load_state_dict(self.best_state)
        best = self.best_metrics
        return SeedResult(seed=seed, best_epoch=best.epoch,
                          val_acc=best.val_acc, val_loss=best.val_loss,
                          test_acc=best.test_acc,
                          epochs=len(self.history['epoch']),
                          seconds=self.seconds, history=self.history)


class Checkpoints:
    """Writes and reads the checkpoints of one run.

    Args:
        best_path (Path, optional): The best model's file.
        state_path (Path, optional): The training state's file.
        settings (dict): The run's settings, stored in the training state
            and compared on resume.
        seed (int, optional): The run's seed, stored in the best model.
    """
    def __init__(self, best_path: Optional[Path], state_path: Optional[Path],
                 settings: dict[str, Any], seed: Optional[int]) -> None:
        self.best_path = best_path
        self.state_path = state_path
        self.settings = settings
        self.seed = seed

    def save(self, run: RunState, device: torch.device) -> None:
        """Writes the best model and the training state after
        ``run.epoch``; called by every process of a multi-process run."""
        rngs = all_gather_objects(rng_state(device))
        if not is_main():
            return
        if self.best_path is not None and run.best_metrics is not None:
            save_atomic({'model': run.best_state, **asdict(run.best_metrics),
                   'seed': self.seed, 'metadata': self.settings['metadata']},
                  self.best_path)
        if self.state_path is not None:
            save_atomic({'settings': self.settings, 'epoch': run.epoch,
                   'finished': run.finished, 'seconds': run.seconds,
                   'model': cpu_state(run.model),
                   'optimizer': run.optimizer.state_dict(),
                   'early_stopping': run.stopper.state_dict(),
                   'rng': rngs[0], 'history': run.history,
                   **({'rng_by_rank': rngs} if len(rngs) > 1 else {}),
                   'best_model': run.best_state,
                   'best_metrics': (None if run.best_metrics is None else
                                    asdict(run.best_metrics))},
                  self.state_path)

    def restore(self, run: RunState, device: torch.device) -> bool:
        """Continues ``run`` from the training state, if there is one;
        returns whether there was."""
        if self.state_path is None or not self.state_path.is_file():
            return False
        state = torch.load(self.state_path, weights_only=True,
                           map_location='cpu')
        self._check_settings(state['settings'])
        run.model.load_state_dict(state['model'])
        run.optimizer.load_state_dict(state['optimizer'])
        run.stopper.load_state_dict(state['early_stopping'])
        run.history = state['history']
        run.best_state = state['best_model']
        if state['best_metrics'] is not None:
            run.best_metrics = EpochMetrics(**state['best_metrics'])
        rank = world()[0]
        set_rng_state(state['rng_by_rank'][rank] if rank else state['rng'],
                      device)
        run.epoch, run.seconds = state['epoch'], state['seconds']
        run.finished = state['finished']
        return True

    def _check_settings(self, saved: dict[str, Any]) -> None:
        changed = [f'{key}: {saved.get(key)!r} there, {value!r} now'
                   for key, value in self.settings.items()
                   if saved.get(key) != value]
        if changed:
            raise ValueError(
                f'Cannot resume from {self.state_path}: it was written with '
                f"other settings ({'; '.join(changed)}); run with the same "
                'settings, or start afresh without resuming or in another '
                'output folder')
