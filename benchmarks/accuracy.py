"""Test accuracy of the GATv2 node classifier on the Planetoid graphs, next
to the published numbers.

    python benchmarks/accuracy.py                  # 10 seeds, about an hour
    python benchmarks/accuracy.py --seeds 2 --epochs 50 --datasets Cora

For every dataset whose raw files are present (PubMed's are not on every
machine: its row then says so), the GAT paper's transductive recipe
(:data:`pyg_gatv2.experiments.training.PAPER_SETTINGS`: 8 heads of 8
features, dropout 0.6, Adam, early stopping on validation loss and accuracy
with patience 100, test accuracy at the best validation epoch) trains the
two-layer :class:`pyg_gatv2.GATv2` over seeds 0, 1, ..., once built from
``pyg_gatv2.GATv2Conv`` and once, as a reference, from
``torch_geometric.nn.GATv2Conv`` with the same seeds, hence the same initial
weights. Before training, the two networks are checked to hold identical
initial weights and to agree on the first forward pass to 1e-5.

Writes ``accuracy.md`` (the table, with the published numbers and the
command), ``accuracy.csv``, ``accuracy.json`` (every seed) and
``accuracy_<dataset>.png`` (the training curves of ``pyg_gatv2``) into
``--out`` (``--name`` replaces ``accuracy``), and prints the Markdown.
``--device cuda`` trains on the GPU (the epoch times of the two layers
there). Times are wall-clock seconds of training
on a machine that may be shared: compare the two implementations through the
ratio of the same run, not across runs.
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
import torch_geometric
from _common import command_line, cpp_level, markdown_table, write_csv
from _common import raw_dir as find_raw_dir
from torch_geometric.nn import GATv2Conv as PyGGATv2Conv

import pyg_gatv2
from pyg_gatv2 import GATv2, GATv2Conv
from pyg_gatv2.experiments import load_planetoid, train_node_classifier
from pyg_gatv2.experiments.plots import plot_training_curves
from pyg_gatv2.experiments.training import (
    PAPER_SETTINGS,
    Checkpointing,
    Recipe,
    TrainResult,
)

ROOT = Path(__file__).resolve().parents[1]
RAW_FILES = ('x', 'tx', 'allx', 'y', 'ty', 'ally', 'graph', 'test.index')
TOLERANCE = 1e-5
IMPLS = {'pyg_gatv2': GATv2Conv, 'torch_geometric': PyGGATv2Conv}
LABELS = {'pyg_gatv2': 'pyg_gatv2 GATv2Conv',
          'torch_geometric': 'torch_geometric GATv2Conv'}
# Published test accuracies in percent (mean, std or None), with sources.
REFERENCES = {
    'GAT paper (GAT, 100 runs)': {
        'Cora': (83.0, 0.7), 'CiteSeer': (72.5, 0.7), 'PubMed': (79.0, 0.3)},
    "DGL's GATv2 example": {
        'Cora': (82.1, None), 'CiteSeer': (70.0, None),
        'PubMed': (77.2, None)},
}
# Environment variables that the report quotes where set: they change the
# speed (the CPU level of the C++ kernels also the rounding), not the recipe.
ENVIRONMENT = ('OMP_NUM_THREADS', 'OMP_WAIT_POLICY',
               'PYG_GATV2_CPU_CAPABILITY')
COLUMNS = ('Dataset', 'Model', 'Test accuracy (%)', 'Seeds',
           'Epochs (mean)', 'Best epoch (mean)', 'Seconds per seed',
           'ms per epoch')


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Test accuracy of GATv2 on Planetoid, with PyG\'s layer '
        'and the published numbers alongside.')
    parser.add_argument('--datasets', nargs='+', default=list(PAPER_SETTINGS),
                        choices=list(PAPER_SETTINGS),
                        help='datasets to run (default: all three)')
    parser.add_argument('--seeds', type=int, default=10,
                        help='seeds 0..N-1 per dataset and model '
                        '(default: 10)')
    parser.add_argument('--epochs', type=int, default=1000,
                        help='most epochs per run (default: 1000)')
    parser.add_argument('--patience', type=int, default=100,
                        help='early-stopping patience (default: 100)')
    parser.add_argument('--raw-dir', type=Path,
                        help='folder of raw files, <dir>/Cora/raw/... '
                        '(default: $PYG_GATV2_RAW_DIR; without either, the '
                        'files must be in --root)')
    parser.add_argument('--root', type=Path,
                        help='dataset root for processed files (default: a '
                        'temporary folder)')
    parser.add_argument('--no-reference', action='store_true',
                        help="skip the rows of torch_geometric's GATv2Conv")
    parser.add_argument('--threads', type=int,
                        help='CPU threads for torch and the C++ kernels '
                        "(default: torch's choice)")
    parser.add_argument('--checkpoint-dir', type=Path,
                        help='keep training checkpoints here and resume from '
                        'them, so that an interrupted benchmark can be run '
                        'again to finish (default: none)')
    parser.add_argument('--device', default='cpu',
                        help='where to train (default: cpu)')
    parser.add_argument('--out', type=Path,
                        default=ROOT / 'benchmarks' / 'results',
                        help='output folder (default: benchmarks/results)')
    parser.add_argument('--name', default='accuracy',
                        help='file stem of the reports (default: accuracy)')
    args = parser.parse_args(argv)
    for name in ('seeds', 'epochs', 'patience', 'threads'):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f'--{name} must be positive, got {value}')
    return args


def raw_files_present(name: str, raw_dir: Optional[Path],
                      root: Path) -> bool:
    """Whether every raw file of :obj:`name` is in the raw folder or the
    dataset root, so that loading needs no download."""
    files = [f'ind.{name.lower()}.{suffix}' for suffix in RAW_FILES]
    return any(all((folder / name / 'raw' / f).is_file() for f in files)
               for folder in (raw_dir, root) if folder is not None)


def check_parity(dataset, settings: dict) -> float:
    """Builds both networks under one seed; asserts identical initial
    weights and returns the largest output difference of a forward pass."""
    data = dataset[0]
    models = {}
    for impl, conv in IMPLS.items():
        torch.manual_seed(0)
        models[impl] = GATv2(dataset.num_features, dataset.num_classes,
                             output_heads=settings['output_heads'],
                             conv=conv).eval()
    ours, ref = models['pyg_gatv2'], models['torch_geometric']
    for key, value in ours.state_dict().items():
        if not torch.equal(value, ref.state_dict()[key]):
            raise AssertionError(f'initial weight {key} differs between the '
                                 'two implementations under one seed')
    with torch.no_grad():
        diff = (ours(data.x, data.edge_index) -
                ref(data.x, data.edge_index)).abs().max().item()
    if diff > TOLERANCE:
        raise AssertionError(f'the two implementations differ by {diff:.2e} '
                             f'on the first forward pass (> {TOLERANCE})')
    return diff


def device_name(device: str) -> str:
    """The device's name for the report: the GPU's model on CUDA."""
    if torch.device(device).type == 'cuda':
        return f'{device} ({torch.cuda.get_device_name(device)})'
    return device


def percent(mean: float, std: Optional[float]) -> str:
    return f'{mean:.1f}' + ('' if std is None else f' ± {std:.1f}')


def result_row(name: str, impl: str, result: TrainResult) -> dict:
    seeds = len(result.runs)
    epochs = sum(run.epochs for run in result.runs)
    best = sum(run.best_epoch for run in result.runs)
    seconds = sum(run.seconds for run in result.runs)
    return {
        'Dataset': name,
        'Model': LABELS[impl],
        'Test accuracy (%)': percent(100 * result.test_acc_mean,
                                     100 * result.test_acc_std),
        'Seeds': seeds,
        'Epochs (mean)': f'{epochs / seeds:.0f}',
        'Best epoch (mean)': f'{best / seeds:.0f}',
        'Seconds per seed': f'{seconds / seeds:.1f}',
        'ms per epoch': f'{1000 * seconds / epochs:.1f}',
    }


def run_dataset(name: str, args: argparse.Namespace,
                raw_dir: Optional[Path],
                root: Path) -> tuple[list[dict], dict]:
    settings = PAPER_SETTINGS[name]
    dataset = load_planetoid(name, root=root, raw_dir=raw_dir)
    diff = check_parity(dataset, settings)
    print(f'{name}: initial weights identical, first forward pass agrees to '
          f'{diff:.1e}', flush=True)
    rows, record = [], {'parity_max_abs_diff': diff}
    impls = ['pyg_gatv2'] + ([] if args.no_reference else
                             ['torch_geometric'])
    for impl in impls:
        def build(conv=IMPLS[impl]):
            return GATv2(dataset.num_features, dataset.num_classes,
                         output_heads=settings['output_heads'], conv=conv)

        def report(run, impl=impl):
            print(f'  {name} {impl} seed {run.seed}: test {run.test_acc:.4f} '
                  f'at epoch {run.best_epoch} ({run.epochs} epochs, '
                  f'{run.seconds:.1f} s)', flush=True)

        checkpoints = (None if args.checkpoint_dir is None else
                       Checkpointing(args.checkpoint_dir / name / impl,
                                     resume=True))
        recipe = Recipe(epochs=args.epochs, patience=args.patience,
                        lr=settings['lr'],
                        weight_decay=settings['weight_decay'])
        result = train_node_classifier(
            build, dataset[0], range(args.seeds), recipe, device=args.device,
            checkpoints=checkpoints, on_seed_end=report)
        rows.append(result_row(name, impl, result))
        summary = result.summary()
        summary['runs'] = [{key: getattr(run, key) for key in (
            'seed', 'best_epoch', 'val_acc', 'test_acc', 'epochs', 'seconds')}
            for run in result.runs]
        record[impl] = summary
        if impl == 'pyg_gatv2':
            plot_training_curves(
                result, args.out / f'{args.name}_{name.lower()}.png',
                title=f'GATv2 (pyg_gatv2) on {name}, GAT recipe')
    if not args.no_reference:
        ours, ref = record['pyg_gatv2'], record['torch_geometric']
        record['time_ratio'] = ((ours['seconds_total'] / sum(
            r['epochs'] for r in ours['runs'])) / (ref['seconds_total'] / sum(
                r['epochs'] for r in ref['runs'])))
    return rows, record


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    raw_dir = find_raw_dir(args.raw_dir)
    temp = tempfile.TemporaryDirectory()
    root = args.root or Path(temp.name)
    # A report of no dataset would replace results with 'files absent'.
    if not any(raw_files_present(name, raw_dir, root)
               for name in args.datasets):
        temp.cleanup()
        places = [str(raw_dir or '(no --raw-dir)')]
        if args.root is not None:
            places.append(str(args.root))
        raise SystemExit(
            f"accuracy.py: no raw files of {', '.join(args.datasets)} in "
            f"{' or '.join(places)}; pass --raw-dir (or set "
            'PYG_GATV2_RAW_DIR) to the folder of the raw Planetoid files. '
            'Nothing was written.')
    args.out.mkdir(parents=True, exist_ok=True)

    rows, records, notes = [], {}, []
    tic = time.perf_counter()
    for name in args.datasets:
        if raw_files_present(name, raw_dir, root):
            dataset_rows, records[name] = run_dataset(name, args, raw_dir,
                                                      root)
            rows += dataset_rows
            if 'time_ratio' in records[name]:
                notes.append(f'{name}: time per epoch of pyg_gatv2 / '
                             'torch_geometric = '
                             f"{records[name]['time_ratio']:.2f}")
        else:
            rows.append({'Dataset': name, 'Model': '-',
                         'Test accuracy (%)': 'skipped: files absent'})
            records[name] = {'skipped': f'raw files absent from {raw_dir} '
                             f'and {root}'}
        for source, numbers in REFERENCES.items():
            rows.append({'Dataset': name, 'Model': source,
                         'Test accuracy (%)': percent(*numbers[name])})
    temp.cleanup()

    env = ' '.join(f'{key}={os.environ[key]}' for key in ENVIRONMENT
                   if key in os.environ)
    header = (
        '# Node classification accuracy (GAT recipe)\n\n'
        f"Command: `{command_line()}`{f' (environment: {env})' if env else ''}"
        '\n\n'
        f'pyg_gatv2 {pyg_gatv2.__version__}, torch {torch.__version__}, '
        f'torch_geometric {torch_geometric.__version__}, Python '
        f'{platform.python_version()}, {torch.get_num_threads()} CPU '
        f'thread(s), {os.cpu_count()} cores, {cpp_level()}, trained on '
        f'{device_name(args.device)}; '
        f'{time.perf_counter() - tic:.0f} s in all.\n\n'
        'Test accuracy at the best validation epoch, mean ± standard '
        'deviation over seeds (ddof=0); public split; GAT paper settings. '
        'Published rows are quoted, not rerun.\n')
    table = markdown_table(rows, COLUMNS)
    markdown = header + '\n' + table + '\n'
    if notes:
        markdown += '\n' + '\n'.join(f'- {note}' for note in notes) + '\n'
    (args.out / f'{args.name}.md').write_text(markdown)
    write_csv(args.out / f'{args.name}.csv', rows, COLUMNS)
    (args.out / f'{args.name}.json').write_text(json.dumps(
        {'command': command_line(), 'datasets': records}, indent=2) + '\n')
    print(markdown)
    return 0


if __name__ == '__main__':
    sys.exit(main())
