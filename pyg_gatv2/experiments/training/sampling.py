"""What an epoch trains on: the whole graph (:class:`FullBatch`), or
subgraphs sampled around mini-batches of training nodes
(:class:`NeighborBatches`, through PyG's
:class:`~torch_geometric.loader.NeighborLoader`).

Both hand :func:`~pyg_gatv2.experiments.training.train_epoch` batches whose
``train_mask`` marks the nodes the loss is taken on and whose
``loss_scale`` weighs that loss so that, under data-parallel training, the
gradient averaged over the processes is the gradient of the mean loss over
all of a step's nodes. Under a process group each process takes its own
share of the training nodes; alone, it takes them all.
"""
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from copy import copy
from typing import Any, Union

import torch
import torch_geometric.typing
from torch import Tensor
from torch_geometric.data import Data

from pyg_gatv2.checks import check_positive_ints

from .distributed import world

__all__ = ['FullBatch', 'NeighborBatches', 'SamplingUnavailableError',
           'check_sampling', 'sampling_available', 'seed_batches',
           'step_seed', 'training_threads', 'whole_neighbourhoods']

INSTALL_HINT = ("pip install --no-build-isolation 'pyg-gatv2[sampling]' "
                '(after torch and torch-scatter: torch-sparse builds from '
                'source against the installed torch, about 15 minutes on two '
                'cores)')


class SamplingUnavailableError(ImportError):
    """Neighbour sampling needs torch-sparse or pyg-lib, and neither is
    installed."""


def sampling_available() -> bool:
    """Whether PyG can sample neighbours: torch-sparse or pyg-lib is
    installed."""
    return bool(torch_geometric.typing.WITH_PYG_LIB
                or torch_geometric.typing.WITH_TORCH_SPARSE)


def check_sampling() -> None:
    """Raises :class:`SamplingUnavailableError`, saying what to install,
    when neighbour sampling is not available."""
    if not sampling_available():
        raise SamplingUnavailableError(
            'Mini-batch training samples neighbours with PyG\'s '
            'NeighborLoader, which needs torch-sparse or pyg-lib, and '
            f'neither is installed; install the sampling extra: {INSTALL_HINT}'
            ', or train full-batch without --batch-size')


