"""The compiled C++ library of the fused attention: its loading, its
argument records, its CPU levels, its edge layouts, the dropout of
nonzero entries that the models' input dropout runs and the linear map of
a mostly-zero input that the layer's projections run.

The kernels (``pyg_gatv2/fused/_kernels/``) are compiled with OpenMP into
one library when the package is installed (``setup.py``) and loaded here
through :mod:`ctypes`, so that they depend on neither torch's nor Python's
headers; :mod:`pyg_gatv2.fused.backends.cpp` runs its passes. Each pass
takes one record of named fields, :class:`Args`, the mirror of
``Gatv2Args`` in ``gatv2.h``; the library reports its ABI version and
where each field lies, and a library that does not match this module is
refused when it loads.

The library holds the kernels compiled for several CPU levels (``default``,
``avx2``, ``avx512`` on x86-64) and runs the best one this CPU supports;
``PYG_GATV2_CPU_CAPABILITY`` names another, as PyTorch's
``ATEN_CPU_CAPABILITY`` does. :func:`capability` says which one runs.

Without a C++ compiler at install time the library is absent: the C++
backend then reports itself unavailable and ``'auto'`` runs the torch
backend, and edge layouts are sorted by torch.
"""
import ctypes
import functools
import importlib.machinery
import os
from pathlib import Path
from typing import NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from . import buffers

__all__ = ['Args', 'LayoutArgs', 'LibraryMismatch', 'ABI_VERSION',
           'CAPABILITY_ENV', 'LIBRARY_ENV', 'DTYPES', 'library_path', 'load',
           'capability', 'capabilities', 'CompiledShape', 'compiled_shape',
           'pointer', 'call', 'layout_by_destination', 'layout_by_source',
           'count_nonzero', 'drop_nonzero', 'sparse_linear',
           'sparse_linear_grads']

ABI_VERSION = 8
CAPABILITY_ENV = 'PYG_GATV2_CPU_CAPABILITY'
# A library to load instead of the one built beside this module: a build
# with sanitizers (make sanitize), or one built elsewhere.
LIBRARY_ENV = 'PYG_GATV2_CPP_LIBRARY'
_STEM = '_cpp'
# The dtype codes of gatv2.h.
DTYPES = {torch.float32: 0, torch.float64: 1}
_BAD_INDEX = 4
_STATUS = {1: 'an unsupported dtype', 2: 'a required array missing',
           3: 'a negative or zero size', 4: 'a node index out of range'}
# One zeroed element whose address stands for arrays that are present but
# empty: their own data pointer may be null, which means "absent".
_EMPTY = np.zeros(1, dtype=np.float64)

_P, _I64, _F64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double


class Args(ctypes.Structure):
    """The argument record of every pass (``Gatv2Args`` in ``gatv2.h``,
    which documents the fields)."""
    _fields_ = [
        ('dtype', _I64), ('heads', _I64), ('channels', _I64),
        ('num_edges', _I64), ('negative_slope', _F64), ('num_threads', _I64),
        ('x_l', _P), ('x_r', _P), ('att', _P), ('edge_term', _P),
        ('loop_term', _P), ('dropout_mask', _P),
        ('dst_ptr', _P), ('dst_col', _P), ('dst_eid', _P),
        ('dst_bounds', _P), ('num_dst_ranges', _I64),
        ('src_ptr', _P), ('src_pos', _P), ('src_row', _P),
        ('src_bounds', _P), ('num_src_ranges', _I64),
        ('chunk_edges', _I64),
        ('dst_chunk_node', _P), ('dst_chunk_start', _P),
        ('dst_chunk_end', _P), ('num_dst_chunks', _I64),
        ('dst_chunked_ptr', _P), ('num_dst_chunked', _I64),
        ('src_chunk_node', _P), ('src_chunk_start', _P),
        ('src_chunk_end', _P), ('num_src_chunks', _I64),
        ('src_chunked_ptr', _P), ('num_src_chunked', _I64),
        ('out', _P), ('lse', _P), ('alpha', _P),
        ('grad_out', _P), ('grad_alpha', _P), ('delta', _P),
        ('grad_x_l', _P), ('grad_x_r', _P), ('grad_edge', _P),
        ('grad_loop', _P), ('grad_att', _P), ('msg_weight', _P),
        ('grad_logit', _P),
    ]


class LayoutArgs(ctypes.Structure):
    """The record of the edge layouts (``Gatv2LayoutArgs``)."""
    _fields_ = [('src', _P), ('dst', _P), ('num_edges', _I64),
                ('num_src', _I64), ('num_dst', _I64), ('self_loops', _I64),
                ('num_threads', _I64), ('copy', _P),
                ('dst_ptr', _P), ('dst_col', _P), ('dst_eid', _P),
                ('src_ptr', _P), ('src_pos', _P), ('src_row', _P)]


