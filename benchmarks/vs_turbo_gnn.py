"""Our fused attention beside turbo-gnn's fused GATv2 (Fomina et al., "On
Efficient Scaling of GNNs via IO-Aware Layers Implementations", ICML 2026:
CUDA kernels, https://github.com/Abusagit/Turbo-GNN): time and peak
memory of the attention operator, forward and training step.

    python benchmarks/vs_turbo_gnn.py --device cuda
    python benchmarks/vs_turbo_gnn.py --device cuda --graph powerlaw

turbo-gnn exposes its kernels as an operator, ``turbo_gnn.gatv2_aggr``,
not as a PyG layer, so the comparison is of operators: given the projected
source and destination features ``x_l``, ``x_r`` ``[N, heads, channels]``
and ``att`` ``[heads, channels]``, both compute, for every node ``i``,
``sum_j softmax_j(att . LeakyReLU(x_l[j] + x_r[i])) x_l[j]`` over its
in-edges. The graph is that of ``kernels.py`` (``--graph uniform``,
``powerlaw`` or ``hub``) with its self-loops removed and one added per
node, as explicit edges (turbo-gnn takes no implicit ones; ours then runs
``add_self_loops=False``). Each side's sorted graph (our
:class:`pyg_gatv2.fused.EdgeLayout`, turbo-gnn's
``AdjacencyForwardBackwardWithNodeBuckets``) is built once, outside the
timings. ``turbo_autotune`` calls turbo-gnn with ``autotune=True``: its
search runs in the warm-up calls, untimed, as its cache then serves a
training loop.

Checked first: turbo-gnn's output and the gradients of ``x_l``, ``x_r``
and ``att`` (``_common.training_step``: loss ``(out * w).sum()`` for
fixed random ``w``) against ours, within ``--tolerance`` of each
tensor's largest entry (``_common.compare_steps``); a disagreement is
reported as ``MISMATCH (<tensor>: <error>)`` and not timed. Ours is checked
against PyG's layer by the tests and ``kernels.py``. Then the forward
pass (no autograd) and the step (forward and backward), interleaved run
by run, medians of ``--repeats`` after warm-up, and each step's peak
memory above its inputs (``_common.step_memory``).

turbo-gnn builds from source only with the CUDA toolkit (``nvcc``):
``TURBO_GNN_FORCE_BUILD=TRUE pip install --no-build-isolation
turbo-gnn`` (``gpu_checks.sh turbo`` does it from a downloaded source
archive, ``$TURBO_GNN_SDIST``). Where it is not installed, its rows say
so. Writes ``vs_turbo_gnn.md`` and ``.csv`` into ``--out``.
"""
import argparse
import importlib
from functools import partial
from pathlib import Path
from typing import Callable, Optional

import torch
from _common import (
    RESULTS,
    StepCheck,
    command_line,
    compare_steps,
    failure,
    interleaved_medians,
    loss_weights,
    machine,
    markdown_table,
    step_memory,
    training_step,
    write_report,
)
from kernels import GRAPHS, graph_edges

IMPLS = ('ours', 'turbo', 'turbo_autotune')
LABELS = {'ours': 'ours (fused_gatv2_attention)',
          'turbo': 'turbo-gnn (gatv2_aggr)',
          'turbo_autotune': 'turbo-gnn (gatv2_aggr, autotune=True)'}
