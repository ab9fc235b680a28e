"""Sparse or dense GATv2? Time and peak memory of ``DenseGATv2Conv`` against
the message-passing ``GATv2Conv`` (and its fused path, where the package has
one) and PyG's ``GATv2Conv``, over graph size and density.

    python benchmarks/sparse_vs_dense.py           # full sweep, a few minutes
    python benchmarks/sparse_vs_dense.py --quick   # small sizes, for CI

Cases: one random graph of N nodes, a batch of 128 random graphs of N/2 to N
nodes (padded to N for the dense layer, with a node mask), each at several
average in-degrees, and the Cora citation graph. Every case is first checked:
all implementations that can run it must give the dense layer's output (or,
where the dense layer is out of budget, PyG's) to 1e-5; a case that
disagrees is not timed. Then each implementation is timed, forward alone
(inference, no autograd) and forward + backward (median after warm-up), and
its peak memory is measured in a separate process (growth above the level
before the call; the inputs, which the dense layer needs as an N x N
adjacency, are counted apart). An implementation whose time or memory,
projected from the largest smaller case of its series, exceeds the budget is
reported as skipped with the projection.

Writes ``<name>.md`` (the tables, crossovers and fitted slopes),
``<name>.csv`` (one row per case and implementation) and ``<name>.png``
(log-log curves against N) into ``--out``, and prints the Markdown.
"""
import argparse
import inspect
import math
import multiprocessing
import os
import platform
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch_geometric
from _common import (
    command_line,
    markdown_table,
    median_time,
    peak_memory,
    pin_malloc,
    write_csv,
)
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.nn import GATv2Conv as PyGGATv2Conv
from torch_geometric.utils import coalesce, to_dense_adj, to_dense_batch

import pyg_gatv2
import pyg_gatv2.fused
from pyg_gatv2 import DenseGATv2Conv, GATv2Conv, get_backend, load_planetoid

MiB = 2.0**20
ROOT = Path(__file__).resolve().parents[1]
SHARED_RAW = ROOT.parent / 'shared' / 'data' / 'planetoid'
TOLERANCE = 1e-5
# Implementations in table order; 'fused' only where GATv2Conv has it.
IMPLS = ('dense', 'sparse', 'fused', 'pyg')
LABELS = {
    'dense': 'DenseGATv2Conv',
    'sparse': 'GATv2Conv (message passing)',
    'fused': 'GATv2Conv (fused=True)',
    'pyg': 'torch_geometric GATv2Conv',
}
COLORS = {'dense': 'C3', 'sparse': 'C0', 'fused': 'C2', 'pyg': 'C7'}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Sparse vs dense GATv2: time and peak memory.')
    parser.add_argument('--quick', action='store_true',
                        help='a few small sizes that run in seconds (CI)')
    parser.add_argument('--single-sizes', type=_ints,
                        default=[64 * 2**k for k in range(9)],
                        help='node counts of the single-graph cases')
    parser.add_argument('--batch-sizes', type=_ints,
                        default=[16, 32, 64, 128, 256],
                        help='largest node count per graph of the batches')
    parser.add_argument('--batch-graphs', type=int, default=128,
                        help='graphs per batch')
    parser.add_argument('--degrees', type=_degrees,
                        default=_degrees('4,N/8,N/2'),
                        help="average in-degrees: numbers or 'N/k'")
    parser.add_argument('--cora', action=argparse.BooleanOptionalAction,
                        default=True, help='include the Cora graph')
    parser.add_argument('--in-channels', type=int, default=64,
                        help='input features of the random graphs')
    parser.add_argument('--heads', type=int, default=8)
    parser.add_argument('--out-channels', type=int, default=8,
                        help='output channels per head')
    parser.add_argument('--chunk-budget', type=float, default=256,
                        help="DenseGATv2Conv's memory_budget, MiB")
    parser.add_argument('--max-seconds', type=float, default=2.0,
                        help='skip a run whose projected forward+backward '
                        'time exceeds this')
    parser.add_argument('--cora-max-seconds', type=float, default=8.0,
                        help='the same for the Cora graph')
    parser.add_argument('--max-memory', type=float, default=4.0,
                        help='skip a run whose projected memory (inputs + '
                        'peak) exceeds this many GiB')
    parser.add_argument('--min-seconds', type=float, default=0.3,
                        help='time each measurement for at least this long')
    parser.add_argument('--threads', type=int, default=1,
                        help='CPU threads of torch and numba; 0 keeps their '
                        'defaults. One thread gives stable numbers on a '
                        'shared machine, where waiting threads spin')
    parser.add_argument('--clock', choices=['wall', 'cpu'], default='wall',
                        help="'cpu': time by the process's CPU time, which "
                        'other jobs on the machine do not inflate')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', type=Path,
                        default=ROOT / 'benchmarks' / 'results',
                        help='folder for the .md, .csv and .png')
    parser.add_argument('--name', default=None,
                        help='file stem (default: sparse_vs_dense, '
                        'sparse_vs_dense_quick with --quick)')
    args = parser.parse_args(argv)
    if args.quick:  # other defaults; flags given still win
        parser.set_defaults(single_sizes=[64, 128, 256], batch_sizes=[8, 16],
                            degrees=_degrees('4,N/2'), cora=False,
                            max_seconds=1.0, min_seconds=0.02)
        args = parser.parse_args(argv)
    if args.name is None:
        args.name = 'sparse_vs_dense' + ('_quick' if args.quick else '')
    return args


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(',') if v]


