"""Mini-batch GATv2 training with NeighborLoader on a graph too large for
full-batch PyG: our GATv2Conv against PyG's in the same loop, with 1 and 2
processes (torchrun, DDP on gloo over 127.0.0.1).

    python benchmarks/minibatch.py            # 5 to 10 minutes on 2 cores
    python benchmarks/minibatch.py --quick    # a tiny graph, about a minute

The graph is a seeded stochastic block model with one block per class:
each node draws ``--degree / 2`` partners, a ``--homophily`` share of them
from its own block and the rest uniformly, and the edges are made undirected.
PyG's :func:`~torch_geometric.utils.stochastic_blockmodel_graph` draws a
Bernoulli per node pair, which at hundreds of thousands of nodes is out of
reach. Features are Planetoid-like bags of words: ``--words`` ones per node
in ``--features`` columns, each a word of its class's topic with
probability ``--topic`` and any word otherwise, rows scaled to sum to one.

Full-batch memory is estimated, not run: PyG's ``GATv2Conv`` materialises
tensors of ``edges x heads x channels`` several times, so the peak memory
of a full-batch training step of the 2-layer PyG model is measured on
smaller graphs of the same generator (in fresh processes, allocator pinned:
``_common.run_isolated``, ``_common.peak_memory``) and scaled by the number
of edges (self-loops included).

Each run of ``torchrun --nproc-per-node P`` trains a 2-layer GATv2
(:class:`pyg_gatv2.models.GATv2`) built twice from one seed, once with
:class:`pyg_gatv2.GATv2Conv` and once with
:class:`torch_geometric.nn.GATv2Conv`, each in
:class:`~torch.nn.parallel.DistributedDataParallel` with its own Adam. Each
rank samples its own share of the training nodes with
:class:`~torch_geometric.loader.NeighborLoader` (in the rank's process, no
loader workers). Every step draws one batch and trains both models on it
(``_common.interleaved_medians``: sampling, ours, PyG, in turn), so both
layers see the same subgraphs; the loss is taken on the seed nodes only.
Before any timing, each rank runs one training step of both models (they
share weights) on its first batch in eval mode, so without dropout, with
the loss ``(out * w).sum()`` for a fixed random ``w``
(``_common.training_step``), and compares our model's output and the
gradient of every parameter with PyG's (``_common.compare_steps``, within
``1e-5`` of the output's largest entry and ``3e-5`` of each gradient's, or
of one where that is smaller). If our model fails on any rank, it is
reported as ``MISMATCH (<tensor>: <error>)`` and not timed, on every rank.
Sampling time (drawing the batch, then a barrier across ranks so that no
rank's wait lands in a model time) is reported apart from model time
(forward, backward, gradient all-reduce, optimizer step). Seconds per epoch
are extrapolated from the median step: median x ceil(training nodes per
rank / batch size). Seeds per second are the seed nodes of all ranks per
step over the median step. After timing, each rank pins glibc's allocator
(``_common.pin_malloc``) and measures the memory of a training step on a
newly drawn batch, with our layout cache and buffer cache emptied
(``_common.step_memory``, the largest over ``--memory-steps`` batches and
over the ranks): its peak growth, which counts the layout our layer builds
for the batch and keeps until the next one, and what it still holds after
it returned (kept: that layout, and the buffers our kernels keep for the
next step).
A run that outlasts ``--timeout`` seconds is killed, and so is every
collective that waits longer.

``--threads`` is the number of CPU threads of a run in all: one process
uses all of them, two processes half each. Runs alternate between process
counts for ``--rounds`` rounds; the report gives the medians over rounds.
The report names the CPU level of the C++ kernels, which
``PYG_GATV2_CPU_CAPABILITY`` chooses (the ranks inherit it). Writes
``minibatch.md`` and ``minibatch.csv`` into ``--out``.

With ``--device cuda`` each rank trains on a GPU of its own (the one of its
local rank; DDP on NCCL) and ``--procs`` counts GPUs (default 1). The
loader still samples on the CPU, with the rank's ``--threads`` share, and
each batch is copied to the GPU as part of its sampling time; model times
wait for the GPU, and memory is the allocator's peak on the GPU. The
profiler's parts are the operators' own time on the GPU (the kernels they
launched; our attention and layout with those of the operators under
theirs), and the full-batch estimate stays the CPU measurement (the same
tensors, whichever device holds them)::

    python benchmarks/minibatch.py --device cuda --threads 8 --workers 4
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from _common import (
    GRAD_TOLERANCE,
    RESULTS,
    WorkerFailed,
    allocator,
    buffer_cache,
    command_line,
    compare_steps,
    cpp_level,
    huge_pages,
    interleaved_medians,
    kill_session,
    markdown_table,
    peak_memory,
    pin_malloc,
    run_isolated,
    step_memory,
    synchronize,
    training_step,
    write_report,
)
from torch_geometric.data import Data
from torch_geometric.utils import remove_self_loops, to_undirected

GiB = 2.0**30
MiB = 2.0**20
TOLERANCE = 1e-5
LAYERS = {'ours': 'pyg_gatv2.GATv2Conv', 'pyg': 'torch_geometric GATv2Conv'}
QUICK = dict(nodes=3000, degree=8, features=32, classes=4, words=4,
             batch_size=64, num_neighbors=[5, 5], steps=3, warmup=1,
             memory_steps=1, rounds=1, estimate_nodes=[1000])
# The parts of a step that the profiler tells apart, by the operators (and
# the ranges the layout marks) whose own time they count: the fused
# attention (its forward and backward kernels), the edge layout (CSR and
# CSC), the projections (matrix products, and our layer's products of a
# mostly-zero input), the random draws of dropout,
# the search and write of the input dropout (the model's, both layers');
# the rest is 'other' (for PyG's layer, its message passing).
PARTS = {'attention': ('gatv2_attention', ),
         'layout': ('edge_layout', 'build_layout_by_'),
         'projections': ('aten::mm', 'aten::addmm', 'sparse_input_linear'),
         'dropout_draws': ('aten::bernoulli_', 'aten::uniform_'),
         'input_dropout': ('nonzero_dropout', )}
# The parts of our fused attention: what our step would lose if the
# attention took no time, the rest of it (its projections, and what both
# models run alike) as measured.
ATTENTION_PARTS = ('attention', 'layout')
# On a GPU, the kernels of these parts are partly launched by the torch
# operators they call (the layout's sort, the attention's allocations and
# row sums): they count those too.
GPU_INCLUSIVE_PARTS = ('attention', 'layout')
PROFILED_STEPS = 3


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true',
                        help='a tiny graph, a few steps, one round')
    graph = parser.add_argument_group('the synthetic graph')
    graph.add_argument('--nodes', type=int, default=600_000)
    graph.add_argument('--degree', type=int, default=16,
                       help='average number of neighbours')
    graph.add_argument('--classes', type=int, default=10,
                       help='classes, one block of the model each')
    graph.add_argument('--homophily', type=float, default=0.8,
                       help='share of edges inside a block')
    graph.add_argument('--features', type=int, default=128)
    graph.add_argument('--words', type=int, default=8,
                       help='nonzero features per node')
    graph.add_argument('--topic', type=float, default=0.5,
                       help='chance that a word comes from the class topic')
    graph.add_argument('--train-fraction', type=float, default=0.2,
                       help='share of the nodes that are training seeds')
    model = parser.add_argument_group('the model and the loader')
    model.add_argument('--heads', type=int, default=4)
    model.add_argument('--hidden', type=int, default=32,
                       help='channels per head of the first layer')
    model.add_argument('--dropout', type=float, default=0.6,
                       help='feature and attention dropout')
    model.add_argument('--lr', type=float, default=0.005)
    model.add_argument('--batch-size', type=int, default=1024,
                       help='seed nodes per step and rank')
    model.add_argument('--num-neighbors', type=int, nargs='+',
                       default=[25, 10], help='fan-out per layer')
    model.add_argument('--whole-subgraph', action='store_true',
                       help='every layer computes every sampled node, '
                       "instead of only those the seeds' outputs need")
    run = parser.add_argument_group('the measurement')
    run.add_argument('--device', choices=('cpu', 'cuda'), default='cpu',
                     help='where the models train (cuda: one GPU per '
                     'process)')
    run.add_argument('--procs', type=int, nargs='+', default=None,
                     help='process counts to run (torchrun; default 1 '
                     'and 2 on the CPU, 1 on GPUs)')
    run.add_argument('--threads', type=int, default=2,
                     help='CPU threads per run in all, split over its ranks')
    run.add_argument('--steps', type=int, default=5,
                     help='timed steps per run')
    run.add_argument('--workers', type=int, default=1,
                     help='loader worker processes per rank that sample '
                     'ahead of training, in the end-to-end timing')
    run.add_argument('--warmup', type=int, default=1,
                     help='untimed steps first')
    run.add_argument('--memory-steps', type=int, default=2,
                     help='batches whose step peak memory is measured')
    run.add_argument('--rounds', type=int, default=2,
                     help='runs per process count, alternating')
    run.add_argument('--estimate-nodes', type=int, nargs='+',
                     default=[10_000, 20_000],
                     help='graph sizes at which full-batch PyG memory is '
                     'measured for the estimate')
    run.add_argument('--timeout', type=float, default=900,
                     help='seconds before a torchrun run, a full-batch '
                     'measurement or a collective is killed')
    run.add_argument('--seed', type=int, default=0)
    run.add_argument('--out', type=Path, default=RESULTS,
                     help='folder for the .md and .csv')
    run.add_argument('--name', default=None,
                     help='file stem (default: minibatch, minibatch_quick '
                     'with --quick)')
    parser.add_argument('--rank-worker', type=Path, default=None,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:  # other defaults; flags given still win
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    if args.procs is None:
        args.procs = [1] if args.device == 'cuda' else [1, 2]
    if args.name is None:
        args.name = ('minibatch' + ('_cuda' if args.device == 'cuda' else '')
                     + ('_quick' if args.quick else ''))
    check_args(parser, args)
    return args


def check_args(parser: argparse.ArgumentParser,
               args: argparse.Namespace) -> None:
    for key in ('nodes', 'degree', 'classes', 'features', 'words', 'heads',
                'hidden', 'batch_size', 'threads', 'steps', 'memory_steps',
                'rounds'):
        if getattr(args, key) < 1:
            parser.error(f'--{key.replace("_", "-")} must be at least 1')
    if args.workers < 0:
        parser.error('--workers must not be negative')
    for key in ('homophily', 'topic', 'train_fraction', 'dropout'):
        if not 0.0 <= getattr(args, key) <= 1.0:
            parser.error(f'--{key.replace("_", "-")} must lie in [0, 1]')
    if any(p < 1 for p in args.procs) or any(
            n < 1 for n in args.num_neighbors + args.estimate_nodes):
        parser.error('--procs, --num-neighbors and --estimate-nodes take '
                     'positive integers')
    if args.device == 'cuda':
        gpus = torch.cuda.device_count()
        if max(args.procs) > gpus:
            parser.error(f'--device cuda with --procs {max(args.procs)} '
                         f'needs as many GPUs; this machine has {gpus}')
    if any(args.threads % p for p in args.procs):
        parser.error(f'--threads {args.threads} must divide evenly among '
                     f'the ranks of every --procs {args.procs}')
    if args.classes > args.features:
        parser.error('--classes must not exceed --features: each class '
                     'needs a topic word')
    train = int(args.train_fraction * args.nodes)
    if train < max(args.procs) * args.batch_size:
        parser.error(f'{train} training nodes give some rank of '
                     f'--procs {max(args.procs)} less than one batch of '
                     f'{args.batch_size}; raise --nodes or --train-fraction')


# The graph ------------------------------------------------------------------


def synthetic_graph(nodes: int, degree: int, classes: int, features: int,
                    words: int, homophily: float, topic: float,
                    train_fraction: float, seed: int) -> Data:
    """The seeded stochastic block model with bag-of-words features that
    the module docstring describes; ``train_idx`` holds the seeds."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(nodes).remainder(classes)[torch.randperm(
        nodes, generator=gen)]
    # Nodes sorted by block, and where each block starts in that order.
    members = torch.argsort(y, stable=True)
    sizes = torch.bincount(y, minlength=classes)
    starts = torch.cumsum(sizes, 0) - sizes

    num_pairs = nodes * degree // 2
    src = torch.randint(nodes, (num_pairs, ), generator=gen)
    inside = torch.rand(num_pairs, generator=gen) < homophily
    block = y[src]
    offset = (torch.rand(num_pairs, generator=gen) * sizes[block]).long()
    dst = torch.where(inside, members[starts[block] + offset],
                      torch.randint(nodes, (num_pairs, ), generator=gen))
    edge_index, _ = remove_self_loops(torch.stack([src, dst]))
    edge_index = to_undirected(edge_index, num_nodes=nodes)

    # Class c's topic: the columns congruent to c modulo the classes.
    per_class = features // classes
    topic_word = (y.unsqueeze(1) + classes * torch.randint(
        per_class, (nodes, words), generator=gen))
    any_word = torch.randint(features, (nodes, words), generator=gen)
    from_topic = torch.rand(nodes, words, generator=gen) < topic
    word = torch.where(from_topic, topic_word, any_word)
    x = torch.zeros(nodes, features)
    x.scatter_(1, word, 1.0)
    x /= x.sum(dim=1, keepdim=True)

    train_idx = torch.randperm(nodes, generator=gen)[:int(train_fraction *
                                                          nodes)]
    return Data(x=x, y=y, edge_index=edge_index, train_idx=train_idx)


