"""The fused GATv2 attention against PyG's GATv2Conv: time and peak memory.

    python benchmarks/kernels.py            # default sweep + Cora
    python benchmarks/kernels.py --quick    # Cora + two small graphs
    python benchmarks/kernels.py --replot   # the figure again, from the CSV
    python benchmarks/kernels.py --cpu-capability avx2   # C++ at AVX2
    python benchmarks/kernels.py --shapes sweep --no-cora  # shape sweep
    python benchmarks/kernels.py --graph powerlaw          # skewed degrees
    python benchmarks/kernels.py --graph hub               # one readout node
    python benchmarks/kernels.py --autocast --device cuda  # mixed precision

Implementations, side by side in one run:

- ``pyg``: :class:`torch_geometric.nn.GATv2Conv`, eager;
- ``pyg_compile``: the same layer under :func:`torch.compile`;
- ``mp``: :class:`pyg_gatv2.GATv2Conv` with ``fused=False`` (message passing);
- ``fused_cpp``: :class:`pyg_gatv2.GATv2Conv`, fused path, C++ kernels (the
  default on CPU where they are built), at the CPU level the header names;
- ``fused_torch``: the same, chunked PyTorch fallback;
- ``fused_triton``: the same, Triton kernels (CUDA only: on CPU, Triton's
  interpreter is far too slow to time);
- ``fused_triton_tuned``: the same, autotuned
  (:data:`pyg_gatv2.fused.backends.triton.autotune`; tuned in its warm-up);
- ``fused_compile``: :class:`pyg_gatv2.GATv2Conv` under :func:`torch.compile`,
  its fused op in the compiled graph on the device's default backend;
- ``fused_loops``: the fused path on the default backend (C++ on CPU where
  built, Triton on CUDA) with self-loops as explicit edges, added
  to the edge list on every call (so its sorted layout is rebuilt every
  call) instead of implicit loops over the cached layout of the caller's
  edges, to measure that choice;
- ``fused_fresh``: the fused path on the default backend given a new
  ``edge_index`` tensor (a copy) on every call, as a neighbour-sampling
  loader gives one per step, so that its sorted layout is built every call;
  beside ``fused_cpp`` (the cached
  layout) it shows what building the layout costs.

Every case runs in two fresh processes (``_common.run_isolated``, each
killed after ``--timeout`` seconds). The first checks each implementation
against PyG eager: one training step of each, with the same weights, on
the same inputs, with the same loss, ``(out * w).sum()`` for a fixed
random ``w`` (``_common.training_step``), must give the same output and
the same gradient of every parameter within the dtype's tolerance
(in float32, ``1e-5`` of the output's largest entry and ``3e-5`` of each
gradient's, or of one where that is smaller; ``_common.compare_steps``).
An implementation that fails is reported as ``MISMATCH (<tensor>:
<error>)`` and neither timed nor measured. The first process then measures
the memory of one training step of each implementation that passed, after
warm-up, from the process's peak resident set (``VmHWM``, reset through
``/proc/self/clear_refs``; on CUDA the allocator's peak), with glibc's
mmap threshold pinned so that freed memory leaves the resident set at
once. Our layout cache is emptied first, so that the measured step builds
the sorted layout of ``edge_index`` and keeps it, with the copy of
``edge_index`` that proves later cache hits: the peak counts what our
layer keeps between steps (PyG's keeps nothing). The
second process, with the allocator left as training runs it (the pinned
threshold turns every freed temporary into page faults on its next use),
times the forward pass (no autograd) and the training step of what passed,
interleaving the implementations run by run so that load on a shared
machine hits all alike, and reports medians. Ratios are against PyG eager
and PyG compiled, for implementations that passed the check only.

The effective bandwidth of the fused forward kernel counts the bytes it
must move at least once (per edge: one gathered source row of
``heads x channels`` values and two indices; per destination node: its
target row, its output row and its log-sum-exp) over its run time alone
(projections excluded), against the bandwidth of a large ``memcpy``
(``Tensor.copy_`` of 256 MiB, bytes read plus written) timed in the same
worker, run by run between the kernel runs, so that both see the same load
(``memcpy_gb_s``; the header gives the copy timed once at the start).

The C++ kernels run at the best CPU level this CPU supports (``avx512``,
``avx2`` or ``default``), or at the one ``--cpu-capability`` names: the
flag sets ``PYG_GATV2_CPU_CAPABILITY`` before anything loads the kernels,
and the worker processes inherit it (setting the variable instead does the
same, but leaves the level out of the command the report quotes). The
header's machine line says which level ran.

The random graphs draw every edge's ends uniformly (``--graph uniform``)
or from a power law (``--graph powerlaw``: node ``i`` of a random order is
an end with probability proportional to ``(i + 1) ** (-1 / (g - 1))``
for ``g = 2.2``, so that degrees follow ``P(d) ~ d ** -g`` and a few nodes
hold a large share of the edges), with the same counts; or uniformly but
for node 0, the destination of 90% of the edges (``--graph hub``: a
readout node that attends over the others, as in attention pooling).
With ``--autocast`` the weights and features stay float32 and every step
runs under :func:`torch.autocast` in bfloat16, PyG's as ours, checked with
the bfloat16 tolerances.

Cora is read from ``--raw-dir`` or ``$PYG_GATV2_RAW_DIR`` (skipped, with a
note, where neither holds it). Writes ``kernels.md`` (the command, the
machine, the tables), ``kernels.csv`` and ``kernels.png`` (per case, grouped
bars of our speed-up and memory saving against PyG eager and compiled) into
``--out``, and prints the Markdown.
"""
import argparse
import contextlib
import gc
import math
import os
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import torch
from _common import (
    GRAD_TOLERANCE,
    StepResult,
    WorkerFailed,
    add_common_flags,
    add_timeout_flag,
    command_line,
    compare_steps,
    cpp_unavailable,
    failure,
    has_raw_files,
    interleaved_medians,
    machine,
    markdown_table,
    median_time,
    peak_memory,
    pin_malloc,
    raw_dir,
    read_csv,
    run_isolated,
    step_memory,
    training_step,
    write_report,
)

