"""DictionaryLookup with the authors' model and recipe: Figure 2 of the GATv2
paper (train and test accuracy per query node against k for GAT and GATv2
with 1 and 8 heads), with the attention each layer learned.

    python benchmarks/dictionary_lookup.py --threads 1
    python benchmarks/dictionary_lookup.py --threads 1 --resume   # go on

Runs every (k, heads, layer, seed) with
:func:`pyg_gatv2.experiments.lookup.run_lookup_sweep`, seeds first, then
heads, then k, so that an interrupted sweep has the cheap and the 1-head
runs done. Every
finished run is written to ``dictionary_lookup.json`` at once, with the
figure (``dictionary_lookup.png``), the table (``dictionary_lookup.md``)
and ``dictionary_lookup.csv`` (``--report-only`` rewrites these three from
the JSON); ``--resume`` keeps the finished runs and
continues the one in progress from its checkpoint, and with a higher
``--max-epochs`` it continues the runs that the lower cap ended. A sweep
built up by several resumed commands (say, ``--ks 10 --heads 1 --layers
gatv2`` first) lists every command in the report, and the table names the
runs that their epoch cap cut short.

GAT runs as PyG's ``DenseGATConv`` on the batch's dense adjacency by default
(``--gat dense_gat``): the same function as the authors' ``GATConv`` with
``add_self_loops=True``, in a fraction of the time on these small graphs.
Before training, the script checks that the two agree with copied weights,
and that the fast batches equal PyG's collation. Seconds are wall-clock
training and evaluation time per run.

    python benchmarks/dictionary_lookup.py --threads 1 --step-times

times one training step (1024 graphs) of every layer side by side instead,
GATv2 on its fused path and by message passing, and writes
``dictionary_lookup_steps.md``.
"""
import argparse
import functools
import json
import platform
import statistics
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from _common import (
    command_line,
    cpp_level,
    markdown_table,
    median_time,
    write_csv,
)
from torch_geometric.data import Batch

import pyg_gatv2
from pyg_gatv2.experiments import DictionaryLookup
from pyg_gatv2.experiments.lookup import (
    LookupBatch,
    LookupBatcher,
    LookupRecipe,
    LookupResult,
    LookupRun,
    SweepSetup,
    run_lookup_sweep,
)
from pyg_gatv2.experiments.lookup_model import (
    LOOKUP_LAYERS,
    DictionaryLookupNet,
)
from pyg_gatv2.experiments.plots import plot_dictionary_lookup

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5
COLUMNS = ('k', 'layer', 'heads', 'seed', 'train node', 'train graph',
           'test node', 'test graph', 'own key on top', 'best head',
           'weight on own key', 'best epoch', 'epochs', 'stop', 'seconds',
           's / epoch')
# What the report says of each way of drawing a graph's values.
GRAPHS = {'permutation': "the paper's task: a graph's values are a "
          'permutation of 0..k-1',
          'with_replacement': "the variant: a graph's values are k "
          'independent draws from 0..k-1'}


def check(gat: str) -> None:
    """The batches equal PyG's collation, and the chosen GAT layer computes
    what GATConv computes, with copied weights."""
    dataset = DictionaryLookup(6, seed=0)
    graphs = dataset.train_dataset[:5]
    batch = LookupBatcher(6)(dataset.train_permutations[:5])
    reference = Batch.from_data_list(graphs)
    for key in ('x', 'edge_index', 'query_mask', 'batch', 'y'):
        if not torch.equal(getattr(batch, key), reference[key]):
            raise SystemExit(f'check failed: batched {key} differs from '
                             'Batch.from_data_list')
    # Also runs the fused GATv2 kernels once before any run is timed.
    gatv2 = DictionaryLookupNet(6, heads=2)
    gatv2(batch.x, batch.edge_index, batch.query_mask).sum().backward()
    if gat == 'gat':
        return
    torch.manual_seed(0)
    sparse = DictionaryLookupNet(6, heads=2, conv='gat').eval()
    torch.manual_seed(0)
    dense = DictionaryLookupNet(6, heads=2, conv=gat).eval()
    args = (batch.x, batch.edge_index, batch.query_mask, batch.batch)
    error = (sparse(*args) - dense(*args)).abs().max().item()
    if error > TOLERANCE:
        raise SystemExit(f'check failed: {gat} and gat differ by {error:.2e}'
                         ' under the same seed')
    print(f'check: batches equal PyG collation; {gat} = gat to '
          f'{error:.1e}')


# Layer name, heads, fused path of GATv2Conv, label.
STEP_VARIANTS = (
    ('gat', None, 'GAT, PyG GATConv (message passing)'),
    ('dense_gat', None, 'GAT, PyG DenseGATConv'),
    ('gatv2', False, 'GATv2, ours, message passing (fused=False)'),
    ('gatv2', None, 'GATv2, ours, fused kernel (default)'),
)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               batch: LookupBatch) -> None:
    optimizer.zero_grad()
    logits = model(batch.x, batch.edge_index, batch.query_mask, batch.batch)
    F.cross_entropy(logits, batch.y).backward()
    optimizer.step()