def graph_spec(args: argparse.Namespace, nodes: int) -> dict:
    return dict(nodes=nodes, degree=args.degree, classes=args.classes,
                features=args.features, words=args.words,
                homophily=args.homophily, topic=args.topic,
                train_fraction=args.train_fraction, seed=args.seed)


def build_model(conv_name: str, spec: dict) -> torch.nn.Module:
    """The 2-layer GATv2 with our layer (``'ours'``) or PyG's (``'pyg'``);
    one seed gives both the same weights."""
    import torch_geometric.nn

    import pyg_gatv2
    from pyg_gatv2.models import GATv2
    conv = (pyg_gatv2.GATv2Conv if conv_name == 'ours' else
            torch_geometric.nn.GATv2Conv)
    torch.manual_seed(spec['seed'])
    return GATv2(spec['features'], spec['classes'],
                 hidden_channels=spec['hidden'], heads=spec['heads'],
                 num_layers=2, dropout=spec['dropout'],
                 attention_dropout=spec['dropout'], conv=conv)


# Full-batch memory estimate -------------------------------------------------


def fullbatch_memory_worker(spec: dict) -> dict:
    """Peak memory of one full-batch training step of the PyG model on a
    graph of ``spec['graph']['nodes']`` nodes (run by run_isolated)."""
    pin_malloc()
    data = synthetic_graph(**spec['graph'])
    model = build_model('pyg', spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec['lr'])
    train = data.train_idx

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = model(data.x, data.edge_index)
        F.cross_entropy(out[train], data.y[train]).backward()
        optimizer.step()

    step()  # Adam's state, and the gradients' first allocation
    return dict(nodes=data.num_nodes, edges=data.num_edges,
                peak=peak_memory(step, torch.device('cpu')))


