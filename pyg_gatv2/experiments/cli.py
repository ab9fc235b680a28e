"""The ``pyg-gatv2`` command line.

Each subcommand is a function that adds its parser to the subparsers and
sets ``handler``, a function from the parsed arguments to the exit status;
:data:`SUBCOMMANDS` lists them. Expected failures (bad input, missing data,
diverged training) end in a one-line message and a nonzero exit status.
"""
import argparse
import json
import math
import platform
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, Optional

import torch
from torch_geometric.data import Data
from tqdm.auto import tqdm

from pyg_gatv2 import __version__
from pyg_gatv2.experiments.datasets import (
    load_ogb,
    load_planetoid,
    ogb_accuracy,
)
from pyg_gatv2.experiments.datasets.dictionary_lookup import VALUES
from pyg_gatv2.experiments.datasets.ogb import OGB_NAMES
from pyg_gatv2.experiments.datasets.planetoid import _default_root
from pyg_gatv2.experiments.lookup import (
    LookupRecipe,
    LookupResult,
    LookupRun,
    SweepSetup,
    run_lookup_sweep,
)
from pyg_gatv2.experiments.lookup_model import LOOKUP_CONVS, LOOKUP_READOUTS
from pyg_gatv2.experiments.plots import (
    plot_dictionary_lookup,
    plot_training_curves,
)
from pyg_gatv2.experiments.training import (
    PAPER_SETTINGS,
    STOP_CRITERIA,
    Checkpointing,
    Recipe,
    Sampling,
    SeedResult,
    TrainingDivergedError,
    TrainResult,
    resolve_device,
    train_node_classifier,
)
from pyg_gatv2.experiments.training.checkpoint import load_checkpoint
from pyg_gatv2.experiments.training.distributed import (
    DEFAULT_TIMEOUT,
    DistributedError,
    is_main,
    main_first,
    process_group,
    world,
)
from pyg_gatv2.experiments.training.sampling import (
    SamplingUnavailableError,
    check_sampling,
    training_threads,
)
from pyg_gatv2.extras import MissingExtraError
from pyg_gatv2.models import GATv2

PROG = 'pyg-gatv2'


