"""Node classification, full-batch as in the GAT paper: Adam on the
cross-entropy of the training nodes, early stopping on the validation nodes,
and the test accuracy read at the best validation epoch. Several seeds run
in one call.

An epoch is a pass of :func:`train_epoch` over batches (the whole graph is
one batch), then :func:`evaluate`; the run's state and its checkpoints live
in :mod:`pyg_gatv2.experiments.training.checkpoint`.
"""
import contextlib
import inspect
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Data
from tqdm.auto import tqdm

from pyg_gatv2.checks import check_positive_ints

from .checkpoint import Checkpoints, RunState
from .distributed import all_reduce_sum, heartbeat, is_main, world, wrap
from .early_stopping import STOP_CRITERIA, EarlyStopping
from .results import (
    HISTORY_KEYS,
    EpochMetrics,
    SeedResult,
    TrainResult,
    diverged,
)
from .sampling import FullBatch, NeighborBatches, whole_neighbourhoods

BatchSource = Union[FullBatch, NeighborBatches]

__all__ = ['PAPER_SETTINGS', 'Recipe', 'CheckpointFiles', 'Checkpointing',
           'Sampling', 'evaluate', 'fit', 'resolve_device', 'train_epoch',
           'train_node_classifier']

#: The GAT paper's transductive settings by dataset (Sec. 3.3). 8 heads of 8
#: features, dropout 0.6 and patience 100 everywhere; PubMed differs in
#: these.
PAPER_SETTINGS: dict[str, dict[str, Any]] = {
    'Cora': {'lr': 0.005, 'weight_decay': 5e-4, 'output_heads': 1},
    'CiteSeer': {'lr': 0.005, 'weight_decay': 5e-4, 'output_heads': 1},
    'PubMed': {'lr': 0.01, 'weight_decay': 1e-3, 'output_heads': 8},
}
_PathLike = Union[str, os.PathLike]


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


def check_data(data: Data) -> None:
    """Checks that ``data`` has what node classification needs."""
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
def evaluate(model: torch.nn.Module, data: Data,
             loader: Optional[Iterable[Data]] = None) -> dict[str, float]:
    """Accuracies on the three splits and the validation loss, in
    evaluation mode: from one full-batch pass, or with :obj:`loader`
    (:func:`~pyg_gatv2.experiments.training.sampling.whole_neighbourhoods`)
    layer by layer through ``model.inference(loader)``."""
    model.eval()
    if loader is None:
        out = model(data.x, data.edge_index)
    else:
        out = model.inference(loader, device=data.x.device,
                              embedding_device=data.x.device)
    pred = out.argmax(dim=-1)
    return {
        'train_acc': _accuracy(pred, data.y, data.train_mask),
        'val_loss': float(F.cross_entropy(out[data.val_mask],
                                          data.y[data.val_mask])),
        'val_acc': _accuracy(pred, data.y, data.val_mask),
        'test_acc': _accuracy(pred, data.y, data.test_mask),
    }