TOLERANCE = 1e-5
# dtype name -> (dtype, tolerances of the check of a step's output and of
# its gradients against PyG eager in the same dtype, bytes per element).
# The gradients of 16-bit steps differ more than their outputs: measured
# on CPU (N=20000, 420,000 edges with the loops, 4 heads x 32), the largest
# gradient difference from PyG eager was 3.2e-2 in bfloat16 and 4.1e-3 in
# float16 for the torch backend, and 1.6e-2 and 1.6e-3 for our message
# passing, PyG's algorithm.
DTYPES = {'float32': (torch.float32, TOLERANCE, GRAD_TOLERANCE, 4),
          'bfloat16': (torch.bfloat16, 2e-2, 5e-2, 2),
          'float16': (torch.float16, 5e-3, 1e-2, 2)}
GiB = 2.0**30
MiB = 2.0**20
IMPLS = ('pyg', 'pyg_compile', 'mp', 'fused_cpp', 'fused_torch',
         'fused_triton', 'fused_triton_tuned', 'fused_compile',
         'fused_loops', 'fused_fresh')
LABELS = {
    'pyg': 'PyG GATv2Conv (eager)',
    'pyg_compile': 'PyG GATv2Conv (torch.compile)',
    'mp': 'ours, message passing',
    'fused_cpp': 'ours, fused (C++)',
    'fused_torch': 'ours, fused (torch)',
    'fused_triton': 'ours, fused (Triton)',
    'fused_triton_tuned': 'ours, fused (Triton, autotuned)',
    'fused_compile': 'ours, fused, torch.compile',
    'fused_loops': 'ours, fused, explicit loops',
    'fused_fresh': 'ours, fused, new edge_index every call',
}
# Bytes per element of one [E, heads, channels] float32 tensor that a step
# holds at its peak, for projecting memory and skipping what cannot fit.
PEAK_PER_EDGE_ELEMENT = {'pyg': 40, 'mp': 40, 'pyg_compile': 16,
                         'fused_cpp': 0, 'fused_torch': 0,
                         'fused_triton': 0, 'fused_triton_tuned': 0,
                         'fused_compile': 0,
                         'fused_loops': 0, 'fused_fresh': 0}
# (nodes, average in-degree, heads, channels); the third is the headline.
DEFAULT_CASES = [
    (10_000, 5, 4, 32),
    (10_000, 50, 4, 32),
    (20_000, 20, 4, 32),
    (200_000, 5, 4, 32),
    (10_000, 10, 8, 64),
]
QUICK_CASES = [(10_000, 5, 4, 32), (20_000, 20, 4, 32)]
# --shapes sweep: heads x channels of real models (output layers with the
# class count as channels, 3 or 6 heads, hidden sizes like 10, 50, 100 or
# 250) beside the shapes the C++ kernels fix at compile time (1x8, 4x32,
# 8x8, 8x16) and 4x128, which they run at run time.
SWEEP = ((1, 7), (1, 8), (2, 7), (3, 24), (3, 32), (4, 32), (6, 10), (8, 8),
         (8, 16), (1, 50), (3, 100), (4, 128), (2, 250))
# How the random graphs draw their edges (--graph), the exponent of the
# degree distribution of the power-law graphs and the share of the edges
# that end at node 0 in the hub graphs.
GRAPHS = ('uniform', 'powerlaw', 'hub')
# How every implementation is given the graph (--adjacency): the edges
# [2, E], a torch_sparse.SparseTensor adj_t or a torch.sparse CSR adjacency
# [num_targets, num_sources].
ADJACENCIES = ('edge_index', 'sparse_tensor', 'csr')
POWER_LAW_EXPONENT = 2.2
HUB_SHARE = 0.9
# The CPU levels the C++ kernels are built for (--cpu-capability).
CPU_LEVELS = ('avx512', 'avx2', 'default')


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Fused GATv2 attention vs PyG: time and peak memory.')
    parser.add_argument('--quick', action='store_true',
                        help='Cora and two small graphs, 3 repeats')
    parser.add_argument('--nodes', type=_ints, default=None,
                        help='node counts, e.g. 10000,50000 (with '
                        '--degrees and --heads-channels, replaces the '
                        'default cases by their product)')
    parser.add_argument('--degrees', type=_ints, default=None,
                        help='average in-degrees, e.g. 5,20,50')
    parser.add_argument('--shapes', '--heads-channels', dest='heads_channels',
                        type=_pairs, default=None,
                        help='heads x channels, e.g. 4x32,8x64, or '
                        f"'sweep': {','.join(f'{h}x{c}' for h, c in SWEEP)}"
                        ' (step_ns_per_edge_channel compares them)')
    parser.add_argument('--features', type=int, default=64,
                        help='input features of the random graphs')
    parser.add_argument('--graph', choices=GRAPHS, default='uniform',
                        help="the random graphs' edges: uniform ends, "
                        'ends drawn from a power law (skewed degrees), or '
                        'uniform ends but node 0 the destination of 90%% '
                        'of the edges')
    parser.add_argument('--adjacency', choices=ADJACENCIES,
                        default='edge_index',
                        help='how every implementation, PyG included, is '
                        'given the graph: edge_index [2, E], a '
                        'torch_sparse.SparseTensor adj_t, or a torch.sparse '
                        'CSR adjacency [num_targets, num_sources]')
    parser.add_argument('--autocast', action='store_true',
                        help='run every step under torch.autocast in '
                        'bfloat16 (float32 weights and features)')
    parser.add_argument('--cora', action=argparse.BooleanOptionalAction,
                        default=True,
                        help='include Cora (8 heads x 8 channels)')
    parser.add_argument('--impls', type=_impls, default=list(IMPLS),
                        help=f"comma-separated subset of {','.join(IMPLS)}")
    parser.add_argument('--repeats', type=int, default=5,
                        help='timed runs per implementation and measure')
    parser.add_argument('--warmup', type=int, default=2,
                        help='untimed runs first (compilation, caches)')
    parser.add_argument('--max-memory', type=float, default=8.0,
                        help='skip an implementation whose projected peak '
                        'exceeds this many GiB (reported as skipped)')
    parser.add_argument('--dtype', choices=tuple(DTYPES), default='float32',
                        help='dtype of the features and weights (C++ runs '
                        'float32 and float64 only)')
    parser.add_argument('--threads', type=int, default=0,
                        help='CPU threads for torch and the C++ kernels; 0 '
                        'keeps the default (all cores)')
    parser.add_argument('--cpu-capability', choices=CPU_LEVELS,
                        default=None,
                        help='CPU level of the C++ kernels, in this process '
                        'and the workers (default: the best this CPU runs, '
                        'or $PYG_GATV2_CPU_CAPABILITY)')
    add_timeout_flag(parser)
    add_common_flags(parser, 'kernels')
    parser.add_argument('--replot', action='store_true',
                        help='only redraw <out>/<name>.png from the '
                        '<name>.csv and the command in <name>.md')
    args = parser.parse_args(argv)
    if args.quick:  # other defaults; flags given still win
        parser.set_defaults(repeats=3, warmup=1)
        args = parser.parse_args(argv)
    if args.autocast and args.dtype != 'float32':
        parser.error('--autocast runs float32 weights and features under '
                     'autocast; leave --dtype at float32')
    if args.name is None:
        args.name = 'kernels' + ('_quick' if args.quick else '')
    return args