def training_threads(num_workers: int) -> int:
    """The CPU threads to give training beside :obj:`num_workers` loader
    processes that sample ahead of it (one thread each): this process's
    share of the cores it may run on, less one per worker, and at least
    one.

    The share is the cores of :func:`os.sched_getaffinity` (all of them
    where the platform has no affinity) split evenly among the processes
    that :mod:`torch.distributed.run` starts on the machine
    (``LOCAL_WORLD_SIZE``). More threads than that make the model's
    threads and the samplers take turns on the same cores, which pays only
    where the model step is much longer than the sampling of a batch
    (``docs/training.md`` gives the measurements).

    Args:
        num_workers (int): Loader processes sampling beside training.
    """
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"'training_threads' got num_workers="
                         f'{num_workers!r}; pass a non-negative integer')
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
             else os.cpu_count() or 1)
    processes = max(1, int(os.environ.get('LOCAL_WORLD_SIZE', '1')))
    return max(1, cores // processes - num_workers)


def _train_nodes(data: Data) -> Tensor:
    return data.train_mask.nonzero().view(-1)


class FullBatch:
    """The whole graph as the one batch of every epoch, as in the GAT paper.

    Under a process group of :math:`W` processes, process :math:`r` takes
    the loss on the :math:`r`-th of :math:`W` near-equal shares of the
    training nodes.

    Args:
        data (torch_geometric.data.Data): The graph, on the training device.
    """
    def __init__(self, data: Data) -> None:
        self.data = data

    @property
    def settings(self) -> dict[str, Any]:
        """What a resumed run must share with the one it resumes."""
        size = world()[1]
        return {} if size == 1 else {'world_size': size}

    def batches(self, seed: int, epoch: int) -> list[Data]:
        """The batches of epoch :obj:`epoch` (the same for every seed)."""
        rank, size = world()
        if size == 1:
            return [self.data]
        train = _train_nodes(self.data)
        _check_shares(train.numel(), size, 'FullBatch', 'the graph')
        share = train.tensor_split(size)[rank]
        batch = copy(self.data)
        batch.train_mask = torch.zeros_like(self.data.train_mask)
        batch.train_mask[share] = True
        batch.loss_scale = share.numel() * size / train.numel()
        return [batch]


def _check_shares(smallest: int, size: int, name: str, unit: str) -> None:
    if smallest < size:
        raise ValueError(
            f"'{name}' has {smallest} training nodes in {unit} for {size} "
            'processes, and every process needs at least one; use fewer '
            'processes' + (' or a larger --batch-size'
                           if name == 'NeighborBatches' else ''))


def _mix(seed: int, epoch: int) -> int:
    """One generator seed per (run seed, epoch), so that the order of an
    epoch does not depend on how the run got there (resumed or not)."""
    return (seed * 0x9E3779B97F4A7C15 + epoch) % 2**63


def seed_batches(num_nodes: int, batch_size: int, seed: int, epoch: int,
                 rank: int = 0,
                 world_size: int = 1) -> list[tuple[Tensor, int]]:
    r"""The mini-batches of one epoch for one process.

    The :obj:`num_nodes` training nodes are shuffled by a generator seeded
    from :obj:`seed` and :obj:`epoch` (the same order in every process),
    and cut into :math:`S = \lceil n / (B W) \rceil` near-equal steps; each
    step is cut into :obj:`world_size` near-equal shares, one per process.

    Returns:
        list of (torch.Tensor, int): For each step, the positions (into the
        training nodes) of this process's share, and the number of nodes in
        the step over all processes.
    """
    check_positive_ints('seed_batches', batch_size=batch_size,
                        world_size=world_size)
    steps = math.ceil(num_nodes / (batch_size * world_size))
    generator = torch.Generator().manual_seed(_mix(seed, epoch))
    order = torch.randperm(num_nodes, generator=generator)
    chunks = order.tensor_split(steps)
    _check_shares(min(chunk.numel() for chunk in chunks), world_size,
                  'NeighborBatches', 'a step')
    return [(chunk.tensor_split(world_size)[rank], chunk.numel())
            for chunk in chunks]


def step_seed(seed: int, epoch: int, step: int, rank: int = 0) -> int:
    """The seed of the neighbour sampling of one step of one process: a
    function of the run's seed, the epoch, the step and the rank only, so
    that a step samples the same neighbours wherever and whenever it is
    drawn (in the training process or a loader worker, in a resumed run or
    an uninterrupted one)."""
    return _mix(_mix(_mix(seed, epoch), step), rank)


class _Plan(torch.utils.data.Sampler):
    """The steps of the current epoch, set by
    :meth:`NeighborBatches.batches`: for each, the positions of its seeds
    (into the training nodes) and the seed of its sampling."""
    def __init__(self) -> None:
        self.steps: list[tuple[list[int], int]] = []

    def __iter__(self) -> Iterator[tuple[list[int], int]]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)


class _StepSampler:
    """Samples the subgraph of one step of the plan, from the step's seed:
    the loader's collate function (in a worker, if there are any). Holds
    PyG's loader only, not the :class:`NeighborBatches` that owns the
    loader, so that a loader that is dropped ends its workers at once
    instead of at the next garbage collection."""
    def __init__(self, neighbors) -> None:
        self.neighbors = neighbors

    def __call__(self, step: tuple[list[int], int]) -> Data:
        positions, seed = step
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            batch = self.neighbors.collate_fn(positions)
        seeds = batch.batch_size
        return Data(x=batch.x, y=batch.y, edge_index=batch.edge_index,
                    n_id=batch.n_id, num_seeds=seeds,
                    train_mask=torch.arange(batch.num_nodes) < seeds)


class _Steps(torch.utils.data.Dataset):
    """Hands each step of the plan to the loader's sampling as it is."""
    def __getitem__(self, step: tuple[list[int], int]
                    ) -> tuple[list[int], int]:
        return step


