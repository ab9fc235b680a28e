"""The operands and results of the fused attention, as every backend takes
and returns them."""
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from . import buffers
from .layout import EdgeLayout

__all__ = ['Operands', 'Cotangents', 'Gradients', 'stats_dtype',
           'gradient_buffers', 'row_dots']

# Entries of [N, H, C] converted at a time by row_dots: 256 MiB in float32.
_DOT_CHUNK = 2**26


class Operands(NamedTuple):
    """The inputs of one fused attention call, contiguous, in the dtype of
    ``att`` (the features in a lower precision only for backends that
    read them so: ``Backend.reads_lower_precision``).

    Attributes:
        x_l: Source features ``[num_src, H, C]``.
        x_r: Destination features ``[num_dst, H, C]``.
        att: Attention vector ``[H, C]``, in the dtype to compute in.
        edge_term: Projected edge features ``[num_edges, H, C]``, or
            :obj:`None`.
        loop_term: Edge term of the implicit self-loops
            ``[num_loops, H, C]``; :obj:`None` without ``edge_term``.
        dropout_mask: Message multipliers ``[virtual edges, H]``, or
            :obj:`None`.
        layout: The sorted edges.
        negative_slope: LeakyReLU slope.
        chunk_size: Edges per chunk of the torch backend, or :obj:`None`
            for its default; the kernels of other backends ignore it.
    """
    x_l: Tensor
    x_r: Tensor
    att: Tensor
    edge_term: Optional[Tensor]
    loop_term: Optional[Tensor]
    dropout_mask: Optional[Tensor]
    layout: EdgeLayout
    negative_slope: float
    chunk_size: Optional[int] = None


class Cotangents(NamedTuple):
    """What backward receives, with the statistics forward kept.

    Attributes:
        grad_out: Gradient of the output ``[num_dst, H, C]``.
        grad_alpha: Gradient of the returned attention weights
            ``[virtual edges, H]``, or :obj:`None`.
        lse: Log-sum-exp of the logits per destination and head.
        delta: ``D_i = <grad_out_i, out_i>`` (:func:`row_dots`, plus
            ``sum_k alpha_k grad_alpha_k``) per destination and head, or
            :obj:`None` for the C++ kernels to sum it over the edges.
    """
    grad_out: Tensor
    grad_alpha: Optional[Tensor]
    lse: Tensor
    delta: Optional[Tensor]


class Gradients(NamedTuple):
    """The gradients of :class:`Operands` that backward computes; each is
    :obj:`None` where it was not asked for."""
    x_l: Optional[Tensor]
    x_r: Tensor
    att: Tensor
    edge_term: Optional[Tensor]
    loop_term: Optional[Tensor]


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the per-node statistics (log-sum-exp, D_i) and of the
    sums inside the kernels: float64 for float64 features, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def gradient_buffers(ops: Operands, want_edge_grad: bool, want_src_grad: bool
                     ) -> Tuple[Optional[Tensor], Tensor, Optional[Tensor],
                                Optional[Tensor]]:
    """The gradients of ``x_l`` (or :obj:`None`), ``x_r`` and the edge and
    loop terms (or :obj:`None`), for a backend's kernels to fill. Those of
    the edge terms start at zero: the kernels skip the edges ``i -> i``
    that self-loops replace."""
    grad_xl = buffers.empty_like(ops.x_l) if want_src_grad else None
    grad_edge = grad_loop = None
    if want_edge_grad:
        grad_edge = torch.zeros_like(ops.edge_term)
        grad_loop = torch.zeros_like(ops.loop_term)
    return grad_xl, buffers.empty_like(ops.x_r), grad_edge, grad_loop


def row_dots(a: Tensor, b: Tensor, dtype: torch.dtype) -> Tensor:
    """``<a_nh, b_nh>`` over the channels, ``[N, H]``, summed in
    :obj:`dtype` (``D`` of :class:`Cotangents`, from the output gradient
    and the output). Inputs stored in another dtype (bfloat16 outputs
    beside float32 statistics) are converted a chunk of rows at a time, so
    that no full-size copy of either is made."""
    if a.dtype == dtype and b.dtype == dtype:
        return torch.einsum('nhc,nhc->nh', a, b)
    rows = max(1, _DOT_CHUNK // max(1, a.size(1) * a.size(2)))
    dots = a.new_empty(a.shape[:2], dtype=dtype)
    for lo in range(0, a.size(0), rows):
        dots[lo:lo + rows] = torch.einsum(
            'nhc,nhc->nh', a[lo:lo + rows].to(dtype),
            b[lo:lo + rows].to(dtype))
    return dots