MiB = 2.0**20
COLUMNS = ['impl', 'status', 'max_rel_error', 'fwd_ms', 'step_ms',
           'peak_mib', 'step_vs_ours', 'peak_vs_ours']


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--nodes', type=int, default=200_000)
    parser.add_argument('--degree', type=int, default=20,
                        help='edges per node before the self-loops')
    parser.add_argument('--graph', choices=GRAPHS, default='uniform')
    parser.add_argument('--heads', type=int, default=4)
    parser.add_argument('--channels', type=int, default=32)
    parser.add_argument('--dtype', default='float32',
                        choices=('float32', 'bfloat16', 'float16'))
    parser.add_argument('--impls', default=','.join(IMPLS),
                        help=f"comma-separated, of {', '.join(IMPLS)}")
    parser.add_argument('--repeats', type=int, default=11)
    parser.add_argument('--tolerance', type=float, default=None,
                        help='of the check, relative to the largest entry '
                        '(default: 1e-4 in float32, 5e-2 in 16 bits)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', type=Path, default=RESULTS)
    parser.add_argument('--name', default='vs_turbo_gnn')
    args = parser.parse_args(argv)
    args.impls = args.impls.split(',')
    unknown = sorted(set(args.impls) - set(IMPLS))
    if unknown or 'ours' not in args.impls:
        parser.error(f'--impls: {", ".join(IMPLS)}, ours among them '
                     f'(got {",".join(args.impls)})')
    if args.tolerance is None:
        args.tolerance = 1e-4 if args.dtype == 'float32' else 5e-2
    return args


class Inputs:
    """The graph with one self-loop per node, and the operator's inputs,
    which require gradients."""
    def __init__(self, args: argparse.Namespace, device: torch.device):
        from torch_geometric.utils import add_self_loops, remove_self_loops
        gen = torch.Generator().manual_seed(args.seed)
        n, edges = args.nodes, args.nodes * args.degree
        edge_index = graph_edges(args.graph, n, edges, gen)
        edge_index, _ = remove_self_loops(edge_index)
        edge_index, _ = add_self_loops(edge_index, num_nodes=n)
        self.num_nodes = n
        self.edge_index = edge_index.to(device)
        dtype = getattr(torch, args.dtype)
        shape = (n, args.heads, args.channels)
        self.x_l, self.x_r = (
            torch.randn(shape, generator=gen).to(device, dtype)
            .requires_grad_() for _ in range(2))
        self.att = (torch.randn(args.heads, args.channels, generator=gen)
                    .to(device, dtype).requires_grad_())
        self.weights = loss_weights(shape, device).to(dtype)
        self.negative_slope = 0.2

    @property
    def leaves(self) -> dict[str, torch.Tensor]:
        return dict(x_l=self.x_l, x_r=self.x_r, att=self.att)


def ours(inputs: Inputs) -> Callable[[], torch.Tensor]:
    """Our operator on a layout built once."""
    from pyg_gatv2.fused import edge_layout, fused_gatv2_attention
    n = inputs.num_nodes
    layout = edge_layout(inputs.edge_index, n, n, add_self_loops=False)
    return partial(fused_gatv2_attention, inputs.x_l, inputs.x_r,
                   inputs.att, layout,
                   negative_slope=inputs.negative_slope)


def turbo(inputs: Inputs, autotune: bool) -> Callable[[], torch.Tensor]:
    """turbo-gnn's operator on its graph built once: ``x`` are the
    destinations' features (ours ``x_r``), ``x_neighbors`` the sources'
    (ours ``x_l``), as its docstring names them."""
    turbo_gnn = importlib.import_module('turbo_gnn')
    n = inputs.num_nodes
    graph = turbo_gnn.AdjacencyForwardBackwardWithNodeBuckets.from_edge_list(
        inputs.edge_index, num_nodes=n).to(inputs.edge_index.device)
    shape = inputs.x_l.shape

    def call() -> torch.Tensor:
        out = turbo_gnn.gatv2_aggr(graph, inputs.x_r, inputs.x_l,
                                   inputs.att, inputs.negative_slope,
                                   autotune=autotune)
        return out.view(shape)
    return call


def unavailable(impl: str) -> Optional[str]:
    if impl == 'ours':
        return None
    try:
        importlib.import_module('turbo_gnn')
    except ImportError as error:
        return f'n/a (turbo-gnn not installed: {error})'
    return None


def worst_error(checked: StepCheck) -> tuple[str, float]:
    """The tensor (output or gradient) that differs most, and its error."""
    name, error = checked.worst_grad
    if not checked.output_error <= error:
        return 'output', checked.output_error
    return name, error


