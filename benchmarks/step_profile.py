"""Where one training step of the fused GATv2Conv goes, pass by pass.

    python benchmarks/step_profile.py            # three cases, 2 threads
    python benchmarks/step_profile.py --quick    # one tiny graph, no Cora
    python benchmarks/step_profile.py --device cuda   # the Triton kernels

Per case, in a fresh process (``_common.run_isolated``, killed after
``--timeout`` seconds), in float32, on the CPU with ``--threads`` threads
and the C++ kernels or on a CUDA GPU with the Triton kernels
(``--kernels`` names them; Triton on the CPU only in Triton's
interpreter, as the tests run it), after two checks, these are timed,
interleaved run by run after warm-up, and reported as medians. The
checks: one training step of our layer and of PyG's with the same
weights, on the same inputs, with the same loss, ``(out * w).sum()`` for
a fixed random ``w``
(``_common.training_step``), give the same output and the same gradient of
every parameter (within ``1e-5`` of the output's largest entry and
``3e-5`` of each gradient's, or of one where that is smaller:
``_common.compare_steps``, ``_common.GRAD_TOLERANCE``); and the parts
below, handed the gradient of that loss, reproduce our step's output and
the gradients of ``att``, ``lin_l`` and ``lin_r``. A case that fails
either is reported as ``MISMATCH (<tensor>: <error>)`` or ``MISMATCH
(parts vs step, <tensor>: <error>)`` and not timed. The parts:

- ``pyg_step``: a training step (forward, backward of ``out.sum()``) of
  :class:`torch_geometric.nn.GATv2Conv`, for context;
- ``step``: the same step of :class:`pyg_gatv2.GATv2Conv` (fused path,
  the kernels profiled) with PyG's weights, on the same
  ``edge_index`` tensor every call, so that its layout comes from the cache;
- ``projections``: ``lin_l`` and ``lin_r`` on ``x`` and their weight
  gradients, through autograd, as the step runs them;
- ``forward``: the fused forward kernel alone (the backend's ``forward``
  on the operands the step hands it, no attention weights);
- ``backward_dst``: the backward pass by destination alone (the
  backend's ``backward`` without the gradient of ``x_l``);
- ``backward_src``: the backward pass by source, the time of
  ``backward`` with the gradient of ``x_l`` less ``backward_dst``
  (a difference of medians: noisy on a loaded machine, and on a case
  small enough, below zero);
- ``rest``: ``step`` less the four parts above, which are all of the
  cached step's kernels and GEMMs: autograd, allocations, the checks and
  the cache lookup of the layout, the bias, Python (the C++ backward
  pass by destination sums ``D_i = <grad_out_i, out_i>`` itself; for the
  Triton kernels, D is summed before the passes and counts here);
- ``layout``: what a new ``edge_index`` adds, as a loader hands one per
  step: the layout of a copy (the copy counted in) built on a cache miss,
  CSR and the CSC the backward needs, with their work ranges. Not a part
  of the cached step.

The parts are the passes of the C++ kernels
(``pyg_gatv2.fused.backends.cpp``) or of the Triton kernels
(``pyg_gatv2.fused.backends.triton_kernels``), which the torch backend
does not run apart: where the kernels asked for cannot run, the script
says why and stops. They run at the best CPU level this CPU
supports, or at the one ``PYG_GATV2_CPU_CAPABILITY`` names (the worker
processes inherit it); the header's machine line says which.

Bytes and FLOPs. With ``N`` nodes, ``E' = E + N`` edges (self-loops
implicit, one per node; the few edges ``i -> i`` of a random graph, which
the layout drops, are counted), ``H`` heads of ``C`` channels, ``F`` input
features, float32 features and statistics and int64 indices, each fused
pass must read or write at least once:

- ``forward``: per edge, the source row of ``x_l`` (``4HC`` bytes) and the
  CSR source and edge id (16); per node, the rows of ``x_r`` and ``out``
  (``8HC``), the log-sum-exp (``4H``) and the CSR offset (8). This is
  ``fused_bytes`` of ``benchmarks/kernels.py``.
- ``backward_dst``: per edge, the source row of ``x_l`` (``4HC``), the CSR
  source and edge id (16), and the message weight and logit gradient it
  writes for the next pass (``8H``); per node, the rows of ``x_r``,
  ``grad_out`` and ``grad_x_r`` (``12HC``), the log-sum-exp and ``D``
  (``8H``) and the CSR offset (8).
- ``backward_src``: per edge, the rows of ``x_r`` and ``grad_out`` of its
  destination (``8HC``), the message weight and logit gradient
  (``8H``), the CSC position and destination (16); per node, the rows of
  ``x_l`` and ``grad_x_l`` (``8HC``) and the CSC offset (8).

The Triton kernels move the same but for: ``backward_dst`` writes no
statistics per edge, and writes and sums one float32 row of partial
gradients of ``att`` per program (``4HC`` twice, one program per node
below 131,072 nodes, per 16 nodes from there); ``backward_src``
recomputes the weights from the log-sum-exp and ``D`` of each edge's
destination (``8H``, as many bytes as the two statistics it no longer
reads) and reads the edge id too (8 more). It computes the logits and
``<grad_out_i, x_j>`` again: 12 FLOPs per edge, head and channel.

The bandwidth of a pass is its bytes over its median time, also as a
fraction of a large ``memcpy`` (bytes read plus written,
``kernels.memcpy_bandwidth``) measured in the same run. FLOPs per edge,
head and channel: forward 6 (add, LeakyReLU, times ``att``, sum; the
weighted message added), backward_dst 11, backward_src 6; projections
``8 N F HC`` (two GEMMs and their two weight gradients). Exponentials and
per-node work are not counted.

Cora is read from ``--raw-dir`` or ``$PYG_GATV2_RAW_DIR`` (skipped, with
a note, where neither holds it). Writes ``step_profile.md`` (the command,
the machine, the table) and ``step_profile.csv`` (``--name``;
``step_profile_quick`` with ``--quick``) into ``--out`` and prints the
Markdown.
"""
import argparse
import sys
from collections.abc import Callable
from functools import partial
from typing import Optional