def _layout(record) -> str:
    return ''.join(f'{name}:{getattr(record, name).offset}:'
                   f'{getattr(record, name).size},'
                   for name, _ in record._fields_)


class LibraryMismatch(RuntimeError):
    """The built library does not match this module (an old build)."""


def library_path() -> Optional[Path]:
    """The kernel library: the file ``PYG_GATV2_CPP_LIBRARY`` names, else
    the one built next to this module, or :obj:`None`."""
    override = os.environ.get(LIBRARY_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise FileNotFoundError(f'{LIBRARY_ENV}={override!r}: no such '
                                    'file; unset it to load the kernels '
                                    'built with the package')
        return path
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / (_STEM + suffix)
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=None)
def load() -> Optional[ctypes.CDLL]:
    """The kernel library with its entry points typed and the CPU level of
    ``PYG_GATV2_CPU_CAPABILITY`` selected, or :obj:`None` where it was not
    built. Raises :class:`LibraryMismatch` for a library built from other
    sources or a file that is not a library of this platform, and a
    :class:`ValueError` for a level it cannot run."""
    path = library_path()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as error:
        named = (f'{LIBRARY_ENV} names it; point it at a library built by '
                 'make sanitize or setup.py, or unset it'
                 if os.environ.get(LIBRARY_ENV) else
                 "rebuild it: 'pip install .' (or 'make setup' in a "
                 'checkout)')
        raise LibraryMismatch(f'the C++ kernels at {path} could not be '
                              f'loaded ({error}); {named}') from None
    typed = {
        'gatv2_abi_version': ([], _I64),
        'gatv2_args_layout': ([], ctypes.c_char_p),
        'gatv2_capabilities': ([], ctypes.c_char_p),
        'gatv2_supported_capabilities': ([], ctypes.c_char_p),
        'gatv2_capability': ([], ctypes.c_char_p),
        'gatv2_set_capability': ([ctypes.c_char_p], ctypes.c_int),
        'gatv2_compiled_shape': ([_I64, _I64, _P], ctypes.c_int),
        'gatv2_forward': ([ctypes.POINTER(Args)], ctypes.c_int),
        'gatv2_backward_dst': ([ctypes.POINTER(Args)], ctypes.c_int),
        'gatv2_backward_src': ([ctypes.POINTER(Args)], ctypes.c_int),
        'gatv2_layout_by_destination': ([ctypes.POINTER(LayoutArgs)],
                                        ctypes.c_int),
        'gatv2_layout_by_source': ([ctypes.POINTER(LayoutArgs)],
                                   ctypes.c_int),
        'gatv2_count_nonzero': ([_I64, _P, _I64, _I64, _I64, _P],
                                ctypes.c_int),
        'gatv2_drop_nonzero': ([_I64, _P, _I64, _I64, _I64, _P, _P, _F64,
                                _P], ctypes.c_int),
        'gatv2_sparse_linear': ([_I64, _P, _I64, _I64, _P, _P, _I64, _I64,
                                 _P], ctypes.c_int),
        'gatv2_sparse_linear_weight_grad': ([_I64, _P, _I64, _I64, _P, _I64,
                                             _I64, _I64, _P, _P],
                                            ctypes.c_int),
    }
    rebuild = ("rebuild it from this package's sources: 'pip install .' "
               "(or 'make setup' in a checkout)")
    try:
        for name, (argtypes, restype) in typed.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, restype
    except AttributeError as error:
        raise LibraryMismatch(f'the C++ kernels at {path} lack an entry '
                              f'point ({error}); {rebuild}') from None
    version = lib.gatv2_abi_version()
    layout = lib.gatv2_args_layout().decode()
    expected = f'{_layout(Args)};{_layout(LayoutArgs)}'
    if version != ABI_VERSION or layout != expected:
        raise LibraryMismatch(
            f'the C++ kernels at {path} were built for ABI version {version} '
            f'with argument records {layout!r}; this package needs version '
            f'{ABI_VERSION} with {expected!r}: {rebuild}')
    _select_capability(lib, os.environ.get(CAPABILITY_ENV))
    return lib


def _select_capability(lib: ctypes.CDLL, name: Optional[str]) -> None:
    if not name:
        return
    status = lib.gatv2_set_capability(name.encode())
    if status == 0:
        return
    built = lib.gatv2_capabilities().decode()
    runs = lib.gatv2_supported_capabilities().decode()
    problem = ('is not one the kernels were built for' if status == -1 else
               'needs instructions this CPU does not have')
    raise ValueError(f'{CAPABILITY_ENV}={name!r} {problem}; choose one of '
                     f'{runs!r} on this CPU (built: {built!r}), or unset it '
                     'to take the best')