def check_dtype(args: argparse.Namespace) -> str:
    """The dtype whose tolerances the check applies: bfloat16 under
    ``--autocast``, else ``--dtype``."""
    return 'bfloat16' if args.autocast else args.dtype


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(',') if v]


def _pairs(text: str) -> list[tuple[int, int]]:
    if text == 'sweep':
        return list(SWEEP)
    pairs = []
    for item in text.split(','):
        heads, _, channels = item.partition('x')
        if not (heads.isdigit() and channels.isdigit()):
            raise argparse.ArgumentTypeError(
                f"'{item}' is not of the form HEADSxCHANNELS, e.g. 4x32")
        pairs.append((int(heads), int(channels)))
    return pairs


def _impls(text: str) -> list[str]:
    names = [v for v in text.split(',') if v]
    for name in names:
        if name not in IMPLS:
            raise argparse.ArgumentTypeError(
                f"unknown implementation '{name}'; choose from "
                f"{','.join(IMPLS)}")
    return names


def synthetic_cases(args: argparse.Namespace) -> list[dict]:
    if args.nodes or args.degrees or args.heads_channels:
        specs = [(n, d, h, c) for n in (args.nodes or [20_000])
                 for d in (args.degrees or [20])
                 for h, c in (args.heads_channels or [(4, 32)])]
    else:
        specs = QUICK_CASES if args.quick else DEFAULT_CASES
    graph = {'uniform': 'random', 'powerlaw': 'power-law',
             'hub': 'hub'}[args.graph]
    return [
        dict(name=f'{graph} N={n} deg={d} {h}x{c}', kind='random',
             graph=args.graph, nodes=n, edges=n * d,
             features=args.features, heads=h, channels=c)
        for n, d, h, c in specs
    ]


def cora_case(args: argparse.Namespace) -> Optional[dict]:
    folder = raw_dir(args.raw_dir)
    if not has_raw_files(folder, 'Cora'):
        return None
    return dict(name='Cora', kind='cora', raw=str(folder), nodes=2708,
                edges=10556, features=1433, heads=8, channels=8)


# The copy whose bandwidth is the roofline: 256 MiB read and 256 MiB
# written.
MEMCPY = 'memcpy'
MEMCPY_BYTES = 2 * 256 * 2**20


def memcpy(device: torch.device):
    """The copy of :data:`MEMCPY_BYTES` (256 MiB read, 256 MiB written) on
    :obj:`device`, as a call."""
    # Half the bytes are read: MEMCPY_BYTES / 2 of 4-byte floats.
    src = torch.ones(MEMCPY_BYTES // 8, device=device)
    return partial(torch.empty_like(src).copy_, src)


def memcpy_bandwidth(device: torch.device, repeats: int = 5) -> float:
    """Bytes per second of a 256 MiB copy (read plus written), median."""
    seconds = median_time(memcpy(device), device, warmup=1,
                          min_repeat=repeats, max_repeat=repeats,
                          min_seconds=0.0)
    return MEMCPY_BYTES / seconds


# The worker: one case in a fresh process ------------------------------------


def build_case(case: dict, seed: int, device: torch.device,
               dtype: torch.dtype = torch.float32):
    if case['kind'] == 'cora':
        from pyg_gatv2.experiments import load_planetoid
        with tempfile.TemporaryDirectory() as root:
            data = load_planetoid('Cora', root=root, raw_dir=case['raw'])[0]
        return data.x.to(device, dtype), data.edge_index.to(device)
    gen = torch.Generator().manual_seed(seed)
    n = case['nodes']
    x = torch.randn(n, case['features'], generator=gen)
    edge_index = graph_edges(case.get('graph', 'uniform'), n, case['edges'],
                             gen)
    return x.to(device, dtype), edge_index.to(device)


def graph_edges(graph: str, num_nodes: int, num_edges: int,
                gen: torch.Generator) -> torch.Tensor:
    """``[2, num_edges]`` edges of a random graph of kind ``graph`` (one of
    :data:`GRAPHS`)."""
    if graph == 'powerlaw':
        return power_law_edges(num_nodes, num_edges, gen)
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=gen)
    if graph == 'hub':
        edge_index[1, :int(num_edges * HUB_SHARE)] = 0
    return edge_index