import torch
from _common import (
    GRAD_TOLERANCE,
    StepCheck,
    StepResult,
    WorkerFailed,
    add_common_flags,
    add_timeout_flag,
    command_line,
    compare_steps,
    cpp_unavailable,
    interleaved_medians,
    loss_weights,
    machine,
    markdown_table,
    run_isolated,
    write_report,
)
from kernels import (
    Run,
    build_case,
    cora_case,
    fused_bytes,
    make_impls,
    memcpy_bandwidth,
)

TOLERANCE = 1e-5
# (nodes, average in-degree, input features, heads, channels)
CASES = [(20_000, 20, 64, 4, 32), (200_000, 5, 64, 4, 32)]
QUICK_CASES = [(2_000, 5, 16, 2, 8)]
# The parts of the cached step, whose times with 'rest' add up to it.
PARTS = ('projections', 'forward', 'backward_dst', 'backward_src')
ROWS = ('pyg_step', 'step') + PARTS + ('rest', 'layout')
# FLOPs per edge, head and channel of each fused pass.
FLOPS_PER_EDGE = {'forward': 6, 'backward_dst': 11, 'backward_src': 6}
COLUMNS = ['case', 'part', 'status', 'ms', 'of_step', 'in_step',
           'model_mb', 'gb_s', 'vs_memcpy', 'gflop', 'gflop_s',
           'max_rel_error', 'grad_max_rel_error', 'worst_grad']


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help='one tiny graph, 5 repeats, no Cora')
    parser.add_argument('--repeats', type=int, default=7,
                        help='timed runs of each part (default: 7)')
    parser.add_argument('--warmup', type=int, default=2,
                        help='untimed runs of each part first (default: 2)')
    parser.add_argument('--threads', type=int, default=2,
                        help='CPU threads for torch and the kernels; 0 '
                        'keeps their defaults (default: 2)')
    parser.add_argument('--kernels', choices=('cpp', 'triton'),
                        default=None, help='the kernels whose passes are '
                        'timed (default: cpp on the CPU, triton on CUDA)')
    add_timeout_flag(parser)
    parser.add_argument('--cora', action=argparse.BooleanOptionalAction,
                        default=None, help='include Cora, 8 heads x 8 '
                        '(default: yes, no with --quick)')
    add_common_flags(parser, 'step_profile')
    args = parser.parse_args(argv)
    if args.quick:  # other defaults; flags given still win
        parser.set_defaults(repeats=5, warmup=1)
        args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.kernels is None:
        args.kernels = 'triton' if device.type == 'cuda' else 'cpp'
    if device.type not in ('cpu', 'cuda') or (
            args.kernels == 'cpp') != (device.type == 'cpu'):
        parser.error(f'--device {args.device} --kernels {args.kernels}: '
                     'this profile times the C++ kernels on the CPU or the '
                     'Triton kernels on CUDA')
    if args.repeats < 1 or args.warmup < 0 or args.threads < 0:
        parser.error('--repeats must be positive, --warmup and --threads '
                     'not negative')
    if args.cora is None:
        args.cora = not args.quick
    from pyg_gatv2.fused.backends import registry
    reason = (cpp_unavailable() if args.kernels == 'cpp' else
              registry()['triton'].unavailable_reason())
    if device.type == 'cuda' and not torch.cuda.is_available():
        reason = 'no CUDA GPU is present'
    if reason:
        name = 'C++' if args.kernels == 'cpp' else 'Triton'
        parser.error(f'this profile times the passes of the {name} '
                     f'kernels, which cannot run here: {reason}')
    if args.name is None:
        args.name = 'step_profile' + ('_quick' if args.quick else '')
    return args