def train_epoch(model: torch.nn.Module, forward_model: torch.nn.Module,
                optimizer: torch.optim.Optimizer,
                batches: Iterable[Data]) -> Tensor:
    """One optimizer step per batch on the cross-entropy of its training
    nodes (``batch.train_mask``), multiplied by ``batch.loss_scale`` where
    the batch has one (see :mod:`pyg_gatv2.experiments.training.sampling`).
    A batch with ``num_seeds`` passes it to a model whose forward takes it,
    which then returns the seeds' outputs only. Returns the
    loss averaged over the training nodes of all batches, and of all
    processes under :mod:`torch.distributed`.

    Every process runs the backward pass, so that the gradients' all-reduce
    of :class:`~torch.nn.parallel.DistributedDataParallel` always completes;
    a step whose gradients are not finite is skipped (on every process
    alike, as they hold the same gradients), and the caller reports the
    divergence."""
    model.train()
    forward_model.train()
    total = torch.zeros((), dtype=torch.float64)
    nodes = steps = 0
    for step, batch in enumerate(batches, start=1):
        heartbeat(stage=f'step {step}: forward')
        optimizer.zero_grad()
        out = forward_model(batch.x, batch.edge_index,
                            **_seed_kwargs(model, batch))
        # The output covers the first nodes: all, or the seeds.
        mask = batch.train_mask[:out.size(0)]
        loss = F.cross_entropy(out[mask], batch.y[:out.size(0)][mask])
        heartbeat(stage=f'step {step}: gradients')
        (loss * batch.get('loss_scale', 1.0)).backward()
        if _finite_gradients(model):
            optimizer.step()
        count = int(mask.sum())
        total = total + loss.detach().cpu().double() * count
        nodes, steps = nodes + count, step
    if not steps:
        raise ValueError("'train_epoch' got no batches; pass the graph as "
                         'a one-element list, or a non-empty loader')
    if steps == 1 and world()[1] == 1:
        return loss.detach()
    total, nodes = all_reduce_sum(
        torch.stack([total, torch.tensor(nodes, dtype=torch.float64)]))
    return (total / nodes).to(loss.dtype)


def _seed_kwargs(model: torch.nn.Module, batch: Data) -> dict[str, int]:
    """``num_seeds`` for a mini-batch whose seed nodes come first, where the
    model's forward takes it (as :meth:`pyg_gatv2.models.GATv2.forward`
    does, to compute only what the seeds need)."""
    if ('num_seeds' not in batch or 'num_seeds'
            not in inspect.signature(model.forward).parameters):
        return {}
    return {'num_seeds': batch.num_seeds}


def _finite_gradients(model: torch.nn.Module) -> bool:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return True
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


