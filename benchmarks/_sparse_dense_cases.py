"""Sparse vs dense GATv2, the cases: which graphs, and how each
implementation runs on one.

A :class:`Plan` describes a case before its graph is drawn, so that its cost
can be projected (and a case out of every budget skipped) without building
it; :meth:`Plan.build` draws the graph. :func:`build_runners` gives every
implementation the same weights and its inputs (the dense layer an
adjacency matrix, padded per graph), and calls to run a forward pass, a
training step, and the output in the dense layout for the check.
"""
import argparse
import dataclasses
import math
import tempfile
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from _common import has_raw_files, raw_dir
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.nn import GATv2Conv as PyGGATv2Conv
from torch_geometric.utils import coalesce, to_dense_adj, to_dense_batch

from pyg_gatv2 import DenseGATv2Conv, GATv2Conv
from pyg_gatv2.experiments import load_planetoid

MiB = 2.0**20
# Implementations in table order.
IMPLS = ('dense', 'sparse', 'fused', 'pyg')
LABELS = {
    'dense': 'DenseGATv2Conv',
    'sparse': 'GATv2Conv (message passing)',
    'fused': 'GATv2Conv (fused=True)',
    'pyg': 'torch_geometric GATv2Conv',
}


def degree_of(spec: str, num_nodes: int) -> float:
    """The average in-degree that :obj:`spec` gives a graph of
    :obj:`num_nodes` nodes (never more than every other node)."""
    if spec.startswith('N/'):
        value = num_nodes / int(spec[2:])
    else:
        value = float(spec)
    return min(value, num_nodes - 1)



@dataclass
class Plan:
    """A case before its graph is drawn, so that its cost can be projected
    (and a case out of every budget skipped) without building it."""
    setting: str  # 'single', 'batch' or 'cora'
    num_nodes: int  # nodes per graph (the padded size of a batch)
    num_graphs: int
    degree: str
    in_channels: int
    seed: int
    data: Optional[Data] = None  # the graph of a real data set
    # The random series whose measurements project this case's cost
    # (a real graph borrows the one-graph series of the nearest degree).
    series: tuple[str, str] = ('', '')
    raw_dir: Optional[str] = None  # where a real data set's files are

    def __post_init__(self):
        if not self.series[0]:
            self.series = (self.setting, self.degree)
        self.series = tuple(self.series)  # a list after a JSON round trip

    def to_json(self) -> dict:
        """The plan without its data (reloaded by :meth:`from_json`)."""
        fields = dataclasses.asdict(dataclasses.replace(self, data=None))
        del fields['data']
        return fields

    @classmethod
    def from_json(cls, fields: dict) -> 'Plan':
        plan = cls(**fields)
        if plan.raw_dir is not None:
            plan.data = load_cora(plan.raw_dir)
        return plan

    def sizes(self, gen: torch.Generator) -> list[int]:
        if self.num_graphs == 1:
            return [self.num_nodes]
        # Graphs of N/2 to N nodes, one of exactly N (the padded size).
        sizes = torch.randint(self.num_nodes // 2, self.num_nodes + 1,
                              (self.num_graphs, ), generator=gen).tolist()
        sizes[0] = self.num_nodes
        return sizes

    def counts(self) -> tuple[int, int]:
        """Nodes and (expected) edges in all graphs."""
        if self.data is not None:
            return self.data.num_nodes, self.data.num_edges
        sizes = self.sizes(torch.Generator().manual_seed(self.seed))
        edges = sum(round(n * degree_of(self.degree, n)) for n in sizes)
        return sum(sizes), edges

    def build(self) -> 'Case':
        if self.data is not None:
            batch = torch.zeros(self.data.num_nodes, dtype=torch.long)
            return Case(self, self.data.x, self.data.edge_index, batch)
        gen = torch.Generator().manual_seed(self.seed)
        sizes = self.sizes(gen)
        edges, offset = [], 0
        for n in sizes:
            edges.append(random_edges(n, degree_of(self.degree, n), gen) +
                         offset)
            offset += n
        batch = torch.repeat_interleave(torch.arange(len(sizes)),
                                        torch.tensor(sizes))
        x = torch.randn(offset, self.in_channels, generator=gen)
        return Case(self, x, torch.cat(edges, dim=1), batch)


@dataclass
class Case:
    plan: Plan
    x: Tensor  # [total nodes, F]
    edge_index: Tensor  # [2, E], no self-loops, no duplicates
    batch: Tensor  # graph of each node


def random_edges(n: int, degree: float, gen: torch.Generator) -> Tensor:
    """A random directed graph on :obj:`n` nodes with the given average
    in-degree, without self-loops or duplicate edges."""
    if n * n <= 2**22:
        p = degree / max(n - 1, 1)
        adj = torch.rand(n, n, generator=gen) < p
        adj.fill_diagonal_(False)
        return adj.nonzero().t().contiguous()
    num = round(n * degree)
    edge_index = torch.randint(0, n, (2, num), generator=gen)
    edge_index = edge_index[:, edge_index[0] != edge_index[1]]
    return coalesce(edge_index, num_nodes=n)