def as_adjacency(edge_index: torch.Tensor, kind: str, num_nodes: int):
    """``edge_index`` as :obj:`kind` of :data:`ADJACENCIES`."""
    if kind == 'edge_index':
        return edge_index
    size = (num_nodes, num_nodes)
    if kind == 'sparse_tensor':
        from torch_geometric.typing import SparseTensor
        return SparseTensor.from_edge_index(edge_index,
                                            sparse_sizes=size).t()
    from torch_geometric.utils import to_torch_csr_tensor
    return to_torch_csr_tensor(edge_index.flip(0), size=size)


def power_law_edges(num_nodes: int, num_edges: int,
                    gen: torch.Generator) -> torch.Tensor:
    """``[2, num_edges]`` edges whose ends are drawn independently, node
    ``order[i]`` with probability proportional to ``(i + 1) ** (-1 /
    (POWER_LAW_EXPONENT - 1))`` for a random ``order``: in- and
    out-degrees then follow a power law of that exponent."""
    rank = torch.arange(1, num_nodes + 1, dtype=torch.float64)
    cdf = (rank**(-1.0 / (POWER_LAW_EXPONENT - 1.0))).cumsum(0)
    cdf /= cdf[-1].clone()
    ends = torch.searchsorted(
        cdf, torch.rand(2, num_edges, generator=gen, dtype=torch.float64))
    order = torch.randperm(num_nodes, generator=gen)
    return order[ends.clamp_(max=num_nodes - 1)]


def make_impls(case: dict, names: list[str], device: torch.device,
               dtype: torch.dtype = torch.float32):
    """PyG's layer, and name -> (module, fused backend or None) for each
    implementation, all with PyG's weights."""
    import torch_geometric.nn as pyg_nn

    from pyg_gatv2 import GATv2Conv

    torch.manual_seed(0)
    args = (case['features'], case['channels'])
    # No dropout (the default, named here): the check compares steps.
    kwargs = dict(heads=case['heads'], dropout=0.0)
    ref = pyg_nn.GATv2Conv(*args, **kwargs).to(device, dtype)
    impls = {}
    for name in names:
        if name == 'pyg':
            impls[name] = (ref, None)
        elif name == 'pyg_compile':
            impls[name] = (torch.compile(ref, dynamic=False), None)
        elif name == 'fused_loops':
            conv = GATv2Conv(*args, **kwargs, add_self_loops=False,
                             fused=True).to(device, dtype)
            conv.load_state_dict(ref.state_dict())
            impls[name] = (ExplicitLoops(conv), None)
        elif name == 'fused_fresh':
            conv = GATv2Conv(*args, **kwargs, fused=True).to(device, dtype)
            conv.load_state_dict(ref.state_dict())
            impls[name] = (FreshEdgeIndex(conv), None)
        elif name == 'fused_compile':
            conv = GATv2Conv(*args, **kwargs, fused=True).to(device, dtype)
            conv.load_state_dict(ref.state_dict())
            impls[name] = (torch.compile(conv, dynamic=False), None)
        else:
            fused = name != 'mp'
            conv = GATv2Conv(*args, **kwargs, fused=fused).to(device, dtype)
            conv.load_state_dict(ref.state_dict())
            # cpp, torch, triton or triton_tuned
            backend = name.split('_', 1)[1] if fused else None
            impls[name] = (conv, backend)
    return ref, impls


class ExplicitLoops(torch.nn.Module):
    """Adds the self-loops to the edge list, then runs ``conv`` (built with
    ``add_self_loops=False``)."""
    def __init__(self, conv: torch.nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor):
        from torch_geometric.utils import add_self_loops, remove_self_loops
        edge_index, _ = remove_self_loops(edge_index)
        edge_index, _ = add_self_loops(edge_index, num_nodes=x.size(0))
        return self.conv(x, edge_index)


class FreshEdgeIndex(torch.nn.Module):
    """Runs ``conv`` on a copy of ``edge_index``: a tensor the layout cache
    has not seen, as a mini-batch loader hands one per step."""
    def __init__(self, conv: torch.nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor):
        return self.conv(x, edge_index.clone())


def layer_of(module: torch.nn.Module) -> torch.nn.Module:
    """The layer inside an implementation's module (under
    :func:`torch.compile`, :class:`ExplicitLoops` or
    :class:`FreshEdgeIndex`), whose parameters have PyG's names."""
    module = getattr(module, '_orig_mod', module)
    if isinstance(module, (ExplicitLoops, FreshEdgeIndex)):
        return module.conv
    return module


def projected_peak(case: dict, name: str) -> float:
    elements = (case['edges'] + case['nodes']) * case['heads'] * case[
        'channels']
    nodes = case['nodes'] * (case['features'] + 12 * case['heads'] *
                             case['channels'])
    return (PEAK_PER_EDGE_ELEMENT[name] * elements + 4 * nodes +
            48 * case['edges'])


def run_worker(spec: dict) -> dict:
    """Stage ``'check'`` (correctness, then peak memory, with glibc's mmap
    threshold pinned so that freed memory leaves the resident set) or
    ``'time'`` (with the allocator as training runs it) of one case, in a
    process of its own (:func:`_common.run_isolated`)."""
    args = argparse.Namespace(**spec['args'])
    case, stage = spec['case'], spec['stage']
    device = torch.device(args.device)
    if stage == 'check':
        pin_malloc()
    dtype = DTYPES[args.dtype][0]
    x, edge_index = build_case(case, args.seed, device, dtype)
    edge_index = as_adjacency(edge_index, args.adjacency, x.size(0))
    result = dict(case=case, impls=runnable(case, args, device))
    names = [name for name, entry in result['impls'].items() if not entry]
    ref, impls = make_impls(case, names, device, dtype)
    runs = {name: Run(*impls[name], x, edge_index, args.autocast)
            for name in names}
    alive = check(runs, ref, x, edge_index, result['impls'], args, stage,
                  device)
    if stage == 'time':
        for mode, train in (('fwd', False), ('step', True)):
            medians = interleaved_medians(
                {name: partial(runs[name], train) for name in alive},
                device, args.repeats)
            for name, seconds in medians.items():
                result['impls'][name][mode] = seconds
        times = kernel_times(ref, x, edge_index, impls, alive, args, device)
        if times:
            result['memcpy'] = MEMCPY_BYTES / times.pop(MEMCPY)
        for name, seconds in times.items():
            result['impls'][name]['kernel_fwd'] = seconds
    return result


