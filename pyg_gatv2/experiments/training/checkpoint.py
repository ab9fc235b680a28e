"""The state of a training run, and its two kinds of checkpoint.

* the *best model*, a plain dictionary of tensors and numbers that loads
  with ``torch.load(path, weights_only=True)``;
* the *training state* (model, optimizer, random number generators, early
  stopping, metrics), from which an interrupted run resumes to the result an
  uninterrupted one gives, bit for bit on the CPU.

Both are written aside and renamed, so that an interruption leaves the
previous checkpoint intact. In a run of several processes (see
:mod:`pyg_gatv2.experiments.training.distributed`) process 0 writes them,
with the random number generators of every process, and every process
reads them. A file that cannot be read back (a disk that filled up, a copy
cut short) is a :class:`CheckpointError` that names it.
"""
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from .distributed import all_gather_objects, is_main, world

__all__ = ['CheckpointError', 'RunState', 'Checkpoints', 'cpu_state',
           'load_checkpoint', 'rng_state', 'set_rng_state', 'save_atomic']


class CheckpointError(OSError):
    """A checkpoint file cannot be read: it is truncated, corrupt or not a
    checkpoint of this kind.

    An :class:`OSError`, like any other failure to obtain usable data from a
    file; the message names the file, what is wrong with it and how to go
    on.
    """


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


def load_checkpoint(path: Path, what: str, remedy: str,
                    keys: Sequence[str] = ()) -> dict[str, Any]:
    """Loads the checkpoint at ``path`` onto the CPU with
    ``weights_only``; raises :class:`CheckpointError`, naming ``what`` the
    file should hold and the ``remedy``, when it cannot be read or is not a
    dictionary with ``keys``."""
    try:
        obj = torch.load(path, weights_only=True, map_location='cpu')
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise  # their messages name the file, and the file is not to blame
    except Exception as err:
        # Only the type of torch's error: its message for a file that is
        # not made of tensors advises weights_only=False, which would run
        # any code a tampered file holds.
        raise CheckpointError(
            f'{path}: cannot be read as {what} ({type(err).__name__}): the '
            f'file is truncated or corrupt; {remedy}') from err
    if not isinstance(obj, dict):
        raise CheckpointError(f'{path}: holds a {type(obj).__name__}, not '
                              f'{what}; {remedy}')
    missing = ', '.join(repr(key) for key in keys if key not in obj)
    if missing:
        raise CheckpointError(f'{path}: holds a dictionary without '
                              f'{missing}, not {what}; {remedy}')
    return obj


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """Saves ``obj`` aside and renames it to ``path``, so that an
    interruption leaves the previous file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + '.part')
    torch.save(obj, part)
    os.replace(part, path)


@dataclass
class RunState:
    """Everything a training run carries from one evaluation to the next:
    the one record of both experiments' runs (node classification and
    DictionaryLookup), which :class:`Checkpoints` saves and restores.

    Attributes:
        model: The model being trained.
        optimizer: Its optimizer.
        history_keys: The entries of an evaluation that the history keeps.
        helpers: Objects whose state the run carries too, by name: anything
            with ``state_dict``/``load_state_dict`` (early stopping, a
            learning rate scheduler) or a :class:`torch.Generator`.
        history: One list per key of :attr:`history_keys`.
        best_state: The model's weights at the best evaluation (on the CPU).
        best: The entry of the best evaluation so far, or :obj:`None`.
        epoch: The last epoch done.
        steps: Optimizer steps so far.
        seconds: Training time so far.
        stop: Why the run ended (for example ``'patience'`` or
            ``'max_epochs'``), or :obj:`None` while it goes on.
    """
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    history_keys: Sequence[str]
    helpers: dict[str, Any] = field(default_factory=dict)
    history: dict[str, list[Any]] = field(default_factory=dict)
    best_state: Optional[dict[str, Tensor]] = None
    best: Optional[dict[str, Any]] = None
    epoch: int = 0
    steps: int = 0
    seconds: float = 0.0
    stop: Optional[str] = None

    def __post_init__(self) -> None:
        self.history = {key: [] for key in self.history_keys}
        if self.best_state is None:
            self.best_state = cpu_state(self.model)

    @property
    def finished(self) -> bool:
        return self.stop is not None

    def record(self, entry: dict[str, Any], is_best: bool) -> None:
        """Adds an evaluation to the history; keeps it and the model's
        weights if it is the best so far."""
        for key in self.history_keys:
            self.history[key].append(entry[key])
        if is_best:
            self.best = dict(entry)
            self.best_state = cpu_state(self.model)

    def state_dict(self) -> dict[str, Any]:
        """What a training-state checkpoint holds of the run."""
        return {'model': cpu_state(self.model),
                'optimizer': self.optimizer.state_dict(),
                'helpers': {name: _state_of(helper)
                            for name, helper in self.helpers.items()},
                'history': self.history, 'best_state': self.best_state,
                'best': self.best, 'epoch': self.epoch, 'steps': self.steps,
                'seconds': self.seconds, 'stop': self.stop}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state['model'])
        self.optimizer.load_state_dict(state['optimizer'])
        for name, helper in self.helpers.items():
            _load_state(helper, state['helpers'][name])
        for key in ('history', 'best_state', 'best', 'epoch', 'steps',
                    'seconds', 'stop'):
            setattr(self, key, state[key])


def _state_of(helper: Any) -> Any:
    if isinstance(helper, torch.Generator):
        return helper.get_state()
    return helper.state_dict()


def _load_state(helper: Any, state: Any) -> None:
    if isinstance(helper, torch.Generator):
        helper.set_state(state)
    else:
        helper.load_state_dict(state)


# What restore reads of a training-state file besides its settings.
_STATE_KEYS = ('rng', 'model', 'optimizer', 'helpers', 'history',
               'best_state', 'best', 'epoch', 'steps', 'seconds', 'stop')


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
        if self.best_path is not None and run.best is not None:
            save_atomic({'model': run.best_state, **run.best,
                         'seed': self.seed,
                         'metadata': self.settings.get('metadata', {})},
                        self.best_path)
        if self.state_path is not None:
            save_atomic({'settings': self.settings, **run.state_dict(),
                         'rng': rngs[0],
                         **({'rng_by_rank': rngs} if len(rngs) > 1 else {})},
                        self.state_path)

    def restore(self, run: RunState, device: torch.device) -> bool:
        """Continues ``run`` from the training state, if there is one;
        returns whether there was. Raises :class:`CheckpointError` when the
        file cannot be read, and :class:`ValueError` when it was written
        with other settings."""
        if self.state_path is None or not self.state_path.is_file():
            return False
        state = load_checkpoint(
            self.state_path, 'a training-state checkpoint',
            'delete it, and resume again to train this run from the start '
            '(the other runs resume from their own checkpoints), or start '
            'afresh in another output folder',
            keys=_STATE_KEYS)
        self._check_settings(state.get('settings', {}))
        run.load_state_dict(state)
        rank = world()[0]
        set_rng_state(state['rng_by_rank'][rank] if rank else state['rng'],
                      device)
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
