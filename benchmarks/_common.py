"""The harness shared by the benchmarks: isolation, checks, timing, memory,
failures and reports.

- :func:`run_isolated` runs a worker function of a benchmark in a fresh
  Python process, with JSON in and out and a time limit, so that one
  measurement does not inherit the allocator state of another and a crash
  (out of memory) or a hang ends the worker, not the benchmark.
- :func:`compare` checks an output against the reference;
  :func:`training_step` and :func:`compare_steps` check a training step,
  its output and the gradient of every parameter, before anything is
  timed.
- :func:`median_time` and :func:`interleaved_medians` time.
- :func:`peak_memory` and :func:`step_memory` measure.
- :func:`failure` says why a run failed, out of memory as such.
- :func:`raw_dir`, :func:`command_line`, :func:`markdown_table`,
  :func:`write_csv` and :func:`write_report` find the data and write the
  results.

Timings are medians after warm-up runs, with the GPU synchronised around
each run. Peak memory is the growth above the level before the call: on
CUDA from the caching allocator's statistics, on CPU from the process's
peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs``).
The CPU figure is only clean when freed memory goes back to the system at
once, which :func:`pin_malloc` arranges. What a call keeps after it
returns (a cache) is the growth of the allocated bytes (CUDA) or of the
resident set (CPU) that remains once garbage is collected.
"""
import argparse
import csv
import ctypes
import ctypes.util
import functools
import gc
import importlib.util
import json
import math
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

# glibc's mallopt parameters and pin_malloc's values for them: allocations
# above 64 KiB get a mapping of their own, unmapped on free, so that a freed
# tensor leaves the resident set at once (up to glibc's default count of such
# mappings; a run with MALLOC_MMAP_MAX_=0, see allocator(), has none), and
# free memory at the top of the heap goes back above glibc's default size.
_MALLOPT = {-3: 64 * 1024,  # M_MMAP_THRESHOLD
            -4: 65536,  # M_MMAP_MAX
            -1: 128 * 1024}  # M_TRIM_THRESHOLD


@functools.lru_cache(maxsize=None)
def _glibc() -> Optional[ctypes.CDLL]:
    """glibc, loaded once (finding it runs ``ldconfig``), or :obj:`None`
    where there is none."""
    if platform.system() != 'Linux':
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    except OSError:
        return None
    return libc if hasattr(libc, 'malloc_trim') else None


def pin_malloc() -> bool:
    """Fixes glibc's mmap threshold for the rest of the process and gives
    back the free memory it holds; returns whether it could (glibc only).

    By default glibc raises the threshold after large frees and keeps later
    allocations of that size in the heap, which the process does not give
    back: a benchmark that ran a large case first would then see a smaller
    growth of its resident set for every later case. A fixed threshold makes
    every large allocation fault its pages in afresh, which slows tensor
    code severalfold: measure memory in a process that pins the allocator,
    and time in one that does not. Memory that the heap kept from before
    (all of it under :data:`KEEP_FREED_MEMORY`) is released here, so that
    reusing it counts as growth again.
    """
    libc = _glibc()
    if libc is None:
        return False
    pinned = all(libc.mallopt(param, value)
                 for param, value in _MALLOPT.items())
    release_free_memory()
    return pinned