class _Parser(argparse.ArgumentParser):
    """Reports a usage error in one line instead of the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f'{self.prog}: error: {message} (see {self.prog} '
                  '--help)\n')


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except absent ones (their help tells what applies)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'expected a positive integer, got {text!r}') from None
    if value < 1:
        raise argparse.ArgumentTypeError(
            f'expected a positive integer, got {text!r}')
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'expected an integer, got {text!r}') from None


def _nonnegative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(
            f'expected a non-negative integer, got {text!r}')
    return value


def _float(text: str, low: float, high: float, low_open: bool,
           what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    below = value <= low if low_open else value < low
    if not math.isfinite(value) or below or value >= high:
        raise argparse.ArgumentTypeError(f'expected {what}, got {text!r}')
    return value


def _positive_float(text: str) -> float:
    return _float(text, 0.0, math.inf, True, 'a positive number')


def _nonnegative_float(text: str) -> float:
    return _float(text, 0.0, math.inf, False, 'a non-negative number')


def _probability(text: str) -> float:
    return _float(text, 0.0, 1.0, False, 'a probability in [0, 1)')


def _dataset(text: str) -> str:
    names = {name.lower(): name for name in (*PAPER_SETTINGS, *OGB_NAMES)}
    if text.lower() not in names:
        raise argparse.ArgumentTypeError(
            f"unknown dataset {text!r}; choose one of "
            f"{', '.join(names.values())} (any case)")
    return names[text.lower()]


def _fan_out(text: str) -> int:
    value = _int(text)
    if value < 1 and value != -1:
        raise argparse.ArgumentTypeError(
            f'expected a positive number of neighbours (or -1 for all), got '
            f'{text!r}')
    return value


def _device(text: str) -> str:
    try:
        resolve_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            str(err).replace("'resolve_device' got ", '')) from None
    return text


def _add_device_and_threads(group: argparse._ArgumentGroup) -> None:
    group.add_argument('--device', type=_device, default='auto',
                       help="'cpu', 'cuda', 'cuda:<index>' or 'auto' (a GPU "
                       'if there is one)')
    group.add_argument('--threads', type=_positive_int,
                       help='CPU threads for torch (default: torch\'s '
                       'choice; with --num-workers N on the CPU, this '
                       "process's share of the cores less N); 1 is often "
                       'fastest on a busy machine')


def _add_no_progress(group: argparse._ArgumentGroup) -> None:
    group.add_argument('--no-progress', action='store_true',
                       help='no progress bars (they are off anyway when '
                       'stderr is not a terminal)')


def _set_up_execution(args: argparse.Namespace) -> torch.device:
    """Applies --threads and returns the device --device names. Without
    --threads, training on the CPU beside --num-workers loader processes
    gets the cores they leave (training_threads)."""
    device = resolve_device(args.device)
    threads = args.threads
    if (threads is None and getattr(args, 'num_workers', 0)
            and device.type == 'cpu'):
        threads = training_threads(args.num_workers)
    if threads is not None:
        torch.set_num_threads(threads)
    return device


def _show_progress(args: argparse.Namespace) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def _versions() -> dict[str, str]:
    return {'pyg_gatv2': __version__, 'torch': torch.__version__,
            'python': platform.python_version()}


def _add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'train', help='train a GATv2 node classifier on a Planetoid or OGB '
        'graph',
        description=(
            'Train a GATv2 node classifier on Cora, CiteSeer or PubMed with '
            "the GAT paper's transductive recipe (full-batch Adam, early "
            'stopping on the validation nodes, test accuracy at the best '
            'validation epoch), or on ogbn-arxiv or ogbn-products with their '
            'official split, once per seed; full-batch, or in mini-batches '
            'of sampled neighbourhoods with --batch-size. Under torchrun '
            '(torchrun --nproc-per-node N -m pyg_gatv2 train ...) the '
            'processes train data-parallel, each on its share of the '
            'training nodes. Prints one line per seed and the mean test '
            'accuracy, and writes results.json, curves.png and checkpoints '
            'to --out.'),
        formatter_class=_HelpFormatter)
    _add_train_data(parser.add_argument_group('data'))
    _add_train_runs(parser.add_argument_group('runs'))
    _add_train_batches(parser.add_argument_group(
        'mini-batches and processes'))
    _add_train_model(parser.add_argument_group('model'))
    _add_train_output(parser.add_argument_group('execution and output'))
    parser.set_defaults(handler=_train)


def _add_train_data(data: argparse._ArgumentGroup) -> None:
    data.add_argument('--dataset', type=_dataset, default='Cora',
                      help='Cora, CiteSeer, PubMed, ogbn-arxiv or '
                      'ogbn-products (any case; the OGB graphs are '
                      'downloaded into --root on first use)')
    data.add_argument('--root', type=Path, metavar='DIR',
                      help='dataset folder in Planetoid layout '
                      '(DIR/Cora/raw, DIR/Cora/processed) or OGB layout '
                      '(DIR/ogbn_arxiv/...); default $PYG_GATV2_ROOT, else '
                      '$XDG_CACHE_HOME/pyg_gatv2, else ~/.cache/pyg_gatv2')
    data.add_argument('--raw-dir', type=Path, metavar='DIR',
                      help='read-only folder of raw files '
                      '(DIR/Cora/raw/ind.cora.*) to copy from instead of '
                      'downloading; default $PYG_GATV2_RAW_DIR')
    data.add_argument('--split', choices=('public', 'full', 'random'),
                      help="Planetoid only: 'public' (the default): the "
                      "paper's 20 labels per class; 'full': all other nodes "
                      "train; 'random': drawn under --seed (OGB graphs have "
                      'their official split)')


def _add_train_batches(batches: argparse._ArgumentGroup) -> None:
    batches.add_argument(
        '--batch-size', type=_positive_int, metavar='B',
        help='train in mini-batches of B training nodes per process, each '
        'with its sampled neighbourhood (PyG NeighborLoader; needs the '
        "sampling extra: pip install --no-build-isolation "
        "'pyg-gatv2[sampling]'); default: full-batch")
    batches.add_argument(
        '--num-neighbors', type=_fan_out, nargs='+', metavar='K',
        help='neighbours sampled per node at each hop, one per layer (-1: '
        'all), with --batch-size (default: 10 per hop for each layer)')
    batches.add_argument(
        '--num-workers', type=_nonnegative_int, default=0, metavar='N',
        help='processes that sample mini-batches ahead of '
        'training, with --batch-size')
    batches.add_argument(
        '--eval-batch-size', type=_positive_int, metavar='B',
        help='evaluate layer by layer over batches of B nodes with their '
        'whole one-hop neighbourhoods (GATv2.inference), for graphs whose '
        'full-batch pass does not fit in memory, with --batch-size '
        '(default: full-batch evaluation)')
    batches.add_argument(
        '--dist-timeout', type=_positive_float, default=DEFAULT_TIMEOUT,
        metavar='SECONDS',
        help='under torchrun: seconds a process waits for the others '
        'before it stops with an error naming the processes that fell '
        'behind (a process that died or hangs never hangs the others for '
        'longer)')


def _add_train_runs(runs: argparse._ArgumentGroup) -> None:
    cora, pubmed = PAPER_SETTINGS['Cora'], PAPER_SETTINGS['PubMed']
    runs.add_argument('--seeds', type=_positive_int, default=1, metavar='N',
                      help='number of runs, with seeds --seed, --seed + 1, '
                      '...')
    runs.add_argument('--seed', type=_int, default=0,
                      help='first seed')
    runs.add_argument('--epochs', type=_positive_int, default=1000,
                      help='most epochs per run')
    runs.add_argument('--patience', type=_positive_int, default=100,
                      help='early-stopping patience in epochs')
    runs.add_argument('--stop-on', choices=STOP_CRITERIA, default='loss+acc',
                      help="early-stopping criterion: 'loss+acc' (the GAT "
                      "paper's) waits while the validation loss or accuracy "
                      'still reaches its best and keeps the epoch where both '
                      'do')
    runs.add_argument('--lr', type=_positive_float,
                      help=f"Adam learning rate (default: {cora['lr']}; "
                      f"{pubmed['lr']} on PubMed, as in the GAT paper)")
    runs.add_argument('--weight-decay', type=_nonnegative_float,
                      help='Adam weight decay (default: '
                      f"{cora['weight_decay']}; {pubmed['weight_decay']} on "
                      'PubMed)')


def _add_train_model(model: argparse._ArgumentGroup) -> None:
    cora, pubmed = PAPER_SETTINGS['Cora'], PAPER_SETTINGS['PubMed']
    model.add_argument('--layers', type=_positive_int, default=2,
                       help='GATv2Conv layers')
    model.add_argument('--hidden', type=_positive_int, default=8,
                       help='hidden features per head')
    model.add_argument('--heads', type=_positive_int, default=8,
                       help='attention heads of the hidden layers')
    model.add_argument('--output-heads', type=_positive_int,
                       help='attention heads of the output layer, averaged '
                       f"(default: {cora['output_heads']}; "
                       f"{pubmed['output_heads']} on PubMed)")
    model.add_argument('--dropout', type=_probability, default=0.6,
                       help='dropout on the input of every layer')
    model.add_argument('--attention-dropout', type=_probability,
                       help='dropout on the attention coefficients '
                       '(default: --dropout)')


def _add_train_output(system: argparse._ArgumentGroup) -> None:
    _add_device_and_threads(system)
    system.add_argument('--compile', action='store_true',
                        help='run the model through torch.compile (runs are '
                        'then not bit-for-bit reproducible)')
    system.add_argument('--out', type=Path, metavar='DIR',
                        help='output folder for results.json, curves.png and '
                        'checkpoints/; one that holds an earlier run is '
                        'refused, not overwritten, unless --resume or '
                        '--overwrite (default: runs/<dataset>)')
    system.add_argument('--checkpoint-every', type=_positive_int, default=50,
                        metavar='N',
                        help='epochs between training-state checkpoints')
    system.add_argument('--resume', action='store_true',
                        help='continue an interrupted run from the '
                        'checkpoints in --out (same flags required); '
                        'finished seeds are not retrained')
    system.add_argument('--overwrite', action='store_true',
                        help='delete the results and checkpoints of an '
                        'earlier run in --out first, and train afresh')
    _add_no_progress(system)


def _print_seed(run: SeedResult) -> None:
    # Beside the progress bars, and flushed so that logs show each seed.
    tqdm.write(f'Seed {run.seed}: test {run.test_acc:.4f}, val '
               f'{run.val_acc:.4f} at epoch {run.best_epoch} '
               f'({run.epochs} epochs, {run.seconds:.1f} s)', file=sys.stdout)
    sys.stdout.flush()


def _load_graph(args: argparse.Namespace) -> tuple[Data, int, int]:
    """The graph of --dataset, its number of features and of classes."""
    if args.dataset in OGB_NAMES:
        for flag, value in (('--split', args.split),
                            ('--raw-dir', args.raw_dir)):
            if value is not None:
                raise ValueError(f'{flag} applies to the Planetoid graphs; '
                                 f'{args.dataset} has its official split and '
                                 'is read from (or downloaded into) --root')
        data = load_ogb(args.dataset,
                        _default_root() if args.root is None else args.root)
        return data, data.num_features, data.num_classes
    torch.manual_seed(args.seed)  # draws the 'random' split
    dataset = load_planetoid(args.dataset, root=args.root,
                             raw_dir=args.raw_dir, split=args.split or 'public')
    return dataset[0], dataset.num_features, dataset.num_classes


def _check_batch_flags(args: argparse.Namespace) -> None:
    if args.batch_size is None:
        for flag, value in (('--num-neighbors', args.num_neighbors),
                            ('--num-workers', args.num_workers),
                            ('--eval-batch-size', args.eval_batch_size)):
            if value:
                raise ValueError(f'{flag} samples mini-batches and needs '
                                 '--batch-size')
        return
    if (args.num_neighbors is not None
            and len(args.num_neighbors) != args.layers):
        raise ValueError(
            f'--num-neighbors has {len(args.num_neighbors)} hops for '
            f'{args.layers} layers; give one fan-out per layer')
    check_sampling()


def _train(args: argparse.Namespace) -> int:
    _check_batch_flags(args)
    with process_group(_set_up_execution(args), args.dist_timeout) as device:
        return _train_in_group(args, device)


def _recipe_and_model(args: argparse.Namespace, num_features: int,
                      num_classes: int) -> tuple[Recipe, dict[str, Any]]:
    """The training recipe and the model's arguments of the flags, with the
    GAT paper's settings of the dataset where a flag is left unset."""
    paper = PAPER_SETTINGS.get(args.dataset, PAPER_SETTINGS['Cora'])
    recipe = Recipe(
        epochs=args.epochs, patience=args.patience,
        lr=paper['lr'] if args.lr is None else args.lr,
        weight_decay=(paper['weight_decay'] if args.weight_decay is None else
                      args.weight_decay),
        stop_on=args.stop_on)
    model_config = {
        'in_channels': num_features,
        'out_channels': num_classes,
        'hidden_channels': args.hidden,
        'heads': args.heads,
        'output_heads': (paper['output_heads'] if args.output_heads is None
                         else args.output_heads),
        'num_layers': args.layers,
        'dropout': args.dropout,
        'attention_dropout': (args.dropout if args.attention_dropout is None
                              else args.attention_dropout),
    }
    return recipe, model_config


