"""The largest full-batch training step of one GATv2 layer that fits one
device: ours beside PyG's GATv2Conv, eager and compiled, until they run
out of memory.

    python benchmarks/scale.py --device cuda      # 62M, 250M and 1B edges
    python benchmarks/scale.py --device cuda --edges 5e8 1e9 2e9 --degree 50

Each size is a random graph drawn on the device: ``--edges`` edges whose
ends are uniform over ``edges / --degree`` nodes (the first default size
is that of ogbn-products, 2.4M nodes and 62M edges), ``--features`` input
features in ``--dtype`` (bfloat16 by default, the layer's weights too),
``--heads`` x ``--channels``, self-loops, no dropout. Our layer gets
int32 indices (``--index-dtype``); PyG's gets int64 ones, which its
message passing needs. One training step is the forward pass, the loss
``(out * w).sum()`` for fixed random weights ``w`` per output column, and
the backward pass to every parameter.

The sizes run in ascending order and each implementation at each size in a
fresh process (``_common.run_isolated``); an implementation that runs out
of memory, or fails, at one size is not run at the larger ones. PyG's
layers are not run where the memory model of ``kernels.py``
(``PEAK_PER_EDGE_ELEMENT``: bytes per element of one ``[edges, heads,
channels]`` float32 tensor at the step's peak) projects more than
``--max-memory`` GiB: PyG compiled would compile first and fail after. A worker
draws the graph and builds the layer, then times a first step (ours sorts
and caches the layout of ``edge_index`` in it; PyG compiled compiles in
it), then ``--repeats`` steps, and reports their median and the
allocator's peak over the whole process (graph, features and weights
included: what had to fit; on the CPU, where the script is tested, the
peak resident set). Ours is then checked on ``--check-nodes`` random
destinations: their outputs against PyG's layer in float32, with our
weights, on the subgraph of their in-edges (a wrong kernel at this scale
would otherwise pass unseen).

Writes ``scale.md`` (the command, the machine, the table) and
``scale.csv`` into ``--out`` after every row, and prints the Markdown.
"""
import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from _common import (
    RESULTS,
    WorkerFailed,
    add_timeout_flag,
    command_line,
    compare,
    failure,
    loss_weights,
    machine,
    markdown_table,
    status_bytes,
    synchronize,
    write_report,
)

GiB = 2.0**30
IMPLS = ('pyg', 'pyg_compile', 'ours')
LABELS = {'pyg': 'PyG GATv2Conv (eager)',
          'pyg_compile': 'PyG GATv2Conv (torch.compile)',
          'ours': 'ours, fused'}
# ogbn-products: 2,449,029 nodes and 61,859,140 directed edges.
DEFAULT_EDGES = (61_859_140, 250_000_000, 1_000_000_000)
DEFAULT_DEGREE = 61_859_140 / 2_449_029
# The tolerance of ours in a 16-bit dtype against PyG in float32 on the
# sampled destinations, relative to the largest output entry: the
# projections are stored in 16 bits, so logits and outputs differ by a few
# of bfloat16's 2**-8 steps.
CHECK_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 3e-2,
                   torch.float16: 5e-3}