def _degrees(text: str) -> list[str]:
    specs = [v.strip() for v in text.split(',') if v.strip()]
    for spec in specs:
        if not (spec.replace('.', '', 1).isdigit() or (
                spec.startswith('N/') and spec[2:].isdigit())):
            raise argparse.ArgumentTypeError(
                f"degree '{spec}' is neither a number nor 'N/k'")
    return specs


def degree_of(spec: str, num_nodes: int) -> float:
    """The average in-degree that :obj:`spec` gives a graph of
    :obj:`num_nodes` nodes (never more than every other node)."""
    if spec.startswith('N/'):
        value = num_nodes / int(spec[2:])
    else:
        value = float(spec)
    return min(value, num_nodes - 1)


# Cases ---------------------------------------------------------------------


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

    def __post_init__(self):
        if not self.series[0]:
            self.series = (self.setting, self.degree)

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
    raw = os.environ.get('PYG_GATV2_RAW_DIR') or str(SHARED_RAW)
    if not (Path(raw) / 'Cora' / 'raw').is_dir():
        print(f'Cora: raw files not found in {raw} (set PYG_GATV2_RAW_DIR); '
              'skipped')
        return None
    with tempfile.TemporaryDirectory() as root:
        data = load_planetoid('Cora', root=root, raw_dir=raw)[0]
    degree = data.num_edges / data.num_nodes
    nearest = min(args.degrees, key=lambda spec: abs(
        math.log(degree_of(spec, data.num_nodes) / degree)))
    return Plan('cora', data.num_nodes, 1, f'{degree:.1f}', data.num_features,
                args.seed, data, series=('single', nearest))


# Implementations -------------------------------------------------------------


def has_fused() -> bool:
    """Whether this version of the package has the fused path."""
    return 'fused' in inspect.signature(GATv2Conv.__init__).parameters


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
    # With a fused path, GATv2Conv takes it by default: ask for each path.
    path = {'fused': False} if has_fused() else {}
    sparse = GATv2Conv(F_in, C, heads=H, **path).to(device)
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


# Measuring -------------------------------------------------------------------


