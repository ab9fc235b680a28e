"""The large CPU buffers that the C++ kernels fill: kept for reuse, and
in transparent huge pages where Linux offers them.

A training step asks for buffers of about the same sizes at every step
(outputs, gradients and work space, tens of MB each for a sampled batch).
From the system allocator each would come as fresh memory: glibc's
``malloc`` maps fresh pages for allocations above its mmap threshold and
gives the pages of its heap back when its top is free, and the first
write to each 4 KiB page faults into the kernel, at a cost that can
exceed the kernel's own work (about 30 ms for 75 MB on one thread). It
grows where the system hands freed memory back to a hypervisor (free
page reporting), where a fresh page costs a fault on the host too.

:func:`empty` therefore takes buffers of :data:`MIN_BYTES` and more from
a cache of anonymous private mappings: a mapping whose tensors have all
died is handed out again to a request of about its size, its pages
already in place. Each tensor is an ordinary contiguous CPU tensor
(:func:`torch.frombuffer`) whose storage holds exactly its own bytes and
cannot be resized. At each request, free mappings beyond the most bytes
that the live ones have held at once are unmapped, the longest unused
first, so that the cache holds at most twice that; :func:`empty_cache`
gives the free ones back to the system now, and
``PYG_GATV2_BUFFER_CACHE=0`` maps every buffer afresh. Where
``/sys/kernel/mm/transparent_hugepage/enabled`` is ``madvise`` or
``always``, the mappings are advised for huge pages
(``madvise(MADV_HUGEPAGE)``), which fault in 2 MiB at a time, about four
times faster; ``PYG_GATV2_HUGE_PAGES=0`` turns that off. With both off,
:func:`empty` is :func:`torch.empty`.

PyTorch's own allocator maps all its CPU tensors in huge pages under
``THP_MEM_ALLOC_ENABLE=1``, set before the process starts.
"""
import functools
import math
import mmap
import os
import sys
import threading
from collections.abc import Sequence
from typing import List, Optional

import torch
from torch import Tensor

__all__ = ['empty', 'empty_like', 'empty_cache', 'cached_bytes', 'enabled',
           'cache_enabled', 'MIN_BYTES', 'ENV', 'CACHE_ENV']

ENV = 'PYG_GATV2_HUGE_PAGES'
CACHE_ENV = 'PYG_GATV2_BUFFER_CACHE'
#: Buffers from this size on come from the cache's mappings; smaller ones
#: from :func:`torch.empty`.
MIN_BYTES = 1 << 20
# Mappings come in whole huge pages, and a request takes a free mapping of
# up to a quarter (at least one huge page) more than it needs.
_GRANULE = 2 << 20
_THP_MODE = '/sys/kernel/mm/transparent_hugepage/enabled'