COLUMNS = ['edges', 'nodes', 'impl', 'status', 'first_step_s', 'step_ms',
           'peak_gib', 'peak_share', 'check_max_rel_error']


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--edges', type=lambda t: int(float(t)), nargs='+',
                        default=list(DEFAULT_EDGES),
                        help='edge counts, ascending (1e9 is read too)')
    parser.add_argument('--degree', type=float, default=DEFAULT_DEGREE,
                        help='edges per node (default: that of '
                        'ogbn-products, 25.3)')
    parser.add_argument('--features', type=int, default=64)
    parser.add_argument('--heads', type=int, default=4)
    parser.add_argument('--channels', type=int, default=32)
    parser.add_argument('--dtype', default='bfloat16',
                        choices=('float32', 'bfloat16', 'float16'))
    parser.add_argument('--index-dtype', default='int32',
                        choices=('int32', 'int64'),
                        help="of our layer's edge_index (PyG's: int64)")
    parser.add_argument('--impls', default=','.join(IMPLS),
                        help=f"comma-separated, of {', '.join(IMPLS)}")
    parser.add_argument('--max-memory', type=float, default=80.0,
                        help="GiB above which PyG's projected peak skips it "
                        '(default: 80, an H100)')
    parser.add_argument('--repeats', type=int, default=3,
                        help='timed steps after the first (at least 1)')
    parser.add_argument('--check-nodes', type=int, default=256)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', type=Path, default=RESULTS)
    parser.add_argument('--name', default='scale')
    add_timeout_flag(parser)
    args = parser.parse_args(argv)
    args.impls = args.impls.split(',')
    unknown = sorted(set(args.impls) - set(IMPLS))
    if unknown:
        parser.error(f'--impls: unknown {unknown}; choose from '
                     f"{', '.join(IMPLS)}")
    if args.edges != sorted(args.edges) or min(args.edges) < 1:
        parser.error('--edges: positive counts in ascending order')
    if args.degree <= 0:
        parser.error('--degree must be positive')
    if args.repeats < 1:
        parser.error('--repeats must be at least 1')
    return args


def nodes_of(edges: int, degree: float) -> int:
    return max(1, round(edges / degree))


def projected_peak(impl: str, edges: int, nodes: int,
                   args: argparse.Namespace) -> float:
    """Bytes that PyG's step is projected to need at its peak (0 for
    ours, which is run until it fails)."""
    from kernels import PEAK_PER_EDGE_ELEMENT
    if impl == 'ours':
        return 0.0
    size = torch.empty(0, dtype=getattr(torch, args.dtype)).element_size()
    elements = (edges + nodes) * args.heads * args.channels
    return (PEAK_PER_EDGE_ELEMENT[impl] * elements * size / 4
            + 16 * edges)


# The worker: one implementation at one size, in a process of its own. ------


def build_layer(impl: str, spec: dict, device: torch.device,
                dtype: torch.dtype) -> torch.nn.Module:
    import torch_geometric.nn as pyg_nn

    from pyg_gatv2 import GATv2Conv
    args = (spec['features'], spec['channels'])
    kwargs = dict(heads=spec['heads'], dropout=0.0)
    torch.manual_seed(spec['seed'])
    if impl == 'ours':
        return GATv2Conv(*args, **kwargs, fused=True).to(device, dtype)
    layer = pyg_nn.GATv2Conv(*args, **kwargs).to(device, dtype)
    return torch.compile(layer) if impl == 'pyg_compile' else layer


def draw_graph(spec: dict, device: torch.device, dtype: torch.dtype,
               index_dtype: torch.dtype):
    """The features and the edges of the size, drawn on the device."""
    gen = torch.Generator(device).manual_seed(spec['seed'])
    n = spec['nodes']
    edge_index = torch.randint(0, n, (2, spec['edges']), generator=gen,
                               device=device, dtype=index_dtype)
    x = torch.randn(n, spec['features'], generator=gen, device=device,
                    dtype=dtype)
    return x, edge_index


def process_peak(device: torch.device) -> float:
    """The most memory this process held: the CUDA allocator's peak, or
    the peak resident set (``VmHWM``) on the CPU; in bytes."""
    if device.type == 'cuda':
        return float(torch.cuda.max_memory_allocated(device))
    try:
        return float(status_bytes('VmHWM'))
    except (OSError, RuntimeError):
        return float('nan')


def device_memory(device: torch.device) -> float:
    if device.type == 'cuda':
        return float(torch.cuda.get_device_properties(device).total_memory)
    return float(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))


def device_name(device: torch.device) -> str:
    """The device and its memory, for the report (asked in the workers:
    the parent process keeps off the GPU, whose memory they need)."""
    total = device_memory(device) / GiB
    if device.type == 'cuda':
        return f'{torch.cuda.get_device_name(device)}, {total:.1f} GiB'
    return f'CPU, {total:.1f} GiB of RAM'


