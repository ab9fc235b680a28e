"""A 2-layer GATv2 under torch.compile against eager mode, ours and PyG's.

    python benchmarks/compile.py --threads 2

The model is :class:`pyg_gatv2.GATv2` (two layers with self-loops: 4 heads
of 32 features, ELU, then one head of ``--classes`` features), built once
with our layer and once with :class:`torch_geometric.nn.GATv2Conv` with the
same weights, on a random graph (``--nodes``, ``--degree`` edges per node
on average, ``--features`` inputs). Dropout is off, so that every model
can be checked against PyG's in eager mode: one training step of each, on
the same inputs, with the same loss, ``(out * w).sum()`` for a fixed random
``w`` (``_common.training_step``), must give the same output and the same
gradient of every parameter (within ``1e-5`` of the output's largest
entry and ``3e-5`` of each gradient's, or of one where that is smaller:
``_common.compare_steps``, ``_common.GRAD_TOLERANCE``); one that does
not is reported as ``MISMATCH (<tensor>: <error>)`` and not timed.
``torch._dynamo.explain`` counts the graph breaks.

Implementations, each stage in a process of its own
(``_common.run_isolated``, killed after ``--timeout`` seconds):

- ``pyg`` / ``pyg_compile``: the model with PyG's layer, eager and under
  ``torch.compile``;
- ``fused`` / ``fused_compile``: with our layer, eager and under
  ``torch.compile`` (the fused op on the default backend: C++ on CPU
  where built, else torch; Triton on CUDA). The header names the CPU level
  of the C++ kernels, which ``PYG_GATV2_CPU_CAPABILITY`` chooses (the
  worker processes inherit it).

The first stage checks the steps, counts the graph breaks and measures
the memory of one training step as ``benchmarks/kernels.py`` does (glibc's
mmap threshold pinned): the peak growth above the level before the step
with our layout cache emptied, so that the layout the step builds and
keeps between steps counts, and the part of it still held after the step
(kept). The second times the training step (forward, backward) of the
models that passed, interleaved run by run, and reports medians.
Writes ``compile.md`` and ``compile.csv`` into ``--out``.
"""
import argparse
import sys
from functools import partial
from typing import Optional

import torch
from _common import (
    GRAD_TOLERANCE,
    WorkerFailed,
    add_common_flags,
    add_timeout_flag,
    command_line,
    compare_steps,
    failure,
    interleaved_medians,
    machine,
    markdown_table,
    pin_malloc,
    run_isolated,
    step_memory,
    training_step,
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
COLUMNS = ['implementation', 'status', 'graph_breaks', 'max_rel_error',
           'grad_max_rel_error', 'worst_grad', 'step_ms', 'vs_fused_eager',
           'speedup_vs_pyg', 'speedup_vs_pyg_compile', 'peak_mib',
           'kept_mib']


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
                        help='torch and OpenMP threads (0: their '
                        'defaults)')
    parser.add_argument('--impls', default=','.join(IMPLS),
                        help=f"comma-separated subset of {','.join(IMPLS)}")
    add_timeout_flag(parser)
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
    """Stage ``'check'`` (steps against PyG eager's, graph breaks, memory,
    with glibc's mmap threshold pinned) or ``'time'`` (training steps)."""
    device = torch.device(spec['device'])
    if spec['stage'] == 'check':
        pin_malloc()
    x, edge_index, models, eager = build(spec, device)
    if spec['stage'] == 'check':
        return check_models(models, eager, x, edge_index, device)
    results: dict[str, dict] = {}
    for name, model in models.items():
        try:
            for _ in range(2):
                step(model, x, edge_index)
            results[name] = dict(status='ok')
        except Exception as error:  # noqa: BLE001 - reported, not hidden
            results[name] = dict(status=failure(error))
    alive = {name: partial(step, models[name], x, edge_index)
             for name in models if results[name]['status'] == 'ok'}
    for name, seconds in interleaved_medians(
            alive, device, spec['repeats']).items():
        results[name]['step'] = seconds
    return results