def runnable(case: dict, args: argparse.Namespace,
             device: torch.device) -> dict[str, dict]:
    """An empty entry for each implementation to run, a status for the
    others (CPU-only kernels elsewhere, projected peaks over the limit)."""
    entries = {}
    for name in args.impls:
        peak = projected_peak(case, name)
        if name == 'fused_cpp' and device.type != 'cpu':
            entries[name] = dict(status='n/a (CPU only)')
        elif name == 'fused_cpp' and args.dtype not in ('float32',
                                                        'float64'):
            entries[name] = dict(status=f'n/a ({args.dtype})')
        elif name == 'fused_cpp' and cpp_unavailable():
            entries[name] = dict(status='n/a (C++ kernels not built)')
        elif name.startswith('fused_triton') and device.type != 'cuda':
            entries[name] = dict(status='n/a (CUDA only)')
        elif peak > args.max_memory * GiB:
            entries[name] = dict(
                status=f'skipped (projected {peak / GiB:.1f} GiB)')
        else:
            entries[name] = {}
    return entries


@contextlib.contextmanager
def triton_autotuned():
    """The Triton kernels autotuned inside the block
    (:data:`pyg_gatv2.fused.backends.triton.autotune`)."""
    from pyg_gatv2.fused.backends import triton
    previous, triton.autotune = triton.autotune, True
    try:
        yield
    finally:
        triton.autotune = previous


class Run:
    """Calls one implementation: a forward pass without autograd, or a
    training step (forward and backward); returns the output. With
    :obj:`autocast`, under :func:`torch.autocast` in bfloat16."""
    def __init__(self, conv: torch.nn.Module, backend: Optional[str],
                 x: torch.Tensor, edge_index: torch.Tensor,
                 autocast: bool = False):
        self.conv, self.backend = conv, backend
        self.x, self.edge_index = x, edge_index
        self.autocast = autocast

    @contextlib.contextmanager
    def backend_used(self):
        """The context that selects this implementation's backend (and
        autocast)."""
        from pyg_gatv2 import use_backends
        with contextlib.ExitStack() as stack:
            if self.backend:
                name, _, tuned = self.backend.partition('_')
                stack.enter_context(use_backends(fused=name))
                if tuned:
                    stack.enter_context(triton_autotuned())
            if self.autocast:
                stack.enter_context(torch.autocast(
                    self.x.device.type, dtype=torch.bfloat16))
            yield

    def __call__(self, train: bool) -> torch.Tensor:
        with self.backend_used():
            if not train:
                with torch.no_grad():
                    return self.conv(self.x, self.edge_index)
            for p in self.conv.parameters():
                p.grad = None
            out = self.conv(self.x, self.edge_index)
            out.sum().backward()
            return out

    def step(self) -> StepResult:
        """The training step of the check (:func:`_common.training_step`):
        the output and the gradients of the layer's parameters, by PyG's
        names, and of ``x`` where it requires one."""
        leaves = dict(layer_of(self.conv).named_parameters(), x=self.x)
        with self.backend_used():
            return training_step(
                partial(self.conv, self.x, self.edge_index), leaves)


def check(runs: dict[str, Run], ref: torch.nn.Module, x: torch.Tensor,
          edge_index: torch.Tensor, entries: dict[str, dict],
          args: argparse.Namespace, stage: str,
          device: torch.device) -> list[str]:
    """Warms each implementation up; in the ``'check'`` stage first
    compares one training step of it with PyG eager's, its output and the
    gradient of every parameter (:func:`_common.compare_steps`), and
    afterwards measures the memory of a step (:func:`memory_of`). Fills
    :obj:`entries` and returns the implementations that passed.

    Where PyG's own step runs out of memory (the largest graphs on a GPU),
    neither outputs nor gradients can be compared: each entry then says so
    in ``'unchecked'`` instead of giving errors.
    """
    expected, unchecked = None, None
    if stage == 'check':
        try:
            expected = Run(ref, None, x, edge_index, args.autocast).step()
        except Exception as error:
            if failure(error) != 'out of memory':
                raise
            unchecked = 'PyG eager out of memory'
            release(device)
    tolerance, grad_tolerance = DTYPES[check_dtype(args)][1:3]
    alive = []
    for name, run in runs.items():
        entry = entries[name]
        try:
            if stage == 'check' and expected is None:
                entry['unchecked'] = unchecked
            elif stage == 'check':
                checked = compare_steps(run.step(), expected, tolerance,
                                        grad_tolerance)
                entry['error'] = checked.output_error
                entry['grad_name'], entry['grad_error'] = checked.worst_grad
                if not checked.ok:
                    entry['status'] = checked.status
                    continue
            run(False)
            for _ in range(args.warmup):
                run(True)
            if stage == 'check':
                entry.update(memory_of(run, device))
        except Exception as error:  # reported in the table, not raised
            entry['status'] = failure(error)
            release(device)
            continue
        entry['status'] = 'ok'
        alive.append(name)
    return alive


