"""Training and evaluation loops, early stopping and checkpoints.

Full-batch node classification as in the GAT paper: Adam on the
cross-entropy of the training nodes, early stopping on the validation nodes,
and the test accuracy read at the best validation epoch. Several seeds run in
one call. Two kinds of checkpoint are written when asked for:

* the *best model* of each seed, a plain dictionary of tensors and numbers
  that loads with ``torch.load(path, weights_only=True)``;
* the *training state* of each seed every few epochs (model, optimizer,
  random number generators, early stopping, metrics), from which an
  interrupted run resumes to the result an uninterrupted one gives, bit for
  bit on the CPU.
"""
import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Data
from tqdm.auto import tqdm

__all__ = [
    'EarlyStopping',
    'EpochMetrics',
    'PAPER_SETTINGS',
    'SeedResult',
    'TrainResult',
    'TrainingDivergedError',
    'evaluate',
    'fit',
    'resolve_device',
    'train_node_classifier',
]

STOP_CRITERIA = ('loss+acc', 'loss', 'acc')
# The GAT paper's transductive settings (Sec. 3.3): 8 heads of 8 features,
# dropout 0.6 and patience 100 everywhere; PubMed differs in these.
PAPER_SETTINGS: dict[str, dict[str, Any]] = {
    'Cora': {'lr': 0.005, 'weight_decay': 5e-4, 'output_heads': 1},
    'CiteSeer': {'lr': 0.005, 'weight_decay': 5e-4, 'output_heads': 1},
    'PubMed': {'lr': 0.01, 'weight_decay': 1e-3, 'output_heads': 8},
}
HISTORY_KEYS = ('epoch', 'loss', 'train_acc', 'val_loss', 'val_acc',
                'test_acc')
_PathLike = Union[str, os.PathLike]


class TrainingDivergedError(RuntimeError):
    """The training loss or the parameters became NaN or infinite."""


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
        if isinstance(patience, bool) or not isinstance(patience, int) or (
                patience < 1):
            raise ValueError(f"'EarlyStopping' got patience={patience!r}; "
                             'pass a positive integer')
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


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    """Turns ``'auto'`` into ``'cuda'`` when a GPU is available, else
    ``'cpu'``; checks that a requested GPU exists."""
    if device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"'resolve_device' got device={device!r}; pass "
                         "'cpu', 'cuda', 'cuda:<index>' or 'auto'") from err
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError("'resolve_device' got device='cuda' but no CUDA GPU "
                         "is available; pass 'cpu' or 'auto'")
    return device


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=warn_only)


def _check_data(data: Data) -> None:
    for key in ('x', 'edge_index', 'y', 'train_mask', 'val_mask',
                'test_mask'):
        if data.get(key) is None:
            raise ValueError(f"'fit' needs data.{key}; pass a graph with x, "
                             'edge_index, y and train/val/test masks, such as '
                             'load_planetoid(...)[0]')
    for key in ('train_mask', 'val_mask', 'test_mask'):
        mask = data[key]
        if mask.dtype != torch.bool or mask.dim() != 1:
            raise ValueError(
                f"'fit' needs data.{key} to be a 1-D boolean mask, got "
                f'{mask.dtype} of shape {tuple(mask.shape)}; for a split with '
                'several masks pick one column, e.g. mask[:, 0]')
        if not mask.any():
            raise ValueError(f"'fit' got an empty data.{key}; every split "
                             'needs at least one node')
    if not torch.isfinite(data.x).all():
        raise ValueError("'fit' got NaN or infinite node features in data.x; "
                         'clean or impute them before training')