def check_models(models: dict[str, torch.nn.Module],
                 eager: dict[str, torch.nn.Module], x: torch.Tensor,
                 edge_index: torch.Tensor,
                 device: torch.device) -> dict[str, dict]:
    """Per model: its graph breaks, the comparison of one training step
    with PyG eager's (output and the gradient of every parameter), and
    for those that agree the memory of a step (after two warm-up steps)
    with our layout cache emptied first: its peak growth and what it
    keeps. ``status`` is ``'ok'``, a ``'MISMATCH (...)'`` or a failure."""
    from pyg_gatv2.fused import clear_layout_cache

    def check_step(model: torch.nn.Module, base: torch.nn.Module):
        return training_step(partial(model, x, edge_index),
                             dict(base.named_parameters()))

    expected = check_step(eager['pyg'], eager['pyg'])
    results: dict[str, dict] = {}
    for name, model in models.items():
        entry = results[name] = {}
        try:
            # The eager model under the compiled one: the same parameters.
            base = eager[name.split('_')[0]]
            torch._dynamo.reset()
            explained = torch._dynamo.explain(base)(x, edge_index)
            entry['graph_breaks'] = explained.graph_break_count
            torch._dynamo.reset()
            checked = compare_steps(check_step(model, base), expected,
                                    TOLERANCE, GRAD_TOLERANCE)
            entry['max_rel_error'] = checked.output_error
            entry['worst_grad'], entry['grad_max_rel_error'] = (
                checked.worst_grad)
            entry['status'] = checked.status
            if not checked.ok:
                continue
            for _ in range(2):
                step(model, x, edge_index)
            clear_layout_cache()
            memory = step_memory(partial(step, model, x, edge_index),
                                 device)
            entry['peak'], entry['kept'] = memory.peak, memory.kept
        except Exception as error:  # noqa: BLE001 - reported, not hidden
            entry['status'] = failure(error)
    return results


def rows_of(check: dict, timed: dict) -> list[dict]:
    """One row per model; times and ratios only for models that passed the
    check and were timed (the time stage runs only those, so ratios are
    against baselines that passed too)."""
    def ratio(numerator: str, denominator: str) -> str:
        if not all('step' in timed.get(name, {})
                   for name in (numerator, denominator)):
            return ''
        return (f"{timed[numerator]['step'] / timed[denominator]['step']:.2f}"
                'x')

    rows = []
    for name, entry in check.items():
        status = entry.get('status', '')
        if status == 'ok':
            status = timed.get(name, {}).get('status', 'not timed')
        row = dict(implementation=LABELS[name], status=status,
                   graph_breaks=entry.get('graph_breaks', ''))
        if 'max_rel_error' in entry:
            row['max_rel_error'] = f"{entry['max_rel_error']:.1e}"
            row['grad_max_rel_error'] = f"{entry['grad_max_rel_error']:.1e}"
            row['worst_grad'] = entry['worst_grad']
        if 'peak' in entry:
            row['peak_mib'] = f"{entry['peak'] / MiB:.1f}"
            row['kept_mib'] = f"{entry['kept'] / MiB:.1f}"
        if status == 'ok' and 'step' in timed[name]:
            row.update(step_ms=f"{timed[name]['step'] * 1e3:.0f}",
                       vs_fused_eager=ratio(name, 'fused'),
                       speedup_vs_pyg=ratio('pyg', name),
                       speedup_vs_pyg_compile=ratio('pyg_compile', name))
        rows.append(row)
    return rows


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    command = command_line()
    print(f'Command: `{command}`\n', flush=True)
    spec = dict(vars(args), out=str(args.out), raw_dir=None)
    try:
        check = run_isolated(run_worker, dict(spec, stage='check'),
                             args.threads, args.timeout)
        passed = [name for name in args.impls
                  if check[name].get('status') == 'ok']
        timed = run_isolated(
            run_worker, dict(spec, stage='time', impls=passed),
            args.threads, args.timeout) if passed else {}
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
        f'{args.repeats} interleaved runs after two warm-up steps, of the '
        'models that passed the check; vs_fused_eager is the step time over '
        'that of our eager model.', '',
        'Check, before any timing: one training step of each model and of '
        'the PyG model in eager mode, same weights, same inputs, loss '
        '(out * w).sum() with w fixed standard normal draws, one per output '
        "entry. max_rel_error is the largest difference from PyG eager's "
        'output over its largest entry (or over 1, if smaller); '
        'grad_max_rel_error is the largest difference of a gradient from '
        "PyG's over that gradient's largest entry (or over 1), for the "
        'gradient of a parameter that differs most, worst_grad. A model beyond '
        f'{TOLERANCE:g} in the output or {GRAD_TOLERANCE:g} in a gradient '
        'is MISMATCH (<tensor>: <error>), not timed.', '',
        'Memory (on CPU the resident set, glibc pinned to return freed '
        'memory at once; on CUDA the allocated bytes): peak_mib is the '
        'largest growth during one training step above the level before '
        'it, with our layout cache emptied first, so that it counts the '
        'layout of edge_index that our layer builds in the step and keeps '
        'between steps (with the copy of edge_index that proves cache '
        "hits); PyG's keeps nothing. kept_mib is the part of that growth "
        'still held after the step returned and garbage was collected '
        '(measured).', '',
    ]) + markdown_table(rows, COLUMNS) + '\n'
    print(text)
    write_report(args.out / args.name, text, rows, COLUMNS)


if __name__ == '__main__':
    main()