class NeighborBatches:
    r"""Mini-batches of training nodes with their sampled neighbourhoods,
    drawn by :class:`torch_geometric.loader.NeighborLoader`.

    Each batch is the subgraph around at most :obj:`batch_size` seed nodes
    (:obj:`num_neighbors[i]` neighbours sampled per node at hop
    :math:`i + 1`); the seeds come first, ``num_seeds`` counts them and
    ``train_mask`` marks them, so the loss is taken on the seeds only. A
    model whose forward takes ``num_seeds`` (as
    :class:`~pyg_gatv2.models.GATv2` does) gets it, and computes at each
    layer only the nodes the seeds depend on; another runs every layer on
    the whole subgraph. The epoch's order comes from
    :func:`~pyg_gatv2.experiments.training.sampling.seed_batches`, and each
    step samples its neighbours from torch's generator seeded by
    :func:`~pyg_gatv2.experiments.training.sampling.step_seed` (and
    restored after), so that a resumed run sees the batches an
    uninterrupted one would, with or without workers, and sampling leaves
    the random stream of training (dropout) untouched. With
    :obj:`num_workers` processes the next batches are sampled while the
    current one trains (each worker prefetches two; the workers live as
    long as the loader). A batch holds ``x``, ``y``, ``edge_index``,
    ``n_id`` (each node's index in the graph), ``num_seeds``,
    ``train_mask`` and ``loss_scale``.

    Args:
        data (torch_geometric.data.Data): The graph, on the CPU.
        num_neighbors (sequence of int): Neighbours sampled per node at
            each hop, one entry per layer (-1: all of them).
        batch_size (int): Most seed nodes per batch and process.
        device (str or torch.device, optional): Where the batches go.
            (default: ``'cpu'``)
        num_workers (int, optional): Processes that sample ahead of
            training; :obj:`0` samples each batch in the training process
            when it is needed. (default: :obj:`0`)
    """
    def __init__(self, data: Data, num_neighbors: Sequence[int],
                 batch_size: int, device: Union[str, torch.device] = 'cpu',
                 num_workers: int = 0) -> None:
        check_sampling()
        from torch_geometric.loader import NeighborLoader

        name = self.__class__.__name__
        check_positive_ints(name, batch_size=batch_size)
        num_neighbors = list(num_neighbors)
        if not num_neighbors or not all(
                isinstance(n, int) and (n > 0 or n == -1)
                for n in num_neighbors):
            raise ValueError(
                f"'{name}' got num_neighbors={num_neighbors!r}; pass one "
                'positive number (or -1 for all) per layer, e.g. [25, 10]')
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"'{name}' got num_workers={num_workers!r}; "
                             'pass a non-negative integer')
        if data.x.device.type != 'cpu':
            raise ValueError(f"'{name}' samples on the CPU; pass the graph "
                             'on the CPU and the training device as device=')
        self.num_neighbors = num_neighbors
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.num_train = int(data.train_mask.sum())
        self._plan = _Plan()
        graph = Data(x=data.x, y=data.y, edge_index=data.edge_index,
                     num_nodes=data.num_nodes)
        # The sampler and the filter of PyG's loader, run by a loader over
        # the steps of the plan, which hands each step's seed along.
        neighbors = NeighborLoader(
            graph, num_neighbors=num_neighbors,
            input_nodes=_train_nodes(data), filter_per_worker=True)
        self.loader = torch.utils.data.DataLoader(
            _Steps(), sampler=self._plan, batch_size=None,
            collate_fn=_StepSampler(neighbors), num_workers=num_workers,
            persistent_workers=num_workers > 0,
            # The seed the loader draws for its workers comes from a
            # generator of its own, not from training's.
            generator=torch.Generator().manual_seed(0))

    @property
    def settings(self) -> dict[str, Any]:
        """What a resumed run must share with the one it resumes."""
        return {'batch_size': self.batch_size,
                'num_neighbors': self.num_neighbors,
                'world_size': world()[1]}

    def batches(self, seed: int, epoch: int) -> Iterable[Data]:
        """The batches of epoch :obj:`epoch` of the run seeded
        :obj:`seed`, for this process."""
        rank, size = world()
        steps = seed_batches(self.num_train, self.batch_size, seed, epoch,
                             rank, size)
        self._plan.steps = [
            (positions.tolist(), step_seed(seed, epoch, step, rank))
            for step, (positions, _) in enumerate(steps)]
        return self._batches([total for _, total in steps], size)

    def _batches(self, totals: list[int], size: int) -> Iterator[Data]:
        for batch, total in zip(self.loader, totals, strict=True):
            batch.loss_scale = batch.num_seeds * size / total
            yield batch.to(self.device)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(batch_size={self.batch_size}, '
                f'num_neighbors={self.num_neighbors})')


def whole_neighbourhoods(data: Data, batch_size: int):
    """A :class:`~torch_geometric.loader.NeighborLoader` over every node of
    :obj:`data` in order, each batch of :obj:`batch_size` destination
    nodes with all its in-neighbours: what
    :meth:`pyg_gatv2.GATv2.inference` runs each layer over. It draws from a
    generator of its own, so that evaluating leaves the random stream of
    training untouched."""
    check_sampling()
    from torch_geometric.loader import NeighborLoader
    check_positive_ints('whole_neighbourhoods', batch_size=batch_size)
    graph = Data(x=data.x.cpu(), edge_index=data.edge_index.cpu(),
                 num_nodes=data.num_nodes)
    return NeighborLoader(graph, num_neighbors=[-1], batch_size=batch_size,
                          shuffle=False,
                          generator=torch.Generator().manual_seed(0))