def step_times(ks: list[int], heads: list[int], stem: Path) -> None:
    """Median time of one training step per layer, side by side."""
    rows = []
    for k in ks:
        perms = torch.rand(1024, k, generator=torch.Generator().manual_seed(
            k)).argsort(dim=1)
        batch = LookupBatcher(k)(perms)
        for num_heads in heads:
            times = {}
            for conv, fused, label in STEP_VARIANTS:
                torch.manual_seed(0)
                model = DictionaryLookupNet(k, heads=num_heads, conv=conv)
                if fused is not None:
                    model.conv.fused = fused
                optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
                step = functools.partial(train_step, model, optimizer, batch)
                times[label] = median_time(step, torch.device('cpu'),
                                           warmup=2, min_repeat=5,
                                           max_repeat=5)
            base = times[STEP_VARIANTS[2][2]]
            for label, seconds in times.items():
                rows.append({'k': k, 'heads': num_heads, 'layer': label,
                             'ms per step': f'{1000 * seconds:.0f}',
                             'vs GATv2 message passing':
                             f'{base / seconds:.2f}x'})
                print(markdown_table(rows[-1:], list(rows[0])).splitlines()
                      [-1], flush=True)
    text = (f'# DictionaryLookup: one training step\n\nCommand: '
            f'`{command_line()}` ({torch.get_num_threads()} thread(s), '
            f'{cpp_level()}; '
            '1024 graphs per step, forward, backward and Adam; median of 5 '
            'after 2 warm-up steps).\n\n' +
            markdown_table(rows, list(rows[0])) + '\n')
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_name(stem.name + '_steps.md').write_text(text)


def own_key(result: LookupResult) -> Optional[tuple[float, float, float]]:
    """On the test graphs: the share of queries whose own key is on top
    (mean over heads, and the best head's), and the mean weight on the own
    key; None for runs measured before the report had them."""
    if result.own_key is None:
        return None
    top = result.own_key['test_top']
    return (statistics.mean(top), max(top),
            statistics.mean(result.own_key['test_weight']))


def row(result: LookupResult) -> dict:
    attention = own_key(result)
    return {
        'k': result.k, 'layer': LOOKUP_LAYERS[result.conv],
        'heads': result.heads, 'seed': result.seed,
        'train node': f'{result.train_node_acc:.4f}',
        'train graph': f'{result.train_graph_acc:.4f}',
        'test node': f'{result.test_node_acc:.4f}',
        'test graph': f'{result.test_graph_acc:.4f}',
        **dict(zip(('own key on top', 'best head', 'weight on own key'),
                   ('-', ) * 3 if attention is None else
                   (f'{value:.3f}' for value in attention), strict=True)),
        'best epoch': result.best_epoch, 'epochs': result.epochs,
        'stop': result.stop, 'seconds': f'{result.seconds:.0f}',
        's / epoch': f'{result.seconds_per_epoch:.2f}',
    }


def summary(results: list[LookupResult]) -> str:
    """Mean accuracies over seeds per (k, layer, heads), and the time."""
    groups: dict[tuple, list[LookupResult]] = {}
    for result in results:
        groups.setdefault((result.k, result.conv, result.heads),
                          []).append(result)
    def spread(values: list[float]) -> str:
        if not values:
            return '-'
        text = f'{statistics.mean(values):.3f}'
        if len(values) > 1:
            text += f' ({min(values):.3f}-{max(values):.3f})'
        return text

    def mean(runs: list[LookupResult], key: str) -> str:
        return spread([getattr(r, key) for r in runs])

    rows = []
    for (k, conv, heads), runs in sorted(groups.items()):
        seconds = statistics.mean(r.seconds for r in runs)
        attention = [a for a in map(own_key, runs) if a is not None]
        rows.append({'k': k, 'layer': LOOKUP_LAYERS[conv], 'heads': heads,
                     'seeds': len(runs),
                     'train node': mean(runs, 'train_node_acc'),
                     'test node': mean(runs, 'test_node_acc'),
                     'test graph': mean(runs, 'test_graph_acc'),
                     'own key on top': spread([a[0] for a in attention]),
                     'weight on own key': spread([a[2] for a in attention]),
                     'seconds per run': f'{seconds:.0f}'})
    return markdown_table(rows, list(rows[0]))