def out_of_memory(error: BaseException) -> bool:
    return (isinstance(error, torch.OutOfMemoryError)
            or 'out of memory' in str(error).lower())


def run_worker(spec: dict) -> dict:
    """Times one implementation at one size (:func:`_common.run_isolated`);
    reports ``status`` ``'out of memory'`` where the step did not fit."""
    device = torch.device(spec['device'])
    dtype = getattr(torch, spec['dtype'])
    impl = spec['impl']
    index_dtype = (getattr(torch, spec['index_dtype']) if impl == 'ours'
                   else torch.int64)
    result: dict = {}
    try:
        x, edge_index = draw_graph(spec, device, dtype, index_dtype)
        layer = build_layer(impl, spec, device, dtype)
        width = spec['heads'] * spec['channels']
        w = loss_weights((width, ), device).to(dtype)

        def step() -> None:
            layer.zero_grad(set_to_none=True)
            (layer(x, edge_index) * w).sum().backward()

        synchronize(device)
        tic = time.perf_counter()
        step()
        synchronize(device)
        result['first_step_s'] = time.perf_counter() - tic
        times = []
        for _ in range(spec['repeats']):
            synchronize(device)
            tic = time.perf_counter()
            step()
            synchronize(device)
            times.append(time.perf_counter() - tic)
        result['step_s'] = statistics.median(times)
        result['peak_bytes'] = process_peak(device)
        result['device_bytes'] = device_memory(device)
        result['device'] = device_name(device)
    except Exception as error:
        if not out_of_memory(error):
            raise
        result.update(status='out of memory', error=failure(error))
        return result
    if impl == 'ours' and spec['check_nodes'] > 0:
        layer.zero_grad(set_to_none=True)
        try:
            with torch.no_grad():
                out = layer(x, edge_index)
            result['check'] = check_sampled(layer, x, edge_index, out, spec,
                                            dtype)
        except Exception as error:
            if not out_of_memory(error):
                raise
            result['check'] = dict(skipped='out of memory')
    result['status'] = 'ok'
    return result


def check_sampled(layer: torch.nn.Module, x: torch.Tensor,
                  edge_index: torch.Tensor, out: torch.Tensor, spec: dict,
                  dtype: torch.dtype) -> dict:
    """Our outputs on random destinations against PyG's layer in float32,
    with our weights, on the subgraph of their in-edges."""
    import torch_geometric.nn as pyg_nn
    device = x.device
    gen = torch.Generator(device).manual_seed(spec['seed'] + 1)
    sample = torch.randint(0, x.size(0), (spec['check_nodes'], ),
                           generator=gen, device=device).unique()
    # A mask over the nodes, not torch.isin, which sorts every edge.
    sampled = torch.zeros(x.size(0), dtype=torch.bool, device=device)
    sampled[sample] = True
    incoming = edge_index[:, sampled[edge_index[1]]].long()
    nodes = torch.cat([sample, incoming[0]]).unique()
    sub = torch.searchsorted(nodes, incoming)
    ref = pyg_nn.GATv2Conv(spec['features'], spec['channels'],
                           heads=spec['heads'], dropout=0.0).to(device)
    ref.load_state_dict({k: v.float() for k, v in layer.state_dict().items()})
    with torch.no_grad():
        expected = ref(x[nodes].float(), sub)[torch.searchsorted(nodes,
                                                                 sample)]
    got = out[sample].float()
    comparison = compare(got, expected, CHECK_TOLERANCE[dtype])
    return dict(nodes=int(sample.numel()), edges=int(incoming.size(1)),
                max_rel_error=comparison.max_rel, ok=comparison.ok)


# The sweep. -----------------------------------------------------------------