def _check_out(args: argparse.Namespace, out: Path,
               files: list[Path]) -> None:
    """Raises :class:`FileExistsError` when a run without --resume would
    overwrite ``files``, the results or checkpoints of an earlier run in
    ``out``; with --overwrite, deletes them instead."""
    if args.resume:
        if args.overwrite:
            raise ValueError('--resume continues the run in --out and '
                             '--overwrite deletes it; pass one of them')
        return
    earlier = [path for path in files if path.exists()]
    if earlier and args.overwrite:
        for path in earlier:
            path.unlink(missing_ok=True)
        return
    if earlier:
        raise FileExistsError(
            f'{out} holds an earlier run ({earlier[0]}), which this one '
            'would overwrite; pass --resume to continue it (same flags), '
            'another --out to keep both, or --overwrite to train afresh')


def _train_in_group(args: argparse.Namespace, device: torch.device) -> int:
    out = Path('runs') / args.dataset if args.out is None else args.out
    # One process prepares the dataset files (and deletes an earlier run
    # under --overwrite), then the others read them.
    with main_first():
        folder = out / 'checkpoints'
        _check_out(args, out, [*sorted(folder.glob('state_seed*.pt')),
                               *sorted(folder.glob('best_seed*.pt')),
                               out / 'results.json'])
        data, num_features, num_classes = _load_graph(args)
    recipe, model_config = _recipe_and_model(args, num_features, num_classes)
    split = ('official' if args.dataset in OGB_NAMES else
             args.split or 'public')
    sampling = None
    if args.batch_size is not None:
        sampling = Sampling(args.batch_size,
                            args.num_neighbors or [10] * args.layers,
                            args.num_workers, args.eval_batch_size)
    result = train_node_classifier(
        lambda: GATv2(**model_config), data,
        range(args.seed, args.seed + args.seeds), recipe, sampling=sampling,
        device=device, compile=args.compile,
        checkpoints=Checkpointing(out / 'checkpoints', args.checkpoint_every,
                                  args.resume),
        metadata={'dataset': args.dataset, 'split': split,
                  'model': 'GATv2', **model_config},
        on_seed_end=_print_seed if is_main() else None,
        progress=_show_progress(args))
    if is_main():
        _report_training(args, out, data, (recipe, model_config, split),
                         result, device)
    return 0