def _accuracy(pred: Tensor, y: Tensor, mask: Tensor) -> float:
    return float((pred[mask] == y[mask]).float().mean())


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Data) -> dict[str, float]:
    """Accuracies on the three splits and the validation loss, in
    evaluation mode."""
    model.eval()
    out = model(data.x, data.edge_index)
    pred = out.argmax(dim=-1)
    return {
        'train_acc': _accuracy(pred, data.y, data.train_mask),
        'val_loss': float(F.cross_entropy(out[data.val_mask],
                                          data.y[data.val_mask])),
        'val_acc': _accuracy(pred, data.y, data.val_mask),
        'test_acc': _accuracy(pred, data.y, data.test_mask),
    }


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {'cpu': torch.get_rng_state()}
    if device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state['cpu'])
    if 'cuda' in state:
        torch.cuda.set_rng_state(state['cuda'], device)


def _cpu_state(module: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to('cpu', copy=True)
            for k, v in module.state_dict().items()}


def _save(obj: dict[str, Any], path: Path) -> None:
    # Write aside and rename, so that an interruption leaves the previous
    # checkpoint intact.
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + '.part')
    torch.save(obj, part)
    os.replace(part, path)


def _train_step(model: torch.nn.Module, forward_model: torch.nn.Module,
                optimizer: torch.optim.Optimizer, data: Data) -> Tensor:
    """One optimizer step on the training nodes; returns the loss."""
    model.train()
    optimizer.zero_grad()
    out = forward_model(data.x, data.edge_index)
    loss = F.cross_entropy(out[data.train_mask], data.y[data.train_mask])
    if torch.isfinite(loss):
        loss.backward()
        optimizer.step()
    return loss.detach()


def _diverged(what: str, epoch: int, seed: Optional[int], lr: float,
              weight_decay: float,
              cause: Optional[Exception] = None) -> TrainingDivergedError:
    where = f'epoch {epoch}' + ('' if seed is None else f' (seed {seed})')
    because = '' if cause is None else f" ({' '.join(str(cause).split())})"
    return TrainingDivergedError(
        f'Training diverged at {where}: {what} became NaN or infinite'
        f'{because}. Try a smaller learning rate (now {lr:g}), more weight '
        f'decay (now {weight_decay:g}) or more dropout, and check that the '
        'node features have a sensible scale (e.g. rows normalised to sum '
        'to one).')