def estimate_fullbatch(args: argparse.Namespace, base: dict,
                       full: Data) -> dict:
    """Measures full-batch PyG memory at ``--estimate-nodes`` and scales the
    largest to :obj:`full` by edges, self-loops included."""
    points = []
    for nodes in args.estimate_nodes:
        result = run_isolated(fullbatch_memory_worker,
                              dict(base, graph=graph_spec(args, nodes)),
                              threads=args.threads, timeout=args.timeout)
        result['per_edge'] = result['peak'] / (result['edges'] +
                                               result['nodes'])
        points.append(result)
        print(f"full-batch PyG step at N={result['nodes']}, "
              f"E={result['edges']}: {result['peak'] / MiB:.0f} MiB, "
              f"{result['per_edge']:.0f} bytes per edge", flush=True)
    largest = max(points, key=lambda p: p['nodes'])
    estimate = largest['per_edge'] * (full.num_edges + full.num_nodes)
    return dict(points=points, bytes=estimate)


# One torchrun rank ----------------------------------------------------------


def rank_main(spec_path: Path) -> None:
    """A rank of a torchrun run: trains both models, gathers the results
    of all ranks and has rank 0 write them."""
    from pyg_gatv2.experiments.training.distributed import (
        end_process_group,
        join_process_group,
    )
    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec['threads_per_rank'])
    # A group even for one process: its model trains in DDP too.
    device = join_process_group(torch.device(spec['device']),
                                spec['collective_timeout'])
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        result = train_rank(spec, rank, world, device)
        results = [None] * world
        dist.all_gather_object(results, result)
    finally:
        end_process_group()
    if rank == 0:
        Path(spec['result']).write_text(json.dumps(results))