def _report_training(args: argparse.Namespace, out: Path, data: Data,
                     setup: tuple[Recipe, dict[str, Any], str],
                     result: TrainResult, device: torch.device) -> None:
    """Writes results.json and the curves of a training run, and prints
    the test accuracy."""
    recipe, model_config, split = setup
    report = {
        'command': shlex.join([PROG, *args.argv]),
        'dataset': args.dataset,
        'settings': {'split': split, **recipe.settings(),
                     'batch_size': args.batch_size,
                     'num_neighbors': args.num_neighbors,
                     'processes': world()[1],
                     'device': str(device), 'compile': args.compile,
                     'threads': torch.get_num_threads()},
        'model': model_config,
        'versions': _versions(),
        **result.to_dict(),
    }
    if args.dataset in OGB_NAMES:
        report['ogb_test_acc'] = _ogb_test_accuracies(
            args.dataset, data, model_config, result, out / 'checkpoints',
            device)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / 'results.json'
    json_path.write_text(json.dumps(report, indent=2) + '\n')
    seeds = len(result.runs)
    png_path = plot_training_curves(
        result, out / 'curves.png',
        title=f'GATv2 on {args.dataset} ({split} split)')
    print(f'Wrote {json_path}, {png_path} and {out / "checkpoints"}')
    print(f'Test accuracy: {result.test_acc_mean:.3f} +- '
          f'{result.test_acc_std:.3f} over {seeds} seed'
          f"{'s' if seeds > 1 else ''}")