def cases_of(args: argparse.Namespace) -> list[dict]:
    """The random graphs, and Cora second where asked for and found."""
    cases = [
        dict(name=f'random N={n} deg={d} F={f} {h}x{c}', kind='random',
             nodes=n, edges=n * d, features=f, heads=h, channels=c)
        for n, d, f, h, c in (QUICK_CASES if args.quick else CASES)
    ]
    cora = cora_case(args) if args.cora else None
    if cora is not None:
        cases.insert(1, cora)
    return cases


# The worker: one case in a fresh process ------------------------------------


class StepParts:
    """The parts of our layer's training step, each alone, on what the step
    hands them: ``x``, the layer's weights, the cached layout of
    ``edge_index``, the projections and the gradient of the checked step's
    loss (:func:`_common.loss_weights`)."""
    def __init__(self, conv: torch.nn.Module, x: torch.Tensor,
                 edge_index: torch.Tensor, kernels: str = 'cpp'):
        from pyg_gatv2.fused import edge_layout
        from pyg_gatv2.fused.backends import cpp, registry
        from pyg_gatv2.fused.operands import Cotangents, Operands, row_dots

        self.kernels = kernels = registry()[kernels]
        H, C = conv.heads, conv.out_channels
        self.conv, self.x, self.edge_index = conv, x, edge_index
        self.lins = {'lin_l': conv.lin_l, 'lin_r': conv.lin_r}
        n = x.size(0)
        with torch.no_grad():
            x_l, x_r = (lin(x).view(n, H, C) for lin in self.lins.values())
        layout = edge_layout(edge_index, n, n, conv.add_self_loops)
        self.ops = Operands(x_l, x_r, conv.att.detach().view(H, C), None,
                            None, None, layout, conv.negative_slope)
        self.out, lse, _ = kernels.forward(self.ops, False)
        grad_out = loss_weights((n, H * C), x.device).view(n, H, C)
        # As the step hands them: without D_i where the kernels sum it over
        # the edges themselves (C++).
        delta = (row_dots(grad_out, self.out, lse.dtype)
                 if kernels.needs_output else None)
        self.cot = Cotangents(grad_out, None, lse, delta)
        self.grads = kernels.backward(self.ops, self.cot, False, True)
        self.ranges = cpp.work_ranges() if kernels is cpp.BACKEND else None

    def fns(self) -> dict[str, Callable[[], object]]:
        """Name -> the part; ``backward`` runs both backward passes."""
        kernels = self.kernels
        return dict(
            projections=self.projections, layout=self.new_layout,
            forward=partial(kernels.forward, self.ops, False),
            backward_dst=partial(kernels.backward, self.ops, self.cot,
                                 False, False),
            backward=partial(kernels.backward, self.ops, self.cot, False,
                             True))

    def projections(self) -> None:
        """Forward and backward of ``lin_l(x)`` and ``lin_r(x)``, with the
        gradients the fused backward gives ``x_l`` and ``x_r``."""
        lins = self.lins.values()
        for lin in lins:
            for p in lin.parameters():
                p.grad = None
        grads = (self.grads.x_l, self.grads.x_r)
        torch.autograd.backward([lin(self.x) for lin in lins],
                                [g.view(self.x.size(0), -1) for g in grads])

    def new_layout(self) -> None:
        """Builds the layout of a copy of ``edge_index`` (a cache miss)
        with the CSC and what the kernels ask of it: the C++ kernels' work
        ranges, or the Triton kernels' chunks of the nodes of many
        edges."""
        from pyg_gatv2.fused import edge_layout
        n = self.x.size(0)
        layout = edge_layout(self.edge_index.clone(), n, n,
                             self.conv.add_self_loops)
        for by in ('dst', 'src'):  # 'src' builds the CSC
            if self.ranges is not None:
                layout.bounds(by, self.ranges)
            else:
                from pyg_gatv2.fused.backends import triton_kernels
                layout.chunks(by, triton_kernels._CHUNK_EDGES)


