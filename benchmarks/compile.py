"""A 2-layer GATv2 under torch.compile against eager mode, ours and PyG's.

    python benchmarks/compile.py --threads 2

The model is :class:`pyg_gatv2.GATv2` (two layers with self-loops: 4 heads
of 32 features, ELU, then one head of ``--classes`` features), built once
with our layer and once with :class:`torch_geometric.nn.GATv2Conv` with the
same weights, on a random graph (``--nodes``, ``--degree`` edges per node
on average, ``--features`` inputs). Dropout is off, so that the compiled
models can be checked against eager mode: outputs within ``1e-5`` of the
largest entry, and the graph breaks that ``torch._dynamo.explain`` counts.

Implementations, side by side in one process per stage
(``_common.run_isolated``):

- ``pyg`` / ``pyg_compile``: the model with PyG's layer, eager and under
  ``torch.compile``;
- ``fused`` / ``fused_compile``: with our layer, eager and under
  ``torch.compile`` (the fused op, numba on CPU, Triton on CUDA).

The first stage checks the outputs, counts the graph breaks and measures
the peak memory growth of one training step (as ``benchmarks/kernels.py``
does, with glibc's mmap threshold pinned); the second times the training
step (forward, backward), interleaved run by run, and reports medians.
Writes ``compile.md`` and ``compile.csv`` into ``--out``.
"""
import argparse
import sys
from functools import partial
from typing import Optional

import torch
from _common import (
    WorkerFailed,
    add_common_flags,
    command_line,
    compare,
    failure,
    interleaved_medians,
    machine,
    markdown_table,
    peak_memory,
    pin_malloc,
    run_isolated,
    write_report,
)

IMPLS = ('pyg', 'pyg_compile', 'fused', 'fused_compile')
LABELS = {
    'pyg': 'PyG GATv2Conv, eager',
    'pyg_compile': 'PyG GATv2Conv, torch.compile',
    'fused': 'ours (fused), eager',
    'fused_compile': 'ours (fused), torch.compile',
}
TOLERANCE = 1e-5
MiB = 2.0**20
COLUMNS = ['implementation', 'graph_breaks', 'max_rel_error', 'step_ms',
           'vs_fused_eager', 'speedup_vs_pyg', 'speedup_vs_pyg_compile',
           'peak_mib']


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--nodes', type=int, default=20_000)
    parser.add_argument('--degree', type=int, default=20)
    parser.add_argument('--features', type=int, default=64)
    parser.add_argument('--heads', type=int, default=4)
    parser.add_argument('--channels', type=int, default=32)
    parser.add_argument('--classes', type=int, default=16)
    parser.add_argument('--repeats', type=int, default=7,
                        help='timed runs per implementation, after two '
                        'warm-up runs')
    parser.add_argument('--threads', type=int, default=0,
                        help='torch, OpenMP and numba threads (0: their '
                        'defaults)')
    parser.add_argument('--impls', default=','.join(IMPLS),
                        help=f"comma-separated subset of {','.join(IMPLS)}")
    add_common_flags(parser, 'compile')
    args = parser.parse_args(argv)
    args.name = args.name or 'compile'
    args.impls = args.impls.split(',')
    unknown = sorted(set(args.impls) - set(IMPLS))
    if unknown:
        parser.error(f"unknown --impls {', '.join(unknown)}; choose from "
                     f"{','.join(IMPLS)}")
    return args


