"""Multi-threaded CPU kernels of the fused GATv2 attention, in C++.

The three passes of :mod:`pyg_gatv2.fused.cpu` (forward, backward by
destination, backward by source), compiled from ``_cpp_kernels.cpp`` with
OpenMP when the package is installed (``setup.py``) and called here through
:mod:`ctypes` on the tensors' memory, with no copies. The arguments, the
results and the work ranges are those of the numba kernels; the loops over
channels are vectorised by the compiler, and the feature rows of the edge
two positions on are prefetched while the current one is computed. The
float32 kernels are also compiled for the common shapes of heads x
channels (:func:`fixed_shape`), whose loops the compiler then unrolls.

The library is optional: where it was not built (no C++ compiler at install
time) :func:`load` returns :obj:`None` and the ``'auto'`` backend runs the
numba kernels instead.
"""
import ctypes
import functools
import importlib.machinery
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .operands import Cotangents, Gradients, Operands, gradient_buffers

__all__ = ['load', 'library_path', 'fixed_shape', 'run_forward',
           'run_backward']

_STEM = '_cpp_kernels'
_SUFFIX = {torch.float32: 'f32', torch.float64: 'f64'}
# One zeroed element whose address stands for arrays that are present but
# empty: their own data pointer may be null, which means "absent".
_EMPTY = np.zeros(1, dtype=np.float64)


def library_path() -> Optional[Path]:
    """The built kernel library next to this module, or :obj:`None`."""
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / (_STEM + suffix)
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=None)
def load() -> Optional[ctypes.CDLL]:
    """The kernel library with its entry points typed, or :obj:`None` where
    it was not built."""
    path = library_path()
    if path is None:
        return None
    lib = ctypes.CDLL(str(path))
    P, I64, I32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for suffix, real in (('f32', ctypes.c_float), ('f64', ctypes.c_double)):
        # The signatures of _cpp_kernels.cpp's GATV2_ENTRY_POINTS.
        for name, argtypes in (
                ('forward', [P] * 10 + [I64] * 4 + [real, I32, I32] + [P] * 3),
                ('backward_dst', [P] * 14 + [I64] * 4 + [real, I32] + [P] * 6),
                ('backward_src', [P] * 11 + [I64] * 4 + [real, P, P, I32, P])):
            fn = getattr(lib, f'gatv2_{name}_{suffix}')
            fn.argtypes, fn.restype = argtypes, None
    lib.gatv2_fixed_shape.argtypes = [I64, I64]
    lib.gatv2_fixed_shape.restype = I32
    return lib


def fixed_shape(heads: int, channels: int) -> bool:
    """Whether the float32 kernels run ``heads`` x ``channels`` with the
    shape fixed at compile time (1, 2, 4 or 8 heads of 8, 16, 32 or 64
    channels); other shapes run kernels that take it at run time."""
    lib = load()
    return lib is not None and bool(lib.gatv2_fixed_shape(heads, channels))


def _entry(name: str, dtype: torch.dtype):
    lib = load()
    if lib is None:
        raise RuntimeError(
            'the C++ kernels of pyg_gatv2 were not built: reinstall the '
            "package with a C++ compiler (pip install -e .), or use "
            "backend='numba' or 'torch'")
    return getattr(lib, f'gatv2_{name}_{_SUFFIX[dtype]}')


def _ptr(t) -> Optional[int]:
    """The address of a tensor's or array's data; :obj:`None` (null) for
    an absent one."""
    if t is None:
        return None
    address = t.data_ptr() if isinstance(t, Tensor) else t.ctypes.data
    return address or _EMPTY.ctypes.data


def _num_ranges(bounds: np.ndarray) -> int:
    return max(bounds.size - 1, 0)


def _num_chunks() -> int:
    # Several ranges per thread even out the work left after the balancing
    # by edge count; OpenMP hands them out dynamically.
    return 8 * torch.get_num_threads()