def release_free_memory() -> None:
    """Gives the pages of the heap's free memory back to the system
    (glibc's ``malloc_trim``; nothing elsewhere)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


# The environment under which glibc keeps freed memory in the process for
# later allocations (no allocation gets a mapping of its own, and the heap
# is never trimmed), as caching allocators such as jemalloc and tcmalloc do.
KEEP_FREED_MEMORY = {'MALLOC_MMAP_MAX_': '0',
                     'MALLOC_TRIM_THRESHOLD_': str(2**40)}


def allocator() -> str:
    """How this run's CPU memory allocator treats large tensors, for
    reports.

    Under glibc's defaults every allocation above 32 MiB gets pages of its
    own that are returned when it is freed, so the large temporaries of a
    training step fault their pages in afresh at every step, which can take
    as long as the arithmetic on them (PyG's message passing makes several
    per layer). Run a benchmark with :data:`KEEP_FREED_MEMORY` in the
    environment, or with a caching allocator in ``LD_PRELOAD``, to time it
    without that cost; worker processes inherit either.
    """
    preload = os.environ.get('LD_PRELOAD', '')
    if 'jemalloc' in preload or 'tcmalloc' in preload:
        return f'LD_PRELOAD={preload}'
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
        return 'the platform default'
    if all(os.environ.get(k) == v for k, v in KEEP_FREED_MEMORY.items()):
        setting = ' '.join(f'{k}={v}' for k, v in KEEP_FREED_MEMORY.items())
        return f'glibc malloc keeping freed memory ({setting})'
    return ('glibc malloc (large tensors get fresh pages at each '
            'allocation)')


# The settings of the memory behind large CPU tensors beyond the
# allocator's: our C++ kernels' buffer cache and huge pages
# (pyg_gatv2.fused.buffers), PyTorch's huge pages for all its CPU tensors.
BUFFER_SETTINGS = ('PYG_GATV2_BUFFER_CACHE', 'PYG_GATV2_HUGE_PAGES',
                   'THP_MEM_ALLOC_ENABLE')


def _our_buffers() -> str:
    from pyg_gatv2.fused import buffers
    return (f"our C++ kernels' buffers of {buffers.MIN_BYTES >> 20} MiB "
            'and more')


def huge_pages() -> str:
    """Which large CPU tensors this run maps in transparent huge pages,
    for reports."""
    from pyg_gatv2.fused import buffers
    mapped = []
    if buffers.enabled():
        mapped.append(_our_buffers())
    if os.environ.get('THP_MEM_ALLOC_ENABLE') == '1':
        mapped.append("PyTorch's (THP_MEM_ALLOC_ENABLE=1)")
    return ' and '.join(mapped) or 'none'


def buffer_cache() -> str:
    """Whether our kernels reuse their freed buffers in this run, for
    reports."""
    from pyg_gatv2.fused import buffers
    if buffers.cache_enabled():
        return f'{_our_buffers()} reused once freed'
    return 'off (PYG_GATV2_BUFFER_CACHE=0)'


def command_line() -> str:
    """The command that runs this script with its arguments, for reports,
    after the allocator's settings of :data:`KEEP_FREED_MEMORY` and
    :data:`BUFFER_SETTINGS` that this run has in its environment."""
    script = os.path.relpath(sys.argv[0])
    settings = [f'{k}={os.environ[k]}'
                for k in (*KEEP_FREED_MEMORY, *BUFFER_SETTINGS)
                if k in os.environ]
    return shlex.join(settings + ['python', script] + sys.argv[1:])


def machine(threads: int, device: Union[str, torch.device]) -> str:
    """The machine and the versions behind a report, for its header, with
    the CPU level of the C++ kernels (:func:`cpp_level`) and the memory
    allocator (:func:`allocator`)."""
    return (f'{platform.processor() or platform.machine()}, '
            f'{os.cpu_count()} CPUs, torch {torch.__version__}, '
            f'{threads} threads, device {device}, {cpp_level()}, '
            f'memory allocator: {allocator()}; huge pages: {huge_pages()}; '
            f'buffer cache: {buffer_cache()}')


def cpp_level() -> str:
    """Which C++ kernels run in this process, for reports: ``'C++ kernels
    at CPU level avx2'`` (:func:`pyg_gatv2.cpu_capability`, which
    ``PYG_GATV2_CPU_CAPABILITY`` chooses; worker processes inherit it), or
    ``'C++ kernels not built'``."""
    import pyg_gatv2
    level = pyg_gatv2.cpu_capability()
    return ('C++ kernels not built' if level is None else
            f'C++ kernels at CPU level {level}')


# Isolation: one measurement per process ------------------------------------


class WorkerFailed(RuntimeError):
    """A worker process ended without a result; ``str()`` says why."""


# Seconds a worker process may run before it is killed: far more than the
# largest default case of any benchmark takes, so that only a hang meets it.
WORKER_TIMEOUT = 3600.0


def run_isolated(worker: Callable[[dict], dict], spec: dict,
                 threads: int = 0,
                 timeout: float = WORKER_TIMEOUT) -> dict:
    """``worker(spec)`` in a fresh Python process; returns its result.

    :obj:`worker` is a module-level function of a benchmark script (or of a
    module beside it), loaded from its file in the worker; :obj:`spec` and
    the result are JSON. The worker inherits the environment (so
    ``PYG_GATV2_CPU_CAPABILITY``, the CPU level of the C++ kernels); with
    :obj:`threads` > 0, torch and OpenMP in the worker use that many
    threads. Raises :class:`WorkerFailed` when the worker dies: killed
    (``'out of memory (worker killed by SIGKILL)'``, the kernel's answer
    to a process that asks for too much), with an exit code, or still
    running after :obj:`timeout` seconds (``'timed out after N s'``), when
    it is killed with every process it started.
    """
    target = sys.modules[worker.__module__].__file__
    env = dict(os.environ)
    if threads > 0:
        env['OMP_NUM_THREADS'] = str(threads)
    with tempfile.NamedTemporaryFile('r', suffix='.json') as out:
        # A session of its own, so that killing it ends what it started
        # too (torch.compile's compile workers).
        proc = subprocess.Popen(
            [sys.executable, __file__, target, worker.__name__, out.name],
            stdin=subprocess.PIPE, text=True, env=env,
            start_new_session=True)
        try:
            proc.communicate(
                json.dumps(dict(spec=spec, threads=threads), default=str),
                timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_session(proc)
            raise WorkerFailed(f'timed out after {timeout:g} s') from None
        except BaseException:  # Ctrl-C: the worker is outside its reach
            kill_session(proc)
            raise
        if proc.returncode == 0:
            return json.load(out)
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        prefix = 'out of memory ' if name == 'SIGKILL' else ''
        raise WorkerFailed(f'{prefix}(worker killed by {name})')
    raise WorkerFailed(f'error: worker exit code {proc.returncode}')


def kill_session(proc: subprocess.Popen) -> None:
    """Kills :obj:`proc`, started with ``start_new_session=True``, and every
    process of its session; waits for it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # it ended on its own meanwhile
        pass
    proc.wait()