def parts_check(parts: StepParts, step: StepResult) -> StepCheck:
    """How what the parts compute differs from what the checked training
    step of the layer gave (:meth:`kernels.Run.step`, the same loss): its
    output and the gradients of ``att`` and of ``lin_l`` and ``lin_r``
    (through the fused backward's gradients of ``x_l`` and ``x_r``)."""
    conv = parts.conv
    parts.projections()
    grads = {'att': parts.grads.att.view_as(conv.att)}
    for prefix, lin in parts.lins.items():
        for name, p in lin.named_parameters():
            grads[f'{prefix}.{name}'] = p.grad
    got = StepResult(parts.out.flatten(1) + conv.bias.detach(), grads)
    expected = StepResult(step.output,
                          {name: step.grads[name] for name in grads})
    return compare_steps(got, expected, TOLERANCE, GRAD_TOLERANCE)


def run_worker(spec: dict) -> dict:
    """Checks one case, then times the steps and the parts (seconds)."""
    case = spec['case']
    device = torch.device(spec.get('device', 'cpu'))
    kernels = spec.get('kernels', 'cpp')
    x, edge_index = build_case(case, spec['seed'], device)
    ours = f'fused_{kernels}'
    ref, impls = make_impls(case, ['pyg', ours], device)
    steps = {'pyg_step': Run(ref, None, x, edge_index),
             'step': Run(*impls[ours], x, edge_index)}
    ours_step = steps['step'].step()
    checked = compare_steps(ours_step, steps['pyg_step'].step(), TOLERANCE,
                            GRAD_TOLERANCE)
    worst_grad, grad_error = checked.worst_grad
    result = dict(case=case, max_rel_error=checked.output_error,
                  grad_max_rel_error=grad_error, worst_grad=worst_grad)
    if not checked.ok:
        return dict(result, status=checked.status)
    parts = StepParts(impls[ours][0], x, edge_index, kernels)
    by_parts = parts_check(parts, ours_step)
    result['parts_error'] = max(by_parts.errors.values())
    if not by_parts.ok:
        name, error = by_parts.worst_failed
        return dict(result,
                    status=f'MISMATCH (parts vs step, {name}: {error:.1e})')
    fns = {name: partial(run, True) for name, run in steps.items()}
    fns.update(parts.fns())
    for fn in fns.values():
        for _ in range(spec['warmup']):
            fn()
    times = interleaved_medians(fns, device, spec['repeats'])
    return dict(result, status='ok', times=times)


def run_case(case: dict, args: argparse.Namespace) -> dict:
    spec = dict(case=case, seed=args.seed, repeats=args.repeats,
                warmup=args.warmup, device=args.device,
                kernels=args.kernels)
    try:
        return run_isolated(run_worker, spec, threads=args.threads,
                            timeout=args.timeout)
    except WorkerFailed as error:
        return dict(case=case, status=str(error))


# Reporting -------------------------------------------------------------------


