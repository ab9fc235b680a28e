"""Data-parallel training in two processes on gloo over the loopback
interface: with torch.multiprocessing for the trainer's API, and with
torchrun for the command line, including a process that dies or hangs."""
import contextlib
import datetime
import faulthandler
import gc
import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback
import uuid
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _training_cases import (
    NUM_CLASSES,
    NUM_FEATURES,
    assert_same_state,
    build,
    same_runs,
    toy_graph,
)
from torch.nn.parallel import DistributedDataParallel

from pyg_gatv2.experiments.training import (
    Checkpointing,
    FullBatch,
    NeighborBatches,
    Recipe,
    Sampling,
    train_epoch,
    train_node_classifier,
)
from pyg_gatv2.experiments.training.checkpoint import cpu_state
from pyg_gatv2.experiments.training.distributed import (
    end_process_group,
    join_process_group,
    process_group,
    wrap,
)
from pyg_gatv2.models import GATv2

# Each test starts processes that train (about 10 to 20 s apiece).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
STEPS = 3
# Bounds on waiting for processes, generous on a loaded machine: reaching
# one means a process hung, and the test fails saying which; none of them
# is a claim about how fast anything runs. A worker of the two-process
# fixture takes about 10 to 30 s.
WORKER_TIMEOUT = 240
# For torchrun to start training, or to end after a rank failed.
LAUNCH_TIMEOUT = 300


def steps_without_dropout(batches_of_epoch) -> tuple[dict, list[float]]:
    """:data:`STEPS` epochs of Adam from the weights of seed 0; returns the
    weights and the losses."""
    torch.manual_seed(0)
    model = GATv2(NUM_FEATURES, NUM_CLASSES, dropout=0.0,
                  attention_dropout=0.0)
    train_model = wrap(model, torch.device('cpu'))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = [train_epoch(model, train_model, optimizer,
                          batches_of_epoch(epoch)).item()
              for epoch in range(1, STEPS + 1)]
    return cpu_state(model), losses


def sampled_steps(data, rank: int) -> dict:
    """:data:`STEPS` epochs of mini-batches with dropout, each rank with
    seeds of its own; returns the weights."""
    batches = NeighborBatches(data, [4, 4], batch_size=4)
    torch.manual_seed(rank)  # the weights must still start equal
    model = GATv2(NUM_FEATURES, NUM_CLASSES)
    train_model = wrap(model, torch.device('cpu'))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for epoch in range(1, STEPS + 1):
        train_epoch(model, train_model, optimizer,
                    batches.batches(seed=0, epoch=epoch))
    return cpu_state(model)


def worker(rank: int, rendezvous: str, out: Path) -> None:
    """One of two processes: full-batch steps, mini-batch steps, and a
    mini-batch run interrupted and resumed; writes what it got to
    ``out``."""
    # A process that stops short of the end prints where each of its
    # threads was and exits with an error, instead of being killed mute.
    faulthandler.dump_traceback_later(WORKER_TIMEOUT, exit=True)
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=rendezvous,
                            rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    data = toy_graph()
    got = {'full': steps_without_dropout(
        lambda epoch: FullBatch(data).batches(0, epoch)),
        'sampled': sampled_steps(data, rank)}

    def train(folder, resume=False, on_epoch=None):
        return train_node_classifier(
            build, data, [0], Recipe(epochs=6, patience=6),
            sampling=Sampling(8, [4, 4]),
            checkpoints=Checkpointing(out / folder, 2, resume),
            on_epoch=on_epoch)

    got['reference'] = train('ref')

    def interrupt(seed, metrics):
        if metrics.epoch == 3:
            raise KeyboardInterrupt

    try:
        train('run', on_epoch=interrupt)
    except KeyboardInterrupt:
        pass
    got['resumed'] = train('run', resume=True)
    torch.save(got, out / f'rank{rank}.pt')
    dist.barrier()  # the store of rank 0 outlives every other rank's work
    end_process_group()
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope='module')
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp('ddp')
    context = mp.get_context('spawn')
    # The ranks meet in a file: no port is chosen for them, so none can be
    # taken by another process between choosing and binding it (gloo's own
    # connections bind ports that the system picks).
    rendezvous = (out / 'rendezvous').as_uri()
    procs = [context.Process(target=worker, args=(rank, rendezvous, out))
             for rank in range(2)]
    # A worker hung outside its own watchdog (starting up, or exiting
    # after it) is sent SIGABRT, on which Python's fault handler, enabled
    # in its environment, prints where each of its threads was.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('PYTHONFAULTHANDLER', '1')
        for proc in procs:
            proc.start()
    try:
        deadline = time.monotonic() + WORKER_TIMEOUT + 60
        for proc in procs:
            proc.join(max(1.0, deadline - time.monotonic()))
        hung = [rank for rank, proc in enumerate(procs) if proc.is_alive()]
        for rank in hung:
            os.kill(procs[rank].pid, signal.SIGABRT)
            procs[rank].join(30)
        saved = [rank for rank in range(2)
                 if (out / f'rank{rank}.pt').exists()]
        assert not hung, (
            f'ranks {hung} never finished (ranks {saved} saved their '
            f'results; exit codes {[proc.exitcode for proc in procs]}); '
            'their threads are in the captured stderr')
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(60)
    assert [proc.exitcode for proc in procs] == [0, 0]
    return [torch.load(out / f'rank{rank}.pt', weights_only=False)
            for rank in range(2)]


