"""The DictionaryLookup experiment: batches, the training recipe, evaluation
and sweeps over sizes, layers and seeds.

Section 4.1 of `"How Attentive are Graph Attention Networks?"
<https://arxiv.org/abs/2105.14491>`_. The recipe is the authors' (their
``dictionary_lookup/`` code): Adam at lr 0.001 with the gradient norm
clipped at 1, batches of 1024 graphs, an evaluation every 10 epochs, the
learning rate halved after 10 evaluations without improvement, and a stop
after 20 evaluations without improvement. Three things differ. No test
number selects the model: the stopping rule and the learning rate schedule
read the *training* numbers (the authors read the test accuracy). Since the
training accuracy reaches 100% well before the test accuracy does, an
evaluation also improves when it keeps the training accuracy and lowers the
training loss, and reaching 100% does not stop training (the authors stop
when their monitored accuracy reaches 100%). And dropout is off at
evaluation (the authors' code keeps it on).

Every DictionaryLookup graph of size ``k`` has the same nodes and edges, so
a batch is built from a block of permutations with a few tensor operations
(:class:`LookupBatcher`) instead of collating one
:class:`~torch_geometric.data.Data` per graph, and every full batch reuses
one ``edge_index`` tensor, whose sorted layout the fused GATv2 kernels then
build only once.
"""
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Data
from tqdm.auto import tqdm

from pyg_gatv2.experiments.datasets.dictionary_lookup import DictionaryLookup
from pyg_gatv2.experiments.lookup_model import DictionaryLookupNet
from pyg_gatv2.experiments.training.checkpoint import Checkpoints, RunState
from pyg_gatv2.experiments.training.results import TrainingDivergedError

__all__ = [
    'LookupBatch',
    'LookupBatcher',
    'LookupRecipe',
    'LookupResult',
    'LookupRun',
    'SweepSetup',
    'evaluate_lookup',
    'own_key_attention',
    'run_lookup_sweep',
    'train_lookup',
]

_PathLike = Union[str, os.PathLike]
LOOKUP_HISTORY_KEYS = ('epoch', 'steps', 'loss', 'lr', 'train_loss',
                'train_node_acc', 'train_graph_acc', 'test_node_acc',
                'test_graph_acc')
MONITORS = ('accuracy_then_loss', 'accuracy')


class LookupBatch(NamedTuple):
    """A batch of DictionaryLookup graphs, as
    :meth:`torch_geometric.data.Batch.from_data_list` lays it out."""
    x: Tensor
    edge_index: Tensor
    query_mask: Tensor
    batch: Tensor
    y: Tensor


class LookupBatcher:
    r"""Builds batches of DictionaryLookup graphs of size ``k`` from rows of
    permutations.

    The result equals :meth:`torch_geometric.data.Batch.from_data_list` on
    the graphs of
    :func:`~pyg_gatv2.experiments.datasets.dictionary_lookup_graph`. The
    ``edge_index``, ``query_mask`` and ``batch`` tensors depend only on the
    number of graphs and are built once per batch size, on :obj:`device`.

    Args:
        k (int): Keys per graph.
        device (str or torch.device, optional): Where the batches live.
            (default: ``'cpu'``)
    """
    def __init__(self, k: int, device: Union[str, torch.device] = 'cpu'):
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValueError(f"'LookupBatcher' needs an integer k >= 2, got "
                             f'{k!r}')
        self.k = k
        self.device = torch.device(device)
        self._fixed: dict[int, tuple[Tensor, Tensor, Tensor]] = {}

    def _structure(self, num_graphs: int) -> tuple[Tensor, Tensor, Tensor]:
        if num_graphs not in self._fixed:
            k, device = self.k, self.device
            keys = torch.arange(k, device=device)
            one = torch.stack([keys.repeat_interleave(k), keys.repeat(k) + k])
            offsets = 2 * k * torch.arange(num_graphs, device=device)
            edge_index = (one.unsqueeze(1) + offsets.view(1, -1, 1)).view(
                2, -1)
            query_mask = (torch.arange(2 * k, device=device) >= k).repeat(
                num_graphs)
            batch = torch.arange(num_graphs,
                                 device=device).repeat_interleave(2 * k)
            self._fixed[num_graphs] = (edge_index, query_mask, batch)
        return self._fixed[num_graphs]

    def __call__(self, perms: Tensor) -> LookupBatch:
        """The batch of the graphs ``key i -> perms[g, i]``, one per row."""
        if perms.dim() != 2 or perms.size(1) != self.k:
            raise ValueError(f"'LookupBatcher' for k={self.k} expects "
                             f'permutations of shape [num_graphs, {self.k}], '
                             f'got {tuple(perms.shape)}')
        perms = perms.to(self.device)
        num_graphs, k = perms.shape
        keys = torch.arange(k, device=self.device).expand(num_graphs, k)
        x = torch.cat([
            torch.stack([keys, perms], dim=-1),
            torch.stack([keys, torch.full_like(perms, k)], dim=-1),
        ], dim=1).view(-1, 2)
        return LookupBatch(x, *self._structure(num_graphs), perms.reshape(-1))