def memory_of(run: Run, device: torch.device) -> dict[str, float]:
    """The memory of a training step of :obj:`run`, warmed up, in bytes:

    - ``'peak_step_only'``: its peak growth with its layout cached, above
      the level with the layout (the peak of earlier reports, which left
      the layout out);
    - ``'peak'``: its peak growth with our layout cache emptied first, above
      the level before anything of ours was cached: the step builds the
      layout and keeps it, as a training loop's first step does and as
      every step does where ``edge_index`` is new;
    - ``'kept'``: of that growth, what the step still holds after it has
      returned and garbage was collected (measured, not computed from the
      layout's tensors): our layout and the copy of ``edge_index`` that
      proves cache hits.
    """
    from pyg_gatv2.adjacency import clear_sparse_edge_cache
    from pyg_gatv2.fused import clear_layout_cache
    step_only = peak_memory(partial(run, True), device)
    clear_layout_cache()
    clear_sparse_edge_cache()
    memory = step_memory(partial(run, True), device)
    return dict(peak=memory.peak, kept=memory.kept,
                peak_step_only=step_only)


def release(device: torch.device) -> None:
    """Returns what a failed run left in the GPU allocator's cache, so that
    the next implementation starts from an empty device."""
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()


def kernel_times(ref: torch.nn.Module, x: torch.Tensor,
                 edge_index: torch.Tensor, impls: dict, alive: list[str],
                 args: argparse.Namespace,
                 device: torch.device) -> dict[str, float]:
    """Median seconds of the fused forward operator alone (projections
    excluded), per fused backend, for its effective bandwidth, and under
    :data:`MEMCPY` those of a large copy, run by run between them, so that
    each kernel's share of the copy bandwidth compares the two under the
    same load. Empty where no fused backend runs."""
    from pyg_gatv2.adjacency import is_sparse_adjacency, sparse_edge_index
    from pyg_gatv2.fused import fused_gatv2_attention

    H, C = ref.heads, ref.out_channels
    if is_sparse_adjacency(edge_index):
        edge_index = sparse_edge_index(edge_index, add_self_loops=True)
    names = [name for name in alive if name in
             ('fused_cpp', 'fused_torch', 'fused_triton',
              'fused_triton_tuned')]
    if not names:
        return {}

    def attention(backend: str) -> Callable[[], object]:
        name, _, tuned = backend.partition('_')
        run = partial(fused_gatv2_attention, x_l, x_r, ref.att, edge_index,
                      add_self_loops=True, backend=name)
        if not tuned:
            return run

        def run_tuned():
            with triton_autotuned():
                return run()
        return run_tuned

    with torch.no_grad():
        x_l = ref.lin_l(x).view(-1, H, C)
        x_r = ref.lin_r(x).view(-1, H, C)
        fns = {name: attention(impls[name][1]) for name in names}
        fns[MEMCPY] = memcpy(device)
        for _ in range(args.warmup):
            for fn in fns.values():
                fn()
        return interleaved_medians(fns, device, args.repeats)


def run_case(case: dict, args: argparse.Namespace) -> dict:
    """Checks ``case`` in one fresh process, then times what passed in
    another; returns the merged results."""
    result = _isolated(case, args, 'check', args.impls)
    passed = [name for name, entry in result['impls'].items()
              if entry.get('status') == 'ok']
    if passed:
        timed = _isolated(case, args, 'time', passed)
        for name in passed:
            entry = timed['impls'][name]
            if entry.get('status') != 'ok':
                result['impls'][name]['status'] = entry.get('status')
            for key in ('fwd', 'step', 'kernel_fwd'):
                if key in entry:
                    result['impls'][name][key] = entry[key]
        if 'memcpy' in timed:
            result['memcpy'] = timed['memcpy']
    return result


def _isolated(case: dict, args: argparse.Namespace, stage: str,
              impls: list[str]) -> dict:
    """:func:`run_worker` in a fresh process; a dead worker's reason as
    the status of every implementation it ran."""
    spec = dict(case=case, stage=stage, args=dict(vars(args), impls=impls))
    try:
        return run_isolated(run_worker, spec, threads=args.threads,
                            timeout=args.timeout)
    except WorkerFailed as error:
        return dict(case=case, impls={name: dict(status=str(error))
                                      for name in impls})


# Reporting -------------------------------------------------------------------


def edge_elements(case: dict) -> int:
    """Size of one [E', heads, channels] tensor (self-loops included)."""
    return (case['edges'] + case['nodes']) * case['heads'] * case['channels']


def fused_bytes(case: dict, size: int = 4) -> float:
    """Bytes the fused forward must move at least once, with features of
    :obj:`size` bytes (the log-sum-exp in float32, indices in int64)."""
    H, C = case['heads'], case['channels']
    edges = case['edges'] + case['nodes']
    return edges * (H * C * size + 16) + case['nodes'] * (
        2 * H * C * size + H * 4 + 8)