def _ogb_test_accuracies(name: str, data: Data, model_config: dict,
                         result: TrainResult, folder: Path,
                         device: torch.device) -> list[float]:
    """The test accuracy of each seed's best model by OGB's evaluator, which
    is the number the OGB leaderboard and the GATv2 paper report."""
    accs = []
    data = data.to(device)
    for run in result.runs:
        model = GATv2(**model_config).to(device)
        best = load_checkpoint(
            folder / f'best_seed{run.seed}.pt', 'a best-model checkpoint',
            f'delete {folder} and train again', keys=('model', ))
        model.load_state_dict(best['model'])
        model.eval()
        with torch.no_grad():
            pred = model(data.x, data.edge_index).argmax(dim=-1)
        mask = data.test_mask
        accs.append(ogb_accuracy(name, data.y[mask], pred[mask]))
    return accs


def _lookup_k(text: str) -> int:
    value = _int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(
            f'expected a number of keys k >= 2, got {text!r}')
    return value


def _add_dictionary_lookup(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        'dictionary-lookup',
        help='GAT against GATv2 on the DictionaryLookup task',
        description=(
            'Train GAT and GATv2 networks (one attention layer each, as in '
            "the authors' code) on the DictionaryLookup task of the GATv2 "
            'paper (Sec. 4.1) for each k, number of heads and seed, with the '
            "authors' recipe, and evaluate them on test graphs that hold "
            '(key, value) pairs never seen in training. The learning rate '
            'schedule and the stop follow the training accuracy (the authors '
            'follow the test accuracy) and dropout is off at evaluation. '
            'Prints accuracy per query node and per graph, and writes '
            'dictionary_lookup.json and dictionary_lookup.png (train and '
            'test accuracy against k, as in Figure 2 of the paper, and the '
            'attention each layer learned on one test graph) to --out.'),
        formatter_class=_HelpFormatter)
    _add_lookup_data(parser.add_argument_group('data'))
    _add_lookup_runs(parser.add_argument_group('runs'))
    _add_lookup_model(parser.add_argument_group('model'))
    _add_lookup_output(parser.add_argument_group('execution and output'))
    parser.set_defaults(handler=_dictionary_lookup)