def add_timeout_flag(parser: argparse.ArgumentParser) -> None:
    """``--timeout``: seconds before a worker process is killed and its
    case reported as timed out (default :data:`WORKER_TIMEOUT`)."""
    parser.add_argument('--timeout', type=float, default=WORKER_TIMEOUT,
                        help='seconds before a worker process is killed '
                        f'and reported as timed out (default: '
                        f'{WORKER_TIMEOUT:g})')


def _worker_main(target: str, name: str, out: str) -> None:
    """The worker process of :func:`run_isolated`."""
    # Loaded by path under another name, so that a script's main() does
    # not run.
    spec = importlib.util.spec_from_file_location('_benchmark', target)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    request = json.load(sys.stdin)
    if request['threads'] > 0:
        torch.set_num_threads(request['threads'])
    result = getattr(module, name)(request['spec'])
    with open(out, 'w') as f:
        json.dump(result, f)


# Failures and checks ---------------------------------------------------------


def failure(error: BaseException) -> str:
    """The status of a run that raised :obj:`error`: ``'out of memory'``,
    or ``'error: <type>: <first line>'``. The full message goes to stderr."""
    print(f'{type(error).__name__}: {error}', file=sys.stderr)
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return 'out of memory'
    text = str(error)
    if 'out of memory' in text.lower() or "can't allocate" in text:
        return 'out of memory'
    first_line = text.splitlines()[0] if text else ''
    return f'error: {type(error).__name__}: {first_line}'


@dataclass
class Comparison:
    """How a tensor differs from the reference tensor."""
    max_abs: float  # largest absolute difference
    max_rel: float  # the same over max(1, largest |reference|)
    ok: bool  # max_rel within the tolerance


def compare(got: torch.Tensor, expected: torch.Tensor,
            tolerance: float) -> Comparison:
    """Compares :obj:`got` to :obj:`expected`: agreement means a largest
    difference of at most :obj:`tolerance` times the largest reference
    entry (or times one, for tensors smaller than one)."""
    if got.shape != expected.shape:
        raise ValueError(f'compare got shapes {tuple(got.shape)} and '
                         f'{tuple(expected.shape)}; they must match')
    max_abs = (got - expected).abs().max().item() if got.numel() else 0.0
    scale = max(1.0, expected.abs().max().item() if got.numel() else 0.0)
    return Comparison(max_abs, max_abs / scale, max_abs <= tolerance * scale)


# The tolerance of a float32 step's gradients against the reference's,
# relative to each gradient's largest entry (or to one, as :func:`compare`
# does): looser than the 1e-5 of the outputs, because the gradient of att
# sums a term over every edge, and its float32 rounding grows with the
# edges. Measured on CPU (C++ kernels, 4 heads x 32, against PyG eager):
# 3.6e-6 at 420,000 edges and 9.4e-6 at 1.2 million; against a float64
# step, 1.2e-5 at 4.1 million, the size of the largest case checked (the
# GPU case of gpu_checks.sh). The other gradients stayed under 1e-6.
GRAD_TOLERANCE = 3e-5