@dataclass(frozen=True)
class Recipe:
    """How a node classifier is trained: Adam on the cross-entropy of the
    training nodes with early stopping on the validation nodes. The
    defaults are the GAT paper's for Cora and CiteSeer.

    Attributes:
        epochs (int): Most epochs to train.
        patience (int): Early-stopping patience in epochs.
        lr (float): Adam learning rate.
        weight_decay (float): Adam weight decay (L2).
        stop_on (str): Early-stopping criterion, ``'loss+acc'``, ``'loss'``
            or ``'acc'`` (see :class:`EarlyStopping`).
    """
    epochs: int = 1000
    patience: int = 100
    lr: float = 0.005
    weight_decay: float = 5e-4
    stop_on: str = 'loss+acc'

    def __post_init__(self) -> None:
        check_positive_ints('Recipe', epochs=self.epochs,
                            patience=self.patience)
        for name, low in (('lr', 'positive'),
                          ('weight_decay', 'non-negative')):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value)
                    and (value > 0 if low == 'positive' else value >= 0)):
                raise ValueError(f"'Recipe' got {name}={value!r}; pass a "
                                 f'{low} number')
        if self.stop_on not in STOP_CRITERIA:
            raise ValueError(f"'Recipe' got stop_on={self.stop_on!r}; "
                             f"choose one of {', '.join(STOP_CRITERIA)}")

    def settings(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CheckpointFiles:
    """Where :func:`fit` keeps one run's checkpoints (see
    :mod:`pyg_gatv2.experiments.training.checkpoint`).

    Attributes:
        best_path (str or os.PathLike, optional): The best model: a
            dictionary with ``'model'`` (the state dict), the best epoch's
            metrics, ``'seed'`` and ``'metadata'``, written at every
            training-state checkpoint and at the end.
        state_path (str or os.PathLike, optional): The training state,
            written every :attr:`every` epochs and at the end.
        every (int): Epochs between training-state checkpoints.
        resume (bool): Whether to continue from :attr:`state_path` if it
            exists; a finished run is returned as it was. The checkpoint
            must have been written with the same settings. Without it, a
            file of an earlier run at either path is an error, never
            overwritten.
    """
    best_path: Optional[_PathLike] = None
    state_path: Optional[_PathLike] = None
    every: int = 50
    resume: bool = False

    def __post_init__(self) -> None:
        check_positive_ints('CheckpointFiles', every=self.every)
        if self.resume and self.state_path is None:
            raise ValueError("'CheckpointFiles' got resume=True without a "
                             'state_path to resume from')

    def check_unused(self) -> None:
        """Raises :class:`FileExistsError` when a run that does not resume
        would overwrite the files of an earlier one."""
        if self.resume:
            return
        for path in (self.state_path, self.best_path):
            if path is not None and os.path.exists(path):
                raise FileExistsError(
                    f'{path} holds a checkpoint of an earlier run, which '
                    'training afresh would overwrite; pass resume=True to '
                    'continue that run, or keep the checkpoints of this one '
                    'elsewhere (or delete the file to train afresh)')

    def of(self, settings: dict[str, Any],
           seed: Optional[int]) -> Checkpoints:
        return Checkpoints(
            None if self.best_path is None else Path(self.best_path),
            None if self.state_path is None else Path(self.state_path),
            settings, seed)


@dataclass(frozen=True)
class Checkpointing:
    """Where :func:`train_node_classifier` keeps its checkpoints: for each
    seed, ``best_seed<seed>.pt`` (the best model) and
    ``state_seed<seed>.pt`` (the training state) in :attr:`folder`.

    Attributes:
        folder (str or os.PathLike): The folder.
        every (int): Epochs between training-state checkpoints.
        resume (bool): Whether to resume each seed from its training state,
            where there is one. Without it, a folder that holds a checkpoint
            of one of the seeds is an error, never overwritten.
    """
    folder: _PathLike
    every: int = 50
    resume: bool = False

    def files(self, seed: int) -> CheckpointFiles:
        folder = Path(self.folder)
        return CheckpointFiles(folder / f'best_seed{seed}.pt',
                               folder / f'state_seed{seed}.pt', self.every,
                               self.resume)


@dataclass(frozen=True)
class Sampling:
    """Mini-batches of training nodes with their sampled neighbourhoods
    (see :class:`~pyg_gatv2.experiments.training.sampling.NeighborBatches`,
    which needs torch-sparse or pyg-lib).

    Attributes:
        batch_size (int): Seed nodes per mini-batch and process.
        num_neighbors (sequence of int): Neighbours sampled per node at each
            hop, one entry per layer.
        num_workers (int): Processes that sample mini-batches ahead of
            training.
        eval_batch_size (int, optional): Evaluate layer by layer
            (``model.inference``, see :meth:`pyg_gatv2.GATv2.inference`)
            over batches of this many nodes, for graphs whose full-batch
            pass does not fit in memory; :obj:`None` evaluates full-batch.
    """
    batch_size: int
    num_neighbors: Sequence[int] = (10, 10)
    num_workers: int = 0
    eval_batch_size: Optional[int] = None

    def batches(self, data: Data, device: torch.device) -> NeighborBatches:
        return NeighborBatches(data.cpu(), list(self.num_neighbors),
                               self.batch_size, device=device,
                               num_workers=self.num_workers)


def _epoch(run: RunState, models: tuple[torch.nn.Module, torch.nn.Module],
           data: Data, batches: Iterable[Data], first: bool,
           seed: Optional[int], recipe: Recipe,
           eval_loader: Optional[Iterable[Data]]) -> EpochMetrics:
    """Trains (through ``train_model``) and evaluates (through
    ``forward_model``, or ``run.model.inference`` over ``eval_loader``),
    ``models`` being the two, epoch ``run.epoch + 1`` (``first``: the
    first of this call); raises :class:`TrainingDivergedError` on
    divergence."""
    train_model, forward_model = models
    epoch = run.epoch + 1
    args = (epoch, seed, recipe.lr, recipe.weight_decay)
    heartbeat(epoch=epoch)
    try:
        loss = train_epoch(run.model, train_model, run.optimizer, batches)
    except ValueError as err:
        # The inputs passed the first forward pass, so a layer refusing its
        # input later means the weights made it non-finite.
        if first:
            raise
        raise diverged('a hidden feature', *args, cause=err) from err
    if not torch.isfinite(loss):
        raise diverged('the training loss', *args)
    if not all(torch.isfinite(p).all() for p in run.model.parameters()):
        raise diverged('a parameter', *args)
    heartbeat(stage='evaluation')
    try:
        metrics = EpochMetrics(epoch=epoch, loss=loss.item(), **(
            evaluate(forward_model, data) if eval_loader is None else
            evaluate(run.model, data, eval_loader)))
    except ValueError as err:
        raise diverged('a hidden feature', *args, cause=err) from err
    if not math.isfinite(metrics.val_loss):
        raise diverged('the validation loss', *args)
    return metrics


def _record(run: RunState, metrics: EpochMetrics, seconds: float,
            recipe: Recipe) -> None:
    """Adds an epoch to ``run``: its metrics, the early-stopping step and
    whether the run ends."""
    stopper = run.helpers['early_stopping']
    is_best = stopper.step(metrics.epoch, metrics.val_loss, metrics.val_acc)
    run.record(asdict(metrics), is_best)
    run.epoch = metrics.epoch
    run.seconds += seconds
    if stopper.should_stop:
        run.stop = 'patience'
    elif metrics.epoch >= recipe.epochs:
        run.stop = 'max_epochs'


def _seed_result(run: RunState, seed: Optional[int]) -> SeedResult:
    """Loads the best weights into the model; returns the outcome."""
    run.model.load_state_dict(run.best_state)
    best = run.best
    return SeedResult(seed=seed, best_epoch=best['epoch'],
                      val_acc=best['val_acc'], val_loss=best['val_loss'],
                      test_acc=best['test_acc'],
                      epochs=len(run.history['epoch']), seconds=run.seconds,
                      history=run.history)


def fit(
    model: torch.nn.Module,
    data: Data,
    recipe: Optional[Recipe] = None,
    *,
    seed: Optional[int] = None,
    forward_model: Optional[torch.nn.Module] = None,
    batches: Optional[BatchSource] = None,
    checkpoints: Optional[CheckpointFiles] = None,
    metadata: Optional[dict[str, Any]] = None,
    callback: Optional[Callable[[EpochMetrics], None]] = None,
    progress: bool = False,
    eval_batch_size: Optional[int] = None,
) -> SeedResult:
    r"""Trains :obj:`model` on the nodes of :obj:`data`, full-batch or in
    mini-batches, in one process or several.

    Each epoch takes one Adam step per batch of :obj:`batches` on the
    cross-entropy of its training nodes (full-batch: one step on all of
    them), then evaluates every split on the whole graph. Early stopping (see
    :class:`EarlyStopping`) picks the best validation epoch; at the end the
    model holds the weights of that epoch, and the returned test accuracy is
    the one measured there. :obj:`model` and :obj:`data` must be on the same
    device; seed :func:`torch.manual_seed` before building the model for a
    reproducible run (:func:`train_node_classifier` does both).

    Under a :mod:`torch.distributed` process group (see
    :mod:`pyg_gatv2.experiments.training.distributed`) every process calls
    :func:`fit` with the same arguments: the training steps run through
    :class:`~torch.nn.parallel.DistributedDataParallel`, each process on its
    share of the training nodes; every process evaluates the whole graph
    with the same weights, so all take the same decisions; process 0 alone
    writes the checkpoints and shows the progress bar.

    Args:
        model (torch.nn.Module): Maps ``(x, edge_index)`` to class logits.
        data (torch_geometric.data.Data): A graph with ``x``, ``edge_index``,
            ``y`` and boolean ``train_mask``, ``val_mask``, ``test_mask``.
        recipe (Recipe, optional): The epochs, early stopping and optimizer.
            (default: :obj:`Recipe()`, the GAT paper's)
        seed (int, optional): The seed the model was built under, recorded in
            the result and the checkpoints. (default: :obj:`None`)
        forward_model (torch.nn.Module, optional): What to call for the
            forward passes, e.g. ``torch.compile(model)``; its parameters must
            be those of :obj:`model`. (default: :obj:`model`)
        batches (FullBatch or NeighborBatches, optional): What each epoch
            trains on (see :mod:`pyg_gatv2.experiments.training.sampling`);
            its batches are on :obj:`data`'s device.
            (default: :obj:`FullBatch(data)`)
        checkpoints (CheckpointFiles, optional): Where to keep the best
            model and the training state, and whether to resume from it;
            without resuming, files of an earlier run there are an error.
            (default: :obj:`None`, no checkpoints)
        metadata (dict, optional): Numbers and strings describing the run
            (hyperparameters, dataset), stored in both checkpoints and
            compared on resume, with the settings of :obj:`batches`.
            (default: :obj:`None`)
        callback (callable, optional): Called with the
            :class:`EpochMetrics` of every epoch. (default: :obj:`None`)
        progress (bool, optional): Whether to show a progress bar over the
            epochs. (default: :obj:`False`)
        eval_batch_size (int, optional): Evaluate layer by layer through
            ``model.inference`` (see :meth:`pyg_gatv2.GATv2.inference`)
            over batches of this many nodes with their whole one-hop
            neighbourhoods, instead of one full-batch pass: for graphs whose
            full-batch pass does not fit in memory. Needs torch-sparse or
            pyg-lib. (default: :obj:`None`, full-batch)

    Returns:
        SeedResult: The best epoch, its metrics and the per-epoch history.

    Raises:
        TrainingDivergedError: When the loss or a parameter becomes NaN or
            infinite; the message names the epoch and what to try.
        FileExistsError: When :obj:`checkpoints` does not resume and a
            checkpoint file already exists, so that no earlier run is
            overwritten.
        ~pyg_gatv2.experiments.training.CheckpointError: When the
            training state to resume from cannot be read.
    """
    check_data(data)
    recipe = Recipe() if recipe is None else recipe
    forward_model = model if forward_model is None else forward_model
    batches = FullBatch(data) if batches is None else batches
    if not isinstance(batches, (FullBatch, NeighborBatches)):
        raise ValueError(f"'fit' got batches={batches!r}; pass "
                         'FullBatch(data) or NeighborBatches(data, ...) '
                         'from pyg_gatv2.experiments.training')
    checkpoints = CheckpointFiles() if checkpoints is None else checkpoints
    checkpoints.check_unused()
    eval_loader = None
    if eval_batch_size is not None:
        if not callable(getattr(model, 'inference', None)):
            raise ValueError(
                f"'fit' got eval_batch_size={eval_batch_size!r} for a "
                f'{type(model).__name__}, which has no inference(loader) '
                'method; evaluate it full-batch (eval_batch_size=None)')
        eval_loader = whole_neighbourhoods(data, eval_batch_size)
    device = data.x.device
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr,
                                 weight_decay=recipe.weight_decay)
    run = RunState(model, optimizer, HISTORY_KEYS, helpers={
        'early_stopping': EarlyStopping(recipe.patience, recipe.stop_on)})
    keep = checkpoints.of({**recipe.settings(), 'seed': seed,
                           'metadata': dict(metadata or {}),
                           **batches.settings}, seed)
    if checkpoints.resume:
        keep.restore(run, device)
    bar = tqdm(total=recipe.epochs, initial=run.epoch, leave=False,
               unit='epoch', desc='epochs' if seed is None else f'seed {seed}',
               disable=not progress or run.finished or not is_main(),
               dynamic_ncols=True)
    models = (wrap(forward_model, device), forward_model)
    first = run.epoch + 1
    try:
        while not run.finished:
            tic = time.perf_counter()
            metrics = _epoch(run, models, data, batches.batches(
                0 if seed is None else seed, run.epoch + 1),
                run.epoch + 1 == first, seed, recipe, eval_loader)
            _record(run, metrics, time.perf_counter() - tic, recipe)
            if callback is not None:
                callback(metrics)
            bar.update()
            bar.set_postfix(loss=f'{metrics.loss:.3f}',
                            val=f'{metrics.val_acc:.3f}',
                            best=f"{run.best['val_acc']:.3f}")
            if run.finished or run.epoch % checkpoints.every == 0:
                heartbeat(stage='checkpoint')
                keep.save(run, device)
    finally:
        bar.close()
    return _seed_result(run, seed)