def rows_of(results: list[dict], bandwidth: float,
            size: int = 4) -> list[dict]:
    rows = []
    for res in results:
        case, impls = res['case'], res['impls']
        # The copy timed beside the kernels of this case, else the run's.
        case_bandwidth = res.get('memcpy', bandwidth)
        base = {k: impls.get(k, {}) for k in ('pyg', 'pyg_compile')}
        for name, entry in impls.items():
            row = dict(case=case['name'], nodes=case['nodes'],
                       edges=case['edges'], heads=case['heads'],
                       channels=case['channels'],
                       edge_elements=edge_elements(case),
                       impl=name, status=entry.get('status', ''))
            if 'error' in entry:
                row['max_rel_error'] = f"{entry['error']:.1e}"
                row['grad_max_rel_error'] = f"{entry['grad_error']:.1e}"
                row['worst_grad'] = entry['grad_name']
            elif entry.get('unchecked'):
                row['max_rel_error'] = row['grad_max_rel_error'] = (
                    f"unchecked ({entry['unchecked']})")
            # No ratio for what failed its check, nor against a baseline
            # that failed.
            passed = entry.get('status') == 'ok'
            for mode in ('fwd', 'step'):
                if mode in entry:
                    row[f'{mode}_ms'] = f'{entry[mode] * 1e3:.1f}'
                    if mode == 'step':
                        row['step_ns_per_edge_channel'] = (
                            f'{entry[mode] * 1e9 / edge_elements(case):.2f}')
                    for ref, ref_name in (('pyg', 'eager'),
                                          ('pyg_compile', 'compiled')):
                        if (passed and mode in base[ref]
                                and base[ref].get('status') == 'ok'):
                            row[f'{mode}_speedup_vs_{ref_name}'] = (
                                f'{base[ref][mode] / entry[mode]:.2f}')
            if 'peak' in entry and not math.isnan(entry['peak']):
                row['peak_mib'] = f"{entry['peak'] / MiB:.1f}"
                row['kept_mib'] = f"{entry['kept'] / MiB:.1f}"
                row['peak_mib_step_only'] = (
                    f"{entry['peak_step_only'] / MiB:.1f}")
                if (passed and base['pyg'].get('peak')
                        and base['pyg'].get('status') == 'ok'):
                    row['peak_vs_eager'] = (
                        f"{entry['peak'] / base['pyg']['peak']:.3f}")
            if 'kernel_fwd' in entry:
                gbps = fused_bytes(case, size) / entry['kernel_fwd']
                row['kernel_fwd_ms'] = f"{entry['kernel_fwd'] * 1e3:.1f}"
                row['kernel_gb_s'] = f'{gbps / 1e9:.2f}'
                row['memcpy_gb_s'] = f'{case_bandwidth / 1e9:.1f}'
                row['kernel_vs_memcpy'] = f'{gbps / case_bandwidth:.2f}'
            rows.append(row)
    return rows


OURS = ('mp', 'fused_cpp', 'fused_torch', 'fused_triton',
        'fused_triton_tuned', 'fused_compile', 'fused_loops', 'fused_fresh')
COLORS = {'mp': 'C0', 'fused_cpp': 'C8', 'fused_torch': 'C1',
          'fused_triton': 'C3', 'fused_triton_tuned': 'C7',
          'fused_compile': 'C6', 'fused_loops': 'C4', 'fused_fresh': 'C5'}
BASELINES = (('pyg', 'PyG eager'), ('pyg_compile', 'PyG compiled'))
TICKS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
METRICS = (('step_ms', 'training step speed-up\n(PyG time / ours)'),
           ('peak_mib', 'memory saving\n(PyG peak / ours)'))


def ratios(rows: list[dict], key: str,
           baseline: str) -> dict[str, dict[str, float]]:
    """case -> implementation -> baseline's :obj:`key` / ours, from rows
    (of this run or read back from the CSV) where both were measured."""
    values = {(r['case'], r['impl']): float(r[key]) for r in rows
              if r.get(key) not in (None, '')}
    out: dict[str, dict[str, float]] = {}
    for (case, impl), value in values.items():
        base = values.get((case, baseline))
        if impl in OURS and base and value > 0:
            out.setdefault(case, {})[impl] = base / value
    return out