def run_forward(ops: Operands, want_alpha: bool
                ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Runs the forward kernel; returns ``out``, ``lse`` and the softmax
    weights [virtual edges, H] (or :obj:`None`)."""
    layout = ops.layout
    H, C = ops.att.shape
    out = ops.x_l.new_empty(layout.num_dst, H, C)
    lse = ops.x_l.new_empty(layout.num_dst, H)
    alpha = ops.x_l.new_zeros(layout.num_virtual if want_alpha else 0, H)
    bounds = layout.bounds('dst', _num_chunks())
    _entry('forward', ops.x_l.dtype)(
        _ptr(ops.x_l), _ptr(ops.x_r), _ptr(ops.att), _ptr(ops.edge_term),
        _ptr(ops.loop_term), _ptr(ops.dropout_mask), _ptr(layout.dst_ptr),
        _ptr(layout.dst_col), _ptr(layout.dst_eid), _ptr(bounds),
        _num_ranges(bounds), H, C, layout.num_edges, ops.negative_slope,
        int(want_alpha), torch.get_num_threads(), _ptr(out), _ptr(lse),
        _ptr(alpha))
    return out, lse, alpha if want_alpha else None


def run_backward(ops: Operands, cot: Cotangents, want_edge_grad: bool,
                 want_src_grad: bool) -> Gradients:
    """Runs the backward kernel by destination and, for the gradient of
    ``x_l``, the one by source."""
    layout = ops.layout
    H, C = ops.att.shape
    dtype = ops.x_l.dtype
    threads = torch.get_num_threads()
    grad_xl, grad_xr, grad_edge, grad_loop = gradient_buffers(
        ops, want_edge_grad, want_src_grad)
    bounds = layout.bounds('dst', _num_chunks())
    grad_att = ops.x_l.new_empty(_num_ranges(bounds), H, C)
    msg_weight = ops.x_l.new_empty(layout.num_kept, H)
    grad_logit = ops.x_l.new_empty(layout.num_kept, H)
    grad_out, lse = (t.to(dtype).contiguous() for t in (cot.grad_out,
                                                        cot.lse))
    # Without delta the kernel sums D_i over each node's in-edges.
    delta = None if cot.delta is None else cot.delta.to(dtype).contiguous()
    grad_alpha = (None if cot.grad_alpha is None else
                  cot.grad_alpha.to(dtype).contiguous())
    _entry('backward_dst', dtype)(
        _ptr(ops.x_l), _ptr(ops.x_r), _ptr(ops.att), _ptr(ops.edge_term),
        _ptr(ops.loop_term), _ptr(ops.dropout_mask), _ptr(grad_alpha),
        _ptr(grad_out), _ptr(lse), _ptr(delta), _ptr(layout.dst_ptr),
        _ptr(layout.dst_col), _ptr(layout.dst_eid), _ptr(bounds),
        _num_ranges(bounds), H, C, layout.num_edges, ops.negative_slope,
        threads, _ptr(grad_xr), _ptr(grad_edge), _ptr(grad_loop),
        _ptr(grad_att), _ptr(msg_weight), _ptr(grad_logit))
    if want_src_grad:
        ptr, pos, row = layout.csc
        src_bounds = layout.bounds('src', _num_chunks())
        _entry('backward_src', dtype)(
            _ptr(ops.x_l), _ptr(ops.x_r), _ptr(ops.att),
            _ptr(ops.edge_term), _ptr(ops.loop_term), _ptr(grad_out),
            _ptr(ptr), _ptr(pos), _ptr(row), _ptr(layout.dst_eid),
            _ptr(src_bounds), _num_ranges(src_bounds), H, C,
            layout.num_edges, ops.negative_slope, _ptr(msg_weight),
            _ptr(grad_logit), threads, _ptr(grad_xl))
    return Gradients(grad_xl, grad_xr, grad_att.sum(0), grad_edge,
                     grad_loop)