# The seed of the loss weights of every checked step, so that an
# implementation and its reference get the same loss.
LOSS_SEED = 0


def loss_weights(shape: Sequence[int], device: Union[str, torch.device],
                 seed: int = LOSS_SEED) -> torch.Tensor:
    """The weights of a checked step's loss ``(out * weights).sum()``: one
    standard normal draw per output entry (float32, seeded), so that the
    gradient reaching each output entry differs and a backward pass that
    mixes entries up cannot match by symmetry, as it can under
    ``out.sum()``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(shape), generator=gen).to(device)


@dataclass
class StepResult:
    """What one training step computes: its output and, by name, the
    gradient of every tensor it was asked about that requires one."""
    output: torch.Tensor
    grads: dict[str, torch.Tensor]


def training_step(forward: Callable[[], torch.Tensor],
                  leaves: dict[str, torch.Tensor],
                  seed: int = LOSS_SEED) -> StepResult:
    """Runs ``forward()`` and the backward pass of ``(out *
    loss_weights).sum()`` (:func:`loss_weights`, in float32); returns the
    output and the gradients of those of :obj:`leaves` (parameters by
    name, inputs) that require one. Their ``.grad`` is cleared before and
    after, so that the step's gradients are its own and none lingers."""
    wanted = {name: t for name, t in leaves.items() if t.requires_grad}
    for tensor in wanted.values():
        tensor.grad = None
    out = forward()
    weights = loss_weights(out.shape, out.device, seed)
    (out.float() * weights).sum().backward()
    grads = {name: (torch.zeros_like(t) if t.grad is None else
                    t.grad.detach().clone())
             for name, t in wanted.items()}
    for tensor in wanted.values():
        tensor.grad = None
    return StepResult(out.detach().clone(), grads)


OUTPUT = 'output'


@dataclass
class StepCheck:
    """How a training step differs from the reference step: the relative
    error (:func:`compare`) of each tensor, :data:`OUTPUT` first, then
    the gradients by name; and those beyond their tolerance."""
    errors: dict[str, float]
    failed: list[str]

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def output_error(self) -> float:
        return self.errors[OUTPUT]

    @property
    def worst_grad(self) -> tuple[str, float]:
        """The gradient that differs most, and its error (NaN counts as
        the largest); ``('', 0.0)`` for a step without gradients."""
        grads = [(name, error) for name, error in self.errors.items()
                 if name != OUTPUT]
        return max(grads, key=lambda item: _severity(item[1]),
                   default=('', 0.0))

    @property
    def worst_failed(self) -> tuple[str, float]:
        """The tensor beyond its tolerance that differs most, and its
        error; ``('', 0.0)`` when none is."""
        return max(((name, self.errors[name]) for name in self.failed),
                   key=lambda item: _severity(item[1]), default=('', 0.0))

    @property
    def status(self) -> str:
        """``'ok'``, or ``'MISMATCH (<tensor>: <error>)'`` naming the
        tensor of :attr:`worst_failed`."""
        if self.ok:
            return 'ok'
        name, error = self.worst_failed
        return f'MISMATCH ({name}: {error:.1e})'


def _severity(error: float) -> float:
    return math.inf if math.isnan(error) else error


def compare_steps(got: StepResult, expected: StepResult, tolerance: float,
                  grad_tolerance: Optional[float] = None) -> StepCheck:
    """Compares a training step with the reference step (:func:`compare`,
    in float32): the output within :obj:`tolerance`, every gradient within
    :obj:`grad_tolerance` (default :obj:`tolerance`), each of its largest
    entry or of one where that is smaller. The floor matters for a gradient
    whose terms cancel to almost nothing (the second layer's ``lin_r`` in
    the mini-batch model gets 1e-8 from terms of order one): it is rounding
    noise, different in two correct implementations, and only an error
    against the scale of its terms says something. Both steps must have
    gradients of the same names."""
    if set(got.grads) != set(expected.grads):
        raise ValueError(
            f'compare_steps got gradients of {sorted(got.grads)} and '
            f'{sorted(expected.grads)}; they must name the same tensors')
    if grad_tolerance is None:
        grad_tolerance = tolerance
    pairs = [(OUTPUT, got.output, expected.output, tolerance)] + [
        (name, got.grads[name], expected.grads[name], grad_tolerance)
        for name in expected.grads]
    errors, failed = {}, []
    for name, mine, theirs, limit in pairs:
        result = compare(mine.float(), theirs.float(), limit)
        errors[name] = result.max_rel
        if not result.ok:
            failed.append(name)
    return StepCheck(errors, failed)


