"""Robustness to structural noise: the experiment of Section 4.4 of the GATv2
paper (its Figure 4) on Cora and CiteSeer, GAT against GATv2.

    python benchmarks/noise.py --threads 1            # hours: resumable
    python benchmarks/noise.py --threads 1 --resume   # go on
    python benchmarks/noise.py --report-only          # rewrite the reports

Processes on other cores share the seeds out (``--first-seed``, each into a
folder of its own), then ``--merge FOLDER ...`` adds their runs to
``--out``.

For every dataset, seed, noise ratio :math:`p` and layer, the graph gets
:math:`p \\cdot |E|` random noise edges
(:func:`pyg_gatv2.experiments.noise.add_noise_edges`, drawn from a generator
seeded with the seed and :math:`p`, so that GAT and GATv2 train on the
same noisy graph), and the two-layer :class:`pyg_gatv2.GATv2` network is
trained with the GAT paper's transductive recipe
(:data:`pyg_gatv2.experiments.training.PAPER_SETTINGS`, early stopping on
the validation nodes, test accuracy at the best validation epoch), built
once from PyG's ``GATConv`` (GAT) and once from our ``GATv2Conv`` (GATv2).
Both draw their weights after ``torch.manual_seed(seed)``.

The paper ran this on ogbn-arxiv and ogbn-mag, which this script does not
read; the recipe there was the authors' own.

Every finished run is written to ``noise.json`` at once; ``--resume`` keeps
them, so an interrupted sweep goes on where it stopped. The runs go seed
by seed, so that a partial sweep has every ratio at a few seeds. Writes
``noise.md`` (the table and the command), ``noise.csv`` and ``noise.png``
(accuracy against the noise ratio, mean and standard deviation over the
seeds) into ``--out``.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
import torch_geometric
from _common import (
    command_line,
    cpp_level,
    has_raw_files,
    markdown_table,
    write_csv,
)
from _common import raw_dir as find_raw_dir
from torch_geometric.nn import GATConv

import pyg_gatv2
from pyg_gatv2 import GATv2, GATv2Conv
from pyg_gatv2.experiments import load_planetoid, train_node_classifier
from pyg_gatv2.experiments.noise import add_noise_edges
from pyg_gatv2.experiments.training import PAPER_SETTINGS, Recipe

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {'gat': (GATConv, 'GAT (torch_geometric GATConv)'),
          'gatv2': (GATv2Conv, 'GATv2 (pyg_gatv2 GATv2Conv)')}
RATIOS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
COLUMNS = ('dataset', 'noise ratio', 'noise edges', 'GAT', 'GATv2',
           'GATv2 - GAT', 'seeds')


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--datasets', nargs='+', choices=('Cora',
                                                          'CiteSeer'),
                        default=['Cora', 'CiteSeer'])
    parser.add_argument('--ratios', type=float, nargs='+',
                        default=list(RATIOS),
                        help='noise edges per edge of the graph')
    parser.add_argument('--seeds', type=int, default=10,
                        help='N seeds per point: --first-seed .. '
                        '--first-seed + N - 1')
    parser.add_argument('--first-seed', type=int, default=0,
                        help='the first seed; processes that write to '
                        'other --out folders can share the seeds out')
    parser.add_argument('--layers', nargs='+', choices=tuple(LAYERS),
                        default=list(LAYERS))
    parser.add_argument('--epochs', type=int, default=1000)
    parser.add_argument('--patience', type=int, default=100)
    parser.add_argument('--raw-dir', type=Path,
                        help='folder of the raw Planetoid files '
                        '(default: $PYG_GATV2_RAW_DIR)')
    parser.add_argument('--threads', type=int)
    parser.add_argument('--out', type=Path,
                        default=ROOT / 'benchmarks' / 'results')
    parser.add_argument('--resume', action='store_true',
                        help='keep the finished runs of noise.json')
    parser.add_argument('--report-only', action='store_true',
                        help='rewrite the reports from noise.json')
    parser.add_argument('--merge', type=Path, nargs='+', metavar='FOLDER',
                        help="add the runs of these folders' noise.json "
                        '(the same settings) to that of --out, and '
                        'rewrite the reports')
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.epochs < 1 or args.patience < 1:
        parser.error('--seeds, --epochs and --patience must be positive')
    if args.first_seed < 0:
        parser.error('--first-seed must not be negative')
    if any(not 0.0 <= ratio <= 10.0 for ratio in args.ratios):
        parser.error('--ratios must lie in [0, 10]')
    return args


def noise_generator(seed: int, ratio: float) -> torch.Generator:
    """The generator of the noise of one seed and ratio: the same for both
    layers, another for every seed and ratio."""
    return torch.Generator().manual_seed(seed * 1_000_003 +
                                         round(ratio * 1000))


def run_key(run: dict) -> tuple:
    return run['dataset'], run['ratio'], run['layer'], run['seed']


def settings(args: argparse.Namespace) -> dict:
    """What every run of a report shares; a resumed sweep must match."""
    return {'epochs': args.epochs, 'patience': args.patience,
            'recipes': {name: PAPER_SETTINGS[name] for name in
                        ('Cora', 'CiteSeer')}}


def load_runs(json_path: Path, expected: Optional[dict]) -> dict:
    saved = json.loads(json_path.read_text())
    if expected is not None and saved['settings'] != expected:
        raise SystemExit(f'Cannot resume from {json_path}: it was written '
                         f"with other settings ({saved['settings']}, now "
                         f'{expected}); run with the same --epochs and '
                         '--patience, or into another --out')
    return saved


def save_runs(saved: dict, json_path: Path) -> None:
    """Writes :obj:`saved` to :obj:`json_path` through a file beside it,
    so that a stop mid-write leaves the last complete file."""
    part = json_path.with_name('noise.json.part')
    part.write_text(json.dumps(saved, indent=1) + '\n')
    os.replace(part, json_path)


def merge(json_path: Path, folders: list[Path]) -> dict:
    """Adds to :obj:`json_path` the runs and commands of the
    ``noise.json`` of each folder that it lacks, and returns what it
    wrote; every file must hold the settings of :obj:`json_path`."""
    saved = load_runs(json_path, None)
    done = {run_key(run) for run in saved['runs']}
    for folder in folders:
        other = load_runs(folder / 'noise.json', saved['settings'])
        new = [run for run in other['runs'] if run_key(run) not in done]
        saved['runs'] += new
        done |= {run_key(run) for run in new}
        saved['commands'] += [c for c in other['commands']
                              if c not in saved['commands']]
        print(f'{folder}: {len(new)} runs added, '
              f"{len(other['runs']) - len(new)} already there", flush=True)
    save_runs(saved, json_path)
    return saved


def train_one(data, num_features: int, num_classes: int, dataset: str,
              layer: str, ratio: float, seed: int, args) -> dict:
    recipe_settings = PAPER_SETTINGS[dataset]
    noisy = data.clone()
    noisy.edge_index = add_noise_edges(data.edge_index, data.num_nodes,
                                       ratio, noise_generator(seed, ratio))
    conv = LAYERS[layer][0]

    def build():
        return GATv2(num_features, num_classes,
                     output_heads=recipe_settings['output_heads'], conv=conv)

    recipe = Recipe(epochs=args.epochs, patience=args.patience,
                    lr=recipe_settings['lr'],
                    weight_decay=recipe_settings['weight_decay'])
    (run, ) = train_node_classifier(build, noisy, [seed], recipe,
                                    device='cpu').runs
    return {'dataset': dataset, 'ratio': ratio, 'layer': layer,
            'seed': seed,
            'noise_edges': noisy.edge_index.size(1) - data.edge_index.size(1),
            'edges': data.edge_index.size(1), 'test_acc': run.test_acc,
            'val_acc': run.val_acc, 'best_epoch': run.best_epoch,
            'epochs': run.epochs, 'seconds': run.seconds}


def mean_std(values: list[float]) -> str:
    if not values:
        return '-'
    if len(values) == 1:
        return f'{100 * values[0]:.1f}'
    return (f'{100 * statistics.mean(values):.1f} ± '
            f'{100 * statistics.pstdev(values):.1f}')


def paired(diffs: list[float]) -> str:
    """The mean of the paired differences in points, ± its standard error
    (the sample standard deviation over the square root of the count)."""
    if not diffs:
        return '-'
    text = f'{100 * statistics.mean(diffs):+.1f}'
    if len(diffs) > 1:
        error = statistics.stdev(diffs) / len(diffs)**0.5
        text += f' ± {100 * error:.1f}'
    return text


def summary_rows(runs: list[dict]) -> list[dict]:
    """One row per dataset and ratio: each layer's test accuracy (%), the
    mean over seeds ± the standard deviation, and the mean of the paired
    differences (the same seed and noisy graph)."""
    rows = []
    points = sorted({(r['dataset'], r['ratio']) for r in runs},
                    key=lambda p: (('Cora', 'CiteSeer').index(p[0]), p[1]))
    for dataset, ratio in points:
        here = [r for r in runs if (r['dataset'], r['ratio']) == (dataset,
                                                                  ratio)]
        acc = {layer: {r['seed']: r['test_acc'] for r in here
                       if r['layer'] == layer} for layer in LAYERS}
        both = sorted(set(acc['gat']) & set(acc['gatv2']))
        diffs = [acc['gatv2'][s] - acc['gat'][s] for s in both]
        seeds = {layer: len(acc[layer]) for layer in LAYERS}
        rows.append({
            'dataset': dataset, 'noise ratio': f'{ratio:g}',
            'noise edges': here[0]['noise_edges'],
            'GAT': mean_std(list(acc['gat'].values())),
            'GATv2': mean_std(list(acc['gatv2'].values())),
            'GATv2 - GAT': paired(diffs),
            'seeds': (str(seeds['gat']) if seeds['gat'] == seeds['gatv2']
                      else f"{seeds['gat']} GAT, {seeds['gatv2']} GATv2"),
        })
    return rows


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib.figure import Figure

    datasets = [d for d in ('Cora', 'CiteSeer')
                if any(r['dataset'] == d for r in runs)]
    fig = Figure(figsize=(5.2 * len(datasets), 4.0), layout='constrained')
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    styles = {'gat': dict(color='tab:red', marker='o', ls='--'),
              'gatv2': dict(color='tab:blue', marker='s', ls='-')}
    for ax, dataset in zip(axes, datasets, strict=True):
        for layer, (_, label) in LAYERS.items():
            here = [r for r in runs
                    if (r['dataset'], r['layer']) == (dataset, layer)]
            ratios = sorted({r['ratio'] for r in here})
            if not ratios:
                continue
            accs = [[100 * r['test_acc'] for r in here if r['ratio'] == p]
                    for p in ratios]
            mean = [statistics.mean(a) for a in accs]
            std = [statistics.pstdev(a) for a in accs]
            ax.errorbar(ratios, mean, yerr=std, capsize=3, lw=1.5, ms=5,
                        label=label, **styles[layer])
        ax.set_xlabel('noise ratio p (noise edges per edge)')
        ax.set_ylabel('test accuracy (%)')
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        ax.legend(loc='lower left', fontsize=8, frameon=False)
    fig.suptitle('Accuracy under structural noise: mean ± std over seeds')
    fig.savefig(path, dpi=110)


def write_reports(saved: dict, out: Path) -> None:
    runs = saved['runs']
    rows = summary_rows(runs)
    write_csv(out / 'noise.csv', rows, COLUMNS)
    plot(runs, out / 'noise.png')
    seconds = sum(r['seconds'] for r in runs)
    commands = '`; `'.join(saved['commands'])
    text = (
        '# Robustness to structural noise (GATv2 paper, Section 4.4)\n\n'
        f'Command: `{commands}` ({len(runs)} runs, {seconds:.0f} s of '
        f"training in all; {saved['environment']}).\n\n"
        'Test accuracy (%) at the best validation epoch, mean ± standard '
        'deviation over seeds (ddof=0); public split; the GAT paper\'s '
        'recipe for both layers (8 heads of 8 features, dropout 0.6, '
        f"early stopping with patience {saved['settings']['patience']}, at "
        f"most {saved['settings']['epochs']} epochs). noise edges: the "
        'directed node pairs added to the graph, drawn from those that are '
        'not edges, noise ratio times the edge count. GATv2 - GAT: the mean '
        'over seeds of the difference on the same noisy graph, in points, ± '
        'its standard error.'
        '\n\n' + markdown_table(rows, COLUMNS) + '\n')
    (out / 'noise.md').write_text(text)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    json_path = args.out / 'noise.json'
    if args.report_only:
        write_reports(load_runs(json_path, None), args.out)
        return 0
    if args.merge:
        write_reports(merge(json_path, args.merge), args.out)
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    raw_dir = find_raw_dir(args.raw_dir)
    datasets = [d for d in args.datasets if has_raw_files(raw_dir, d)]
    if not datasets:
        raise SystemExit('no dataset to run: pass --raw-dir or set '
                         'PYG_GATV2_RAW_DIR to the folder of the raw '
                         'Planetoid files')
    saved = {'commands': [], 'settings': settings(args), 'runs': []}
    if args.resume and json_path.exists():
        saved = load_runs(json_path, settings(args))
    saved['commands'].append(command_line())
    saved['environment'] = (
        f'pyg_gatv2 {pyg_gatv2.__version__}, torch {torch.__version__}, '
        f'torch_geometric {torch_geometric.__version__}, Python '
        f'{platform.python_version()}, {torch.get_num_threads()} CPU '
        f'thread(s), {os.cpu_count()} cores, {cpp_level()}')
    done = {run_key(run) for run in saved['runs']}
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as root:
        for name in datasets:
            dataset = load_planetoid(name, root=root, raw_dir=raw_dir)
            data = dataset[0]
            for seed in range(args.first_seed,
                              args.first_seed + args.seeds):
                for ratio in args.ratios:
                    for layer in args.layers:
                        if (name, ratio, layer, seed) in done:
                            continue
                        tic = time.perf_counter()
                        run = train_one(data, dataset.num_features,
                                        dataset.num_classes, name, layer,
                                        ratio, seed, args)
                        saved['runs'].append(run)
                        save_runs(saved, json_path)
                        write_reports(saved, args.out)
                        print(f"{name} p={ratio:g} {layer} seed {seed}: "
                              f"test {run['test_acc']:.4f} at epoch "
                              f"{run['best_epoch']} "
                              f'({time.perf_counter() - tic:.0f} s)',
                              flush=True)
    write_reports(saved, args.out)
    print(markdown_table(summary_rows(saved['runs']), COLUMNS))
    return 0


if __name__ == '__main__':
    sys.exit(main())
