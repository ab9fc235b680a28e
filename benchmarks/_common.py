"""Timing, memory and reporting helpers shared by the benchmarks.

Timings are medians after warm-up runs, with the GPU synchronised around
each run. Peak memory is the growth above the level before the call: on
CUDA from the caching allocator's statistics, on CPU from the process's
peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs``).
The CPU figure is only clean when freed memory goes back to the system at
once, which :func:`pin_malloc` arranges.
"""
import csv
import ctypes
import ctypes.util
import gc
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

import torch

# glibc's mallopt parameter, and the size above which allocations get their
# own mmap and are unmapped on free, so a freed tensor leaves the resident set
# at once.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 64 * 1024


def pin_malloc() -> bool:
    """Fixes glibc's mmap threshold for the rest of the process; returns
    whether it could (glibc only).

    By default glibc raises the threshold after large frees and keeps later
    allocations of that size in the heap, which the process does not give
    back: a benchmark that ran a large case first would then see a smaller
    growth of its resident set for every later case. A fixed threshold makes
    every large allocation fault its pages in afresh, which slows tensor
    code severalfold: measure memory in a process that pins the allocator,
    and time in one that does not.
    """
    if platform.system() != 'Linux':
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False


def command_line() -> str:
    """The command that runs this script with its arguments, for reports."""
    script = os.path.relpath(sys.argv[0])
    return shlex.join(['python', script] + sys.argv[1:])


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


def _status_bytes(key: str) -> int:
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
        _status_bytes('VmHWM')
    except (OSError, RuntimeError):
        return False
    return True


def peak_memory(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory of one call of :obj:`fn` above the level before it, in
    bytes (NaN where it cannot be measured). Whatever :obj:`fn` returns is
    dropped before the call ends, so run warm-up calls first."""
    gc.collect()
    if device.type == 'cuda':
        synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - base)
    if not cpu_memory_supported():
        return float('nan')
    base = _status_bytes('VmRSS')
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # resets VmHWM to the current resident set
    fn()
    return float(max(_status_bytes('VmHWM') - base, 0))


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
