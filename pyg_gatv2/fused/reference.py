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


def _rows(t: Tensor, index: Tensor) -> Tensor:
    # index_select gathers rows several times faster than t[index] on CPU.
    return t.index_select(0, index)


def _edge_rows(et: Tensor, loop_et: Tensor, eid: Tensor,
               num_edges: int) -> Tensor:
    """Rows of the edge term (loops after the caller's edges) for virtual
    edge ids ``eid``."""
    if loop_et.size(0) == 0:
        return _rows(et, eid)
    if et.size(0) == 0:
        return _rows(loop_et, eid - num_edges)
    is_loop = eid >= num_edges
    rows = _rows(et, eid.clamp(max=num_edges - 1))
    rows[is_loop] = _rows(loop_et, eid[is_loop] - num_edges)
    return rows


def _pre_activation(xl: Tensor, xr: Tensor, et: Optional[Tensor],
                    loop_et: Optional[Tensor], layout: EdgeLayout, lo: int,
                    hi: int) -> Tuple[Tensor, Tensor]:
    """Source rows ``x_j`` and ``z = x_j + x_i (+ t)``, [chunk, H, C], of
    the CSR positions ``lo:hi``."""
    xj = _rows(xl, layout.dst_col[lo:hi])
    z = xj + _rows(xr, layout.dst_row[lo:hi])
    if et is not None:
        z += _edge_rows(et, loop_et, layout.dst_eid[lo:hi], layout.num_edges)
    return xj, z


def forward(xl: Tensor, xr: Tensor, att: Tensor, et: Optional[Tensor],
            loop_et: Optional[Tensor], mask: Optional[Tensor],
            layout: EdgeLayout, slope: float, want_alpha: bool,
            chunk_size: int) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Returns ``out`` [N_dst, H, C], ``lse`` [N_dst, H] and, if
    ``want_alpha``, the softmax weights [virtual edges, H]."""
    H, C = att.shape
    n, num = layout.num_dst, layout.num_kept
    row, col, eid = layout.dst_row, layout.dst_col, layout.dst_eid
    # Pass 1: the logits of all edges ([E, H], cheap), chunk by chunk.
    logit = xl.new_empty(num, H)
    for lo in range(0, num, chunk_size):
        hi = min(lo + chunk_size, num)
        z = _pre_activation(xl, xr, et, loop_et, layout, lo, hi)[1]
        logit[lo:hi] = torch.einsum('khc,hc->kh', F.leaky_relu_(z, slope),
                                    att)
    m = xl.new_full((n, H), float('-inf'))
    m.scatter_reduce_(0, row.view(-1, 1).expand(-1, H), logit, 'amax',
                      include_self=False)
    total = xl.new_zeros(n, H).index_add_(0, row,
                                          (logit - _rows(m, row)).exp_())
    lse = total.log_().add_(m)
    prob = logit.sub_(_rows(lse, row)).exp_()
    # Pass 2: the weighted sum of source features.
    weight = prob if mask is None else prob * _rows(mask, eid)
    out = xl.new_zeros(n, H, C)
    for lo in range(0, num, chunk_size):
        hi = min(lo + chunk_size, num)
        msg = _rows(xl, col[lo:hi]).mul_(weight[lo:hi].unsqueeze(-1))
        out.index_add_(0, row[lo:hi], msg)
    alpha = None
    if want_alpha:
        alpha = xl.new_zeros(layout.num_virtual, H)
        alpha.index_copy_(0, eid, prob)
    return out, lse, alpha


def backward(xl: Tensor, xr: Tensor, att: Tensor, et: Optional[Tensor],
             loop_et: Optional[Tensor], mask: Optional[Tensor],
             galpha: Optional[Tensor], grad: Tensor, lse: Tensor,
             delta: Tensor, layout: EdgeLayout, slope: float,
             want_det: bool, chunk_size: int):
    """Returns the gradients of ``xl``, ``xr``, ``att`` and (if
    ``want_det``) of the edge term and of the loop edge term."""
    num = layout.num_kept
    row, col, eid = layout.dst_row, layout.dst_col, layout.dst_eid
    gxl, gxr = torch.zeros_like(xl), torch.zeros_like(xr)
    gatt = torch.zeros_like(att)
    get = gloop = None
    if want_det:
        get, gloop = torch.zeros_like(et), torch.zeros_like(loop_et)
    for lo in range(0, num, chunk_size):
        hi = min(lo + chunk_size, num)
        r, j, e = row[lo:hi], col[lo:hi], eid[lo:hi]
        xj, z = _pre_activation(xl, xr, et, loop_et, layout, lo, hi)
        positive = z > 0
        act = F.leaky_relu_(z, slope)
        logit = torch.einsum('khc,hc->kh', act, att)
        prob = logit.sub_(_rows(lse, r)).exp_()
        g = _rows(grad, r)
        dprob = torch.einsum('khc,khc->kh', g, xj)
        del xj
        weight = prob
        if mask is not None:
            m = _rows(mask, e)
            weight = prob * m
            dprob *= m
        if galpha is not None:
            dprob += _rows(galpha, e)
        ds = dprob.sub_(_rows(delta, r)).mul_(prob)
        gatt += torch.einsum('kh,khc->hc', ds, act)
        del act
        dz = torch.where(positive, att, att * slope).mul_(ds.unsqueeze(-1))
        del positive
        gxr.index_add_(0, r, dz)
        if want_det:
            loop = e >= layout.num_edges
            get.index_copy_(0, e[~loop], dz[~loop])
            gloop.index_copy_(0, e[loop] - layout.num_edges, dz[loop])
        gxl.index_add_(0, j, dz.addcmul_(g, weight.unsqueeze(-1)))
        del g, dz
    return gxl, gxr, gatt, get, gloop
