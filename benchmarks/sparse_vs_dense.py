"""Sparse or dense GATv2? Time and peak memory of ``DenseGATv2Conv`` against
the message-passing ``GATv2Conv``, its fused path and PyG's ``GATv2Conv``,
over graph size and density.

    python benchmarks/sparse_vs_dense.py           # full sweep, a few minutes
    python benchmarks/sparse_vs_dense.py --quick   # small sizes, for CI

Three parts, each readable alone: the cases (``_sparse_dense_cases.py``),
the measurement of one case (``_sparse_dense_measure.py``) and the report
(``_sparse_dense_report.py``).

Cases: one random graph of N nodes, a batch of 128 random graphs of N/2 to N
nodes (padded to N for the dense layer, with a node mask), each at several
average in-degrees, and the Cora citation graph (from ``--raw-dir`` or
``$PYG_GATV2_RAW_DIR``). Every case is first checked: all implementations
that can run it must give the dense layer's output (or, where the dense layer
is out of budget, PyG's) to 1e-5 times its largest entry (at least 1); a case
that disagrees is not timed. Then each implementation is timed, forward alone
(inference, no autograd) and forward + backward (median after warm-up), and
its peak memory is measured in a fresh process (growth above the level before
the call; the inputs, which the dense layer needs as an N x N adjacency, are
counted apart). An implementation whose time or memory, projected from the
largest smaller case of its series, exceeds the budget is reported as skipped
with the projection.

Writes ``<name>.md`` (the tables, crossovers and fitted slopes),
``<name>.csv`` (one row per case and implementation) and ``<name>.png``
(log-log curves against N) into ``--out``, and prints the Markdown.
"""
import argparse
import os
import platform
import sys
from typing import Optional

import torch
import torch_geometric
from _common import add_common_flags, allocator, command_line, cpp_level
from _sparse_dense_cases import IMPLS, plans
from _sparse_dense_measure import History, run_case
from _sparse_dense_report import cell, write

import pyg_gatv2


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
                        help='CPU threads of torch and OpenMP; 0 keeps '
                        'their defaults. One thread gives stable numbers on '
                        'a shared machine, where waiting threads spin')
    parser.add_argument('--clock', choices=['wall', 'cpu'], default='wall',
                        help="'cpu': time by the process's CPU time, which "
                        'other jobs on the machine do not inflate')
    add_common_flags(parser, 'sparse_vs_dense')
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


def header(args: argparse.Namespace) -> str:
    """The command, the versions, the machine and the settings."""
    backends = pyg_gatv2.current_backends()
    return (
        f'Command: `{command_line()}`\n\n'
        f'pyg_gatv2 {pyg_gatv2.__version__}, torch {torch.__version__}, '
        f'torch_geometric {torch_geometric.__version__}; device '
        f'{args.device} ({platform.machine()}, {os.cpu_count()} cores, '
        f'{torch.get_num_threads()} threads, {cpp_level()}, memory '
        f'allocator: {allocator()}); softmax '
        f"backend '{backends['softmax']}', fused backend "
        f"'{backends['fused']}'; layers: {args.heads} heads x "
        f'{args.out_channels} channels, {args.in_channels} input features '
        f'(Cora: 1433); DenseGATv2Conv memory_budget {args.chunk_budget:g} '
        f'MiB; times: median {args.clock} time; budgets {args.max_seconds:g} '
        f's (Cora: {args.cora_max_seconds:g} s) and {args.max_memory:g} GiB '
        'per run.')


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    text = header(args)
    print(text, flush=True)
    history, rows = History(), []
    for plan in plans(args):
        case_rows = run_case(plan, list(IMPLS), args, device, history)
        rows.extend(case_rows)
        print(f'{plan.setting:6s} N={plan.num_nodes:<6d} '
              f'deg={plan.degree:4s} ' + ', '.join(
                  f"{r['impl']} {cell(r, 'train_ms')}" for r in case_rows),
              flush=True)
    report = write(args.out / args.name, rows, list(IMPLS), text)
    print('\n' + report)
    mismatches = [r for r in rows if r['status'] == 'MISMATCH']
    return 1 if mismatches else 0


if __name__ == '__main__':
    sys.exit(main())
