"""Pure-PyTorch fused GATv2 attention, chunked over edges (any device).

The same computation as the CPU kernels, in plain tensor operations over
chunks of edges in destination order: no tensor of shape
``[num_edges, heads, channels]`` is materialised, only chunks of at most
``chunk_size`` edges, and only per-node statistics are kept for backward,
where the logits are recomputed chunk by chunk.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .csr import EdgeLayout

__all__ = ['forward', 'backward', 'default_chunk_size']

# Elements (edges x heads x channels) per chunk: large enough that the
# per-chunk Python overhead is small, small enough that the temporaries of a
# chunk stay a few megabytes.
_CHUNK_ELEMENTS = 1 << 20


def default_chunk_size(heads: int, channels: int) -> int:
    """The number of edges per chunk for ``heads x channels`` features."""
    return max(1, _CHUNK_ELEMENTS // (heads * channels))


def _pick(full: Tensor, loop: Tensor, eid: Tensor,
          num_edges: int) -> Tensor:
    """Rows of the edge term for virtual edge ids ``eid``."""
    if loop.size(0) == 0:
        return full[eid]
    if full.size(0) == 0:
        return loop[eid - num_edges]
    is_loop = eid >= num_edges
    rows = full.new_empty((eid.numel(), ) + full.shape[1:])
    rows[~is_loop] = full[eid[~is_loop]]
    rows[is_loop] = loop[eid[is_loop] - num_edges]
    return rows


def _logits(xl: Tensor, xr: Tensor, att: Tensor, et: Optional[Tensor],
            loop_et: Optional[Tensor], layout: EdgeLayout, lo: int, hi: int,
            slope: float) -> Tuple[Tensor, Tensor]:
    """Pre-activation ``z`` [chunk, H, C] and logits [chunk, H] of the CSR
    positions ``lo:hi``."""
    z = xl[layout.dst_col[lo:hi]] + xr[layout.dst_row[lo:hi]]
    if et is not None:
        z += _pick(et, loop_et, layout.dst_eid[lo:hi], layout.num_edges)
    return z, (F.leaky_relu(z, slope) * att).sum(dim=-1)


def forward(xl: Tensor, xr: Tensor, att: Tensor, et: Optional[Tensor],
            loop_et: Optional[Tensor], mask: Optional[Tensor],
            layout: EdgeLayout, slope: float, want_alpha: bool,
            chunk_size: int) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Returns ``out`` [N_dst, H, C], ``lse`` [N_dst, H] and, if
    ``want_alpha``, the softmax weights [virtual edges, H]."""
    H, C = att.shape
    n, num = layout.num_dst, layout.num_kept
    row, eid = layout.dst_row, layout.dst_eid
    # Pass 1: the logits of all edges ([E, H], cheap), chunk by chunk.
    logit = xl.new_empty(num, H)
    for lo in range(0, num, chunk_size):
        hi = min(lo + chunk_size, num)
        logit[lo:hi] = _logits(xl, xr, att, et, loop_et, layout, lo, hi,
                               slope)[1]
    m = xl.new_full((n, H), float('-inf'))
    m.scatter_reduce_(0, row.view(-1, 1).expand(-1, H), logit, 'amax',
                      include_self=False)
    total = xl.new_zeros(n, H).index_add_(0, row, (logit - m[row]).exp())
    lse = m + total.log()
    prob = (logit - lse[row]).exp_()
    # Pass 2: the weighted sum of source features.
    weight = prob if mask is None else prob * mask[eid]
    out = xl.new_zeros(n, H, C)
    for lo in range(0, num, chunk_size):
        hi = min(lo + chunk_size, num)
        msg = xl[layout.dst_col[lo:hi]] * weight[lo:hi].unsqueeze(-1)
        out.index_add_(0, row[lo:hi], msg)
    alpha = None
    if want_alpha:
        alpha = xl.new_zeros(layout.num_virtual, H)
        alpha[eid] = prob
    return out, lse, alpha


def backward(xl: Tensor, xr: Tensor, att: Tensor, et: Optional[Tensor],
             loop_et: Optional[Tensor], mask: Optional[Tensor],
             galpha: Optional[Tensor], grad: Tensor, lse: Tensor,
             delta: Tensor, layout: EdgeLayout, slope: float,
             want_det: bool, chunk_size: int):
    """Returns the gradients of ``xl``, ``xr``, ``att`` and (if
    ``want_det``) of the edge term and of the loop edge term."""
    H, C = att.shape
    num = layout.num_kept
    row, col, eid = layout.dst_row, layout.dst_col, layout.dst_eid
    gxl, gxr = torch.zeros_like(xl), torch.zeros_like(xr)
    gatt = torch.zeros_like(att)
    get = gloop = None
    if want_det:
        get, gloop = torch.zeros_like(et), torch.zeros_like(loop_et)
        is_loop = eid >= layout.num_edges
    for lo in range(0, num, chunk_size):
        hi = min(lo + chunk_size, num)
        r, j, e = row[lo:hi], col[lo:hi], eid[lo:hi]
        z, logit = _logits(xl, xr, att, et, loop_et, layout, lo, hi, slope)
        prob = (logit - lse[r]).exp_()
        g = grad[r]
        dprob = (g * xl[j]).sum(dim=-1)
        weight = prob
        if mask is not None:
            weight = prob * mask[e]
            dprob *= mask[e]
        if galpha is not None:
            dprob += galpha[e]
        ds = prob * (dprob - delta[r])
        gatt += (F.leaky_relu(z, slope) * ds.unsqueeze(-1)).sum(dim=0)
        dlrelu = ds.unsqueeze(-1) * att
        dz = torch.where(z > 0, dlrelu, dlrelu * slope)
        gxr.index_add_(0, r, dz)
        if want_det:
            loop = is_loop[lo:hi]
            get[e[~loop]] = dz[~loop]
            gloop[e[loop] - layout.num_edges] = dz[loop]
        gxl.index_add_(0, j, dz.addcmul_(g, weight.unsqueeze(-1)))
    return gxl, gxr, gatt, get, gloop