def train_node_classifier(
    build_model: Callable[[], torch.nn.Module],
    data: Data,
    seeds: Sequence[int] = (0, ),
    recipe: Optional[Recipe] = None,
    *,
    sampling: Optional[Sampling] = None,
    device: Union[str, torch.device] = 'cpu',
    compile: bool = False,
    deterministic: Optional[bool] = None,
    checkpoints: Optional[Checkpointing] = None,
    metadata: Optional[dict[str, Any]] = None,
    on_epoch: Optional[Callable[[int, EpochMetrics], None]] = None,
    on_seed_end: Optional[Callable[[SeedResult], None]] = None,
    progress: bool = False,
) -> TrainResult:
    r"""Trains a fresh model for each seed and summarises the test accuracy.

    For each seed, :func:`torch.manual_seed` is called, then
    :obj:`build_model` builds the model, which :func:`fit` trains. With
    :obj:`checkpoints`, each seed writes ``best_seed<seed>.pt`` (the best
    model) and ``state_seed<seed>.pt`` (the training state) in its folder.

    With :obj:`sampling`, each epoch trains on mini-batches of training
    nodes with their sampled neighbourhoods; without, on the whole
    graph. Under a
    :mod:`torch.distributed` process group every process calls this with
    the same arguments (see :func:`fit`).

    Args:
        build_model (callable): Returns a new, freshly initialised model.
        data (torch_geometric.data.Data): The graph, see :func:`fit`.
        seeds (sequence of int, optional): One run per seed.
            (default: :obj:`(0,)`)
        recipe (Recipe, optional): As in :func:`fit`.
            (default: :obj:`Recipe()`)
        sampling (Sampling, optional): The mini-batches; :obj:`None` trains
            full-batch. (default: :obj:`None`)
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
        checkpoints (Checkpointing, optional): The folder of the
            checkpoints, how often, and whether to resume; without resuming,
            a checkpoint of one of the seeds there is an error, raised
            before any seed trains. (default: :obj:`None`, no checkpoints)
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
    if checkpoints is not None:
        for seed in seeds:  # all of them, before any trains
            checkpoints.files(seed).check_unused()
    device = resolve_device(device)
    if deterministic is None:
        deterministic = device.type == 'cpu'
    batches = None if sampling is None else sampling.batches(data, device)
    data = data.to(device)
    runs = []
    with _deterministic(deterministic):
        for seed in tqdm(seeds, desc='seeds', unit='seed',
                         disable=(not progress or len(seeds) == 1
                                  or not is_main()),
                         dynamic_ncols=True):
            torch.manual_seed(seed)
            model = build_model().to(device)
            callback = None
            if on_epoch is not None:
                def callback(metrics: EpochMetrics, seed: int = seed) -> None:
                    on_epoch(seed, metrics)
            run = fit(model, data, recipe, seed=seed,
                      forward_model=torch.compile(model) if compile else model,
                      batches=batches,
                      checkpoints=(None if checkpoints is None else
                                   checkpoints.files(seed)),
                      metadata=metadata, callback=callback, progress=progress,
                      eval_batch_size=(None if sampling is None else
                                       sampling.eval_batch_size))
            runs.append(run)
            if on_seed_end is not None:
                on_seed_end(run)
    return TrainResult(runs)