def train_rank(spec: dict, rank: int, world: int,
               device: torch.device) -> dict:
    from torch.nn.parallel import DistributedDataParallel
    from torch_geometric.loader import NeighborLoader

    from pyg_gatv2.experiments.training.sampling import training_threads

    graph = torch.load(spec['graph_file'])
    data = Data(x=graph['x'], y=graph['y'], edge_index=graph['edge_index'])
    shard = graph['train_idx'].tensor_split(world)[rank]
    models = {name: DistributedDataParallel(
        build_model(name, spec).to(device),
        device_ids=[device] if device.type == 'cuda' else None)
        for name in LAYERS}
    optimizers = {name: torch.optim.Adam(model.parameters(), lr=spec['lr'])
                  for name, model in models.items()}
    torch.manual_seed(spec['seed'] + 1 + rank)  # each rank's own shuffle
    # pyg-lib, the sampler PyG prefers, is not on PyPI: torch-sparse's it is.
    warnings.filterwarnings('ignore', message=".*without a 'pyg-lib'")
    loader = NeighborLoader(data, num_neighbors=spec['num_neighbors'],
                            batch_size=spec['batch_size'], input_nodes=shard,
                            shuffle=True)

    def batches():
        while True:
            for batch in loader:
                yield batch.to(device)

    stream = batches()
    state = dict(batch=next(stream), edges=[], nodes=[])
    # Both models compute only what the seeds' outputs need
    # (GATv2.forward's num_seeds), unless told otherwise.
    seeds = ((lambda batch: {'num_seeds': batch.batch_size})
             if spec['trim'] else (lambda batch: {}))
    check = agreement({name: model.module for name, model in models.items()},
                      state['batch'], seeds(state['batch']))
    # Every rank must time the same models, or the collectives of one
    # would wait for the others in vain.
    checks = [check]
    if world > 1:
        checks = [None] * world
        dist.all_gather_object(checks, check)
    failed = [c['status'] for c in checks if c['status'] != 'ok']
    status = {'ours': failed[0] if failed else 'ok', 'pyg': 'ok'}
    layers = [name for name in LAYERS if status[name] == 'ok']

    def sample() -> None:
        state['batch'] = batch = next(stream)
        state['edges'].append(batch.num_edges)
        state['nodes'].append(batch.num_nodes)
        if world > 1:
            dist.barrier()

    def step_of(name: str):
        model, optimizer = models[name], optimizers[name]

        def step() -> None:
            batch = state['batch']
            train_step(model, optimizer, batch, batch.batch_size,
                       spec['trim'])
        return step

    fns = {'sampling': sample, **{name: step_of(name) for name in layers}}
    for _ in range(spec['warmup']):
        for fn in fns.values():
            fn()
    state['edges'].clear()
    state['nodes'].clear()
    medians = interleaved_medians(fns, device, spec['steps'])
    parts = {name: step_parts(fns[name], device) for name in layers}
    # End to end: the trainer's loader (NeighborBatches), sampling ahead in
    # its workers while the model trains; the layers in turn, each with a
    # loader of its own.
    # Training gets the cores the workers leave (training_threads, as the
    # trainer does), and, where that is fewer, also every thread of the
    # rank, so that each layer's better setting shows.
    data.train_mask = torch.zeros(data.num_nodes, dtype=torch.bool)
    data.train_mask[graph['train_idx']] = True
    settings = {'split': training_threads(spec['workers']),
                'all': spec['threads_per_rank']}
    if settings['split'] >= settings['all']:
        settings = {'split': settings['all']}
    rates = {mode: {name: 0.0 for name in layers} for mode in settings}
    turn = 0
    for _ in range(2):
        for mode, threads in settings.items():
            torch.set_num_threads(threads)
            for name in layers:
                turn += 1
                rates[mode][name] = max(rates[mode][name], end_to_end(
                    models[name], optimizers[name], data, spec, epoch=turn,
                    device=device))
    torch.set_num_threads(spec['threads_per_rank'])
    rates.setdefault('all', rates['split'])
    result = dict(medians=medians, check=check, status=status,
                  device=(torch.cuda.get_device_name(device)
                          if device.type == 'cuda' else 'cpu'),
                  parts=parts, steps_per_s=rates['split'],
                  steps_per_s_all_threads=rates['all'],
                  split_threads=settings['split'],
                  edges=statistics.mean(state['edges']),
                  nodes=statistics.mean(state['nodes']),
                  steps_per_epoch=math.ceil(shard.numel() /
                                            spec['batch_size']))
    if spec['memory']:
        from pyg_gatv2.fused import clear_layout_cache
        if device.type == 'cpu':
            pin_malloc()
        peaks = {name: 0.0 for name in layers}
        kept = {name: 0.0 for name in layers}
        for _ in range(spec['memory_steps']):
            sample()
            for name in layers:
                # A new batch's layout is not cached yet; emptying the
                # cache makes sure, so that the step builds it and counts
                # what it keeps.
                clear_layout_cache()
                memory = step_memory(fns[name], device)
                peaks[name] = max(peaks[name], memory.peak)
                kept[name] = max(kept[name], memory.kept)
        result.update(peak=peaks, kept=kept)
    return result