def cora_plan(args: argparse.Namespace) -> Optional[Plan]:
    """The Cora graph as a case, from ``--raw-dir`` or
    ``$PYG_GATV2_RAW_DIR``; None, with a note, where neither holds it."""
    folder = raw_dir(args.raw_dir)
    if not has_raw_files(folder, 'Cora'):
        return None
    data = load_cora(str(folder))
    degree = data.num_edges / data.num_nodes
    nearest = min(args.degrees, key=lambda spec: abs(
        math.log(degree_of(spec, data.num_nodes) / degree)))
    return Plan('cora', data.num_nodes, 1, f'{degree:.1f}', data.num_features,
                args.seed, data, series=('single', nearest),
                raw_dir=str(folder))


def load_cora(folder: str) -> Data:
    with tempfile.TemporaryDirectory() as root:
        return load_planetoid('Cora', root=root, raw_dir=folder)[0]


def plans(args: argparse.Namespace) -> list[Plan]:
    """Every case that the flags ask for, in order: one graph, batches,
    Cora."""
    found = [Plan(setting, n, graphs, spec, args.in_channels, args.seed)
             for setting, sizes, graphs in (
                 ('single', args.single_sizes, 1),
                 ('batch', args.batch_sizes, args.batch_graphs))
             for n in sizes for spec in _distinct(args.degrees, n)]
    cora = cora_plan(args) if args.cora else None
    return found + ([cora] if cora else [])


def _distinct(specs: list[str], n: int) -> list[str]:
    """The degree specs that give distinct degrees on N nodes."""
    seen, kept = set(), []
    for spec in specs:
        value = degree_of(spec, n)
        if value not in seen:
            seen.add(value)
            kept.append(spec)
    return kept


def costs(plan: Plan, impl: str,
          args: argparse.Namespace) -> tuple[float, float]:
    """A cost model of :obj:`impl` on :obj:`plan`, to project time and
    memory from smaller cases, and the bytes of its inputs.

    The attention terms (one per node pair for the dense layer, one per
    edge for the others) dominate; the projections of the features are
    matrix products, far cheaper per operation, and get a small weight.
    """
    F_in, H, C = plan.in_channels, args.heads, args.out_channels
    B, N = plan.num_graphs, plan.num_nodes
    nodes, edges = plan.counts()
    if impl == 'dense':
        # float32 features and adjacency (as to_dense_adj gives it), mask
        return (B * N * N * H * C + B * N * F_in * H * C / 16,
                4.0 * B * N * (N + F_in) + B * N)
    return ((edges + nodes) * H * C + nodes * F_in * H * C / 16,
            4.0 * nodes * F_in + 16.0 * edges)


@dataclass
class Runner:
    """One implementation on one case: forward, training step, and output
    in the dense layout for the check."""
    forward: Callable[[], Tensor]
    train_step: Callable[[], None]
    dense_output: Callable[[], Tensor]


def build_runners(case: Case, impls: list[str], args: argparse.Namespace,
                  device: torch.device) -> dict[str, Runner]:
    """Layers with equal weights, and inputs, for :obj:`impls` only."""
    F_in, H, C = case.x.size(1), args.heads, args.out_channels
    torch.manual_seed(args.seed)
    # GATv2Conv takes its fused path by default: ask for each path.
    sparse = GATv2Conv(F_in, C, heads=H, fused=False).to(device)
    layers = {'sparse': sparse}
    if 'dense' in impls:
        layers['dense'] = DenseGATv2Conv.from_sparse(
            sparse, memory_budget=int(args.chunk_budget * MiB))
    if 'fused' in impls:
        layers['fused'] = GATv2Conv(F_in, C, heads=H, fused=True).to(device)
    if 'pyg' in impls:
        layers['pyg'] = PyGGATv2Conv(F_in, C, heads=H).to(device)
    for name in ('fused', 'pyg'):
        if name in layers:
            layers[name].load_state_dict(sparse.state_dict())

    x = case.x.to(device)
    edge_index = case.edge_index.to(device)
    batch = case.batch.to(device)
    N, B = case.plan.num_nodes, case.plan.num_graphs
    gen = torch.Generator().manual_seed(args.seed)
    runners = {}
    for name in impls:
        layer = layers[name]
        if name == 'dense':
            x_dense, mask = to_dense_batch(x, batch, max_num_nodes=N,
                                           batch_size=B)
            if bool(mask.all()):
                mask = None  # nothing padded
            adj = to_dense_adj(edge_index, batch, max_num_nodes=N,
                               batch_size=B)
            inputs = (x_dense, adj, mask)
            as_dense = _identity
            out_shape = (B, N, H * C)
        else:
            inputs = (x, edge_index)
            as_dense = _padder(batch, N, B)
            out_shape = (x.size(0), H * C)
        grad = torch.randn(out_shape, generator=gen).to(device)
        runners[name] = Runner(
            forward=_forward(layer, inputs),
            train_step=_train_step(layer, inputs, grad),
            dense_output=_compose(as_dense, _forward(layer, inputs)))
    return runners


def _identity(out: Tensor) -> Tensor:
    return out


def _padder(batch: Tensor, N: int, B: int):
    def pad(out: Tensor) -> Tensor:
        return to_dense_batch(out, batch, max_num_nodes=N, batch_size=B)[0]

    return pad


def _compose(f, g):
    return lambda: f(g())


def _forward(layer: torch.nn.Module, inputs: tuple):
    def run() -> Tensor:
        layer.eval()
        with torch.no_grad():
            return layer(*inputs)

    return run


def _train_step(layer: torch.nn.Module, inputs: tuple, grad: Tensor):
    def run() -> None:
        layer.train()
        for param in layer.parameters():
            param.grad = None
        layer(*inputs).backward(grad)

    return run