def write_reports(results: list[LookupResult], stem: Path, command: str,
                  values: str = 'permutation') -> None:
    """The figure, the CSV and the Markdown of the finished runs."""
    write_csv(stem.with_suffix('.csv'), [row(r) for r in results], COLUMNS)
    plot_dictionary_lookup(results, stem.with_suffix('.png'))
    seconds = sum(r.seconds for r in results)
    cut = [f'k={r.k} {LOOKUP_LAYERS[r.conv]} {r.heads} head(s) seed '
           f'{r.seed} at {r.epochs} epochs'
           for r in results if r.stop == 'max_epochs']
    text = (f'# DictionaryLookup\n\nCommand: `{command}` ({len(results)} '
            f'runs, {seconds:.0f} s of training and evaluation in all). '
            f'Graphs: {GRAPHS[values]}. '
            'Accuracies at the best evaluation by the training numbers '
            '(the last one that raised the training accuracy per query '
            'node, or kept it and lowered the training loss); mean over '
            'seeds, (lowest-highest) with more than one.\n\n'
            'Where the attention of that model lands, on every test graph: '
            'own key on top is the share of queries whose own key gets the '
            'highest weight among the k keys (the mean over heads; best '
            'head: the head with the highest share), weight on own key the '
            "mean weight on it (GAT's self-loop takes a share of every "
            "query's weight); - for runs of a report written before these "
            'were measured, and in the summary the mean over the runs that '
            'have them.\n\n' +
            ('Cut short by the epoch cap (stop: max_epochs), so not '
             'finished by the stopping rule: ' + '; '.join(cut) + '.\n\n'
             if cut else '') +
            summary(results) + '\n\nEvery run:\n\n' +
            markdown_table([row(r) for r in results], COLUMNS) + '\n')
    stem.with_suffix('.md').write_text(text)


def saved_results(json_path: Path) -> list[LookupResult]:
    """Every run of the JSON report, those of earlier commands included."""
    saved = json.loads(json_path.read_text())
    return [LookupResult.from_dict(r) for r in saved['results']]


def main() -> None:
    recipe = LookupRecipe()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--ks', type=int, nargs='+', default=[5, 10, 20])
    parser.add_argument('--heads', type=int, nargs='+', default=[1, 8])
    parser.add_argument('--layers', nargs='+', choices=('gat', 'gatv2'),
                        default=['gat', 'gatv2'],
                        help='which of GAT (as --gat says) and GATv2 to run')
    parser.add_argument('--seeds', type=int, default=3,
                        help='seeds 0 .. N-1')
    parser.add_argument('--gat', choices=('dense_gat', 'gat'),
                        default='dense_gat',
                        help='GAT layer: the dense or the message-passing '
                        'form of the same function')
    parser.add_argument('--values', choices=tuple(GRAPHS),
                        default='permutation',
                        help="a graph's values: the paper's permutations, "
                        'or k draws with replacement (then the reports are '
                        'dictionary_lookup_with_replacement.*)')
    parser.add_argument('--max-epochs', type=int,
                        default=recipe.max_epochs,
                        help="most epochs per run (the authors': 50000)")
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--out', type=Path,
                        default=ROOT / 'benchmarks' / 'results')
    parser.add_argument('--resume', action='store_true')
    parser.add_argument('--step-times', action='store_true',
                        help='time one training step per layer instead')
    parser.add_argument('--report-only', action='store_true',
                        help='rewrite the figure, CSV and Markdown from the '
                        'JSON report, without training')
    args = parser.parse_args()
    stem = args.out / ('dictionary_lookup' if args.values == 'permutation'
                        else f'dictionary_lookup_{args.values}')
    if args.report_only:
        saved = json.loads(stem.with_suffix('.json').read_text())
        write_reports(saved_results(stem.with_suffix('.json')), stem,
                      saved['command'], args.values)
        return
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    check(args.gat)
    if args.step_times:
        step_times(args.ks, args.heads, stem)
        return

    convs = [args.gat if layer == 'gat' else layer for layer in args.layers]
    runs = [LookupRun(k, conv, heads, seed)
            for seed in range(args.seeds) for heads in args.heads
            for k in args.ks for conv in convs]
    json_path = stem.with_suffix('.json')
    commands = []
    if args.resume and json_path.exists():
        saved = json.loads(json_path.read_text())
        commands = saved.get('commands', [saved['command']])
    commands.append(command_line())
    command = '`; `'.join(commands)

    def report(result: LookupResult) -> None:
        print(markdown_table([row(result)], COLUMNS).splitlines()[-1],
              flush=True)
        # The report holds this run by now, and the runs of earlier
        # commands that this one does not repeat.
        write_reports(saved_results(json_path), stem, command, args.values)

    print(markdown_table([], COLUMNS), flush=True)
    results = run_lookup_sweep(
        runs, json_path,
        SweepSetup(recipe=LookupRecipe(max_epochs=args.max_epochs),
                   values=args.values),
        device=args.device,
        checkpoint_dir=stem.with_name(stem.name + '_checkpoints'),
        resume=args.resume, on_result=report,
        report={'command': command, 'commands': commands,
                'threads': torch.get_num_threads(),
                'device': args.device,
                'cpu_capability': pyg_gatv2.cpu_capability(),
                'versions': {'pyg_gatv2': pyg_gatv2.__version__,
                             'torch': torch.__version__,
                             'python': platform.python_version()}})
    print('\n' + summary(results))
    seconds = sum(r.seconds for r in results)
    print(f'\n{len(results)} runs, {seconds:.0f} s in all, '
          f'{seconds / len(results):.0f} s per run on average; wrote '
          f'{stem}.{{json,png,md,csv}}')


if __name__ == '__main__':
    main()
