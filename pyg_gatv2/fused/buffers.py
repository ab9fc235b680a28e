"""The large CPU buffers that the C++ kernels fill, in transparent huge
pages where Linux offers them.

glibc's ``malloc`` maps fresh pages for every allocation above its largest
mmap threshold (32 MiB), and the first write to each 4 KiB page of such a
tensor faults into the kernel: for a 75 MB projection of a sampled batch,
about 30 ms on one thread, longer than the kernel that fills it. Mapped
with ``madvise(MADV_HUGEPAGE)``, the same buffer faults in 2 MiB at a time,
about four times faster. :func:`empty` maps buffers of at least
:data:`MIN_BYTES` that way where ``/sys/kernel/mm/transparent_hugepage/
enabled`` is ``madvise`` or ``always``; smaller buffers, other systems and
``PYG_GATV2_HUGE_PAGES=0`` get :func:`torch.empty`. Such a buffer is an
ordinary CPU tensor over an anonymous private mapping
(:func:`torch.frombuffer`), unmapped when its last view dies; its storage
cannot be resized.

PyTorch's own allocator does the same for all its CPU tensors under
``THP_MEM_ALLOC_ENABLE=1``, set before the process starts.
"""
import functools
import math
import mmap
import os
from collections.abc import Sequence

import torch
from torch import Tensor

ENV = 'PYG_GATV2_HUGE_PAGES'
#: Buffers from this size on (32 MiB, glibc's largest mmap threshold) are
#: mapped in huge pages; smaller ones come from malloc's heap, which reuses
#: freed memory unless it has given the pages back.
MIN_BYTES = 32 << 20
_THP_MODE = '/sys/kernel/mm/transparent_hugepage/enabled'


def enabled() -> bool:
    """Whether :func:`empty` maps large buffers in huge pages: Linux
    offers them and ``PYG_GATV2_HUGE_PAGES`` is unset or ``1``."""
    setting = os.environ.get(ENV, '1')
    if setting not in ('0', '1'):
        raise ValueError(f'{ENV}={setting!r}: set it to 1 (large kernel '
                         'outputs in transparent huge pages, the default) '
                         'or 0 (torch.empty for all)')
    return setting == '1' and _offered()


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


def empty(shape: Sequence[int], dtype: torch.dtype) -> Tensor:
    """An uninitialised contiguous CPU tensor of :obj:`shape`: in huge
    pages from :data:`MIN_BYTES` on, where :func:`enabled`."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES or not enabled():
        return torch.empty(shape, dtype=dtype)
    try:
        region = mmap.mmap(-1, nbytes,
                           flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError:
        # Out of address space or memory: torch's allocator says so.
        return torch.empty(shape, dtype=dtype)
    try:
        region.madvise(mmap.MADV_HUGEPAGE)
    except OSError:
        pass  # a kernel that refuses the advice maps 4 KiB pages
    return torch.frombuffer(region, dtype=dtype).view(shape)


def empty_like(tensor: Tensor) -> Tensor:
    """:func:`empty` of :obj:`tensor`'s shape and dtype for a contiguous
    CPU tensor; :func:`torch.empty_like` for any other."""
    if tensor.device.type != 'cpu' or not tensor.is_contiguous():
        return torch.empty_like(tensor)
    return empty(tensor.shape, tensor.dtype)