# Timing ---------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


CLOCKS = {'wall': time.perf_counter, 'cpu': time.process_time}


def median_time(
    fn: Callable[[], object],
    device: torch.device,
    warmup: int = 1,
    min_repeat: int = 3,
    max_repeat: int = 25,
    min_seconds: float = 0.3,
    clock: str = 'wall',
) -> float:
    """Median time of :obj:`fn` in seconds: after :obj:`warmup` runs,
    repeated at least :obj:`min_repeat` times and until :obj:`min_seconds`
    have passed (at most :obj:`max_repeat` times).

    :obj:`clock` is ``'wall'`` (elapsed time) or ``'cpu'`` (CPU time of
    this process, all threads together): on a machine that other jobs load,
    the CPU time of a single-threaded run is what stays comparable.
    """
    if clock not in CLOCKS:
        raise ValueError(f"median_time got clock='{clock}'; choose one of "
                         f'{sorted(CLOCKS)}')
    if clock == 'cpu' and device.type != 'cpu':
        raise ValueError("median_time cannot use clock='cpu' on "
                         f"'{device}': the work runs on the device")
    now = CLOCKS[clock]
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    start = now()
    while len(times) < max_repeat and (len(times) < min_repeat
                                       or now() - start < min_seconds):
        synchronize(device)
        tic = now()
        fn()
        synchronize(device)
        times.append(now() - tic)
    return statistics.median(times)


def interleaved_medians(fns: dict[str, Callable[[], object]],
                        device: torch.device,
                        repeats: int) -> dict[str, float]:
    """Median seconds of each of :obj:`fns` over :obj:`repeats` runs,
    interleaved run by run so that load on a shared machine hits all alike.
    Warm them up first."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            tic = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - tic)
    return {name: statistics.median(values) for name, values in times.items()}


# Memory ---------------------------------------------------------------------


def status_bytes(key: str) -> int:
    """The bytes of ``key`` (``VmRSS``, ``VmHWM``) in ``/proc/self/status``
    (Linux); :class:`OSError` or :class:`RuntimeError` where it cannot be
    read."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f'{key} not found in /proc/self/status')


def cpu_memory_supported() -> bool:
    """Whether peak resident memory can be reset and read (Linux)."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        status_bytes('VmHWM')
    except (OSError, RuntimeError):
        return False
    return True


@dataclass
class Memory:
    """The memory of one call, in bytes above the level before it."""
    peak: float  # the largest growth while it ran
    kept: float  # the growth still held after it returned


def step_memory(fn: Callable[[], object], device: torch.device) -> Memory:
    """The peak memory of one call of :obj:`fn` above the level before it,
    and what it keeps: the growth that remains after it returned and
    garbage was collected (NaN for both where they cannot be measured).
    Whatever :obj:`fn` returns is dropped before the call ends, so run
    warm-up calls first. Our kernels' buffer cache
    (:func:`pyg_gatv2.fused.buffers.empty_cache`) is emptied before the
    call, so that the buffers the call reuses count in its peak, and not
    after it, so that what the cache holds counts as kept."""
    from pyg_gatv2.fused import buffers
    gc.collect()
    buffers.empty_cache()
    if device.type == 'cuda':
        synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        gc.collect()
        return Memory(float(peak),
                      float(torch.cuda.memory_allocated(device) - base))
    if not cpu_memory_supported():
        return Memory(math.nan, math.nan)
    # Free memory that the heap holds (a pinned allocator still keeps
    # chunks below its mmap threshold) is given back before each reading.
    release_free_memory()
    base = status_bytes('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # resets VmHWM to the current resident set
    fn()
    peak = max(status_bytes('VmHWM') - base, 0)
    gc.collect()
    release_free_memory()
    return Memory(float(peak), float(status_bytes('VmRSS') - base))


def peak_memory(fn: Callable[[], object], device: torch.device) -> float:
    """The :attr:`Memory.peak` of :func:`step_memory`."""
    return step_memory(fn, device).peak


# Reports --------------------------------------------------------------------


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A GitHub Markdown table of :obj:`rows` (dicts) over :obj:`columns`."""
    lines = ['| ' + ' | '.join(columns) + ' |',
             '|' + '|'.join('---' for _ in columns) + '|']
    for row in rows:
        lines.append('| ' + ' | '.join(str(row.get(c, '')) for c in columns) +
                     ' |')
    return '\n'.join(lines)