def test_two_ranks_over_the_global_batch_equal_one_process(two_ranks):
    # Each rank takes half of the training nodes; the mean of their
    # gradients, each scaled by its share, is the gradient of one process.
    data = toy_graph()
    state, losses = steps_without_dropout(
        lambda epoch: FullBatch(data).batches(0, epoch))
    for rank_state, rank_losses in (got['full'] for got in two_ranks):
        for key in state:
            torch.testing.assert_close(rank_state[key], state[key],
                                       rtol=1e-4, atol=1e-5, msg=key)
        torch.testing.assert_close(rank_losses, losses, rtol=1e-5,
                                   atol=1e-6)


def test_parameters_are_identical_across_ranks(two_ranks):
    # Different seeds, subgraphs and dropout masks on each rank, the same
    # weights after every step.
    assert_same_state(two_ranks[0]['sampled'], two_ranks[1]['sampled'])
    assert_same_state(two_ranks[0]['full'][0], two_ranks[1]['full'][0])
    assert two_ranks[0]['reference'].runs[0].history == (
        two_ranks[1]['reference'].runs[0].history)


def test_resume_under_ddp_gives_the_uninterrupted_result(two_ranks):
    for got in two_ranks:
        same_runs(got['resumed'], got['reference'])


@contextlib.contextmanager
def wrappers_at_the_group_end(monkeypatch) -> Iterator[tuple[list, list]]:
    """Yields ``watched``, where the block puts weak references to DDP
    wrappers, and ``alive``, which gets at each end of the process group
    whether one of them still lives. The garbage collector is off in the
    block (a collection before the end would hide a wrapper kept alive),
    and a group the block left running is ended after it."""
    watched, alive = [], []
    destroy = dist.destroy_process_group
    monkeypatch.setattr(dist, 'destroy_process_group', lambda: (
        alive.append(any(w() is not None for w in watched)), destroy()))
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield watched, alive
    finally:
        if enabled:
            gc.enable()
        if dist.is_initialized():
            destroy()


def test_the_group_ends_after_unreachable_ddp_wrappers(tmp_path,
                                                      monkeypatch):
    # A wrapper freed after the group ends can hang the process (see
    # end_process_group); one that nothing reaches must be gone by then.
    dist.init_process_group('gloo', init_method=(tmp_path / 'store').as_uri(),
                            rank=0, world_size=1)
    with wrappers_at_the_group_end(monkeypatch) as (watched, alive):
        model = DistributedDataParallel(torch.nn.Linear(3, 2))
        model(torch.randn(4, 3)).sum().backward()
        watched.append(weakref.ref(model))
        cycle = [model]  # as the wrapper's own cycles hold it, at times
        cycle.append(cycle)
        del model, cycle
        end_process_group()
    assert alive == [False]


TORCHRUN_ENV = dict(RANK='0', WORLD_SIZE='2', LOCAL_RANK='0',
                    MASTER_ADDR='127.0.0.1', MASTER_PORT='29500')