def _granules(nbytes: int) -> int:
    """:obj:`nbytes` rounded up to whole granules."""
    return -(-nbytes // _GRANULE) * _GRANULE


def _switch(name: str, meaning: str) -> bool:
    setting = os.environ.get(name, '1')
    if setting not in ('0', '1'):
        raise ValueError(f'{name}={setting!r}: set it to 1 ({meaning}, the '
                         'default) or 0 (off)')
    return setting == '1'


def enabled() -> bool:
    """Whether :func:`empty` maps large buffers in huge pages: Linux
    offers them and ``PYG_GATV2_HUGE_PAGES`` is unset or ``1``."""
    return (_switch(ENV, 'large kernel outputs in transparent huge pages')
            and _offered())


def cache_enabled() -> bool:
    """Whether :func:`empty` reuses the mappings of dead buffers:
    ``PYG_GATV2_BUFFER_CACHE`` is unset or ``1``."""
    return _switch(CACHE_ENV, 'large kernel outputs reuse freed buffers')


@functools.lru_cache(maxsize=None)
def _offered() -> bool:
    if not hasattr(mmap, 'MADV_HUGEPAGE'):
        return False
    try:
        with open(_THP_MODE) as f:
            mode = f.read()
    except OSError:
        return False
    return '[madvise]' in mode or '[always]' in mode


class _Region:
    """One anonymous mapping: :attr:`memory` is referenced here and by
    every tensor over it (:func:`torch.frombuffer` holds the object it
    reads), so it is free when this is the only reference."""
    __slots__ = ('memory', 'huge', 'last_use')

    def __init__(self, size: int, huge: bool):
        self.memory = mmap.mmap(-1, size,
                                flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.huge = huge
        self.last_use = 0
        if huge:
            try:
                self.memory.madvise(mmap.MADV_HUGEPAGE)
            except OSError:
                pass  # a kernel that refuses the advice maps 4 KiB pages

    def __len__(self) -> int:
        return len(self.memory)

    def references(self) -> int:
        return sys.getrefcount(self.memory)

    def is_free(self) -> bool:
        return self.references() <= _UNSHARED


# What references() reads where nothing but the region holds its memory
# (the count that sys.getrefcount sees differs between interpreters).
_UNSHARED = _Region(mmap.PAGESIZE, huge=False).references()


class _Cache:
    """The mappings of :func:`empty`, live and free. A request takes the
    smallest free one that fits without wasting more than a quarter, or
    maps a new one; free ones beyond the most bytes that the live ones
    have held at once are unmapped, the longest unused first."""

    def __init__(self):
        self.lock = threading.Lock()
        self.regions: List[_Region] = []
        self.most_live = 0
        self.clock = 0

    def take(self, nbytes: int, huge: bool) -> mmap.mmap:
        size = _granules(nbytes)
        largest = size + max(size // 4, _GRANULE)
        with self.lock:
            chosen: Optional[_Region] = None
            for region in self.regions:
                if (region.huge == huge and size <= len(region) <= largest
                        and region.is_free()
                        and (chosen is None or len(region) < len(chosen))):
                    chosen = region
            if chosen is None:
                chosen = self._map(size, huge)
            self.clock += 1
            chosen.last_use = self.clock
            memory = chosen.memory
            self._trim(chosen)
            return memory

    def _map(self, size: int, huge: bool) -> _Region:
        try:
            region = _Region(size, huge)
        except OSError:
            # Out of memory or address space: without the free mappings,
            # or else torch's allocator says so.
            self._trim(None, keep=0)
            region = _Region(size, huge)
        self.regions.append(region)
        return region

    def _trim(self, taken: Optional[_Region], keep: Optional[int] = None
              ) -> None:
        free = [r for r in self.regions if r is not taken and r.is_free()]
        live = sum(len(r) for r in self.regions) - sum(len(r) for r in free)
        self.most_live = max(self.most_live, live)
        keep = self.most_live if keep is None else keep
        free.sort(key=lambda r: r.last_use)
        held = sum(len(r) for r in free)
        dropped = set()
        for region in free:
            if held <= keep:
                break
            held -= len(region)
            dropped.add(id(region))
        if dropped:
            self.regions = [r for r in self.regions if id(r) not in dropped]

    def empty(self) -> None:
        with self.lock:
            self._trim(None, keep=0)
            self.most_live = 0

    def free_bytes(self) -> int:
        with self.lock:
            return sum(len(r) for r in self.regions if r.is_free())

    def after_fork(self) -> None:
        # A fork while another thread held the lock leaves it held in the
        # child.
        self.lock = threading.Lock()


_CACHE = _Cache()
if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_CACHE.after_fork)


def empty(shape: Sequence[int], dtype: torch.dtype) -> Tensor:
    """An uninitialised contiguous CPU tensor of :obj:`shape`: from
    :data:`MIN_BYTES` on, over a mapping of the cache (where
    :func:`cache_enabled`) in huge pages (where :func:`enabled`)."""
    numel = math.prod(shape)
    nbytes = numel * dtype.itemsize
    if nbytes < MIN_BYTES:
        return torch.empty(shape, dtype=dtype)
    huge, cached = enabled(), cache_enabled()
    if not (huge or cached):
        return torch.empty(shape, dtype=dtype)
    try:
        if cached:
            memory = _CACHE.take(nbytes, huge)
        else:
            memory = _Region(_granules(nbytes), huge).memory
    except OSError:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(memory, dtype=dtype, count=numel).view(shape)


def empty_like(tensor: Tensor) -> Tensor:
    """:func:`empty` of :obj:`tensor`'s shape and dtype for a contiguous
    CPU tensor; :func:`torch.empty_like` for any other."""
    if tensor.device.type != 'cpu' or not tensor.is_contiguous():
        return torch.empty_like(tensor)
    return empty(tensor.shape, tensor.dtype)


def empty_cache() -> None:
    """Unmaps the cache's free mappings, giving their memory back to the
    system; buffers still in use keep theirs."""
    _CACHE.empty()


def cached_bytes() -> int:
    """The bytes of the cache's free mappings: memory this process holds
    for later buffers."""
    return _CACHE.free_bytes()