def plot(rows: list[dict], path: Path, caption: str) -> None:
    """Per case, grouped bars of our speed-up and memory saving against PyG
    eager and compiled, on a log scale with PyG at 1."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import (
        FixedLocator,
        NullFormatter,
        StrMethodFormatter,
    )

    cases = list(dict.fromkeys(r['case'] for r in rows))
    impls = [i for i in OURS if any(r['impl'] == i for r in rows)]
    fig, axes = plt.subplots(2, 2, figsize=(13, 7.5), sharex=True,
                             squeeze=False)
    width = 0.8 / max(len(impls), 1)
    for i, (key, what) in enumerate(METRICS):
        for j, (baseline, name) in enumerate(BASELINES):
            ax, by_case = axes[i][j], ratios(rows, key, baseline)
            for k, impl in enumerate(impls):
                xs = [c + (k - (len(impls) - 1) / 2) * width
                      for c, case in enumerate(cases)
                      if impl in by_case.get(case, {})]
                ys = [by_case[case][impl] for case in cases
                      if impl in by_case.get(case, {})]
                bars = ax.bar(xs, ys, width, color=COLORS[impl],
                              label=LABELS[impl])
                ax.bar_label(bars, fmt='%.2g', fontsize=6, padding=1)
            ax.axhline(1.0, color='k', lw=0.8)
            ax.set_yscale('log')
            ax.yaxis.set_major_locator(FixedLocator(TICKS))
            ax.yaxis.set_major_formatter(StrMethodFormatter('{x:g}'))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f'{what.splitlines()[0]} vs {name}', fontsize=10)
            ax.set_ylabel(what.replace('PyG', name), fontsize=8)
            ax.grid(True, axis='y', which='both', alpha=0.3)
            ax.set_xticks(range(len(cases)), [_short(c) for c in cases],
                          fontsize=8)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc='upper center',
               ncol=len(impls), fontsize=9, bbox_to_anchor=(0.5, 0.94))
    fig.suptitle('Above 1: ours faster / smaller than PyG; below 1: slower / '
                 f'larger.\n{caption}', fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _short(case: str) -> str:
    """'random N=20000 deg=20 4x32' -> 'N=20000 deg=20\\n4x32'."""
    return case.removeprefix('random ').replace(' deg', '\ndeg', 1)


def replot(stem: Path) -> None:
    """Redraws ``<stem>.png`` from ``<stem>.csv``, captioned with the
    command that ``<stem>.md`` says produced the numbers."""
    markdown = stem.with_suffix('.md').read_text()
    numbers = next(line for line in markdown.splitlines()
                   if line.startswith('Command: '))
    caption = (f'numbers: {numbers.removeprefix("Command: ")}; figure: '
               f'`{command_line()}`')
    plot(read_csv(stem.with_suffix('.csv')), stem.with_suffix('.png'),
         caption)
    print(f'Wrote {stem}.png')


COLUMNS = ['case', 'impl', 'status', 'max_rel_error', 'grad_max_rel_error',
           'worst_grad', 'fwd_ms', 'fwd_speedup_vs_eager', 'step_ms',
           'step_ns_per_edge_channel', 'step_speedup_vs_eager',
           'step_speedup_vs_compiled', 'peak_mib', 'kept_mib',
           'peak_vs_eager', 'peak_mib_step_only', 'kernel_gb_s',
           'memcpy_gb_s', 'kernel_vs_memcpy']


def use_cpu_level(level: Optional[str]) -> None:
    """Runs the C++ kernels at ``level`` (``--cpu-capability``; nothing
    for :obj:`None`) in this process and, through the environment they
    inherit, in the workers. Call it before anything loads the kernels;
    exits saying why where this CPU or this installation cannot."""
    if level is None:
        return
    from pyg_gatv2 import cpu_capability
    from pyg_gatv2.fused.cpp_library import CAPABILITY_ENV
    os.environ[CAPABILITY_ENV] = level
    try:
        loaded = cpu_capability()
    except ValueError as error:
        sys.exit(f'--cpu-capability {level}: {error}')
    if loaded is None:
        sys.exit(f'--cpu-capability {level}: {cpp_unavailable()}')


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    if args.replot:
        replot(args.out / args.name)
        return
    use_cpu_level(args.cpu_capability)
    command = command_line()
    print(f'Command: `{command}`\n', flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bandwidth = memcpy_bandwidth(device)
    cases = synthetic_cases(args)
    if args.cora:
        cora = cora_case(args)
        if cora is not None:
            cases.insert(0, cora)
    results = []
    for case in cases:
        print(f"Running {case['name']} ...", file=sys.stderr, flush=True)
        results.append(run_case(case, args))
    rows = rows_of(results, bandwidth, DTYPES[args.dtype][3])
    lines = header(command, device, bandwidth, check_dtype(args),
                   args.impls, args.autocast, args.adjacency)
    text = '\n'.join(lines) + markdown_table(rows, COLUMNS) + '\n'
    print(text)
    columns = list(dict.fromkeys(
        ['case', 'nodes', 'edges', 'heads', 'channels', 'edge_elements'] +
        COLUMNS + ['fwd_speedup_vs_compiled', 'kernel_fwd_ms']))
    write_report(args.out / args.name, text, rows, columns,
                 partial(plot, rows, caption=f'`{command}`'))


def cpp_note(impls: list[str], device: torch.device) -> list[str]:
    """The paragraph that says at which CPU level ``fused_cpp`` ran, where
    it ran."""
    from pyg_gatv2.fused import cpp_library
    level = cpp_library.capability()
    if 'fused_cpp' not in impls or device.type != 'cpu' or level is None:
        return []
    return [f'fused_cpp: the C++ kernels at CPU level {level} (this CPU '
            f"runs {', '.join(cpp_library.capabilities())}; "
            '--cpu-capability picks one).', '']


def header(command: str, device: torch.device, bandwidth: float,
           dtype: str, impls: list[str], autocast: bool = False,
           adjacency: str = 'edge_index') -> list[str]:
    tolerance, grad_tolerance = DTYPES[dtype][1:3]
    adjacency_note = [] if adjacency == 'edge_index' else [
        'Every implementation, PyG included, is given the graph as '
        + ('a torch_sparse.SparseTensor adj_t' if adjacency == 'sparse_tensor'
           else 'a torch.sparse CSR adjacency')
        + ' [num_targets, num_sources]; our peak_mib and kept_mib count '
        'the edges read from it, kept while it lives.', '']
    autocast_note = [
        'Every step runs under torch.autocast in bfloat16, PyG\'s as ours, '
        'with float32 weights and features; kernel_fwd_ms and '
        "kernel_vs_memcpy time the fused kernel on float32 projections.",
        ''] if autocast else []
    return [
        '# Fused GATv2 attention vs PyG GATv2Conv', '',
        f'Command: `{command}`', '',
        f'Machine: {machine(torch.get_num_threads(), device)}. memcpy '
        f'bandwidth at the start: {bandwidth / 1e9:.1f} GB/s.',
        '',
    ] + cpp_note(impls, device) + autocast_note + adjacency_note + [
        'Times are medians of interleaved runs after warm-up; speedups are '
        'PyG time / our time, given only for implementations that passed '
        'the check. step_ns_per_edge_channel is the step time over the '
        'edges (self-loops included) times heads times channels.', '',
        'Check, before any timing: one training step of each '
        'implementation and of PyG eager, same weights, same inputs, loss '
        '(out * w).sum() with w fixed standard normal draws, one per output '
        "entry. max_rel_error is the largest difference from PyG eager's "
        'output over its largest entry (or over 1, if smaller); '
        'grad_max_rel_error is the largest difference of a gradient from '
        "PyG's over that gradient's largest entry (or over 1), for the "
        'gradient of a parameter that differs most, worst_grad. An '
        f'implementation beyond {tolerance:g} in the output or '
        f'{grad_tolerance:g} in a gradient ({dtype}) is MISMATCH (<tensor>: '
        '<error>), not timed and not measured.', '',
        'Memory, in the check process (on CPU the resident set, glibc '
        'pinned to return freed memory at once; on CUDA the allocated '
        'bytes): peak_mib is the largest growth during one training step '
        'above the level before it, with our layout cache emptied first, '
        'so that it counts the layout of edge_index (CSR and CSC) that the '
        'step builds and keeps between steps, and the copy of edge_index '
        'kept to prove later cache hits; PyG keeps nothing. kept_mib is the '
        'part of that growth still held after the step returned and '
        'garbage was collected (measured). peak_vs_eager is peak_mib over '
        "PyG eager's. peak_mib_step_only is the growth of a step with the "
        'layout already cached, above the level with it: it leaves the kept '
        'layout out, as the peak_mib of earlier reports did.', '',
        "kernel_vs_memcpy is the fused forward kernel's bandwidth over "
        'memcpy_gb_s, a copy timed between its runs.', ''
    ]


if __name__ == '__main__':
    main()