def test_an_error_leaving_the_group_frees_the_wrappers_it_passed(
        tmp_path, monkeypatch):
    # The frames an error leaves hold their locals until the traceback
    # goes: a wrapper made in one of them must be gone when the group
    # ends, and the error, its traceback intact, reaches the caller.
    from pyg_gatv2.experiments.training import distributed
    for name, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(distributed, 'join_process_group', lambda *a, **k: (
        dist.init_process_group('gloo', rank=0, world_size=1,
                                init_method=(tmp_path / 'store').as_uri()),
        torch.device('cpu'))[1])

    def train(watched):
        model = DistributedDataParallel(torch.nn.Linear(3, 2))
        model(torch.randn(4, 3)).sum().backward()
        watched.append(weakref.ref(model))
        raise ValueError('a bad batch')

    with wrappers_at_the_group_end(monkeypatch) as (watched, alive):
        with pytest.raises(ValueError, match='a bad batch') as raised:
            with process_group(torch.device('cpu')):
                train(watched)
    assert alive == [False]
    assert ', in train\n' in ''.join(
        traceback.format_exception(raised.value))


def test_joining_outside_torchrun_says_how_to_launch(monkeypatch):
    for name, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv('LOCAL_RANK')
    with pytest.raises(RuntimeError, match=r"'join_process_group' joins .* "
                       r'but LOCAL_RANK is not set; start the script with '
                       r"'torchrun"):
        join_process_group(torch.device('cpu'))
    assert not dist.is_initialized()


def test_a_timeout_that_is_not_positive_is_refused(monkeypatch):
    for name, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=r"'join_process_group' got "
                       r'timeout=0; pass a positive number of seconds'):
        join_process_group(torch.device('cpu'), timeout=0)
    with pytest.raises(ValueError, match=r"'process_group' got "
                       r'timeout=-1.0; pass a positive'):
        with process_group(torch.device('cpu'), timeout=-1.0):
            pass
    assert not dist.is_initialized()


def processes_with(marker: str) -> list[int]:
    """The processes, zombies aside, whose environment holds ``marker``."""
    pids = []
    for proc in Path('/proc').glob('[0-9]*'):
        try:
            environ = (proc / 'environ').read_bytes().split(b'\0')
        except OSError:  # ended meanwhile, or not ours to read
            continue
        # A zombie's environment reads empty.
        if marker.encode() in environ:
            pids.append(int(proc.name))
    return pids


def wait_until(condition: Callable[[], bool], seconds: float,
               failure: Callable[[], str]) -> None:
    """Polls ``condition`` until it holds; fails with ``failure()`` if it
    still does not after ``seconds`` (a hang guard)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(failure())
        time.sleep(0.2)


@contextlib.contextmanager
def torchrun(flags, out, **kwargs) -> Iterator[subprocess.Popen]:
    """torchrun running ``pyg-gatv2 train`` in two workers, for the block;
    when the block ends, every process of the run has ended.

    torchrun starts each worker in a session of its own and forwards
    SIGTERM and SIGINT to them, but a SIGKILL of the launcher, or of its
    process group, reaches none of them: a worker that is stopped, or
    blocked outside the launcher's store, outlives it. So each process of
    the run is found by a mark in its environment, which the workers and
    their children inherit, and killed. Yields the launcher, whose
    ``marker`` is that mark.
    """
    run = uuid.uuid4().hex
    marker = f'PYG_GATV2_TEST_RUN={run}'
    env = {**os.environ, 'PYTHONPATH': str(REPO), 'OMP_NUM_THREADS': '1',
           'PYG_GATV2_TEST_RUN': run}
    launcher = subprocess.Popen(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone',
         '--nproc-per-node', '2', '-m', 'pyg_gatv2', 'train', *flags,
         '--out', str(out)],
        # A group of its own, so that killing it leaves pytest alone.
        cwd=out.parent, env=env, text=True, start_new_session=True,
        **kwargs)
    launcher.marker = marker
    try:
        yield launcher
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)
        for pid in processes_with(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        launcher.wait(timeout=60)
        wait_until(lambda: not processes_with(marker), 60,
                   lambda: f'processes {processes_with(marker)} of a '
                   'torchrun run outlived it after SIGKILL')


@pytest.fixture(scope='module')
def cora_flags(planetoid_raw_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp('planetoid')
    return ['--dataset', 'cora', '--raw-dir', str(planetoid_raw_dir),
            '--root', str(root), '--device', 'cpu', '--no-progress',
            '--threads', '1', '--batch-size', '32', '--num-neighbors', '5',
            '5', '--hidden', '4', '--heads', '2']


def test_torchrun_trains_with_one_reporting_rank(cora_flags, tmp_path):
    out = tmp_path / 'out'
    with torchrun([*cora_flags, '--epochs', '3'], out,
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) as launcher:
        stdout, stderr = launcher.communicate(timeout=LAUNCH_TIMEOUT)
        assert launcher.returncode == 0, stderr
        assert not processes_with(launcher.marker)
    # Rank 0 alone reports and writes.
    assert stdout.count('Seed 0: test ') == 1
    assert stdout.count('Test accuracy: ') == 1
    report = json.loads((out / 'results.json').read_text())
    assert report['settings']['processes'] == 2
    assert report['settings']['batch_size'] == 32
    assert report['runs'][0]['history']['epoch'] == [1, 2, 3]
    state = torch.load(out / 'checkpoints' / 'state_seed0.pt',
                       weights_only=True)
    assert state['settings']['world_size'] == 2
    assert len(state['rng_by_rank']) == 2


def worker_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The process id of torchrun's worker of ``rank``."""
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            ppid = int(stat.read_text().rsplit(')', 1)[1].split()[1])
            environ = (stat.parent / 'environ').read_bytes().split(b'\0')
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher.pid and f'RANK={rank}'.encode() in environ:
            return int(stat.parent.name)
    raise AssertionError(f'no worker of rank {rank}')


