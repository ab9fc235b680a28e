"""Layer-wise inference on a graph too large for PyG's full-batch pass: the
peak memory and time of :meth:`pyg_gatv2.GATv2.inference` over batches of
whole one-hop neighbourhoods
(:func:`pyg_gatv2.experiments.training.sampling.whole_neighbourhoods`),
beside the full-batch forward pass of the same model, on the synthetic
graph of ``benchmarks/minibatch.py``.

    python benchmarks/inference.py            # the 600k-node graph, minutes
    python benchmarks/inference.py --quick    # a tiny graph, seconds

The model is ``minibatch.py``'s 2-layer GATv2 with our layer, in
evaluation mode. Each pass (the full batch, and layer by layer at each of
``--batch-sizes``) runs in a fresh process (``_common.run_isolated``) with
glibc's allocator pinned to return freed memory at once
(``_common.pin_malloc``): the graph and the model are built first, then
the pass runs twice, the first time measured for memory (the largest
growth of the resident set above the level before it,
``_common.step_memory``), the second timed. Each pass reports its
predicted class per node; the report says on how many nodes the
layer-wise predictions agree with the full batch's (the tests prove the
logits equal in float64).
"""
import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional

import torch
from _common import (
    RESULTS,
    WorkerFailed,
    allocator,
    buffer_cache,
    command_line,
    cpp_level,
    huge_pages,
    markdown_table,
    pin_malloc,
    run_isolated,
    step_memory,
    write_report,
)
from minibatch import build_model, synthetic_graph

MiB = 2.0**20
QUICK = dict(nodes=3000, degree=8, features=32, classes=4, words=4,
             batch_sizes=[256, 1024])


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true',
                        help='a tiny graph')
    parser.add_argument('--nodes', type=int, default=600_000)
    parser.add_argument('--degree', type=int, default=16)
    parser.add_argument('--classes', type=int, default=10)
    parser.add_argument('--features', type=int, default=128)
    parser.add_argument('--words', type=int, default=8)
    parser.add_argument('--heads', type=int, default=4)
    parser.add_argument('--hidden', type=int, default=32)
    parser.add_argument('--batch-sizes', type=int, nargs='+',
                        default=[16384, 65536],
                        help='destination nodes per batch of the layer-wise '
                        'passes')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--timeout', type=float, default=1800,
                        help='seconds before a pass is killed')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', type=Path, default=RESULTS)
    parser.add_argument('--name', default=None,
                        help='file stem (default: inference, inference_quick '
                        'with --quick)')
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    if args.name is None:
        args.name = 'inference' + ('_quick' if args.quick else '')
    for key in ('nodes', 'degree', 'classes', 'features', 'words', 'heads',
                'hidden', 'threads'):
        if getattr(args, key) < 1:
            parser.error(f'--{key.replace("_", "-")} must be at least 1')
    if any(size < 1 for size in args.batch_sizes):
        parser.error('--batch-sizes takes positive integers')
    return args


def pass_worker(spec: dict) -> dict:
    """One pass (``spec['batch_size']`` None: the full batch) on the graph
    of ``spec['graph']``: its peak memory, its time and its predictions
    (run by run_isolated)."""
    pin_malloc()
    from pyg_gatv2.experiments.training.sampling import whole_neighbourhoods
    data = synthetic_graph(**spec['graph'])
    model = build_model('ours', spec['model']).eval()
    size = spec['batch_size']
    if size is None:
        def run() -> torch.Tensor:
            with torch.no_grad():
                return model(data.x, data.edge_index)
    else:
        loader = whole_neighbourhoods(data, size)

        def run() -> torch.Tensor:
            return model.inference(loader)
    memory = step_memory(run, torch.device('cpu'))
    tic = time.perf_counter()
    logits = run()
    seconds = time.perf_counter() - tic
    return dict(peak=memory.peak, seconds=seconds, nodes=data.num_nodes,
                edges=data.num_edges,
                predictions=logits.argmax(dim=-1).tolist())


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    start, load = time.perf_counter(), os.getloadavg()[0]
    graph = dict(nodes=args.nodes, degree=args.degree, classes=args.classes,
                 features=args.features, words=args.words, homophily=0.8,
                 topic=0.5, train_fraction=0.2, seed=args.seed)
    model = dict(features=args.features, classes=args.classes,
                 hidden=args.hidden, heads=args.heads, dropout=0.6,
                 seed=args.seed)
    results, failures = {}, []
    for size in [None, *args.batch_sizes]:
        label = 'full batch' if size is None else f'layer-wise, {size}'
        print(f'{label} ...', flush=True)
        try:
            results[size] = run_isolated(
                pass_worker, dict(graph=graph, model=model, batch_size=size),
                threads=args.threads, timeout=args.timeout)
        except WorkerFailed as error:
            failures.append(f'{label}: {error}')
            print(failures[-1], flush=True)
    rows = []
    full = results.get(None)
    for size, result in results.items():
        row = dict(pass_='full batch' if size is None else 'layer-wise',
                   batch_size='' if size is None else size,
                   peak_mib=f"{result['peak'] / MiB:.0f}",
                   seconds=f"{result['seconds']:.2f}")
        if full is not None and size is not None:
            row['peak_vs_full_batch'] = f"{result['peak'] / full['peak']:.3f}"
            agree = sum(a == b for a, b in zip(result['predictions'],
                                               full['predictions'],
                                               strict=True))
            row['same_prediction'] = f"{agree}/{len(full['predictions'])}"
        rows.append(row)
    columns = ['pass_', 'batch_size', 'peak_mib', 'peak_vs_full_batch',
               'seconds', 'same_prediction']
    some = next(iter(results.values()), None)
    size_line = ('' if some is None else
                 f"N={some['nodes']}, E={some['edges']} (undirected, both "
                 'directions), ')
    hidden = args.heads * args.hidden
    markdown = '\n'.join([
        '# Layer-wise inference', '',
        f'Synthetic stochastic block model of benchmarks/minibatch.py: '
        f'{size_line}{args.features} bag-of-words features, {args.classes} '
        f'classes. 2-layer GATv2 with our layer, {args.heads}x{args.hidden} '
        'hidden, evaluation mode. peak_mib: the largest growth of the '
        "process's resident set during one pass above the level with the "
        'graph and the model built (allocator pinned); seconds: a second '
        'run of the pass. Layer-wise: GATv2.inference over '
        'whole_neighbourhoods(data, batch_size), which keeps one layer\'s '
        f'output for every node ({hidden} floats per node between the '
        'layers) and one batch\'s subgraph with its layout at a time; the '
        'full batch keeps the layout of the whole graph and every layer\'s '
        'projections. same_prediction: nodes whose predicted class equals '
        "the full batch's.", '',
        markdown_table(rows, columns), '',
        *(['Failed passes: ' + '; '.join(failures), ''] if failures else []),
        f'{args.threads} threads; {cpp_level()}; memory allocator: '
        f'{allocator()}; huge pages: {huge_pages()}; buffer cache: '
        f'{buffer_cache()}; wall time '
        f'{(time.perf_counter() - start) / 60:.1f} min; load average (1 min) '
        f'{load:.1f} at the start and {os.getloadavg()[0]:.1f} at the end on '
        f'{os.cpu_count()} cores. `{command_line()}`', ''])
    print(markdown)
    write_report(args.out / args.name, markdown, rows, columns)
    if failures:
        sys.exit(1)


if __name__ == '__main__':
    main()