def _add_lookup_data(data: argparse._ArgumentGroup) -> None:
    data.add_argument('--ks', type=_lookup_k, nargs='+', default=[5, 10, 20],
                      metavar='K', help='numbers of keys per graph')
    data.add_argument('--train-fraction', type=_probability, default=0.8,
                      help='target fraction of the graphs in training')
    data.add_argument('--max-graphs', type=_positive_int, default=32000,
                      help='graphs per k: all k! permutations (k^k rows '
                      'with --values with_replacement) when fewer, else a '
                      'random sample of this size')
    data.add_argument('--values', choices=VALUES, default='permutation',
                      help="a graph's values: a permutation of 0..k-1 (the "
                      "paper's task, which a model can answer by "
                      'elimination), or k independent draws, which only a '
                      'lookup answers')


def _add_lookup_runs(runs: argparse._ArgumentGroup) -> None:
    recipe = LookupRecipe()
    runs.add_argument('--convs', nargs='+', choices=LOOKUP_CONVS,
                      default=['gat', 'gatv2'], metavar='CONV',
                      help='attention layers to compare: '
                      f"{', '.join(LOOKUP_CONVS)} (the dense ones compute "
                      'the same functions on dense adjacencies)')
    runs.add_argument('--heads', type=_positive_int, nargs='+',
                      default=[1, 8], metavar='H',
                      help='numbers of attention heads')
    runs.add_argument('--seeds', type=_positive_int, default=1, metavar='N',
                      help='runs per setting, with seeds --seed, --seed + '
                      '1, ... (each seed draws its own graphs, split, '
                      'weights and batches)')
    runs.add_argument('--seed', type=_int, default=0, help='first seed')
    runs.add_argument('--max-epochs', type=_positive_int,
                      default=recipe.max_epochs,
                      help='most passes over the training graphs per run')
    runs.add_argument('--eval-every', type=_positive_int,
                      default=recipe.eval_every,
                      help='epochs between evaluations')
    runs.add_argument('--patience', type=_positive_int,
                      default=recipe.patience,
                      help='evaluations without improvement (a higher '
                      'training accuracy, or the same and a lower training '
                      'loss) before stopping')
    runs.add_argument('--batch-size', type=_positive_int,
                      default=recipe.batch_size, help='graphs per step')
    runs.add_argument('--lr', type=_positive_float, default=recipe.lr,
                      help='initial Adam learning rate')
    runs.add_argument('--lr-patience', type=_positive_int,
                      default=recipe.lr_patience,
                      help='evaluations without improvement before the '
                      'learning rate is halved')
    runs.add_argument('--clip-norm', type=_nonnegative_float,
                      default=recipe.clip_norm,
                      help='largest gradient norm (0: no clipping)')


def _add_lookup_model(model: argparse._ArgumentGroup) -> None:
    model.add_argument('--hidden', type=_positive_int, default=128,
                       help='embedding and layer size, split over the heads')
    model.add_argument('--readout', choices=LOOKUP_READOUTS,
                       default='linear',
                       help="'linear': the paper's Linear(hidden, k); "
                       "'tied' (ours): score each value by the layer's own "
                       'output for that value')
    model.add_argument('--dropout', type=_probability, default=0.5,
                       help="dropout on the layer's output, in training")


