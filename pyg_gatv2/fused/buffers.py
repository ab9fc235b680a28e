"""The buffers that the CPU kernels write, backed by huge pages.

A fresh tensor of many megabytes is memory that the system has not handed
to the process yet: the kernel that first writes it stops at every 4 KiB
page for the system to map it, and on a virtual machine that can cost
several times the writing itself (the gradient of a mini-batch's source
features, ``docs/training.md``). On Linux, the
system backs memory advised with ``MADV_HUGEPAGE`` by 2 MiB pages where it
can (when ``/sys/kernel/mm/transparent_hugepage/enabled`` reads
``madvise`` or ``always``), 512 times fewer stops. PyTorch advises all of
its allocations so under ``THP_MEM_ALLOC_ENABLE=1``; these functions
advise the large outputs of the fused kernels, whatever that setting.

The advice changes where the pages come from, not what they hold or how
many there are: a buffer's memory and its contents stay the same.
``PYG_GATV2_HUGE_PAGES=0`` in the environment turns it off.
"""
import ctypes
import functools
import os
import sys
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ['empty', 'zeros', 'MIN_BYTES']

#: Buffers smaller than this are left alone. glibc's allocator maps
#: requests of 32 MiB and more afresh each time (its largest threshold for
#: that) and unmaps them when freed, so that each such buffer faults its
#: pages in anew; smaller ones mostly come back from its heap, already
#: mapped, and advice on the heap would outlive the buffer.
MIN_BYTES = 32 << 20

_PAGE = 4096
_MADV_HUGEPAGE = 14


@functools.lru_cache(maxsize=None)
def _madvise():
    """libc's ``madvise``, or :obj:`None` where there is none to call or
    the environment turned the advice off."""
    if (not sys.platform.startswith('linux')
            or os.environ.get('PYG_GATV2_HUGE_PAGES') == '0'):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


def _advise(t: Tensor) -> Tensor:
    """Advises the whole pages of ``t``'s memory as huge-page memory (a
    hint: where the system declines, nothing changes)."""
    madvise = _madvise()
    if madvise is None or t.device.type != 'cpu' or t.nbytes < MIN_BYTES:
        return t
    start = -(-t.data_ptr() // _PAGE) * _PAGE
    end = (t.data_ptr() + t.nbytes) // _PAGE * _PAGE
    madvise(start, end - start, _MADV_HUGEPAGE)
    return t


def empty(shape: Sequence[int], like: Tensor,
          dtype: Optional[torch.dtype] = None) -> Tensor:
    """An uninitialised tensor of ``shape`` on ``like``'s device, in
    ``dtype`` (default: ``like``'s), advised for huge pages before anything
    writes it."""
    return _advise(like.new_empty(tuple(shape), dtype=dtype))


def zeros(shape: Sequence[int], like: Tensor,
          dtype: Optional[torch.dtype] = None) -> Tensor:
    """As :func:`empty`, filled with zeros."""
    return empty(shape, like, dtype).zero_()