def step_of(fn: Callable[[], torch.Tensor], inputs: Inputs
            ) -> Callable[[], None]:
    def step() -> None:
        for leaf in inputs.leaves.values():
            leaf.grad = None
        (fn() * inputs.weights).sum().backward()
    return step


def no_grad(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    def forward() -> torch.Tensor:
        with torch.no_grad():
            return fn()
    return forward


def run(args: argparse.Namespace) -> tuple[list[dict], int]:
    """The table's rows, and the number of edges (loops included)."""
    device = torch.device(args.device)
    inputs = Inputs(args, device)
    fns = {'ours': ours(inputs)}
    expected = training_step(fns['ours'], inputs.leaves)
    rows = {'ours': dict(impl='ours', status='ok')}
    for impl in [i for i in args.impls if i != 'ours']:
        reason = unavailable(impl)
        if reason is not None:
            rows[impl] = dict(impl=impl, status=reason)
            continue
        try:
            fn = turbo(inputs, autotune=impl == 'turbo_autotune')
            checked = compare_steps(training_step(fn, inputs.leaves),
                                    expected, args.tolerance)
        except Exception as err:  # a failing kernel is reported, not timed
            rows[impl] = dict(impl=impl, status=f'FAILED ({failure(err)})')
            continue
        where, error = worst_error(checked)
        rows[impl] = dict(impl=impl, max_rel_error=f'{error:.1e} ({where})',
                          status=checked.status)
        if checked.ok:
            fns[impl] = fn
    for mode, make in (('fwd_ms', no_grad),
                       ('step_ms', lambda fn: step_of(fn, inputs))):
        calls = {impl: make(fn) for impl, fn in fns.items()}
        for call in calls.values():  # warm-up (and turbo-gnn's search)
            call()
            call()
        for impl, seconds in interleaved_medians(calls, device,
                                                 args.repeats).items():
            rows[impl][mode] = seconds * 1e3
    for impl, fn in fns.items():
        rows[impl]['peak_mib'] = step_memory(step_of(fn, inputs),
                                             device).peak / MiB
    base = dict(rows['ours'])
    for impl in fns:
        row = rows[impl]
        row['step_vs_ours'] = f"{row['step_ms'] / base['step_ms']:.2f}x"
        row['peak_vs_ours'] = f"{row['peak_mib'] / base['peak_mib']:.2f}x"
        for key in ('fwd_ms', 'step_ms'):
            row[key] = f'{row[key]:.2f}'
        row['peak_mib'] = f"{row['peak_mib']:.0f}"
    return ([rows[impl] for impl in args.impls],
            inputs.edge_index.size(1))


def report(args: argparse.Namespace, rows: list[dict],
           edges: int) -> str:
    device = torch.device(args.device)
    versions = []
    try:
        turbo_gnn = importlib.import_module('turbo_gnn')
        versions.append(
            f"turbo-gnn {getattr(turbo_gnn, '__version__', '(version ?)')}")
    except ImportError:
        versions.append('turbo-gnn not installed')
    if device.type == 'cuda':
        versions.append(torch.cuda.get_device_name(device))
    return '\n'.join([
        '# Our fused attention beside turbo-gnn', '',
        f'Command: `{command_line()}`', '',
        f'Machine: {machine(torch.get_num_threads(), device)}; '
        f"{', '.join(versions)}.", '',
        f'The attention operator alone on a {args.graph} graph of '
        f'{args.nodes:,} nodes and {edges:,} edges (self-loops included), '
        f'{args.heads} heads x {args.channels} channels, {args.dtype}; '
        f'medians of {args.repeats} interleaved runs. max_rel_error: '
        "turbo-gnn's output and gradients against ours (the worst tensor "
        f'named), tolerance {args.tolerance:g}; step_vs_ours: time over '
        "ours (above 1: slower than ours); peak_mib: a step's peak above "
        'its inputs.', '',
        markdown_table(rows, COLUMNS), ''])


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    rows, edges = run(args)
    markdown = report(args, rows, edges)
    print(markdown)
    write_report(args.out / args.name, markdown, rows, COLUMNS)


if __name__ == '__main__':
    main()