class History:
    """Measured costs per series and implementation, to project larger
    cases."""
    def __init__(self):
        self.points: dict[tuple, list[tuple[float, dict]]] = {}

    def add(self, series: tuple, impl: str, work: float, row: dict) -> None:
        self.points.setdefault((series, impl), []).append((work, row))

    def project(self, series: tuple, impl: str, work: float,
                key: str) -> Optional[float]:
        """:obj:`key` of the largest smaller case of the series, scaled by
        the work (an upper bound where fixed overheads dominate it)."""
        known = [(w, r[key]) for w, r in self.points.get((series, impl), [])
                 if w <= work and not math.isnan(r[key])]
        if not known:
            return None
        w, value = max(known)
        return value * work / w


def run_case(plan: Plan, impls: list[str], args: argparse.Namespace,
             device: torch.device, history: History,
             memory: 'MemoryMeter') -> list[dict]:
    nodes, edges = plan.counts()
    base = dict(setting=plan.setting, N=plan.num_nodes,
                graphs=plan.num_graphs, nodes=nodes, edges=edges,
                degree=plan.degree, avg_degree=round(edges / nodes, 2))
    rows, work = {}, {}
    for name in impls:
        work[name], input_bytes = costs(plan, name, args)
        rows[name] = dict(base, impl=name, status='', reference='',
                          max_diff=float('nan'), fwd_ms=float('nan'),
                          train_ms=float('nan'), input_mib=input_bytes / MiB,
                          peak_fwd_mib=float('nan'),
                          peak_train_mib=float('nan'))

    # Which implementations fit the budgets, projected from smaller cases:
    # for timing, forward + backward must fit; for the check, the forward.
    timed, checked = [], []
    for name in impls:
        fits = {}
        for mode in ('train', 'fwd'):
            seconds = history.project(plan.series, name, work[name],
                                      f'{mode}_ms')
            seconds = None if seconds is None else seconds / 1e3
            peak = history.project(plan.series, name, work[name],
                                   f'peak_{mode}_mib')
            nbytes = (rows[name]['input_mib'] + (peak or 0.0)) * MiB
            limit = (args.cora_max_seconds if plan.setting == 'cora' else
                     args.max_seconds)
            if seconds is not None and seconds > limit:
                fits[mode] = f'skipped: projected {seconds:.3g} s'
            elif nbytes > args.max_memory * 2**30:
                fits[mode] = f'skipped: projected {nbytes / 2**30:.3g} GiB'
            else:
                fits[mode] = ''
        rows[name]['status'] = fits['train'] or fits['fwd']
        if not fits['fwd']:
            checked.append(name)
            if not fits['train']:
                timed.append(name)

    # Correctness first, against the dense layer (or PyG's where the dense
    # layer is out of budget); a case without two outputs to compare, or
    # where any output disagrees, is not timed.
    if len(checked) < 2:
        for name in checked:
            rows[name]['status'] = 'skipped: nothing to check against'
        return list(rows.values())
    case = plan.build()
    for row in rows.values():
        row['edges'] = case.edge_index.size(1)
        row['avg_degree'] = round(row['edges'] / nodes, 2)
    runners = build_runners(case, checked, args, device)
    outputs = {}
    for name in checked:
        try:
            outputs[name] = runners[name].dense_output()
        except (RuntimeError, ValueError) as error:
            rows[name]['status'] = _failure(error)
    reference = next((r for r in ('dense', 'pyg', 'sparse', 'fused')
                      if r in outputs), None)
    if len(outputs) < 2:
        for name in outputs:
            rows[name]['status'] = 'skipped: nothing to check against'
        return list(rows.values())
    agree = True
    for name, out in outputs.items():
        expected = outputs[reference]
        rows[name]['reference'] = reference
        rows[name]['max_diff'] = (out - expected).abs().max().item()
        if not torch.allclose(out, expected, rtol=TOLERANCE,
                              atol=TOLERANCE):
            rows[name]['status'] = 'MISMATCH'
            agree = False
    del outputs, expected, out
    timed = [name for name in timed if rows[name]['status'] == '']
    if not agree:
        for name in timed:
            rows[name]['status'] = 'not timed: another output disagrees'
        return list(rows.values())

    for name in timed:
        runner, row = runners[name], rows[name]
        timing = dict(min_seconds=args.min_seconds, clock=args.clock)
        try:
            row['fwd_ms'] = 1e3 * median_time(runner.forward, device,
                                              **timing)
            row['train_ms'] = 1e3 * median_time(runner.train_step, device,
                                                **timing)
        except (RuntimeError, ValueError) as error:
            row['status'] = _failure(error)
    del runners, case
    timed = [name for name in timed if rows[name]['status'] == '']
    for name, peaks in memory.measure(plan, timed, args).items():
        row = rows[name]
        if isinstance(peaks, str):
            row['status'] = peaks
            continue
        row['peak_fwd_mib'], row['peak_train_mib'] = peaks
        row['status'] = 'ok'
        history.add(plan.series, name, work[name], row)
    return list(rows.values())