def _add_lookup_output(system: argparse._ArgumentGroup) -> None:
    _add_device_and_threads(system)
    system.add_argument('--out', type=Path, default=Path('runs'),
                        metavar='DIR',
                        help='output folder for dictionary_lookup.json, '
                        'dictionary_lookup.png and checkpoints/')
    system.add_argument('--resume', action='store_true',
                        help='keep the finished runs of DIR/'
                        'dictionary_lookup.json and continue the one cut '
                        'short from its checkpoint (same flags required)')
    system.add_argument('--overwrite', action='store_true',
                        help='delete DIR/dictionary_lookup.json of an '
                        'earlier sweep first, and run afresh (without it '
                        'or --resume, an earlier sweep is refused)')
    _add_no_progress(system)


def _print_lookup_row(result: LookupResult) -> None:
    tqdm.write(
        f'{result.k:>3}  {result.conv:<12} {result.heads:>5} '
        f'{result.seed:>4} {result.train_node_acc:>10.4f} '
        f'{result.train_graph_acc:>11.4f} {result.test_node_acc:>9.4f} '
        f'{result.test_graph_acc:>10.4f} {result.epochs:>6} '
        f'{result.stop:<10} {result.seconds:>8.1f}', file=sys.stdout)
    sys.stdout.flush()


def _dictionary_lookup(args: argparse.Namespace) -> int:
    bad = [heads for heads in args.heads if args.hidden % heads != 0]
    if bad:
        raise ValueError(f'--hidden {args.hidden} must be a multiple of '
                         f'every --heads value, and is not of {bad}')
    json_path = args.out / 'dictionary_lookup.json'
    _check_out(args, args.out, [json_path])
    device = _set_up_execution(args)
    recipe = LookupRecipe(
        max_epochs=args.max_epochs, eval_every=args.eval_every,
        patience=args.patience, batch_size=args.batch_size, lr=args.lr,
        lr_patience=args.lr_patience, clip_norm=args.clip_norm)
    runs = [LookupRun(k, conv, heads, seed)
            for k in dict.fromkeys(args.ks)
            for conv in dict.fromkeys(args.convs)
            for heads in dict.fromkeys(args.heads)
            for seed in range(args.seed, args.seed + args.seeds)]
    print(f"{'k':>3}  {'layer':<12} {'heads':>5} {'seed':>4} "
          f"{'train node':>10} {'train graph':>11} {'test node':>9} "
          f"{'test graph':>10} {'epochs':>6} {'stop':<10} {'seconds':>8}")
    sys.stdout.flush()
    setup = SweepSetup(recipe, hidden_channels=args.hidden,
                       readout=args.readout, dropout=args.dropout,
                       train_fraction=args.train_fraction,
                       max_graphs=args.max_graphs, values=args.values)
    results = run_lookup_sweep(
        runs, json_path, setup, device=device,
        checkpoint_dir=args.out / 'checkpoints',
        resume=args.resume,
        report={'command': shlex.join([PROG, *args.argv]),
                'task': 'DictionaryLookup', 'device': str(device),
                'threads': torch.get_num_threads(),
                'versions': _versions()},
        on_result=_print_lookup_row, progress=_show_progress(args))
    png_path = plot_dictionary_lookup(results,
                                      args.out / 'dictionary_lookup.png')
    print(f'Wrote {json_path} and {png_path}')
    return 0


# Subcommands, in the order --help lists them.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_train,
    _add_dictionary_lookup,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``pyg-gatv2`` parser with every subcommand of
    :data:`SUBCOMMANDS`."""
    parser = _Parser(
        prog=PROG, description='GATv2 for PyTorch Geometric: training and '
        'experiments from the command line.')
    parser.add_argument('--version', action='version',
                        version=f'%(prog)s {__version__}')
    subparsers = parser.add_subparsers(title='commands', metavar='COMMAND',
                                       required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs ``pyg-gatv2``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # for the reports
    try:
        return args.handler(args)
    except (ValueError, OSError, TrainingDivergedError, MissingExtraError,
            SamplingUnavailableError, DistributedError) as err:
        message = ' '.join(str(err).split())
        print(f'{PROG}: error: {message}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f'{PROG}: interrupted; run the same command with --resume to '
              'continue from the last checkpoint', file=sys.stderr)
        return 130