def train_step(model, optimizer, batch: Data, num_seeds: int,
               trim: bool) -> None:
    """One training step on :obj:`batch`, the loss on its first
    :obj:`num_seeds` nodes, the seeds; with :obj:`trim`, each layer
    computes only what the seeds need (``GATv2.forward``'s
    ``num_seeds``)."""
    optimizer.zero_grad(set_to_none=True)
    out = model(batch.x, batch.edge_index,
                **({'num_seeds': num_seeds} if trim else {}))[:num_seeds]
    F.cross_entropy(out, batch.y[:num_seeds]).backward()
    optimizer.step()


def step_parts(step, device: torch.device) -> dict[str, float]:
    """Seconds per step of each of :data:`PARTS` and of the rest, under the
    profiler over :data:`PROFILED_STEPS` runs of :obj:`step` (each on the
    batch last sampled): the operators' own CPU times on the CPU; on a
    GPU, the time of the kernels that each operator launched itself, the
    parts of :data:`GPU_INCLUSIVE_PARTS` with the kernels of the
    operators under theirs that no part names (:func:`split_parts`)."""
    from torch.profiler import ProfilerActivity, profile
    gpu = device.type == 'cuda'
    activities = [ProfilerActivity.CPU]
    if gpu:
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(PROFILED_STEPS):
            step()
        synchronize(device)
    if gpu:
        seconds = split_parts(prof.events(), 'self_device_time_total',
                              GPU_INCLUSIVE_PARTS)
    else:
        seconds = split_parts(prof.events(), 'self_cpu_time_total')
    return {part: value / 1e6 / PROFILED_STEPS
            for part, value in seconds.items()}


def split_parts(events, own: str,
                inclusive_parts: tuple[str, ...] = ()) -> dict[str, float]:
    """The profiler's microseconds by part of :data:`PARTS` and ``other``
    (the rest), from the operators' events (the kernels' own events, whose
    time their operators already count, are left out). Each event's
    ``own`` time goes to the first part one of whose names its name
    holds; an event that names none goes to the part of the nearest event
    above it that names one, where that part is one of
    ``inclusive_parts``, and to ``other`` otherwise."""
    from torch.autograd import DeviceType

    def part_of(event) -> Optional[str]:
        return next((part for part, names in PARTS.items()
                     if any(name in event.name for name in names)), None)

    def claimed(event) -> Optional[str]:
        parent = event.cpu_parent
        while parent is not None:
            part = part_of(parent)
            if part is not None:
                return part if part in inclusive_parts else None
            parent = parent.cpu_parent
        return None

    seconds = {part: 0.0 for part in PARTS}
    total = 0.0
    for event in events:
        if event.device_type != DeviceType.CPU:
            continue
        time = getattr(event, own)
        total += time
        part = part_of(event) or claimed(event)
        if part is not None:
            seconds[part] += time
    seconds['other'] = total - sum(seconds.values())
    return seconds


def end_to_end(model, optimizer, data: Data, spec: dict, epoch: int,
               device: torch.device) -> float:
    """Steps per second of training :obj:`model` on the batches of
    :class:`~pyg_gatv2.experiments.training.NeighborBatches` with
    ``spec['workers']`` workers sampling ahead: over ``spec['steps']``
    steps, after as many as the workers have sampled ahead of the first
    (and one more), on the epochs of the run seeded ``spec['seed']`` from
    epoch ``1000 * epoch`` on; the loader copies each batch to
    :obj:`device`, and each step is waited for there."""
    from pyg_gatv2.experiments.training import NeighborBatches
    loader = NeighborBatches(data, spec['num_neighbors'], spec['batch_size'],
                             device=device, num_workers=spec['workers'])
    skip = 2 * spec['workers'] + 1
    # Epochs on end, so that a small graph's short epochs do not run out.
    batches = (batch for later in range(1000)
               for batch in loader.batches(seed=spec['seed'],
                                           epoch=1000 * epoch + later))
    ends = []
    for _ in range(skip + spec['steps']):
        batch = next(batches)
        train_step(model, optimizer, batch, batch.num_seeds, spec['trim'])
        synchronize(device)
        ends.append(time.perf_counter())
    del batches, loader  # the workers end with the loader
    return spec['steps'] / (ends[-1] - ends[skip - 1])


def agreement(models: dict[str, torch.nn.Module], batch: Data,
              kwargs: dict) -> dict:
    """One training step of each of the two models (``'ours'`` and
    ``'pyg'``, the same weights) on :obj:`batch` in eval mode, so without
    dropout (:func:`_common.training_step`); compares ours with PyG's:
    the output and the gradient of every parameter. Returns the ``status``
    (``'ok'`` or ``'MISMATCH (<tensor>: <error>)'``), the output's
    ``max_rel_error`` and the ``grad_max_rel_error`` of the
    ``worst_grad``."""
    steps = {}
    for name, model in models.items():
        model.eval()
        try:
            steps[name] = training_step(
                partial(model, batch.x, batch.edge_index, **kwargs),
                dict(model.named_parameters()))
        finally:
            model.train()
    checked = compare_steps(steps['ours'], steps['pyg'], TOLERANCE,
                            GRAD_TOLERANCE)
    worst_grad, grad_error = checked.worst_grad
    return dict(status=checked.status, max_rel_error=checked.output_error,
                grad_max_rel_error=grad_error, worst_grad=worst_grad)