@contextlib.contextmanager
def long_run(cora_flags, out, timeout):
    """A run that would take minutes, once both ranks are training; yields
    the launcher and the file that holds what the run wrote to stderr."""
    log = out.parent / 'log.txt'
    flags = [*cora_flags, '--epochs', '100000', '--patience', '100000',
             '--checkpoint-every', '1', '--dist-timeout', str(timeout)]
    state = out / 'checkpoints' / 'state_seed0.pt'
    with log.open('w') as stderr, torchrun(
            flags, out, stdout=subprocess.DEVNULL, stderr=stderr) as launcher:
        wait_until(lambda: state.exists() or launcher.poll() is not None,
                   LAUNCH_TIMEOUT, lambda: 'training did not start: '
                   f'{log.read_text()[-2000:]}')
        assert launcher.poll() is None, log.read_text()
        yield launcher, log


def wait_for_the_end(launcher: subprocess.Popen, log: Path) -> int:
    """The exit code of the launcher, which must end with every process of
    the run."""
    try:
        code = launcher.wait(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f'torchrun never ended: {log.read_text()[-2000:]}')
    assert not processes_with(launcher.marker), 'workers outlived torchrun'
    return code


@pytest.mark.skipif(not sys.platform.startswith('linux'),
                    reason='finds the workers through /proc')
def test_a_killed_rank_stops_the_run(cora_flags, tmp_path):
    with long_run(cora_flags, tmp_path / 'out', timeout=30) as (launcher,
                                                                 log):
        os.kill(worker_pid(launcher, 1), signal.SIGKILL)
        code = wait_for_the_end(launcher, log)
    assert code != 0
    text = log.read_text()
    assert re.search(r'rank\s*:\s*1\b', text), text[-2000:]
    assert 'Signal 9 (SIGKILL)' in text


@pytest.mark.skipif(not sys.platform.startswith('linux'),
                    reason='finds the workers through /proc')
def test_a_hung_rank_is_named_with_the_timeout(cora_flags, tmp_path):
    # Rank 1 stops answering; rank 0's next collective gives up when the
    # 5 s of --dist-timeout run out (gloo's own words, quoted in the error,
    # say so), and its error names the timeout and where rank 1 was.
    with long_run(cora_flags, tmp_path / 'out', timeout=5) as (launcher,
                                                                log):
        hung = worker_pid(launcher, 1)
        os.kill(hung, signal.SIGSTOP)
        try:
            wait_until(lambda: 'lost the other processes' in log.read_text(),
                       LAUNCH_TIMEOUT, lambda: 'rank 0 never reported the '
                       f'lost rank: {log.read_text()[-2000:]}')
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(hung, signal.SIGCONT)  # so that torchrun can end it
        code = wait_for_the_end(launcher, log)
    assert code != 0
    message = next(line for line in log.read_text().splitlines()
                   if 'lost the other processes' in line)
    assert message.startswith('pyg-gatv2: error: rank 0 of 2 lost the other '
                              'processes: a process died, or did not answer '
                              'for 5 s (--dist-timeout) (rank 1 at epoch ')
    assert re.search(r'[Tt]imed out waiting 5000 ?ms', message), message