def write_csv(path: Path, rows: Sequence[dict],
              columns: Optional[Sequence[str]] = None) -> None:
    """Writes :obj:`rows` (dicts) to :obj:`path`, one column per key."""
    columns = list(columns or rows[0].keys())
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)


def write_report(stem: Path, markdown: str, rows: Sequence[dict],
                 columns: Optional[Sequence[str]] = None,
                 plot: Optional[Callable[[Path], None]] = None) -> None:
    """Writes ``<stem>.md``, ``<stem>.csv`` and, with :obj:`plot` (called
    with the path), ``<stem>.png``; says so on stdout."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix('.md').write_text(markdown)
    write_csv(stem.with_suffix('.csv'), rows, columns)
    if plot is not None:
        plot(stem.with_suffix('.png'))
    print(f"Wrote {stem}.md, .csv{' and .png' if plot else ''}")


def read_csv(path: Path) -> list[dict]:
    """The rows of a CSV that :func:`write_csv` wrote, as dicts of strings,
    without empty cells."""
    with open(path, newline='') as f:
        return [{k: v for k, v in row.items() if v != ''}
                for row in csv.DictReader(f)]


RESULTS = Path(__file__).resolve().parent / 'results'


def add_common_flags(parser: argparse.ArgumentParser, stem: str) -> None:
    """The flags every sweep shares: ``--raw-dir``, ``--device``,
    ``--seed``, ``--out`` and ``--name`` (default :obj:`stem`, and
    ``<stem>_quick`` with ``--quick``: set it after parsing)."""
    parser.add_argument('--raw-dir', type=Path, default=None,
                        help='folder of raw Planetoid files, '
                        '<dir>/Cora/raw/... (default: $PYG_GATV2_RAW_DIR)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', type=Path, default=RESULTS,
                        help='folder for the .md, .csv and .png')
    parser.add_argument('--name', default=None,
                        help=f'file stem (default: {stem}, {stem}_quick '
                        'with --quick)')


def add_cpu_backend_flag(parser: argparse.ArgumentParser,
                         help: str) -> None:
    """``--backend``: the fused backend to run on CPU, ``cpp`` or ``torch``
    (default :obj:`None`; :func:`cpu_backend` resolves it)."""
    parser.add_argument('--backend', choices=('cpp', 'torch'), default=None,
                        help=help)


def cpp_unavailable() -> Optional[str]:
    """Why the C++ kernels cannot run here (and how to get them), or
    :obj:`None` where they can."""
    from pyg_gatv2.fused.backends import registry
    return registry()['cpp'].unavailable_reason()


def cpu_backend(parser: argparse.ArgumentParser,
                backend: Optional[str]) -> str:
    """The fused backend of ``--backend``: as given, else ``'cpp'`` where
    the C++ kernels can run and ``'torch'`` where not; a parser error for
    ``cpp`` where they cannot."""
    reason = cpp_unavailable()
    if backend is None:
        return 'torch' if reason else 'cpp'
    if backend == 'cpp' and reason:
        parser.error(f'--backend cpp: {reason}; or use --backend torch')
    return backend


def raw_dir(flag: Optional[Path] = None) -> Optional[Path]:
    """The folder of raw Planetoid files: :obj:`flag` (a ``--raw-dir``),
    else ``$PYG_GATV2_RAW_DIR`` (the Makefile exports it), else None."""
    if flag is not None:
        return Path(flag)
    env = os.environ.get('PYG_GATV2_RAW_DIR')
    return Path(env) if env else None


def has_raw_files(folder: Optional[Path], name: str) -> bool:
    """Whether :obj:`folder` holds ``<name>/raw``; says what to do if not."""
    if folder is not None and (folder / name / 'raw').is_dir():
        return True
    where = f'in {folder}' if folder else '(no folder given)'
    print(f'{name}: raw files not found {where}; pass --raw-dir or set '
          f'PYG_GATV2_RAW_DIR. {name} skipped.', flush=True)
    return False


if __name__ == '__main__':
    _worker_main(*sys.argv[1:])
