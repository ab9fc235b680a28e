"""Data-parallel training over several processes, as in PyG's
``examples/multi_gpu`` scripts: one process per GPU (or per CPU share),
launched by ``torchrun``; each process trains on its share of the training
nodes, :class:`~torch.nn.parallel.DistributedDataParallel` averages the
gradients, and process 0 alone writes outputs.

The trainer reads the process group that
:func:`~pyg_gatv2.experiments.training.process_group` sets up (or that a
script set up with :func:`torch.distributed.init_process_group`); without
one it runs as a single process, through the same code.

Every collective waits at most the process group's timeout. When a process
dies or stops answering, the others fail in their next collective, and
:func:`~pyg_gatv2.experiments.training.process_group` turns that failure
into a :class:`DistributedError` that names this process and where every
other process last was, read from a heartbeat each process leaves in the
rendezvous store at every step.
"""
import contextlib
import datetime
import gc
import os
import traceback
from collections.abc import Iterator
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

__all__ = ['DEFAULT_TIMEOUT', 'DistributedError', 'all_gather_objects',
           'all_reduce_sum', 'end_process_group', 'heartbeat', 'is_main',
           'join_process_group', 'launched', 'main_first', 'process_group',
           'world', 'wrap']

# Seconds a collective waits for the other processes before failing.
DEFAULT_TIMEOUT = 120.0
_HEARTBEAT_KEY = 'pyg_gatv2/heartbeat/'
_PREPARED_KEY = 'pyg_gatv2/prepared/'
_TORCHRUN_VARS = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR',
                  'MASTER_PORT')