def pass_bytes(case: dict, kernels: str = 'cpp') -> dict[str, float]:
    """Bytes each fused pass must move at least once: the model of the
    module's docstring, float32 features."""
    H, C = case['heads'], case['channels']
    edges, nodes = case['edges'] + case['nodes'], case['nodes']
    row, stats = 4 * H * C, 4 * H
    if kernels == 'triton':
        # The kernels' own rule (imported here: the module imports triton).
        from pyg_gatv2.fused.backends.triton_kernels import (
            _nodes_per_program,
        )
        programs = -(-nodes // _nodes_per_program(nodes))
        return {
            'forward': fused_bytes(case),
            'backward_dst': (edges * (row + 16) + programs * 2 * row +
                             nodes * (3 * row + 2 * stats + 8)),
            'backward_src': (edges * (2 * row + 2 * stats + 24) +
                             nodes * (2 * row + 8)),
        }
    return {
        'forward': fused_bytes(case),
        'backward_dst': (edges * (row + 16 + 2 * stats) +
                         nodes * (3 * row + 2 * stats + 8)),
        'backward_src': (edges * (2 * row + 2 * stats + 16) +
                         nodes * (2 * row + 8)),
    }


def flops(case: dict, kernels: str = 'cpp') -> dict[str, float]:
    """FLOPs of the projections and of each fused pass (docstring)."""
    H, C = case['heads'], case['channels']
    edges = case['edges'] + case['nodes']
    per_edge = dict(FLOPS_PER_EDGE)
    if kernels == 'triton':
        per_edge['backward_src'] = 12
    counts = {part: n * edges * H * C for part, n in per_edge.items()}
    counts['projections'] = 8 * case['nodes'] * case['features'] * H * C
    return counts


def times_of(medians: dict[str, float]) -> dict[str, float]:
    """Seconds per row of :data:`ROWS` from the worker's medians."""
    times = dict(medians)
    times['backward_src'] = times.pop('backward') - times['backward_dst']
    times['rest'] = times['step'] - sum(times[part] for part in PARTS)
    return times


def rows_of(result: dict, bandwidth: float,
            kernels: str = 'cpp') -> list[dict]:
    """The table rows of one case: one per part, or one saying why the case
    was not timed."""
    case = result['case']
    base = dict(case=case['name'], nodes=case['nodes'], edges=case['edges'],
                features=case['features'], heads=case['heads'],
                channels=case['channels'], status=result['status'])
    error = ({'max_rel_error': f"{result['max_rel_error']:.1e}",
              'grad_max_rel_error': f"{result['grad_max_rel_error']:.1e}",
              'worst_grad': result['worst_grad']}
             if 'max_rel_error' in result else {})
    if result['status'] != 'ok':
        return [dict(base, part='step', **error)]
    times = times_of(result['times'])
    moved, counted = pass_bytes(case, kernels), flops(case, kernels)
    rows = []
    for part in ROWS:
        seconds = times[part]
        row = dict(base, part=part, ms=f'{seconds * 1e3:.3f}',
                   of_step=f"{seconds / times['step']:.3f}",
                   in_step='yes' if part in PARTS + ('rest', ) else '')
        if part == 'step':
            row.update(error)
        if part in moved:
            row['model_mb'] = f'{moved[part] / 1e6:.1f}'
        if part in counted:
            row['gflop'] = f'{counted[part] / 1e9:.3f}'
        if seconds > 0 and part in moved:
            row['gb_s'] = f'{moved[part] / seconds / 1e9:.2f}'
            row['vs_memcpy'] = f'{moved[part] / seconds / bandwidth:.2f}'
        if seconds > 0 and part in counted:
            row['gflop_s'] = f'{counted[part] / seconds / 1e9:.2f}'
        rows.append(row)
    return rows


def header(command: str, threads: int, bandwidth: float, repeats: int,
           device: str = 'cpu', kernels: str = 'cpp') -> list[str]:
    name = 'C++' if kernels == 'cpp' else 'Triton'
    return [
        '# One training step of the fused GATv2Conv, pass by pass', '',
        f'Command: `{command}`', '',
        f'Machine: {machine(threads, device)}; the passes of the {name} '
        f'kernels; float32. memcpy bandwidth: {bandwidth / 1e9:.1f} GB/s.',
        '',
        f'Medians of {repeats} interleaved runs after warm-up. of_step: the '
        "row's time over our step's; the rows with in_step add up to the "
        "step (rest is what the others leave); pyg_step is PyG's step and "
        'layout what a new edge_index adds, neither a part. model_mb: the '
        'bytes the pass must move at least once (the model in the '
        "script's docstring); gb_s those over its time, vs_memcpy as a "
        "fraction of memcpy's.", '',
        'Check, before any timing: one training step of our layer and of '
        "PyG's, same weights, same inputs, loss (out * w).sum() with w "
        'fixed standard normal draws, one per output entry. max_rel_error: '
        "the largest difference of our output from PyG's over its largest "
        'entry (or over 1, if smaller); grad_max_rel_error: the largest '
        "difference of a gradient from PyG's over that gradient's largest "
        'entry (or over 1), for the gradient of a parameter that differs '
        f'most, worst_grad. A case beyond {TOLERANCE:g} in the output or '
        f'{GRAD_TOLERANCE:g} in a gradient, or whose parts do '
        'not reproduce our step, is MISMATCH and not timed.', '',
    ]


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    command = command_line()
    print(f'Command: `{command}`\n', flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    bandwidth = memcpy_bandwidth(torch.device(args.device))
    rows = []
    for case in cases_of(args):
        print(f"Running {case['name']} ...", file=sys.stderr, flush=True)
        rows += rows_of(run_case(case, args), bandwidth, args.kernels)
    text = '\n'.join(header(command, torch.get_num_threads(), bandwidth,
                            args.repeats, args.device, args.kernels)
                     ) + markdown_table(rows, COLUMNS)
    print(text)
    columns = COLUMNS[:2] + ['nodes', 'edges', 'features', 'heads',
                             'channels'] + COLUMNS[2:]
    write_report(args.out / args.name, text + '\n', rows, columns)


if __name__ == '__main__':
    main()