def fit(
    model: torch.nn.Module,
    data: Data,
    *,
    epochs: int = 1000,
    patience: int = 100,
    lr: float = 0.005,
    weight_decay: float = 5e-4,
    stop_on: str = 'loss+acc',
    seed: Optional[int] = None,
    forward_model: Optional[torch.nn.Module] = None,
    best_path: Optional[_PathLike] = None,
    state_path: Optional[_PathLike] = None,
    state_every: int = 50,
    resume: bool = False,
    metadata: Optional[dict[str, Any]] = None,
    callback: Optional[Callable[[EpochMetrics], None]] = None,
    progress: bool = False,
) -> SeedResult:
    r"""Trains :obj:`model` full-batch on the nodes of :obj:`data`.

    Each epoch takes one Adam step on the cross-entropy of the training
    nodes, then evaluates every split. Early stopping (see
    :class:`EarlyStopping`) picks the best validation epoch; at the end the
    model holds the weights of that epoch, and the returned test accuracy is
    the one measured there. :obj:`model` and :obj:`data` must be on the same
    device; seed :func:`torch.manual_seed` before building the model for a
    reproducible run (:func:`train_node_classifier` does both).

    Args:
        model (torch.nn.Module): Maps ``(x, edge_index)`` to class logits.
        data (torch_geometric.data.Data): A graph with ``x``, ``edge_index``,
            ``y`` and boolean ``train_mask``, ``val_mask``, ``test_mask``.
        epochs (int, optional): Most epochs to train. (default: :obj:`1000`)
        patience (int, optional): Early-stopping patience in epochs.
            (default: :obj:`100`)
        lr (float, optional): Adam learning rate. (default: :obj:`0.005`)
        weight_decay (float, optional): Adam weight decay (L2).
            (default: :obj:`5e-4`)
        stop_on (str, optional): Early-stopping criterion, ``'loss+acc'``,
            ``'loss'`` or ``'acc'`` (see :class:`EarlyStopping`).
            (default: ``'loss+acc'``)
        seed (int, optional): The seed the model was built under, recorded in
            the result and the checkpoints. (default: :obj:`None`)
        forward_model (torch.nn.Module, optional): What to call for the
            forward passes, e.g. ``torch.compile(model)``; its parameters must
            be those of :obj:`model`. (default: :obj:`model`)
        best_path (str or os.PathLike, optional): Where to save the best
            model: a dictionary with ``'model'`` (the state dict), the best
            epoch's metrics, ``'seed'`` and ``'metadata'``, written at every
            training-state checkpoint and at the end. (default: :obj:`None`)
        state_path (str or os.PathLike, optional): Where to save the training
            state every :obj:`state_every` epochs and at the end.
            (default: :obj:`None`)
        state_every (int, optional): Epochs between training-state
            checkpoints. (default: :obj:`50`)
        resume (bool, optional): Whether to continue from :obj:`state_path`
            if it exists; a finished run is returned as it was. The
            checkpoint must have been written with the same settings.
            (default: :obj:`False`)
        metadata (dict, optional): Numbers and strings describing the run
            (hyperparameters, dataset), stored in both checkpoints and
            compared on resume. (default: :obj:`None`)
        callback (callable, optional): Called with the
            :class:`EpochMetrics` of every epoch. (default: :obj:`None`)
        progress (bool, optional): Whether to show a progress bar over the
            epochs. (default: :obj:`False`)

    Returns:
        SeedResult: The best epoch, its metrics and the per-epoch history.

    Raises:
        TrainingDivergedError: When the loss or a parameter becomes NaN or
            infinite; the message names the epoch and what to try.
    """
    for name, value, low in (('epochs', epochs, 1), ('patience', patience, 1),
                             ('state_every', state_every, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or (
                value < low):
            raise ValueError(f"'fit' got {name}={value!r}; pass a positive "
                             'integer')
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"'fit' got lr={lr!r}; pass a positive number")
    if not (isinstance(weight_decay, (int, float))
            and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"'fit' got weight_decay={weight_decay!r}; pass a "
                         'non-negative number')
    if resume and state_path is None:
        raise ValueError("'fit' got resume=True without a state_path to "
                         'resume from')
    _check_data(data)
    forward_model = model if forward_model is None else forward_model
    device = data.x.device
    best_path = None if best_path is None else Path(best_path)
    state_path = None if state_path is None else Path(state_path)
    settings = {'epochs': epochs, 'patience': patience, 'lr': lr,
                'weight_decay': weight_decay, 'stop_on': stop_on,
                'seed': seed, 'metadata': dict(metadata or {})}

    optimizer = torch.optim.Adam(model.parameters(), lr=lr,
                                 weight_decay=weight_decay)
    stopper = EarlyStopping(patience, stop_on)
    history: dict[str, list[float]] = {key: [] for key in HISTORY_KEYS}
    best_state = _cpu_state(model)
    best_metrics: Optional[EpochMetrics] = None
    start, seconds, finished = 1, 0.0, False

    if resume and state_path.is_file():
        state = torch.load(state_path, weights_only=True, map_location='cpu')
        _check_settings(state['settings'], settings, state_path)
        model.load_state_dict(state['model'])
        optimizer.load_state_dict(state['optimizer'])
        stopper.load_state_dict(state['early_stopping'])
        history = state['history']
        best_state = state['best_model']
        if state['best_metrics'] is not None:
            best_metrics = EpochMetrics(**state['best_metrics'])
        _set_rng_state(state['rng'], device)
        start, seconds = state['epoch'] + 1, state['seconds']
        finished = state['finished']

    def save_state(epoch: int) -> None:
        if best_path is not None and best_metrics is not None:
            _save({'model': best_state, **asdict(best_metrics),
                   'seed': seed, 'metadata': settings['metadata']},
                  best_path)
        if state_path is not None:
            _save({'settings': settings, 'epoch': epoch,
                   'finished': finished, 'seconds': seconds,
                   'model': _cpu_state(model),
                   'optimizer': optimizer.state_dict(),
                   'early_stopping': stopper.state_dict(),
                   'rng': _rng_state(device), 'history': history,
                   'best_model': best_state,
                   'best_metrics': (None if best_metrics is None else
                                    asdict(best_metrics))}, state_path)

    params = list(model.parameters())
    bar = tqdm(total=epochs, initial=start - 1, leave=False, unit='epoch',
               desc='epochs' if seed is None else f'seed {seed}',
               disable=not progress or finished, dynamic_ncols=True)
    last = start - 1 if finished else epochs
    stepped = False
    try:
        for epoch in range(start, last + 1):
            tic = time.perf_counter()
            try:
                loss = _train_step(model, forward_model, optimizer, data)
                stepped = True
                if not torch.isfinite(loss):
                    raise _diverged('the training loss', epoch, seed, lr,
                                    weight_decay)
                if not all(torch.isfinite(p).all() for p in params):
                    raise _diverged('a parameter', epoch, seed, lr,
                                    weight_decay)
                metrics = EpochMetrics(epoch=epoch, loss=loss.item(),
                                       **evaluate(forward_model, data))
            except ValueError as err:
                # The inputs passed the first forward pass, so a layer
                # refusing its input now means the weights made it
                # non-finite.
                if not stepped:
                    raise
                raise _diverged('a hidden feature', epoch, seed, lr,
                                weight_decay, cause=err) from err
            seconds += time.perf_counter() - tic
            if not math.isfinite(metrics.val_loss):
                raise _diverged('the validation loss', epoch, seed, lr,
                                weight_decay)
            for key, value in asdict(metrics).items():
                history[key].append(value)
            if stopper.step(epoch, metrics.val_loss, metrics.val_acc):
                best_state = _cpu_state(model)
                best_metrics = metrics
            finished = stopper.should_stop or epoch == epochs
            if callback is not None:
                callback(metrics)
            bar.update()
            bar.set_postfix(loss=f'{metrics.loss:.3f}',
                            val=f'{metrics.val_acc:.3f}',
                            best=f'{best_metrics.val_acc:.3f}')
            if finished or epoch % state_every == 0:
                save_state(epoch)
            if finished:
                break
    finally:
        bar.close()

    model.load_state_dict(best_state)
    return SeedResult(seed=seed, best_epoch=best_metrics.epoch,
                      val_acc=best_metrics.val_acc,
                      val_loss=best_metrics.val_loss,
                      test_acc=best_metrics.test_acc,
                      epochs=len(history['epoch']), seconds=seconds,
                      history=history)


def _check_settings(saved: dict[str, Any], current: dict[str, Any],
                    path: Path) -> None:
    changed = [f'{key}: {saved.get(key)!r} there, {current[key]!r} now'
               for key in current if saved.get(key) != current[key]]
    if changed:
        raise ValueError(
            f'Cannot resume from {path}: it was written with other settings '
            f"({'; '.join(changed)}); run with the same settings, or start "
            'afresh without resuming or in another output folder')


def train_node_classifier(
    build_model: Callable[[], torch.nn.Module],
    data: Data,
    seeds: Sequence[int] = (0, ),
    *,
    epochs: int = 1000,
    patience: int = 100,
    lr: float = 0.005,
    weight_decay: float = 5e-4,
    stop_on: str = 'loss+acc',
    device: Union[str, torch.device] = 'cpu',
    compile: bool = False,
    deterministic: Optional[bool] = None,
    checkpoint_dir: Optional[_PathLike] = None,
    checkpoint_every: int = 50,
    resume: bool = False,
    metadata: Optional[dict[str, Any]] = None,
    on_epoch: Optional[Callable[[int, EpochMetrics], None]] = None,
    on_seed_end: Optional[Callable[[SeedResult], None]] = None,
    progress: bool = False,
) -> TrainResult:
    r"""Trains a fresh model for each seed and summarises the test accuracy.

    For each seed, :func:`torch.manual_seed` is called, then
    :obj:`build_model` builds the model, which :func:`fit` trains. With
    :obj:`checkpoint_dir`, each seed writes ``best_seed<seed>.pt`` (the best
    model) and ``state_seed<seed>.pt`` (the training state) there.

    Args:
        build_model (callable): Returns a new, freshly initialised model.
        data (torch_geometric.data.Data): The graph, see :func:`fit`.
        seeds (sequence of int, optional): One run per seed.
            (default: :obj:`(0,)`)
        epochs, patience, lr, weight_decay, stop_on: As in :func:`fit`.
        device (str or torch.device, optional): ``'cpu'``, ``'cuda'`` or
            ``'auto'``. (default: ``'cpu'``)
        compile (bool, optional): Whether to run the forward passes through
            :func:`torch.compile`. Compiled dropout draws its own random
            numbers, so runs are then not bit-for-bit reproducible.
            (default: :obj:`False`)
        deterministic (bool, optional): Whether to switch on
            :func:`torch.use_deterministic_algorithms` during training. If
            :obj:`None`, on for the CPU and off for GPUs, where scatter
            operations have no deterministic kernels. (default: :obj:`None`)
        checkpoint_dir (str or os.PathLike, optional): Folder of the
            checkpoints. (default: :obj:`None`)
        checkpoint_every (int, optional): Epochs between training-state
            checkpoints. (default: :obj:`50`)
        resume (bool, optional): Whether to resume each seed from its
            training state in :obj:`checkpoint_dir`, where there is one.
            (default: :obj:`False`)
        metadata (dict, optional): As in :func:`fit`. (default: :obj:`None`)
        on_epoch (callable, optional): Called with the seed and the
            :class:`EpochMetrics` of every epoch. (default: :obj:`None`)
        on_seed_end (callable, optional): Called with each
            :class:`SeedResult`. (default: :obj:`None`)
        progress (bool, optional): Whether to show progress bars over the
            seeds and the epochs. (default: :obj:`False`)

    Returns:
        TrainResult: One :class:`SeedResult` per seed, and their summary.
    """
    seeds = list(seeds)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                            for s in seeds):
        raise ValueError(f"'train_node_classifier' got seeds={seeds!r}; pass "
                         'a non-empty sequence of integers')
    if resume and checkpoint_dir is None:
        raise ValueError("'train_node_classifier' got resume=True without a "
                         'checkpoint_dir to resume from')
    device = resolve_device(device)
    if deterministic is None:
        deterministic = device.type == 'cpu'
    data = data.to(device)
    folder = None if checkpoint_dir is None else Path(checkpoint_dir)

    runs = []
    with _deterministic(deterministic):
        for seed in tqdm(seeds, desc='seeds', unit='seed',
                         disable=not progress or len(seeds) == 1,
                         dynamic_ncols=True):
            torch.manual_seed(seed)
            model = build_model().to(device)
            forward_model = torch.compile(model) if compile else model
            callback = None
            if on_epoch is not None:
                def callback(metrics: EpochMetrics, seed: int = seed) -> None:
                    on_epoch(seed, metrics)
            run = fit(
                model, data, epochs=epochs, patience=patience, lr=lr,
                weight_decay=weight_decay, stop_on=stop_on, seed=seed,
                forward_model=forward_model,
                best_path=None if folder is None else
                folder / f'best_seed{seed}.pt',
                state_path=None if folder is None else
                folder / f'state_seed{seed}.pt',
                state_every=checkpoint_every, resume=resume,
                metadata=metadata, callback=callback, progress=progress)
            runs.append(run)
            if on_seed_end is not None:
                on_seed_end(run)
    return TrainResult(runs)


# The DictionaryLookup loop lives in pyg_gatv2.lookup, which imports this
# module; its names stay importable from here, loaded on first use.
_LOOKUP_NAMES = ('LookupResult', 'evaluate_lookup', 'train_lookup')


def __getattr__(name: str) -> Any:
    if name in _LOOKUP_NAMES:
        from pyg_gatv2 import lookup
        return getattr(lookup, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