def build(spec: dict, device: torch.device):
    """The inputs and name -> model, all with the weights of ``pyg``."""
    import torch_geometric.nn as pyg_nn

    from pyg_gatv2 import GATv2

    gen = torch.Generator().manual_seed(spec['seed'])
    n = spec['nodes']
    x = torch.randn(n, spec['features'], generator=gen).to(device)
    edge_index = torch.randint(0, n, (2, n * spec['degree']),
                               generator=gen).to(device)
    kwargs = dict(hidden_channels=spec['channels'], heads=spec['heads'],
                  dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    pyg = GATv2(spec['features'], spec['classes'], conv=pyg_nn.GATv2Conv,
                **kwargs).to(device)
    ours = GATv2(spec['features'], spec['classes'], **kwargs).to(device)
    ours.load_state_dict(pyg.state_dict())
    models = {}
    for name in spec['impls']:
        model = pyg if name.startswith('pyg') else ours
        models[name] = (torch.compile(model) if name.endswith('_compile')
                        else model)
    return x, edge_index, models, {'pyg': pyg, 'fused': ours}


def step(model: torch.nn.Module, x: torch.Tensor,
         edge_index: torch.Tensor) -> None:
    for p in model.parameters():
        p.grad = None
    model(x, edge_index).sum().backward()


def run_worker(spec: dict) -> dict:
    """Stage ``'check'`` (outputs, graph breaks, peak memory, with glibc's
    mmap threshold pinned) or ``'time'`` (training steps)."""
    device = torch.device(spec['device'])
    if spec['stage'] == 'check':
        pin_malloc()
    x, edge_index, models, eager = build(spec, device)
    with torch.no_grad():
        expected = eager['pyg'](x, edge_index)
    results: dict[str, dict] = {}
    for name, model in models.items():
        entry = results[name] = {}
        try:
            if spec['stage'] == 'check':
                base = eager[name.split('_')[0]]
                torch._dynamo.reset()
                explained = torch._dynamo.explain(base)(x, edge_index)
                entry['graph_breaks'] = explained.graph_break_count
                torch._dynamo.reset()
            with torch.no_grad():
                got = model(x, edge_index)
            entry['max_rel_error'] = compare(got, expected,
                                             TOLERANCE).max_rel
            for _ in range(2):
                step(model, x, edge_index)
            if spec['stage'] == 'check':
                entry['peak'] = peak_memory(
                    partial(step, model, x, edge_index), device)
        except Exception as error:  # noqa: BLE001 - reported, not hidden
            entry['status'] = failure(error)
    if spec['stage'] == 'time':
        alive = {name: partial(step, models[name], x, edge_index)
                 for name in models if 'status' not in results[name]}
        for name, seconds in interleaved_medians(
                alive, device, spec['repeats']).items():
            results[name]['step'] = seconds
    return results


def rows_of(check: dict, timed: dict) -> list[dict]:
    def ratio(name: str, base: str) -> str:
        if 'step' not in timed.get(base, {}) or 'step' not in timed[name]:
            return ''
        return f"{timed[base]['step'] / timed[name]['step']:.2f}x"

    rows = []
    for name, entry in check.items():
        status = entry.get('status') or timed[name].get('status')
        row = dict(implementation=LABELS[name],
                   graph_breaks=entry.get('graph_breaks', ''),
                   max_rel_error=f"{entry['max_rel_error']:.1e}"
                   if 'max_rel_error' in entry else '',
                   step_ms=status or f"{timed[name]['step'] * 1e3:.0f}",
                   vs_fused_eager='' if status else (
                       f"{timed[name]['step'] / timed['fused']['step']:.2f}x"
                       if 'step' in timed.get('fused', {}) else ''),
                   speedup_vs_pyg='' if status else ratio(name, 'pyg'),
                   speedup_vs_pyg_compile='' if status else ratio(
                       name, 'pyg_compile'),
                   peak_mib=f"{entry['peak'] / MiB:.0f}"
                   if 'peak' in entry else '')
        rows.append(row)
    return rows


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    command = command_line()
    print(f'Command: `{command}`\n', flush=True)
    spec = dict(vars(args), out=str(args.out), raw_dir=None)
    try:
        check = run_isolated(run_worker, dict(spec, stage='check'),
                             args.threads)
        timed = run_isolated(run_worker, dict(spec, stage='time'),
                             args.threads)
    except WorkerFailed as error:
        sys.exit(f'benchmark worker failed: {error}')
    rows = rows_of(check, timed)
    edges = args.nodes * args.degree
    threads = args.threads or torch.get_num_threads()
    text = '\n'.join([
        '# A 2-layer GATv2 under torch.compile', '',
        f'Command: `{command}`', '',
        f'Machine: {machine(threads, args.device)}.', '',
        f'Model: `pyg_gatv2.GATv2`, {args.features} inputs, {args.heads} '
        f'heads x {args.channels}, ELU, 1 head x {args.classes}, '
        f'self-loops, no dropout; random graph of {args.nodes} nodes and '
        f'{edges} edges. One training step: forward, backward. Medians of '
        f'{args.repeats} interleaved runs after two warm-up steps; '
        "max_rel_error is the largest difference from PyG eager's output "
        'over its largest entry; peak is the memory growth of one step; '
        'vs_fused_eager is the step time over that of our eager model.', '',
    ]) + markdown_table(rows, COLUMNS) + '\n'
    print(text)
    write_report(args.out / args.name, text, rows, COLUMNS)


if __name__ == '__main__':
    main()