def sweep(args: argparse.Namespace, run: Callable[[dict], dict],
          on_row: Callable[[list[dict]], None] = lambda rows: None
          ) -> list[dict]:
    """Every size for every implementation still standing; ``run(spec)``
    runs one (a fresh process in :func:`main`) or raises
    :class:`WorkerFailed`; ``on_row(rows)`` follows every row."""
    rows, standing = [], list(args.impls)
    for edges in args.edges:
        nodes = nodes_of(edges, args.degree)
        for impl in list(standing):
            spec = dict(impl=impl, edges=edges, nodes=nodes,
                        device=args.device, features=args.features,
                        heads=args.heads, channels=args.channels,
                        dtype=args.dtype, index_dtype=args.index_dtype,
                        repeats=args.repeats, check_nodes=args.check_nodes,
                        seed=args.seed)
            print(f'{edges:,} edges, {nodes:,} nodes: {impl} ...',
                  flush=True)
            peak = projected_peak(impl, edges, nodes, args)
            if peak > args.max_memory * GiB:
                result = dict(status=f'skipped (projected {peak / GiB:.3g} '
                              f'GiB > {args.max_memory:.3g})')
            else:
                try:
                    result = run(spec)
                except WorkerFailed as error:
                    result = dict(status=str(error))
            row = dict(edges=edges, nodes=nodes, impl=impl,
                       status=result['status'])
            if result['status'] == 'ok':
                share = result['peak_bytes'] / result['device_bytes']
                row.update(
                    first_step_s=f"{result['first_step_s']:.2f}",
                    step_ms=f"{result['step_s'] * 1e3:.1f}",
                    peak_gib=f"{result['peak_bytes'] / GiB:.2f}",
                    peak_share=f'{share:.2f}', device=result['device'])
                check = result.get('check')
                if check is not None and 'skipped' in check:
                    row['check_max_rel_error'] = (
                        f"not checked ({check['skipped']})")
                elif check is not None:
                    row['check_max_rel_error'] = (
                        f"{check['max_rel_error']:.1e} over "
                        f"{check['nodes']} nodes, {check['edges']} edges")
                    if not check['ok']:
                        row['status'] = 'MISMATCH'
            if row['status'] != 'ok':
                standing.remove(impl)
            rows.append(row)
            on_row(rows)
            print(f"  {row['status']}"
                  + (f", step {row['step_ms']} ms, peak {row['peak_gib']} "
                     'GiB' if 'step_ms' in row else ''), flush=True)
    return rows


def report(args: argparse.Namespace, rows: list[dict]) -> str:
    device_line = next((row['device'] for row in rows if 'device' in row),
                       f'{args.device} (no run reached it)')
    largest = []
    for impl in args.impls:
        edges = max((r['edges'] for r in rows
                     if r['impl'] == impl and r['status'] == 'ok'),
                    default=None)
        largest.append(f'{LABELS[impl]} ' + (
            'none' if edges is None else f'{edges:,} edges'))
    lines = [
        '# The largest full-batch training step on one device', '',
        f'Command: `{command_line()}`', '',
        f'Machine: {machine(torch.get_num_threads(), args.device)}; '
        f'{device_line}.', '',
        f'One GATv2 layer, {args.features} input features, {args.heads} '
        f'heads x {args.channels} channels, self-loops, {args.dtype} '
        f'features and weights; uniform random edges, {args.degree:.1f} '
        f'per node; our edge_index in {args.index_dtype}, PyG\'s in int64. '
        f'step_ms is the median of {args.repeats} steps after the first '
        '(first_step_s: ours builds its layout there, PyG compiled '
        "compiles); peak_gib is the process's peak (graph included), "
        "peak_share that over the device's memory. check_max_rel_error: "
        'our outputs on random destinations against PyG in float32 on the '
        'subgraph of their in-edges.', '',
        markdown_table(rows, COLUMNS), '',
        'Largest size that ran: ' + '; '.join(largest) + '.', '']
    return '\n'.join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    from _common import run_isolated
    args = parse_args(argv)

    def write(rows: list[dict]) -> None:
        # After every row, so that a run cut short keeps what it measured.
        write_report(args.out / args.name, report(args, rows), rows, COLUMNS)

    rows = sweep(args, lambda spec: run_isolated(run_worker, spec,
                                                 timeout=args.timeout),
                 on_row=write)
    print(report(args, rows))


if __name__ == '__main__':
    main()