class MemoryMeter:
    """Measures peak memory in a separate process.

    On CPU the figure is the growth of the resident set, which is only clean
    with glibc's mmap threshold fixed (:func:`_common.pin_malloc`); but a
    fixed threshold makes every large allocation fault its pages in afresh
    and slows the runs severalfold, so timings are taken here, with the
    default allocator, and memory in a worker process with the fixed one.
    """
    def __init__(self):
        self.pool: Optional[ProcessPoolExecutor] = None

    def measure(self, plan: Plan, impls: list[str],
                args: argparse.Namespace) -> dict[str, object]:
        """Peak MiB of forward and of forward + backward per implementation,
        or the reason there is none."""
        if not impls:
            return {}
        if self.pool is None:
            self.pool = ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context('spawn'),
                initializer=_start_worker, initargs=(args.threads, ))
        try:
            return self.pool.submit(_measure_memory, plan, impls,
                                    args).result()
        except BrokenProcessPool:
            self.close()  # killed, most likely out of memory
            return {name: 'out of memory (worker killed)' for name in impls}

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None


def _start_worker(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
    if not pin_malloc():
        print('Could not fix the allocator\'s mmap threshold: CPU memory '
              'figures may be too low after large cases', flush=True)


def _measure_memory(plan: Plan, impls: list[str],
                    args: argparse.Namespace) -> dict[str, object]:
    device = torch.device(args.device)
    runners = build_runners(plan.build(), impls, args, device)
    result: dict[str, object] = {}
    for name, runner in runners.items():
        try:
            runner.train_step()  # the first call allocates what persists
            result[name] = (peak_memory(runner.forward, device) / MiB,
                            peak_memory(runner.train_step, device) / MiB)
        except (RuntimeError, ValueError) as error:
            result[name] = _failure(error)
    return result


def _failure(error: Exception) -> str:
    if isinstance(error, torch.OutOfMemoryError):
        return 'out of memory'
    first_line = str(error).splitlines()[0] if str(error) else ''
    return f'error: {type(error).__name__}: {first_line}'


# Reporting -------------------------------------------------------------------


def series_key(row: dict) -> tuple[str, str]:
    return row['setting'], row['degree']


def measured(rows: list[dict], setting: str, degree: str, impl: str,
             key: str) -> tuple[np.ndarray, np.ndarray]:
    points = sorted((r['N'], r[key] + (r['input_mib'] if key ==
                                       'peak_train_mib' else 0.0))
                    for r in rows
                    if (r['setting'], r['degree'], r['impl']) == (
                        setting, degree, impl) and r['status'] == 'ok'
                    and not math.isnan(r[key]))
    if not points:
        return np.empty(0), np.empty(0)
    n, y = zip(*points, strict=True)
    return np.array(n, dtype=float), np.array(y, dtype=float)


def fit_slope(n: np.ndarray, y: np.ndarray) -> Optional[tuple[float, int]]:
    """Slope of log y against log N over the larger half of the points
    (at least two), and the smallest N of the fit."""
    if len(n) < 2:
        return None
    start = min(len(n) // 2, len(n) - 2)
    slope = np.polyfit(np.log(n[start:]), np.log(y[start:]), 1)[0]
    return float(slope), int(n[start])


@dataclass
class Crossing:
    """How :obj:`impl` and the dense layer compare along one series."""
    impl: str
    at: Optional[float]  # N where they swap places (log-log interpolated)
    first: str  # the smaller one below :obj:`at` (or everywhere)
    low: float  # the range of N where both ran
    high: float
    ratio: float  # impl / dense at :obj:`high`

    def __str__(self) -> str:
        tail = f'{self.impl}/dense = {self.ratio:.2g} at N = {self.high:.0f}'
        if self.at is None:
            return (f'{self.first} smaller at every N where both ran '
                    f'({self.low:.0f} to {self.high:.0f}); {tail}')
        then = 'dense' if self.first == self.impl else self.impl
        return (f'{self.first} smaller below N ~ {self.at:.0f}, {then} '
                f'above; {tail}')


def crossover(rows: list[dict], setting: str, degree: str, impl: str,
              key: str) -> Optional[Crossing]:
    """Where :obj:`impl` and the dense layer swap places in :obj:`key`;
    None without a size where both ran."""
    n_d, y_d = measured(rows, setting, degree, 'dense', key)
    n_s, y_s = measured(rows, setting, degree, impl, key)
    common = sorted(set(n_d) & set(n_s))
    if not common:
        return None
    dense = dict(zip(n_d, y_d, strict=True))
    other = dict(zip(n_s, y_s, strict=True))
    gap = [math.log(other[n] / dense[n]) for n in common]
    at = None
    for a in range(len(common) - 1):
        if (gap[a] > 0) != (gap[a + 1] > 0):
            la, lb = math.log(common[a]), math.log(common[a + 1])
            at = math.exp(la + (lb - la) * gap[a] / (gap[a] - gap[a + 1]))
            break
    return Crossing(impl, at, 'dense' if gap[0] > 0 else impl, common[0],
                    common[-1], math.exp(gap[-1]))


def summary(rows: list[dict], impls: list[str]) -> str:
    lines = []
    series = sorted({series_key(r) for r in rows if r['setting'] != 'cora'},
                    key=lambda s: (s[0] != 'single', _degree_order(s[1])))
    for setting, degree in series:
        title = (f'{setting} graph' if setting == 'single' else
                 f'batch of {_graphs(rows, setting)} graphs')
        lines.append(f'- **{title}, average in-degree {degree}**')
        for impl in impls:
            if impl == 'dense':
                continue
            for key, what in (('train_ms', 'time (forward+backward)'),
                              ('peak_train_mib', 'memory (inputs+peak)')):
                crossing = crossover(rows, setting, degree, impl, key)
                if crossing:
                    lines.append(f'  - {LABELS[impl]} vs dense, {what}: '
                                 f'{crossing}')
        slopes = []
        for impl in impls:
            for key, what in (('train_ms', 'time'),
                              ('peak_train_mib', 'memory')):
                fit = fit_slope(*measured(rows, setting, degree, impl, key))
                if fit:
                    slopes.append(f'{impl} {what} N^{fit[0]:.2f} '
                                  f'(N >= {fit[1]})')
        if slopes:
            lines.append('  - fitted slopes: ' + '; '.join(slopes))
    return '\n'.join(lines)


def _degree_order(spec: str) -> float:
    return 1 / float(spec[2:]) if spec.startswith('N/') else -1 / float(spec)


def _graphs(rows: list[dict], setting: str) -> int:
    return next(r['graphs'] for r in rows if r['setting'] == setting)


def cell(row: dict, key: str) -> str:
    if row['status'] == 'ok':
        value = row[key]
        if key == 'peak_train_mib':
            value += row['input_mib']
        return f'{value:.3g}' if not math.isnan(value) else 'n/a'
    if row['status'].startswith('skipped: projected'):
        return 'skip (' + row['status'].split('projected ')[1] + ')'
    if row['status'].startswith('error'):
        return 'error'  # the message is listed under the tables
    return row['status']


def failures(rows: list[dict]) -> str:
    """The distinct errors, with the cases they stopped."""
    seen: dict[tuple[str, str], int] = {}
    for row in rows:
        if row['status'].startswith('error'):
            key = (row['impl'], row['status'])
            seen[key] = seen.get(key, 0) + 1
    return '\n'.join(f'- `{impl}` ({count} cases): {status}'
                     for (impl, status), count in seen.items())


def tables(rows: list[dict], impls: list[str]) -> str:
    cases: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        key = (row['setting'], row['N'], row['degree'])
        cases.setdefault(key, {})[row['impl']] = row
    ratios = [impl for impl in ('sparse', 'fused') if impl in impls]
    out = []
    for key, title in (
            ('train_ms', 'Forward + backward, median ms'),
            ('fwd_ms', 'Forward (inference), median ms'),
            ('peak_train_mib', 'Memory of forward + backward: inputs + '
             'peak growth, MiB')):
        table = []
        for by_impl in cases.values():
            first = next(iter(by_impl.values()))
            checked = [r for r in by_impl.values() if r['reference']]
            check = 'n/a'
            if checked:
                worst = max(r['max_diff'] for r in checked)
                check = f"{worst:.1e} vs {checked[0]['reference']}"
            line = {'case': first['setting'], 'N': first['N'],
                    'graphs': first['graphs'], 'edges': first['edges'],
                    'avg deg': first['avg_degree'], 'check': check}
            for impl in impls:
                line[impl] = cell(by_impl[impl], key)
            dense = by_impl['dense']
            for impl in ratios:
                other, ratio = by_impl[impl], ''
                if dense['status'] == other['status'] == 'ok':
                    ratio = f'{_total(other, key) / _total(dense, key):.2g}'
                line[f'{impl}/dense'] = ratio
            table.append(line)
        columns = ['case', 'N', 'graphs', 'edges', 'avg deg', 'check']
        out.append(f'### {title}\n\n' + markdown_table(
            table, columns + list(impls) + [f'{i}/dense' for i in ratios]))
    return '\n\n'.join(out)


def _total(row: dict, key: str) -> float:
    return row[key] + (row['input_mib'] if key == 'peak_train_mib' else 0.)


def plot(rows: list[dict], impls: list[str], path: Path, header: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    settings = [s for s in ('single', 'batch')
                if any(r['setting'] == s for r in rows)]
    degrees = sorted({r['degree'] for r in rows if r['setting'] != 'cora'},
                     key=_degree_order)
    panels = [(s, k) for s in settings
              for k in ('train_ms', 'peak_train_mib')]
    fig, axes = plt.subplots(len(degrees), len(panels), squeeze=False,
                             figsize=(4.6 * len(panels), 3.6 * len(degrees)))
    for i, degree in enumerate(degrees):
        for j, (setting, key) in enumerate(panels):
            ax = axes[i][j]
            for impl in impls:
                n, y = measured(rows, setting, degree, impl, key)
                if len(n) == 0:
                    continue
                fit = fit_slope(n, y)
                label = impl + (f' (slope {fit[0]:.2f})' if fit else '')
                ax.plot(n, y, 'o-', color=COLORS[impl], label=label, ms=4)
                if setting == 'single' and degree == degrees[0]:
                    cora = [r for r in rows if r['setting'] == 'cora'
                            and r['impl'] == impl and r['status'] == 'ok']
                    for r in cora:
                        ax.plot(r['N'], _total(r, key), '*', ms=12,
                                color=COLORS[impl])
            _mark_crossover(ax, rows, setting, degree, key)
            ax.set_xscale('log', base=2)
            ax.set_yscale('log')
            what = 'time (ms)' if key == 'train_ms' else 'memory (MiB)'
            where = ('one graph' if setting == 'single' else
                     f'{_graphs(rows, setting)} graphs')
            ax.set_title(f'{where}, avg in-degree {degree}: {what}',
                         fontsize=9)
            ax.set_xlabel('N (nodes per graph)')
            ax.grid(True, which='both', alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(header + '\nforward + backward; memory = inputs + peak; '
                 'stars: Cora; dotted line: sparse and dense cross',
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _mark_crossover(ax, rows, setting, degree, key) -> None:
    crossing = crossover(rows, setting, degree, 'sparse', key)
    if crossing and crossing.at is not None:
        ax.axvline(crossing.at, color='k', ls=':', lw=1)
        ax.annotate(f'N~{crossing.at:.0f}', (crossing.at, ax.get_ylim()[0]),
                    fontsize=7, xytext=(3, 3), textcoords='offset points')


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    impls = [i for i in IMPLS if i != 'fused' or has_fused()]
    fused = (f", fused backend '{pyg_gatv2.fused.get_backend()}'"
             if 'fused' in impls else '')
    header = (
        f'Command: `{command_line()}`\n\n'
        f'pyg_gatv2 {pyg_gatv2.__version__}, torch {torch.__version__}, '
        f'torch_geometric {torch_geometric.__version__}; device '
        f'{args.device} ({platform.machine()}, {os.cpu_count()} cores, '
        f'{torch.get_num_threads()} threads); softmax backend '
        f"'{get_backend()}'{fused}; layers: {args.heads} heads x "
        f'{args.out_channels} channels, {args.in_channels} input features '
        f'(Cora: 1433); DenseGATv2Conv memory_budget {args.chunk_budget:g} '
        f'MiB; times: median {args.clock} time; budgets {args.max_seconds:g} '
        f's (Cora: {args.cora_max_seconds:g} s) and {args.max_memory:g} GiB '
        'per run.')
    print(header, flush=True)

    plans = [Plan(setting, n, graphs, spec, args.in_channels, args.seed)
             for setting, sizes, graphs in (
                 ('single', args.single_sizes, 1),
                 ('batch', args.batch_sizes, args.batch_graphs))
             for n in sizes for spec in _distinct(args.degrees, n)]
    if args.cora:
        plans.append(cora_plan(args))

    history, memory, rows = History(), MemoryMeter(), []
    for plan in plans:
        if plan is None:
            continue
        case_rows = run_case(plan, impls, args, device, history, memory)
        rows.extend(case_rows)
        print(f'{plan.setting:6s} N={plan.num_nodes:<6d} '
              f'deg={plan.degree:4s} ' + ', '.join(
                  f"{r['impl']} {cell(r, 'train_ms')}" for r in case_rows),
              flush=True)

    memory.close()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / args.name
    names = '; '.join(f'`{i}` = {LABELS[i]}' for i in impls)
    sections = [
        f'# Sparse vs dense GATv2\n\n{header}',
        f'Implementations: {names}.',
        'Every timed case was first checked: outputs agree with the '
        f'reference to {TOLERANCE:g} (column `check`: largest difference).',
        f'## Crossovers and fitted slopes\n\n{summary(rows, impls)}',
        f'## Tables\n\n{tables(rows, impls)}',
    ]
    if failures(rows):
        sections.append(f'Errors:\n\n{failures(rows)}')
    sections.append(f'Figure: `{stem.name}.png`; all rows: '
                    f'`{stem.name}.csv`.\n')
    report = '\n\n'.join(sections)
    stem.with_suffix('.md').write_text(report)
    write_csv(stem.with_suffix('.csv'), rows)
    plot(rows, impls, stem.with_suffix('.png'), header.split('\n')[0])
    print('\n' + report)
    print(f'Wrote {stem}.md, .csv and .png')
    mismatches = [r for r in rows if r['status'] == 'MISMATCH']
    return 1 if mismatches else 0


def _distinct(specs: list[str], n: int) -> list[str]:
    """The degree specs that give distinct degrees on N nodes."""
    seen, kept = set(), []
    for spec in specs:
        value = degree_of(spec, n)
        if value not in seen:
            seen.add(value)
            kept.append(spec)
    return kept


if __name__ == '__main__':
    sys.exit(main())