@dataclass(frozen=True)
class LookupRecipe:
    """How a DictionaryLookup network is trained; the defaults are the
    authors' recipe.

    An evaluation improves on the best one so far by the training numbers
    alone, measured without dropout, as :obj:`monitor` says:

    * :obj:`'accuracy_then_loss'`: a training accuracy per query node
      higher by more than :obj:`min_improvement`, or one at least as high
      with a mean training loss per query node lower by more than the
      fraction :obj:`min_loss_improvement`. Training goes on past 100%
      training accuracy while the loss falls, which widens the margins that
      the held-out pairs need. The fall is relative because the loss of a
      fitted network shrinks by orders of magnitude.
    * :obj:`'accuracy'`: a training accuracy per query node higher by more
      than :obj:`min_improvement`; training stops at 100%.

    Attributes:
        max_epochs (int): Most passes over the training graphs.
        eval_every (int): Epochs between evaluations.
        patience (int): Evaluations without improvement before stopping.
        min_improvement (float): The least rise of the training accuracy per
            query node that counts as an improvement (the authors'
            threshold).
        monitor (str): What counts as an improvement, see above.
        min_loss_improvement (float): The least relative fall of the
            training loss that counts as an improvement under
            :obj:`'accuracy_then_loss'`.
        batch_size (int): Graphs per optimizer step.
        lr (float): Adam's initial learning rate.
        lr_factor (float): Factor of each learning rate reduction.
        lr_patience (int): Evaluations without improvement before the
            learning rate is reduced.
        clip_norm (float): Largest gradient norm; ``0`` turns clipping off.
    """
    max_epochs: int = 50_000
    eval_every: int = 10
    patience: int = 20
    min_improvement: float = 1e-4
    monitor: str = 'accuracy_then_loss'
    min_loss_improvement: float = 0.01
    batch_size: int = 1024
    lr: float = 0.001
    lr_factor: float = 0.5
    lr_patience: int = 10
    clip_norm: float = 1.0

    def __post_init__(self) -> None:
        for name in ('max_epochs', 'eval_every', 'patience', 'batch_size',
                     'lr_patience'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or (
                    value < 1):
                raise ValueError(f"'LookupRecipe' expects {name} to be a "
                                 f'positive integer, got {value!r}')
        if not (self.lr > 0 and 0 < self.lr_factor < 1
                and self.clip_norm >= 0 and self.min_improvement >= 0
                and 0 <= self.min_loss_improvement < 1):
            raise ValueError(
                "'LookupRecipe' expects lr > 0, 0 < lr_factor < 1, "
                'clip_norm >= 0, min_improvement >= 0 and '
                f'0 <= min_loss_improvement < 1, got lr={self.lr!r}, '
                f'lr_factor={self.lr_factor!r}, '
                f'clip_norm={self.clip_norm!r}, '
                f'min_improvement={self.min_improvement!r}, '
                f'min_loss_improvement={self.min_loss_improvement!r}')
        if self.monitor not in MONITORS:
            raise ValueError(f"'LookupRecipe' expects monitor to be one of "
                             f'{MONITORS}, got {self.monitor!r}')

    def improves(self, entry: dict[str, float],
                 best: dict[str, float]) -> bool:
        """Whether the evaluation :obj:`entry` improves on :obj:`best`, by
        their ``train_node_acc`` and ``train_loss``."""
        accuracy, best_accuracy = entry['train_node_acc'], best[
            'train_node_acc']
        if accuracy > best_accuracy + self.min_improvement:
            return True
        return (self.monitor == 'accuracy_then_loss'
                and accuracy >= best_accuracy
                and entry['train_loss'] < best['train_loss'] * (
                    1 - self.min_loss_improvement))


@dataclass
class LookupResult:
    """The outcome of training one network on one DictionaryLookup size.

    The accuracies are those of the best evaluation: the last one that
    improved on the training numbers, as :obj:`LookupRecipe.monitor` says.

    Attributes:
        k (int): Keys per graph.
        conv (str): The attention layer's name.
        heads (int): Attention heads.
        seed (int): Seed of the graphs, the split, the weights and the
            batches.
        train_node_acc (float): Fraction of training queries answered right.
        train_graph_acc (float): Fraction of training graphs with every
            query right.
        test_node_acc (float): As :obj:`train_node_acc`, on the test graphs.
        test_graph_acc (float): As :obj:`train_graph_acc`, on the test
            graphs.
        best_epoch (int): Epoch of the best evaluation.
        epochs (int): Epochs trained.
        steps (int): Optimizer steps taken.
        stop (str): Why training ended: ``'patience'``, ``'max_epochs'``
            or, under the monitor ``'accuracy'``, ``'fit'`` (100% training
            accuracy).
        seconds (float): Training and evaluation time, summed over
            resumptions.
        history (dict): One list per entry of ``LOOKUP_HISTORY_KEYS``, one value
            per evaluation; ``loss`` is the mean training loss (with
            dropout) since the previous evaluation, ``train_loss`` the mean
            loss per training query without dropout at the evaluation.
        attention (list): ``[heads][query][key]`` attention of the best
            model on the first test graph, whose correct keys lie on the
            diagonal.
        example_y (list[int]): That graph's targets (its permutation).
        example_pred (list[int]): The best model's answers on that graph.
        own_key (dict, optional): Where the best model's attention lands, on
            every graph of each split, per head: under ``'train_top'`` and
            ``'test_top'`` the share of queries whose own key gets the
            highest weight among the keys, under ``'train_weight'`` and
            ``'test_weight'`` the mean weight on the own key (see
            :func:`own_key_attention`). :obj:`None` in reports written
            before it was measured.
    """
    k: int
    conv: str
    heads: int
    seed: int
    train_node_acc: float
    train_graph_acc: float
    test_node_acc: float
    test_graph_acc: float
    best_epoch: int
    epochs: int
    steps: int
    stop: str
    seconds: float
    history: dict[str, list[float]] = field(repr=False)
    attention: list[list[list[float]]] = field(repr=False)
    example_y: list[int] = field(repr=False)
    example_pred: list[int] = field(repr=False)
    own_key: Optional[dict[str, list[float]]] = field(default=None,
                                                      repr=False)

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / max(self.epochs, 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> 'LookupResult':
        names = {f.name for f in fields(cls)}
        return cls(**{key: values[key] for key in names if key in values})


def _permutations(graphs: Union[Tensor, Sequence[Data]]) -> Tensor:
    if isinstance(graphs, Tensor):
        return graphs
    if len(graphs) == 0:
        raise ValueError("'evaluate_lookup' got no graphs")
    # A DictionaryLookup graph's targets are its permutation.
    return torch.stack([graph.y for graph in graphs])


@torch.no_grad()
def _evaluate(model: torch.nn.Module, batcher: LookupBatcher, perms: Tensor,
              batch_size: int) -> tuple[float, float, float]:
    """Accuracy per query node and per graph, and the mean loss per query
    node, without dropout."""
    was_training = model.training
    model.eval()
    right_nodes = right_graphs = 0
    loss = torch.zeros((), dtype=torch.float64, device=perms.device)
    for start in range(0, perms.size(0), batch_size):
        batch = batcher(perms[start:start + batch_size])
        logits = model(batch.x, batch.edge_index, batch.query_mask,
                       batch.batch)
        loss += F.cross_entropy(logits, batch.y, reduction='sum')
        right = (logits.argmax(dim=-1) == batch.y).view(-1, batcher.k)
        right_nodes += int(right.sum())
        right_graphs += int(right.all(dim=1).sum())
    model.train(was_training)
    return (right_nodes / perms.numel(), right_graphs / perms.size(0),
            float(loss) / perms.numel())


def evaluate_lookup(model: torch.nn.Module,
                    graphs: Union[Tensor, Sequence[Data]],
                    batch_size: int = 1024) -> tuple[float, float]:
    """Accuracy of a
    :class:`~pyg_gatv2.experiments.lookup_model.DictionaryLookupNet` on
    DictionaryLookup graphs, in evaluation mode (no dropout).

    Args:
        model (torch.nn.Module): The network.
        graphs (torch.Tensor or Sequence[Data]): The graphs, as their
            permutations (``[num_graphs, k]``, e.g.
            ``DictionaryLookup(k).test_permutations``) or as graphs of
            :func:`~pyg_gatv2.experiments.datasets.dictionary_lookup_graph`
            (e.g. ``DictionaryLookup(k).test_dataset``).
        batch_size (int, optional): Graphs per forward pass.
            (default: :obj:`1024`)

    Returns:
        tuple[float, float]: The fraction of query nodes answered right and
        the fraction of graphs with all their queries right.
    """
    perms = _checked_graphs(model, graphs, 'evaluate_lookup')
    device = next(model.parameters()).device
    return _evaluate(model, LookupBatcher(perms.size(1), device), perms,
                     batch_size)[:2]


def _checked_graphs(model: torch.nn.Module,
                    graphs: Union[Tensor, Sequence[Data]],
                    caller: str) -> Tensor:
    """The permutations of :obj:`graphs`, ``[num_graphs, k]``, checked
    against each other and against the model's ``k``."""
    perms = _permutations(graphs)
    if perms.dim() != 2 or perms.size(0) == 0:
        raise ValueError(f"'{caller}' expects permutations of shape "
                         f'[num_graphs, k] with num_graphs >= 1, got '
                         f'{tuple(perms.shape)}')
    k = perms.size(1)
    if getattr(model, 'k', k) != k:
        raise ValueError(f"'{caller}' got a model built for "
                         f'k={model.k} and graphs with k={k}; build the '
                         "model with the graphs' k")
    return perms


@torch.no_grad()
def own_key_attention(model: torch.nn.Module,
                      graphs: Union[Tensor, Sequence[Data]],
                      batch_size: int = 1024
                      ) -> tuple[list[float], list[float]]:
    """Where the attention of a
    :class:`~pyg_gatv2.experiments.lookup_model.DictionaryLookupNet` lands
    on DictionaryLookup graphs, in evaluation mode: on the key each query
    must look up, or elsewhere.

    A model can answer the paper's task without finding the key: a graph's
    values are a permutation, so the value that the other keys do not hold
    is the answer. Its accuracy then says nothing about its attention; this
    does.

    Args:
        model (torch.nn.Module): The network.
        graphs (torch.Tensor or Sequence[Data]): The graphs, as in
            :func:`evaluate_lookup`.
        batch_size (int, optional): Graphs per forward pass.
            (default: :obj:`1024`)

    Returns:
        tuple[list[float], list[float]]: Per head, the share of queries
        whose own key gets the highest weight among the :math:`k` keys
        (ties go to the first key), and the mean weight on the own key
        (GAT's self-loops take the rest of a query's weight with the other
        keys).
    """
    perms = _checked_graphs(model, graphs, 'own_key_attention')
    k = perms.size(1)
    device = next(model.parameters()).device
    batcher = LookupBatcher(k, device)
    perms = perms.to(device)
    was_training = model.training
    model.eval()
    top = weight = 0
    diagonal = torch.arange(k, device=device)
    for start in range(0, perms.size(0), batch_size):
        batch = batcher(perms[start:start + batch_size])
        att = model.key_attention(batch.x, batch.edge_index,
                                  batch.query_mask, batch.batch)
        top = top + (att.argmax(dim=-1) == diagonal).sum(dim=(0, 2))
        weight = weight + att.diagonal(dim1=-2, dim2=-1).sum(dim=(0, 2),
                                                              dtype=torch.float64)
    model.train(was_training)
    return ((top.double() / perms.numel()).tolist(),
            (weight / perms.numel()).tolist())


def _recipe_settings(recipe: LookupRecipe) -> dict[str, Any]:
    """The recipe without its epoch cap, which a resumed run may raise."""
    settings = asdict(recipe)
    del settings['max_epochs']
    return settings


def _run_settings(model: torch.nn.Module, dataset: DictionaryLookup,
                  recipe: LookupRecipe, seed: int) -> dict[str, Any]:
    return {'model': repr(model), 'k': dataset.k, 'dataset': repr(dataset),
            'dataset_seed': dataset.seed, 'seed': seed,
            'recipe': _recipe_settings(recipe)}


def train_lookup(
    model: torch.nn.Module,
    dataset: DictionaryLookup,
    recipe: Optional[LookupRecipe] = None,
    *,
    seed: int = 0,
    checkpoint_path: Optional[_PathLike] = None,
    resume: bool = False,
    on_eval: Optional[Callable[[dict[str, float]], None]] = None,
    progress: bool = True,
    desc: Optional[str] = None,
) -> LookupResult:
    """Trains a
    :class:`~pyg_gatv2.experiments.lookup_model.DictionaryLookupNet` on the
    training graphs of a
    :class:`~pyg_gatv2.experiments.datasets.DictionaryLookup` with
    :obj:`recipe` and evaluates it on both splits.

    Each epoch is one pass over the training graphs in a fresh random
    order, one Adam step per batch on the cross-entropy of the query nodes.
    Every ``recipe.eval_every`` epochs both splits are evaluated without
    dropout; the training numbers alone (see :class:`LookupRecipe`) drive
    the learning rate schedule, the choice of the best evaluation and the
    stop. At the end the model holds the weights of the best evaluation.

    Args:
        model (torch.nn.Module): The network, already on its device.
        dataset (DictionaryLookup): The graphs and their split.
        recipe (LookupRecipe, optional): The training settings.
            (default: the authors' recipe, :obj:`LookupRecipe()`)
        seed (int, optional): Seed of the order of the graphs.
            (default: :obj:`0`)
        checkpoint_path (str or os.PathLike, optional): Where the training
            state is saved after every evaluation. (default: :obj:`None`)
        resume (bool, optional): Continue from :obj:`checkpoint_path` when
            it exists; the run then ends as an uninterrupted one would, bit
            for bit on the CPU. A run that ended at its epoch cap continues
            up to a higher ``recipe.max_epochs``. (default: :obj:`False`)
        on_eval (callable, optional): Called with each evaluation's entry
            of the history. (default: :obj:`None`)
        progress (bool, optional): Show a progress bar over the epochs.
            (default: :obj:`True`)
        desc (str, optional): The progress bar's label.
            (default: :obj:`None`)

    Returns:
        LookupResult: Accuracies at the best evaluation, the history and the
        attention on the first test graph.
    """
    recipe = LookupRecipe() if recipe is None else recipe
    if getattr(model, 'k', dataset.k) != dataset.k:
        raise ValueError(f"'train_lookup' got a model built for k={model.k} "
                         f'and a dataset with k={dataset.k}; build the model '
                         "with the dataset's k")
    if resume and checkpoint_path is None:
        raise ValueError("'train_lookup' got resume=True without a "
                         'checkpoint_path to resume from')
    device = next(model.parameters()).device
    data = _LookupData(LookupBatcher(dataset.k, device),
                       dataset.train_permutations.to(device),
                       dataset.test_permutations.to(device))
    run = _new_run(model, recipe, seed)
    keep = Checkpoints(
        None, None if checkpoint_path is None else Path(checkpoint_path),
        _run_settings(model, dataset, recipe, seed), seed)
    if resume and keep.restore(run, device):
        # A run that ended at a lower epoch cap goes on to this one.
        if run.stop == 'max_epochs' and run.epoch < recipe.max_epochs:
            run.stop = None
        elif run.stop is None and run.epoch >= recipe.max_epochs:
            run.stop = 'max_epochs'
    bar = tqdm(total=recipe.max_epochs, initial=run.epoch, desc=desc,
               disable=not progress, leave=False, dynamic_ncols=True)
    model.train()
    try:
        while not run.finished:
            entry = _train_and_evaluate(run, data, recipe, seed, bar)
            if on_eval is not None:
                on_eval(entry)
            keep.save(run, device)
    finally:
        bar.close()
    model.load_state_dict(run.best_state)
    return _result(run, model, dataset, seed, device)


class _LookupData(NamedTuple):
    batcher: LookupBatcher
    train_perms: Tensor
    test_perms: Tensor


class _Plateau:
    """The count of evaluations that improved on the best one (which the
    learning rate scheduler is stepped with), and of those since the last
    that did (which the stop watches)."""
    def __init__(self) -> None:
        self.improvements = 0
        self.bad_evals = 0

    def state_dict(self) -> dict[str, int]:
        return {'improvements': self.improvements,
                'bad_evals': self.bad_evals}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.improvements = state['improvements']
        self.bad_evals = state['bad_evals']


def _new_run(model: torch.nn.Module, recipe: LookupRecipe,
             seed: int) -> RunState:
    """A fresh run: Adam, the scheduler, the plateau count and the
    generator of the order of the graphs."""
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    # The scheduler is stepped with the count of improvements, so that it
    # reduces the learning rate on the same rule as the stop.
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode='max', factor=recipe.lr_factor,
        patience=recipe.lr_patience, threshold=0, threshold_mode='abs')
    return RunState(model, optimizer, LOOKUP_HISTORY_KEYS, helpers={
        'scheduler': scheduler, 'plateau': _Plateau(),
        'order': torch.Generator().manual_seed(seed)})


def _train_and_evaluate(run: RunState, data: _LookupData,
                        recipe: LookupRecipe, seed: int,
                        bar: tqdm) -> dict[str, float]:
    """Trains up to the next evaluation, evaluates both splits and records
    the evaluation in ``run``; returns its entry of the history."""
    tic = time.perf_counter()
    mean_loss = _train_epochs(run, data, recipe, bar)
    if not math.isfinite(mean_loss):
        raise TrainingDivergedError(
            f"'train_lookup' got a non-finite training loss by epoch "
            f'{run.epoch} (seed {seed}); lower the learning rate (now '
            f'{recipe.lr:g}) or clip the gradients harder (now '
            f'{recipe.clip_norm:g})')
    train_node, train_graph, train_loss = _evaluate(
        run.model, data.batcher, data.train_perms, recipe.batch_size)
    test_node, test_graph, _ = _evaluate(run.model, data.batcher,
                                         data.test_perms, recipe.batch_size)
    entry = {'epoch': run.epoch, 'steps': run.steps, 'loss': mean_loss,
             'lr': run.optimizer.param_groups[0]['lr'],
             'train_loss': train_loss, 'train_node_acc': train_node,
             'train_graph_acc': train_graph, 'test_node_acc': test_node,
             'test_graph_acc': test_graph}
    _record(run, entry, recipe)
    run.helpers['scheduler'].step(run.helpers['plateau'].improvements)
    run.seconds += time.perf_counter() - tic
    bar.set_postfix(loss=f'{mean_loss:.4f}', train=f'{train_node:.3f}',
                    test=f'{test_node:.3f}', refresh=False)
    return entry


def _record(run: RunState, entry: dict[str, float],
            recipe: LookupRecipe) -> None:
    """Adds an evaluation: the history, the best one so far (on the
    training numbers, see :class:`LookupRecipe`) and whether to stop."""
    plateau = run.helpers['plateau']
    best = run.best or {'train_node_acc': -math.inf, 'train_loss': math.inf}
    is_best = recipe.improves(entry, best)
    run.record(entry, is_best)
    if is_best:
        plateau.improvements += 1
        plateau.bad_evals = 0
    else:
        plateau.bad_evals += 1
    if recipe.monitor == 'accuracy' and entry['train_node_acc'] == 1.0:
        run.stop = 'fit'
    elif plateau.bad_evals >= recipe.patience:
        run.stop = 'patience'
    elif run.epoch >= recipe.max_epochs:
        run.stop = 'max_epochs'


def _train_epochs(run: RunState, data: _LookupData, recipe: LookupRecipe,
                  bar: tqdm) -> float:
    """The epochs up to the next evaluation (or the cap); returns their
    mean training loss."""
    loss_sum = torch.zeros((), device=data.train_perms.device)
    loss_steps = 0
    num_train = data.train_perms.size(0)
    for _ in range(recipe.eval_every):
        perm = torch.randperm(num_train, generator=run.helpers['order']).to(
            data.train_perms.device)
        for start in range(0, num_train, recipe.batch_size):
            batch = data.batcher(
                data.train_perms[perm[start:start + recipe.batch_size]])
            run.optimizer.zero_grad()
            logits = run.model(batch.x, batch.edge_index, batch.query_mask,
                               batch.batch)
            loss = F.cross_entropy(logits, batch.y)
            loss.backward()
            if recipe.clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(run.model.parameters(),
                                               recipe.clip_norm)
            run.optimizer.step()
            loss_sum += loss.detach()
            loss_steps += 1
        run.epoch += 1
        bar.update()
        if run.epoch >= recipe.max_epochs:
            break
    run.steps += loss_steps
    return float(loss_sum) / loss_steps


def _result(run: RunState, model: torch.nn.Module,
            dataset: DictionaryLookup, seed: int,
            device: torch.device) -> LookupResult:
    """The outcome, with the attention on the first test graph."""
    best = run.best
    example = dataset.test_dataset[0].to(device)
    attention = model.attention_matrix(example)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        pred = model(example.x, example.edge_index,
                     example.query_mask).argmax(dim=-1)
    model.train(was_training)
    own_key = {}
    for split, perms in (('train', dataset.train_permutations),
                         ('test', dataset.test_permutations)):
        own_key[f'{split}_top'], own_key[f'{split}_weight'] = (
            own_key_attention(model, perms))
    return LookupResult(
        k=dataset.k, conv=getattr(model, 'conv_name', type(model).__name__),
        heads=getattr(model, 'heads', 1), seed=seed,
        train_node_acc=best['train_node_acc'],
        train_graph_acc=best['train_graph_acc'],
        test_node_acc=best['test_node_acc'],
        test_graph_acc=best['test_graph_acc'], best_epoch=best['epoch'],
        epochs=run.epoch, steps=run.steps, stop=run.stop,
        seconds=run.seconds, history=run.history,
        attention=attention.cpu().tolist(),
        example_y=example.y.cpu().tolist(), example_pred=pred.cpu().tolist(),
        own_key=own_key)


def _finished_runs(json_path: Path, settings: dict[str, Any]
                   ) -> dict['LookupRun', LookupResult]:
    """The runs a sweep report holds, those cut short by an epoch cap
    included."""
    saved = json.loads(json_path.read_text())
    if saved.get('settings') != settings:
        raise ValueError(
            f'Cannot resume from {json_path}: it was written with other '
            f"settings ({saved.get('settings')!r}, now {settings!r}); run "
            'with the same settings, or without resuming or into another '
            'file')
    return {_run_of(values): LookupResult.from_dict(values)
            for values in saved['results']}


def _write_sweep(json_path: Path, body: dict[str, Any]) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    part = json_path.with_name(json_path.name + '.part')
    part.write_text(json.dumps(body, indent=1) + '\n')
    os.replace(part, json_path)


@dataclass(frozen=True)
class LookupRun:
    """One run of a sweep: a size, a layer, a number of heads and a seed."""
    k: int
    conv: str
    heads: int
    seed: int

    @property
    def name(self) -> str:
        return f'k{self.k}_{self.conv}_h{self.heads}_s{self.seed}'


def _run_of(result: dict[str, Any]) -> LookupRun:
    return LookupRun(result['k'], result['conv'], result['heads'],
                     result['seed'])


@dataclass(frozen=True)
class SweepSetup:
    """What every run of a sweep shares: the training recipe, the network
    and the dataset settings.

    Attributes:
        recipe (LookupRecipe): The training settings.
        hidden_channels, readout, dropout: As in
            :class:`~pyg_gatv2.experiments.lookup_model.DictionaryLookupNet`.
        train_fraction, max_graphs, values: As in
            :class:`~pyg_gatv2.experiments.datasets.DictionaryLookup`.
    """
    recipe: LookupRecipe = field(default_factory=LookupRecipe)
    hidden_channels: int = 128
    readout: str = 'linear'
    dropout: float = 0.5
    train_fraction: float = 0.8
    max_graphs: int = 32_000
    values: str = 'permutation'

    def settings(self) -> dict[str, Any]:
        """The settings a report records, without the epoch cap, which a
        resumed sweep may raise."""
        settings = {'recipe': _recipe_settings(self.recipe),
                    'hidden': self.hidden_channels, 'readout': self.readout,
                    'dropout': self.dropout,
                    'train_fraction': self.train_fraction,
                    'max_graphs': self.max_graphs}
        # Reports of the paper's task, written before the variant existed,
        # stay resumable.
        if self.values != 'permutation':
            settings['values'] = self.values
        return settings

    def network(self, run: LookupRun) -> DictionaryLookupNet:
        return DictionaryLookupNet(run.k, self.hidden_channels, run.heads,
                                   run.conv, self.readout, self.dropout)

    def dataset(self, run: LookupRun) -> DictionaryLookup:
        return DictionaryLookup(run.k, train_fraction=self.train_fraction,
                                max_graphs=self.max_graphs, seed=run.seed,
                                values=self.values)


def run_lookup_sweep(
    runs: Sequence[LookupRun],
    json_path: _PathLike,
    setup: Optional[SweepSetup] = None,
    *,
    device: Union[str, torch.device] = 'cpu',
    checkpoint_dir: Optional[_PathLike] = None,
    resume: bool = False,
    report: Optional[dict[str, Any]] = None,
    on_result: Optional[Callable[[LookupResult], None]] = None,
    progress: bool = False,
) -> list[LookupResult]:
    """Trains one network per run and writes every finished run to a JSON
    report as it ends, so that an interrupted sweep resumes.

    Each run builds ``DictionaryLookup(k, seed=seed)`` and, after
    :func:`torch.manual_seed` with the same seed, a
    :class:`~pyg_gatv2.experiments.lookup_model.DictionaryLookupNet`, which
    :func:`train_lookup` trains. With :obj:`resume`, the runs already in
    :obj:`json_path` are kept and not retrained, and a run that was cut
    short continues from its checkpoint in :obj:`checkpoint_dir`.

    Args:
        runs (Sequence[LookupRun]): The runs, in order.
        json_path (str or os.PathLike): The report: :obj:`report`, the
            settings and one entry per finished run under ``'results'``.
        setup (SweepSetup, optional): The recipe, network and dataset
            settings of every run. (default: :obj:`SweepSetup()`)
        device (str or torch.device, optional): Where to train.
            (default: ``'cpu'``)
        checkpoint_dir (str or os.PathLike, optional): Folder of the
            training state of the run in progress, removed when the run
            ends. (default: :obj:`None`)
        resume (bool, optional): Keep the finished runs of
            :obj:`json_path`, which must have been written with the same
            settings. (default: :obj:`False`)
        report (dict, optional): More entries for the report, such as the
            command. (default: :obj:`None`)
        on_result (callable, optional): Called with each run's result,
            those kept from :obj:`json_path` included. (default:
            :obj:`None`)
        progress (bool, optional): Show progress bars. (default:
            :obj:`False`)

    Returns:
        list[LookupResult]: One result per run, in the order of
        :obj:`runs`.

    The settings recorded in the report leave out
    ``recipe.max_epochs``: resuming with a higher cap continues the runs
    that the lower cap ended, from the checkpoints kept for them.
    """
    setup = SweepSetup() if setup is None else setup
    runs = list(dict.fromkeys(runs))
    if not runs:
        raise ValueError("'run_lookup_sweep' got no runs")
    for run in runs:  # bad settings fail here, before any training
        setup.network(run)
    sweep = _Sweep(runs, Path(json_path), setup, report or {})
    if resume and sweep.json_path.exists():
        sweep.done = _finished_runs(sweep.json_path, setup.settings())
    folder = None if checkpoint_dir is None else Path(checkpoint_dir)
    datasets: dict[tuple[int, int], DictionaryLookup] = {}
    results = []
    for run in runs:
        if sweep.to_train(run):
            if (run.k, run.seed) not in datasets:
                datasets.clear()  # one size at a time in memory
                datasets[run.k, run.seed] = setup.dataset(run)
            checkpoint = None if folder is None else folder / (
                run.name + '.pt')
            sweep.train(run, datasets[run.k, run.seed], torch.device(device),
                        checkpoint, resume, progress)
        results.append(sweep.done[run])
        if on_result is not None:
            on_result(sweep.done[run])
    sweep.write()
    return results


class _Sweep:
    """The runs of a sweep that are done, and its report."""
    def __init__(self, runs: list[LookupRun], json_path: Path,
                 setup: SweepSetup, report: dict[str, Any]) -> None:
        self.runs = runs
        self.json_path = json_path
        self.setup = setup
        self.report = report
        self.done: dict[LookupRun, LookupResult] = {}

    def to_train(self, run: LookupRun) -> bool:
        # A run that a lower epoch cap ended goes on from its checkpoint; it
        # stays in the report until then.
        done = self.done.get(run)
        return done is None or (done.stop == 'max_epochs' and done.epochs
                                < self.setup.recipe.max_epochs)

    def train(self, run: LookupRun, dataset: DictionaryLookup,
              device: torch.device, checkpoint: Optional[Path], resume: bool,
              progress: bool) -> None:
        torch.manual_seed(run.seed)
        model = self.setup.network(run).to(device)
        self.done[run] = train_lookup(
            model, dataset, self.setup.recipe, seed=run.seed,
            checkpoint_path=checkpoint,
            resume=resume and checkpoint is not None, progress=progress,
            desc=run.name)
        self.write()
        # A run cut by the epoch cap keeps its state, to go on under a
        # higher cap.
        if checkpoint is not None and self.done[run].stop != 'max_epochs':
            checkpoint.unlink(missing_ok=True)

    def write(self) -> None:
        kept = [self.done[run] for run in self.runs if run in self.done]
        kept += [result for run, result in self.done.items()
                 if run not in self.runs]
        _write_sweep(self.json_path, {
            **self.report, 'settings': self.setup.settings(),
            'max_epochs': self.setup.recipe.max_epochs,
            'results': [r.to_dict() for r in kept]})