def capability() -> Optional[str]:
    """The CPU level the kernels run (``'avx512'``, ``'avx2'`` or
    ``'default'``), or :obj:`None` where they were not built."""
    lib = load()
    return None if lib is None else lib.gatv2_capability().decode()


def capabilities() -> Tuple[str, ...]:
    """The CPU levels this CPU can run, best first (empty where the kernels
    were not built)."""
    lib = load()
    if lib is None:
        return ()
    return tuple(lib.gatv2_supported_capabilities().decode().split(','))


class CompiledShape(NamedTuple):
    """How the float32 kernels run a shape of heads x channels: the width
    they run each head at, the channels rounded up to whole blocks of 8
    (the C++ backend pads the others with zero channels); and the heads
    and that width where they are fixed at compile time, each 0 where the
    kernels read it at run time."""
    heads: int
    channels: int
    width: int


def compiled_shape(heads: int, channels: int) -> CompiledShape:
    """How the float32 kernels run ``heads`` x ``channels``: at a width of
    whole blocks of 8 channels; with the heads and the width fixed for 1,
    2, 4 or 8 heads of 8, 16, 32 or 64 channels; the width fixed for the
    other widths up to 64; nothing fixed for wider heads. All zeros
    without the library. Float64 kernels run every shape as it is, read
    at run time."""
    lib = load()
    fixed = (ctypes.c_int64 * 3)()
    if lib is None or lib.gatv2_compiled_shape(heads, channels, fixed):
        return CompiledShape(0, 0, 0)
    return CompiledShape(*fixed)


def pointer(t) -> Optional[int]:
    """The address of a tensor's or array's data for a record field;
    :obj:`None` (null) for an absent one."""
    if t is None:
        return None
    address = t.data_ptr() if isinstance(t, Tensor) else t.ctypes.data
    return address or _EMPTY.ctypes.data


def call(entry: str, record) -> None:
    """Runs the entry point ``entry`` on ``record``; a refusal (a record
    that breaks the interface) raises a :class:`RuntimeError`."""
    status = getattr(load(), entry)(ctypes.byref(record))
    if status != 0:
        _refused(entry, status)


def _refused(entry: str, status: int):
    raise RuntimeError(f"the C++ kernel '{entry}' refused its arguments "
                       f'({_STATUS.get(status, status)}): a bug in '
                       'pyg_gatv2, please report it')


def layout_by_destination(edge_index: Tensor, num_src: int, num_dst: int,
                          self_loops: bool, copy: Optional[Tensor] = None
                          ) -> Optional[Tuple[Tensor, Tensor, Tensor]]:
    """The edges of CPU int64 ``edge_index`` ``[2, E]`` stably sorted by
    destination, with the implicit self-loops if ``self_loops`` (as
    ``gatv2.h`` says): the offsets ``[num_dst + 2]``, and the source node
    and virtual edge id of each position ``[E + loops]``. Fills ``copy``
    (int64 ``[2, E]``) with ``edge_index`` on the way, if given. Returns
    :obj:`None` if an index is out of range. Linear in the edges and
    nodes, on torch's number of threads."""
    src, dst = edge_index[0].contiguous(), edge_index[1].contiguous()
    num_virtual = src.numel() + (min(num_src, num_dst) if self_loops else 0)
    ptr = torch.empty(num_dst + 2, dtype=torch.long)
    col = torch.empty(num_virtual, dtype=torch.long)
    eid = torch.empty(num_virtual, dtype=torch.long)
    record = LayoutArgs(
        src=pointer(src), dst=pointer(dst), num_edges=src.numel(),
        num_src=num_src, num_dst=num_dst, self_loops=self_loops,
        num_threads=torch.get_num_threads(), copy=pointer(copy),
        dst_ptr=pointer(ptr), dst_col=pointer(col), dst_eid=pointer(eid))
    status = load().gatv2_layout_by_destination(ctypes.byref(record))
    if status == _BAD_INDEX:
        return None
    if status != 0:
        _refused('gatv2_layout_by_destination', status)
    return ptr, col, eid


def layout_by_source(dst_ptr: Tensor, dst_col: Tensor, num_src: int
                     ) -> Tuple[Tensor, Tensor, Tensor]:
    """The CSC of a CSR (``dst_ptr`` ``[num_dst + 1]``, ``dst_col``, int64 on
    the CPU): for each of the ``num_src`` source nodes, the offsets of its
    run ``[num_src + 1]``, and the CSR positions of its out-edges, in
    order, and their destinations ``[dst_ptr[-1]]``."""
    dst_ptr, dst_col = dst_ptr.contiguous(), dst_col.contiguous()
    num_kept = int(dst_ptr[-1])
    ptr = torch.empty(num_src + 1, dtype=torch.long)
    pos = torch.empty(num_kept, dtype=torch.long)
    row = torch.empty(num_kept, dtype=torch.long)
    call('gatv2_layout_by_source', LayoutArgs(
        num_src=num_src, num_dst=dst_ptr.numel() - 1,
        num_threads=torch.get_num_threads(), dst_ptr=pointer(dst_ptr),
        dst_col=pointer(dst_col), src_ptr=pointer(ptr), src_pos=pointer(pos),
        src_row=pointer(row)))
    return ptr, pos, row


