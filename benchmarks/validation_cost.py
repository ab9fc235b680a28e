"""What the input checks and the layout-cache proof cost per training step.

One GATv2Conv training step (forward and backward) on the fused path, with
``pyg_gatv2`` validation ``'default'`` and ``'strict'`` in alternating
rounds, beside the two pieces of work that the modes add to a step: the
comparison that proves a cached layout current (every call, both modes) and
the value checks of ``'strict'`` (index range and NaN screen). Prints a
table of medians and their shares of the step, and writes it to
``benchmarks/results/validation_cost.{md,csv}`` (``--out`` another
folder).

    python benchmarks/validation_cost.py --threads 2
    python benchmarks/validation_cost.py --threads 2 --backend torch

``--backend`` picks the fused backend of the step: ``cpp`` (the default
where the C++ kernels were built; the header names the CPU level they ran
at, which ``PYG_GATV2_CPU_CAPABILITY`` chooses) or ``torch`` (the default
where they were not).
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS,
    add_cpu_backend_flag,
    command_line,
    cpp_level,
    cpu_backend,
    interleaved_medians,
    markdown_table,
    write_report,
)

import pyg_gatv2  # noqa: E402
from pyg_gatv2 import GATv2Conv  # noqa: E402
from pyg_gatv2.checks import check_index_range, check_no_nan  # noqa: E402
from pyg_gatv2.fused import layout  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--nodes', type=int, default=20_000)
    parser.add_argument('--edges', type=int, default=400_000)
    parser.add_argument('--features', type=int, default=64)
    parser.add_argument('--heads', type=int, default=4)
    parser.add_argument('--channels', type=int, default=32)
    parser.add_argument('--rounds', type=int, default=11,
                        help='interleaved rounds of each measurement, after '
                        'one untimed round')
    parser.add_argument('--threads', type=int, default=0,
                        help='CPU threads; 0 keeps the default')
    parser.add_argument('--seed', type=int, default=0)
    add_cpu_backend_flag(parser, 'fused backend of the step (default: cpp '
                         'where built, else torch)')
    parser.add_argument('--out', type=Path, default=RESULTS,
                        help='folder for validation_cost.md and .csv')
    args = parser.parse_args()
    args.backend = cpu_backend(parser, args.backend)
    if args.threads:
        torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.nodes, args.features, generator=gen)
    edge_index = torch.randint(0, args.nodes, (2, args.edges), generator=gen)
    conv = GATv2Conv(args.features, args.channels, heads=args.heads,
                     fused=True)
    copy = edge_index.clone()

    def step() -> None:
        conv.zero_grad(set_to_none=True)
        with pyg_gatv2.use_backends(fused=args.backend):
            conv(x, edge_index).sum().backward()

    def proof() -> None:
        layout._same_indices(copy, edge_index._version, edge_index)

    def strict_checks() -> None:
        check_index_range(edge_index, args.nodes, args.nodes, 'GATv2Conv')
        check_no_nan(x, 'its source node features', 'GATv2Conv')
        check_no_nan(x, 'its target node features', 'GATv2Conv')

    def step_in(mode: str):
        def run() -> None:
            with pyg_gatv2.validation(mode):
                step()
        return run

    fns = {'default': step_in('default'), 'strict': step_in('strict'),
           'proof': proof, 'strict_checks': strict_checks}
    for fn in fns.values():  # builds the layout, warms the caches up
        fn()
    median = interleaved_medians(fns, torch.device('cpu'), args.rounds)
    step_ms = median['default'] * 1e3
    rows = [
        dict(measure='training step, validation default',
             ms=f"{step_ms:.1f}", share='1.000'),
        dict(measure='training step, validation strict',
             ms=f"{median['strict'] * 1e3:.1f}",
             share=f"{median['strict'] / median['default']:.3f}"),
        dict(measure='layout-cache proof (index comparison), every call',
             ms=f"{median['proof'] * 1e3:.3f}",
             share=f"{median['proof'] / median['default']:.4f}"),
        dict(measure="strict value checks (index range, NaN)",
             ms=f"{median['strict_checks'] * 1e3:.3f}",
             share=f"{median['strict_checks'] / median['default']:.4f}"),
    ]
    backend = args.backend + (f' ({cpp_level()})' if args.backend == 'cpp'
                              else '')
    header = (f'N={args.nodes}, E={args.edges}, {args.features} in, '
              f'{args.heads}x{args.channels}, self-loops, fused {backend}, '
              f'{torch.get_num_threads()} threads; medians of {args.rounds} '
              'interleaved rounds')
    markdown = (f'{header}\n\n'
                f"{markdown_table(rows, ['measure', 'ms', 'share'])}\n\n"
                f'`{command_line()}`\n')
    print(markdown)
    write_report(args.out / 'validation_cost', markdown, rows)


if __name__ == '__main__':
    main()