class DistributedError(RuntimeError):
    """A process of a multi-process run died or stopped answering."""


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher
    that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT``)."""
    return all(name in os.environ for name in _TORCHRUN_VARS)


def world() -> tuple[int, int]:
    """This process's rank and the number of processes; ``(0, 1)`` without
    a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process writes the outputs (rank 0)."""
    return world()[0] == 0


@contextlib.contextmanager
def process_group(device: torch.device,
                  timeout: float = DEFAULT_TIMEOUT) -> Iterator[torch.device]:
    """Joins the processes ``torchrun`` started, for the duration of the
    block, and yields this process's device.

    Under ``torchrun`` the backend is NCCL on CUDA, each process taking the
    GPU of its ``LOCAL_RANK``, and gloo on the CPU; without ``torchrun``
    (or with one process) nothing is set up and :obj:`device` comes back
    as it is. A collective that fails inside the block (a process died, or
    did not answer for :obj:`timeout` seconds) raises
    :class:`DistributedError` naming the processes concerned.

    An error that leaves the block has the local variables of the
    functions it left cleared before the group ends, so that the
    :class:`~torch.nn.parallel.DistributedDataParallel` wrappers they held
    are freed first (see
    :func:`~pyg_gatv2.experiments.training.distributed.end_process_group`);
    its traceback still names every line.

    Args:
        device (torch.device): ``cpu`` or ``cuda`` (any index: the local
            rank picks the GPU).
        timeout (float, optional): Seconds a collective waits for the other
            processes. (default: :obj:`120`)
    """
    if not launched() or int(os.environ['WORLD_SIZE']) == 1:
        yield device
        return
    device = join_process_group(device, timeout, caller='process_group')
    try:
        yield device
    except BaseException as err:
        traceback.clear_frames(err.__traceback__)
        if (isinstance(err, RuntimeError)
                and not isinstance(err, DistributedError)
                and _collective_failure(err)):
            raise DistributedError(_lost_message(err, timeout)) from err
        raise
    finally:
        end_process_group()


def join_process_group(device: torch.device,
                       timeout: float = DEFAULT_TIMEOUT,
                       caller: str = 'join_process_group') -> torch.device:
    """Sets up the default process group of the processes ``torchrun``
    started, however many they are, and returns this process's device:
    NCCL with the GPU of the process's ``LOCAL_RANK`` on CUDA, gloo on the
    CPU. :func:`~pyg_gatv2.experiments.training.process_group` calls it
    for two processes or more; end the group with
    :func:`~pyg_gatv2.experiments.training.distributed.end_process_group`.

    Args:
        device (torch.device): ``cpu`` or ``cuda`` (any index: the local
            rank picks the GPU).
        timeout (float, optional): Seconds a collective waits for the other
            processes. (default: :obj:`120`)
        caller (str, optional): The name that error messages give for the
            function that was called. (default: :obj:`'join_process_group'`)
    """
    if not launched():
        missing = [name for name in _TORCHRUN_VARS if name not in os.environ]
        raise RuntimeError(
            f"'{caller}' joins the processes that torchrun started, but "
            f"{', '.join(missing)} is not set; start the script with "
            "'torchrun --nproc-per-node N script.py'")
    if not timeout > 0:
        raise ValueError(f"'{caller}' got timeout={timeout!r}; pass a "
                         'positive number of seconds')
    if device.type == 'cuda':
        device = torch.device('cuda', int(os.environ['LOCAL_RANK']))
        torch.cuda.set_device(device)
        backend = 'nccl'
    else:
        backend = 'gloo'
    dist.init_process_group(
        backend, timeout=datetime.timedelta(seconds=timeout),
        device_id=device if backend == 'nccl' else None)
    return device


def end_process_group() -> None:
    """Destroys the default process group, once the
    :class:`~torch.nn.parallel.DistributedDataParallel` wrappers that
    nothing reaches any more are freed.

    A wrapper can sit in a reference cycle (the first one of a process
    does), and is then freed when the garbage collector runs, not when its
    last user lets it go. A wrapper freed after the group was destroyed
    drops the last reference to the group from its reducer, which holds
    the GIL meanwhile, and the group's destructor waits for its worker
    threads, one of which may be waiting for the GIL to free the tensors of
    a collective that just ended: the process hangs. Freed while the group
    is still registered, the wrapper leaves the group's end to
    :func:`torch.distributed.destroy_process_group`, which lets the GIL go
    while the threads stop. A wrapper that a variable still holds is its
    holder's to drop first.
    """
    gc.collect()
    dist.destroy_process_group()


def _collective_failure(err: RuntimeError) -> bool:
    """Whether ``err`` came from the communication between processes."""
    if isinstance(err, dist.DistError):
        return True
    text = str(err)
    return any(word in text for word in ('gloo', 'NCCL', 'Connection',
                                         'Timed out', 'timed out'))


def _lost_message(err: RuntimeError, timeout: float) -> str:
    rank, size = world()
    mine = _heartbeat_position(rank)
    # Every other rank with where it last reported: the one that stopped
    # answering may have reported the same place as this one.
    others = [f'rank {other} at {where or "its start"}'
              for other in range(size) if other != rank
              for where in [_heartbeat_position(other)]]
    where = ''
    if others:
        where = (f" ({'; '.join(others)}, while rank {rank} was at "
                 f"{mine or 'its start'})")
    cause = ' '.join(str(err).split())
    return (f'rank {rank} of {size} lost the other processes: a process died, '
            f'or did not answer for {timeout:g} s (--dist-timeout){where}. '
            f'The error: {cause[:300]}')


_position = {'epoch': None, 'stage': None}


def heartbeat(epoch: Optional[int] = None,
              stage: Optional[str] = None) -> None:
    """Records in the rendezvous store where this process is: a new
    :obj:`epoch` (which clears the stage), or a :obj:`stage` of it (e.g.
    ``'step 2: forward'``, ``'evaluation'``), so that a failure can name
    where each process was. Does nothing without a process group.
    """
    rank, size = world()
    if size == 1:
        return
    if epoch is not None:
        _position.update(epoch=epoch, stage=None)
    if stage is not None:
        _position['stage'] = stage
    store = _store()
    if store is not None:
        where = f"epoch {_position['epoch']}"
        if _position['stage'] is not None:
            where += f", {_position['stage']}"
        store.set(f'{_HEARTBEAT_KEY}{rank}', where)


def _heartbeat_position(rank: int) -> Optional[str]:
    store = _store()
    if store is None:
        return None
    try:
        store.set_timeout(datetime.timedelta(seconds=2))
        if not store.check([f'{_HEARTBEAT_KEY}{rank}']):
            return None
        return store.get(f'{_HEARTBEAT_KEY}{rank}').decode()
    except RuntimeError:
        return None


def _store() -> Optional[dist.Store]:
    # The store the process group met in; torchrun's own store outlives the
    # workers, so the heartbeats of a process that died can still be read.
    try:
        return dist.distributed_c10d._get_default_store()
    except (RuntimeError, ValueError):
        return None


@contextlib.contextmanager
def main_first(timeout: float = 3600.0) -> Iterator[None]:
    """Runs the block in process 0 first, then in the first process of each
    other machine, then in the rest, so that files prepared by the block
    (a dataset processed on first use) are written once per folder, whether
    the machines share it or not.

    The processes wait through the rendezvous store, for at most
    :obj:`timeout` seconds, not through a collective, which would time out
    after the process group's shorter timeout while a large graph is being
    prepared.
    """
    rank, size = world()
    store = _store()
    if size == 1 or store is None:
        yield
        return
    machine = os.environ.get('GROUP_RANK', '0')
    first_here = os.environ.get('LOCAL_RANK', str(rank)) == '0'
    wait = datetime.timedelta(seconds=timeout)
    if rank != 0:
        store.wait([f'{_PREPARED_KEY}main'], wait)
        if not first_here:
            store.wait([f'{_PREPARED_KEY}{machine}'], wait)
    yield
    if rank == 0:
        store.set(f'{_PREPARED_KEY}main', '1')
    if first_here:
        store.set(f'{_PREPARED_KEY}{machine}', '1')


def wrap(module: torch.nn.Module,
         device: torch.device) -> torch.nn.Module:
    """:obj:`module` in :class:`DistributedDataParallel` under a process
    group of several processes; :obj:`module` itself otherwise."""
    if world()[1] == 1:
        return module
    return DistributedDataParallel(
        module, device_ids=[device] if device.type == 'cuda' else None)


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum of :obj:`tensor` over the processes (a copy, on
    :obj:`tensor`'s device)."""
    if world()[1] == 1:
        return tensor.clone()
    # NCCL reduces only GPU tensors.
    device = (torch.device('cuda', torch.cuda.current_device())
              if dist.get_backend() == 'nccl' else torch.device('cpu'))
    out = tensor.to(device, copy=True)
    dist.all_reduce(out)
    return out.to(tensor.device)


def all_gather_objects(obj: Any) -> list[Any]:
    """The :obj:`obj` of every process, by rank."""
    size = world()[1]
    if size == 1:
        return [obj]
    out = [None] * size
    dist.all_gather_object(out, obj)
    return out