# Entries per run of the nonzero dropout at least, and runs per thread at
# most: runs of a few hundred kilobytes, several per thread.
_RUN_ENTRIES = 1 << 16
_RUNS_PER_THREAD = 8


def count_nonzero(x: Tensor) -> Tensor:
    """The first pass of the dropout of the nonzero entries of contiguous
    one-dimensional CPU float32 or float64 ``x``: int64 offsets ``[runs +
    1]``, where ``runs`` cuts ``x`` into equal runs (``gatv2.h``), the
    last one the number of entries of ``x`` that are not zero."""
    n = x.numel()
    threads = torch.get_num_threads()
    runs = max(1, min(n // _RUN_ENTRIES, _RUNS_PER_THREAD * threads))
    offsets = torch.empty(runs + 1, dtype=torch.long)
    status = load().gatv2_count_nonzero(DTYPES[x.dtype], pointer(x), n, runs,
                                        threads, pointer(offsets))
    if status != 0:
        _refused('gatv2_count_nonzero', status)
    return offsets


def drop_nonzero(x: Tensor, offsets: Tensor, keep: Tensor,
                 scale: float) -> Tensor:
    """The second pass: ``x`` with its ``k``-th nonzero entry times
    ``scale`` where bool ``keep[k]``, times 0 where not, and its zeros
    left zero; ``offsets`` from :func:`count_nonzero` on ``x``."""
    out = buffers.empty_like(x)
    status = load().gatv2_drop_nonzero(
        DTYPES[x.dtype], pointer(x), x.numel(), offsets.numel() - 1,
        torch.get_num_threads(), pointer(offsets), pointer(keep), scale,
        pointer(out))
    if status != 0:
        _refused('gatv2_drop_nonzero', status)
    return out


def sparse_linear(x: Tensor, weight: Tensor,
                  bias: Optional[Tensor]) -> Tensor:
    """``x @ weight.T + bias`` from the nonzero entries of contiguous CPU
    ``x`` ``[N, in]`` only, ``weight`` ``[out, in]`` and ``bias`` ``[out]``
    (or :obj:`None`) of ``x``'s dtype, float32 or float64."""
    rows, width = x.size(0), weight.size(0)
    weight_t = weight.t().contiguous()
    bias = None if bias is None else bias.contiguous()
    out = buffers.empty((rows, width), x.dtype)
    status = load().gatv2_sparse_linear(
        DTYPES[x.dtype], pointer(x), rows, x.size(1), pointer(weight_t),
        pointer(bias), width, torch.get_num_threads(), pointer(out))
    if status != 0:
        _refused('gatv2_sparse_linear', status)
    return out


# Rows per run of the weight gradient at least, runs at most, and entries
# of the runs' sums at most: a number of runs fixed by the shape, so that
# the sums do not depend on the number of threads.
_RUN_ROWS = 1 << 9
_MAX_RUNS = 8
_MAX_SUM_ENTRIES = 1 << 23


def sparse_linear_grads(x: Tensor, grad_out: Tensor, with_bias: bool
                        ) -> Tuple[Tensor, Optional[Tensor]]:
    """``grad_out.T @ x`` ``[out, in]``, the gradient of the weight of
    :func:`sparse_linear`, from the nonzero entries of ``x`` only, and,
    with ``with_bias``, ``grad_out.sum(0)``, that of the bias, in the same
    pass (else :obj:`None`)."""
    rows, width = x.size(0), grad_out.size(1)
    size = max(1, x.size(1) * width)
    runs = max(1, min(rows // _RUN_ROWS, _MAX_RUNS,
                      _MAX_SUM_ENTRIES // size))
    grad_out = grad_out.contiguous()
    grad_weight_t = x.new_empty(x.size(1), width)
    grad_bias = x.new_empty(width) if with_bias else None
    status = load().gatv2_sparse_linear_weight_grad(
        DTYPES[x.dtype], pointer(x), rows, x.size(1), pointer(grad_out),
        width, runs, torch.get_num_threads(), pointer(grad_weight_t),
        pointer(grad_bias))
    if status != 0:
        _refused('gatv2_sparse_linear_weight_grad', status)
    return grad_weight_t.t(), grad_bias