# Launching torchrun ---------------------------------------------------------


def launch(procs: int, spec: dict, timeout: float) -> list[dict]:
    """Runs this script's ranks under ``torchrun --nproc-per-node procs``;
    returns each rank's result. Raises :class:`WorkerFailed` if a rank
    fails or the run outlasts :obj:`timeout` seconds."""
    threads = spec['threads_per_rank']
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    with tempfile.TemporaryDirectory() as folder:
        spec_path = Path(folder) / 'spec.json'
        spec = dict(spec, result=str(Path(folder) / 'result.json'))
        spec_path.write_text(json.dumps(spec))
        # The rendezvous binds port 0 and holds the port the system gives
        # it, which the ranks then join: a port picked free here could be
        # taken by another process before torchrun binds it.
        command = [
            sys.executable, '-m', 'torch.distributed.run', '--nnodes', '1',
            '--nproc-per-node', str(procs), '--rdzv-backend', 'c10d',
            '--rdzv-endpoint', '127.0.0.1:0', '--local-addr', '127.0.0.1',
            '--max-restarts', '0',
            str(Path(__file__).resolve()), '--rank-worker', str(spec_path)
        ]
        # A session of its own, so that a timeout ends the ranks too.
        proc = subprocess.Popen(command, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_session(proc)
            raise WorkerFailed(f'timed out after {timeout:g} s') from None
        except BaseException:  # Ctrl-C: the ranks are outside its reach
            kill_session(proc)
            raise
        if code != 0:
            raise WorkerFailed(f'error: torchrun exit code {code}')
        return json.loads(Path(spec['result']).read_text())


# The report -----------------------------------------------------------------


def summarize(procs: int, threads: int, runs: list[list[dict]],
              batch_size: int) -> list[dict]:
    """One row per layer from the runs (each a list of rank results) of
    one process count: medians over runs of the slowest rank's medians.
    A layer that failed its check in any run gets its status and the
    check's errors, and no times, memory or ratios."""
    def over_runs(key: str) -> float:
        return statistics.median(
            max(rank['medians'][key] for rank in ranks) for ranks in runs)

    def rate_over_runs(key: str, rates: str = 'steps_per_s') -> float:
        return statistics.median(
            min(rank[rates][key] for rank in ranks) for ranks in runs)

    def best_rate(key: str) -> float:
        return max(rate_over_runs(key),
                   rate_over_runs(key, 'steps_per_s_all_threads'))

    first = runs[0]
    status = {name: next((rank['status'][name] for ranks in runs
                          for rank in ranks
                          if rank['status'][name] != 'ok'), 'ok')
              for name in LAYERS}
    passed = [name for name in LAYERS if status[name] == 'ok']
    sampling = over_runs('sampling')
    model = {name: over_runs(name) for name in passed}
    steps = max(rank['steps_per_epoch'] for rank in first)
    peaks = {name: max(rank['peak'][name] for rank in first)
             for name in passed}
    kept = {name: max(rank['kept'][name] for rank in first)
            for name in passed}
    output_error = max(rank['check']['max_rel_error'] for rank in first)
    worst = max((rank['check'] for rank in first),
                key=lambda check: check['grad_max_rel_error'])
    rows = []
    for name, label in LAYERS.items():
        row = dict(
            processes=procs, threads_per_rank=threads,
            device=first[0]['device'], layer=label,
            status=status[name],
            sampled_nodes=f"{statistics.mean(r['nodes'] for r in first):.0f}",
            sampled_edges=f"{statistics.mean(r['edges'] for r in first):.0f}",
            sampling_ms=f'{sampling * 1e3:.1f}', steps_per_epoch=steps)
        if name == 'ours':  # the layer checked against PyG's
            row.update(max_rel_error=f'{output_error:.1e}',
                       grad_max_rel_error=f"{worst['grad_max_rel_error']:.1e}",
                       worst_grad=worst['worst_grad'])
        if name in passed:
            all_threads = rate_over_runs(name, 'steps_per_s_all_threads')
            step = sampling + model[name]
            peak = peaks[name]
            # A tiny graph's step can stay within memory the process
            # holds.
            ratio = (f"{peak / peaks['pyg']:.3f}" if peaks['pyg'] > 0
                     else 'n/a')
            row.update(
                model_ms=f'{model[name] * 1e3:.1f}',
                # Three decimals: a --quick epoch of our layer takes
                # milliseconds.
                model_s_per_epoch=f'{model[name] * steps:.3f}',
                s_per_epoch=f'{step * steps:.3f}',
                seeds_per_s=f'{procs * batch_size / step:.0f}',
                peak_mib=f'{peak / MiB:.1f}',
                kept_mib=f'{kept[name] / MiB:.1f}',
                model_speedup=f"{model['pyg'] / model[name]:.2f}",
                memory_ratio=ratio,
                overlapped_threads=first[0]['split_threads'],
                overlapped_seeds_per_s=(
                    f'{procs * batch_size * rate_over_runs(name):.0f}'),
                overlapped_speedup=(
                    f"{rate_over_runs(name) / rate_over_runs('pyg'):.2f}"),
                all_threads_seeds_per_s=(
                    f'{procs * batch_size * all_threads:.0f}'),
                best_vs_best=f"{best_rate(name) / best_rate('pyg'):.2f}")
            slowest = max((rank['parts'][name] for rank in first),
                          key=lambda parts: sum(parts.values()))
            for part in (*PARTS, 'other'):
                row[f'{part}_ms'] = f'{1e3 * slowest[part]:.1f}'
            if name == 'ours':
                share = (sum(slowest[part] for part in ATTENTION_PARTS)
                         / sum(slowest.values()))
                row['attention_share'] = f'{share:.3f}'
                row['attention_free_speedup'] = (
                    f"{model['pyg'] / (model[name] * (1 - share)):.2f}")
        rows.append(row)
    return rows


COLUMNS = ['processes', 'threads_per_rank', 'device', 'layer', 'status',
           'sampled_nodes', 'sampled_edges', 'sampling_ms', 'model_ms',
           'model_s_per_epoch', 's_per_epoch', 'seeds_per_s',
           'overlapped_threads', 'overlapped_seeds_per_s',
           'overlapped_speedup', 'all_threads_seeds_per_s', 'best_vs_best',
           'peak_mib',
           'kept_mib', 'model_speedup', 'memory_ratio', 'max_rel_error',
           'grad_max_rel_error', 'worst_grad']
PART_COLUMNS = ['processes', 'threads_per_rank', 'layer',
                *(f'{part}_ms' for part in (*PARTS, 'other')),
                'attention_share', 'attention_free_speedup']


def report(args: argparse.Namespace, full: Data, estimate: dict,
           rows: list[dict], failures: list[str], seconds: float,
           load: tuple[float, float]) -> str:
    points = ', '.join(
        f"{p['per_edge']:.0f} B/edge at N={p['nodes']}"
        for p in estimate['points'])
    train = full.train_idx.numel()
    lines = [
        f'Synthetic stochastic block model: N={full.num_nodes}, '
        f'E={full.num_edges} (undirected, both directions), '
        f'{args.classes} classes, homophily {args.homophily}, '
        f'{args.features} bag-of-words features ({args.words} words per '
        f'node); {train} training nodes. 2-layer GATv2, '
        f'{args.heads}x{args.hidden} hidden, dropout {args.dropout}, Adam. '
        f'NeighborLoader, batch {args.batch_size} seeds per rank, fan-out '
        f"{' '.join(map(str, args.num_neighbors))}; "
        + ('every layer computes every sampled node.'
           if args.whole_subgraph else
           "each layer computes only the nodes the seeds' outputs need "
           '(GATv2.forward with num_seeds; both models).'),
        '',
        f"Full-batch PyG training step, estimated: "
        f"{estimate['bytes'] / GiB:.1f} GiB above the graph itself "
        f'(measured {points}; scaled by edges + self-loops).',
        '',
        (f'{args.threads} CPU threads per run: 1 process x '
         f'{args.threads} threads, or P processes x {args.threads} / P '
         'threads (DDP, gloo, 127.0.0.1). '
         if args.device == 'cpu' else
         f"Models on the GPU ({', '.join(sorted({r['device'] for r in rows}))}"
         '), one per process '
         f'(DDP, NCCL); {args.threads} CPU threads per run for sampling, '
         'split over its ranks; a batch is copied to the GPU as part of its '
         'sampling, and every timed step is waited for. ')
        + f'Times are medians of {args.steps} interleaved steps '
        f'(after {args.warmup} warm-up steps) per run, the slowest rank, '
        f'then the median over {args.rounds} runs per process count, '
        'alternating. Sampling: drawing a batch (and a barrier across '
        'ranks); model: forward, backward, all-reduce, Adam step. Seconds '
        'per epoch are extrapolated: median step x steps per epoch '
        '(training nodes per rank / batch). seeds/s counts all ranks. '
        'Memory, the largest over '
        f'{args.memory_steps} batches and the ranks, '
        + ('allocator pinned: ' if args.device == 'cpu' else
           "on the GPU (the CUDA caching allocator's count): ")
        + 'peak_mib is the largest growth during a training step on a '
        'newly drawn batch above the level before it, with our layout '
        'cache and buffer cache emptied, so that it counts the layout of '
        'the batch that our layer builds in the step and keeps until the '
        'next batch, and every buffer of our kernels; kept_mib is the part '
        'of that growth still held after the step returned and garbage '
        'was collected (measured: for our layer, that layout and the '
        'buffers its kernels keep for the next step). model_speedup: PyG '
        "model time / this model time; memory_ratio: this peak / PyG's "
        'peak.',
        '',
        'End to end (overlapped_seeds_per_s): the trainer\'s loader '
        '(pyg_gatv2.experiments.training.NeighborBatches) with '
        f'{args.workers} worker process(es) per rank sampling ahead while '
        'the model trains (0: sampling in turn with the steps), training '
        'with overlapped_threads threads, the cores the workers leave '
        '(pyg_gatv2.experiments.training.sampling.training_threads, as '
        "`pyg-gatv2 train` does), each layer with a loader of its own, the "
        'layers in turn, twice; the rate of '
        f'{args.steps} steps after those the workers sampled ahead of the '
        'first (and one more), of the slowest rank, the better of the two '
        "turns, then the median over runs. overlapped_speedup: PyG's time "
        "per step over this one's, end to end. all_threads_seeds_per_s: "
        "the same with training on all of the rank's threads (where that is "
        'more than overlapped_threads, else the same runs); best_vs_best: '
        "this layer's better rate of the two settings over PyG's better "
        'one.',
        '',
        'Check, before any timing: one training step of both models on '
        "each rank's first batch, same weights, eval mode (no dropout), "
        'loss (out * w).sum() with w fixed standard normal draws, one per '
        "output entry. max_rel_error: the largest difference of our output "
        "from PyG's over its largest entry (or over 1, if smaller), the "
        'largest over the ranks; grad_max_rel_error: the largest '
        "difference of a gradient from PyG's over that gradient's largest "
        'entry (or over 1), for the gradient of a parameter that differs '
        f'most, worst_grad. Beyond {TOLERANCE:g} in the output or '
        f'{GRAD_TOLERANCE:g} in a gradient, our model is MISMATCH '
        '(<tensor>: <error>) and not timed.',
        '',
        markdown_table(rows, COLUMNS),
        '',
        'Where a step goes (ms per step, the first run, the slowest rank): '
        + ('the own time of the operators' if args.device == 'cpu' else
           'the time of the GPU kernels that each operator launched itself '
           '(attention and layout also with those of the operators under '
           'theirs that no part names: the sort, the allocations)')
        + f' under the profiler over {PROFILED_STEPS} training steps on '
        'one batch, summed by part: '
        'attention, the fused kernels of our layer, forward and backward; '
        'layout, the edge layout of each new edge_index; projections, the '
        'matrix products (the linear layers, forward and backward; for our '
        'layer, those of a mostly-zero input from its nonzero entries, '
        'pyg_gatv2.projection, the C++ library); '
        'dropout_draws, the random numbers of dropout; input_dropout, the '
        'search for the nonzero input features and the writing of the '
        "dropped ones (pyg_gatv2.models.sparse_feature_dropout, both models'"
        "); other, the rest (for PyG's layer its message passing; for both "
        "the trimming to the seeds' neighbourhoods, the activations, the "
        'loss, Adam). The profiler adds its own time; the parts are '
        'shares, model_ms the time. attention_share: the share of our '
        'fused attention (attention and layout) in our step; '
        "attention_free_speedup: PyG's model_ms over ours less that share, "
        'the model_speedup that our layer would give if its attention took '
        'no time, its projections and the rest of the model as measured.',
        '',
        markdown_table(rows, PART_COLUMNS),
    ]
    if failures:
        lines += ['', 'Failed runs: ' + '; '.join(failures)]
    lines += ['', f'Wall time {seconds / 60:.1f} min; load average (1 min) '
              f'{load[0]:.1f} at the start and {load[1]:.1f} at the end on '
              f'{os.cpu_count()} cores; {cpp_level()}; memory '
              f'allocator: {allocator()}; huge pages: {huge_pages()}; buffer '
              f'cache: {buffer_cache()}. '
              f'`{command_line()}`', '']
    return '\n'.join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    if args.rank_worker is not None:
        rank_main(args.rank_worker)
        return
    start, load = time.perf_counter(), os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    base = dict(features=args.features, classes=args.classes,
                hidden=args.hidden, heads=args.heads, dropout=args.dropout,
                lr=args.lr, seed=args.seed)
    tic = time.perf_counter()
    full = synthetic_graph(**graph_spec(args, args.nodes))
    print(f'graph: N={full.num_nodes}, E={full.num_edges}, built in '
          f'{time.perf_counter() - tic:.1f} s', flush=True)
    try:
        estimate = estimate_fullbatch(args, base, full)
    except WorkerFailed as error:
        sys.exit(f'full-batch PyG memory not measured: {error}')
    print(f"full-batch PyG training step, estimated: "
          f"{estimate['bytes'] / GiB:.1f} GiB", flush=True)

    runs: dict[int, list[list[dict]]] = {p: [] for p in args.procs}
    failures = []
    with tempfile.TemporaryDirectory() as folder:
        graph_file = Path(folder) / 'graph.pt'
        torch.save(dict(x=full.x, y=full.y, edge_index=full.edge_index,
                        train_idx=full.train_idx), graph_file)
        for round_ in range(args.rounds):
            for procs in args.procs:
                spec = dict(
                    base, graph_file=str(graph_file),
                    threads_per_rank=args.threads // procs,
                    batch_size=args.batch_size,
                    num_neighbors=args.num_neighbors, steps=args.steps,
                    workers=args.workers,
                    trim=not args.whole_subgraph,
                    warmup=args.warmup, memory_steps=args.memory_steps,
                    memory=not runs[procs], collective_timeout=args.timeout,
                    device=args.device)
                print(f'round {round_ + 1}/{args.rounds}: {procs} '
                      'process(es)', flush=True)
                try:
                    result = launch(procs, spec, args.timeout)
                except WorkerFailed as err:
                    failures.append(f'{procs} processes, round '
                                    f'{round_ + 1}: {err}')
                    print(failures[-1], flush=True)
                    continue
                runs[procs].append(result)

    rows = []
    for procs in args.procs:
        if runs[procs]:
            rows += summarize(procs, args.threads // procs, runs[procs],
                              args.batch_size)
    markdown = report(args, full, estimate, rows, failures,
                      time.perf_counter() - start,
                      (load, os.getloadavg()[0]))
    print(markdown)
    write_report(args.out / args.name, markdown, rows,
                 COLUMNS + [c for c in PART_COLUMNS if c not in COLUMNS])
    if failures:
        sys.exit(1)


if __name__ == '__main__':
    main()
