"""The torch backend: the fused attention in PyTorch operations, chunked
over the edges, on any device and dtype.

The same computation as the C++ kernels, in plain tensor operations over
chunks of edges in destination order: no tensor of shape
``[num_edges, heads, channels]`` is materialised, only chunks of at most
``chunk_size`` edges, and only per-node statistics are kept for backward,
where the logits are recomputed chunk by chunk. The chunk-sized tensors live
in a few workspace buffers allocated once per call and written in place, so
that the allocator does not hand out (and the system fault in) fresh pages
for every chunk.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..layout import EdgeLayout
from ..operands import Cotangents, Gradients, Operands
from . import Backend

__all__ = ['BACKEND', 'forward', 'backward', 'default_chunk_size']

# Elements (edges x heads x channels) per chunk: large enough that the
# per-chunk Python overhead is small, small enough that the temporaries of a
# chunk stay a few megabytes.
_CHUNK_ELEMENTS = 1 << 20


def default_chunk_size(heads: int, channels: int) -> int:
    """The number of edges per chunk for ``heads x channels`` features."""
    return max(1, _CHUNK_ELEMENTS // (heads * channels))


def _rows(t: Tensor, index: Tensor, out: Tensor) -> Tensor:
    # index_select gathers rows several times faster than t[index] on CPU.
    return torch.index_select(t, 0, index, out=out[:index.numel()])


def _add_edge_rows(z: Tensor, edge_term: Tensor, loop_term: Tensor, eid: Tensor,
                   num_edges: int, buf: Tensor) -> None:
    """Adds the edge term (loops after the caller's edges) of the virtual
    edge ids ``eid`` to ``z``."""
    if loop_term.size(0) == 0:
        z += _rows(edge_term, eid, buf)
    elif edge_term.size(0) == 0:
        z += _rows(loop_term, eid - num_edges, buf)
    else:
        is_loop = eid >= num_edges
        rows = _rows(edge_term, eid.clamp(max=num_edges - 1), buf)
        rows[is_loop] = loop_term.index_select(0, eid[is_loop] - num_edges)
        z += rows


def _pre_activation(x_l: Tensor, x_r: Tensor, edge_term: Optional[Tensor],
                    loop_term: Optional[Tensor], layout: EdgeLayout, lo: int,
                    hi: int, work: Tensor) -> Tuple[Tensor, Tensor]:
    """Source rows ``x_j`` (in ``work[0]``) and ``z = x_j + x_i (+ t)`` (in
    ``work[1]``), [chunk, H, C], of the CSR positions ``lo:hi``."""
    xj = _rows(x_l, layout.dst_col[lo:hi], work[0])
    z = _rows(x_r, layout.dst_row[lo:hi], work[1])
    z += xj
    if edge_term is not None:
        _add_edge_rows(z, edge_term, loop_term, layout.dst_eid[lo:hi],
                       layout.num_edges, work[2])
    return xj, z


def _workspace(x: Tensor, count: int, chunk_size: int, num: int) -> Tensor:
    rows = min(chunk_size, num)
    return x.new_empty((count, rows) + tuple(x.shape[1:]))


def forward(ops: Operands, want_alpha: bool, chunk_size: int
            ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Returns ``out`` [N_dst, H, C], ``lse`` [N_dst, H] and, if
    ``want_alpha``, the softmax weights [virtual edges, H]."""
    x_l, x_r, att, edge_term, loop_term, mask, layout, slope = ops[:8]
    H, C = att.shape
    n, num = layout.num_dst, layout.num_kept
    row, col, eid = layout.dst_row, layout.dst_col, layout.dst_eid
    work = _workspace(x_l, 3, chunk_size, num)
    # Pass 1: the logits of all edges ([E, H], cheap), chunk by chunk.
    logit = x_l.new_empty(num, H)
    for lo in range(0, num, chunk_size):
        hi = min(lo + chunk_size, num)
        z = _pre_activation(x_l, x_r, edge_term, loop_term, layout, lo, hi,
                            work)[1]
        F.leaky_relu_(z, slope)
        torch.sum(z.mul_(att), dim=-1, out=logit[lo:hi])
    m = x_l.new_full((n, H), float('-inf'))
    # scatter and index_copy take int64 indices only (layouts may hold int32
    # ones).
    m.scatter_reduce_(0, row.long().view(-1, 1).expand(-1, H), logit,
                      'amax', include_self=False)
    total = x_l.new_zeros(n, H).index_add_(
        0, row, (logit - m.index_select(0, row)).exp_())
    lse = total.log_().add_(m)
    prob = logit.sub_(lse.index_select(0, row)).exp_()
    # Pass 2: the weighted sum of source features.
    weight = prob if mask is None else prob * mask.index_select(0, eid)
    out = x_l.new_zeros(n, H, C)
    for lo in range(0, num, chunk_size):
        hi = min(lo + chunk_size, num)
        msg = _rows(x_l, col[lo:hi], work[0])
        out.index_add_(0, row[lo:hi], msg.mul_(weight[lo:hi].unsqueeze(-1)))
    alpha = None
    if want_alpha:
        alpha = x_l.new_zeros(layout.num_virtual, H)
        alpha.index_copy_(0, eid.long(), prob)
    return out, lse, alpha


def backward(ops: Operands, cot: Cotangents, want_edge_grad: bool,
             chunk_size: int) -> Gradients:
    """The gradients of the operands; those of the edge terms only with
    ``want_edge_grad``."""
    x_l, x_r, att, edge_term, loop_term, mask, layout, slope = ops[:8]
    grad_out, grad_alpha, lse, delta = cot
    num = layout.num_kept
    row, col, eid = layout.dst_row, layout.dst_col, layout.dst_eid
    grad_xl, grad_xr = torch.zeros_like(x_l), torch.zeros_like(x_r)
    grad_att = torch.zeros_like(att)
    grad_edge = grad_loop = None
    if want_edge_grad:
        grad_edge = torch.zeros_like(edge_term)
        grad_loop = torch.zeros_like(loop_term)
    work = _workspace(x_l, 4, chunk_size, num)
    positive_buf = torch.empty(work.shape[1:], dtype=torch.bool,
                               device=x_l.device)
    slopes = torch.stack([att, att * slope])  # LeakyReLU' times att
    for lo in range(0, num, chunk_size):
        hi = min(lo + chunk_size, num)
        r, j, e = row[lo:hi], col[lo:hi], eid[lo:hi]
        xj, z = _pre_activation(x_l, x_r, edge_term, loop_term, layout, lo,
                                hi, work)
        positive = torch.gt(z, 0, out=positive_buf[:hi - lo])
        act = F.leaky_relu_(z, slope)
        scratch = work[3][:hi - lo]
        logit = torch.mul(act, att, out=scratch).sum(dim=-1)
        prob = logit.sub_(lse.index_select(0, r)).exp_()
        g = _rows(grad_out, r, work[2])
        dprob = torch.mul(g, xj, out=scratch).sum(dim=-1)
        weight = prob
        if mask is not None:
            m = mask.index_select(0, e)
            weight = prob * m
            dprob *= m
        if grad_alpha is not None:
            dprob += grad_alpha.index_select(0, e)
        ds = dprob.sub_(delta.index_select(0, r)).mul_(prob).unsqueeze(-1)
        grad_att += act.mul_(ds).sum(dim=0)
        dz = torch.where(positive, slopes[0], slopes[1], out=xj).mul_(ds)
        grad_xr.index_add_(0, r, dz)
        if want_edge_grad:
            loop = e >= layout.num_edges
            grad_edge.index_copy_(0, e[~loop].long(), dz[~loop])
            grad_loop.index_copy_(0, e[loop].long() - layout.num_edges,
                                  dz[loop])
        grad_xl.index_add_(0, j, dz.addcmul_(g, weight.unsqueeze(-1)))
    return Gradients(grad_xl, grad_xr, grad_att, grad_edge, grad_loop)


class TorchBackend(Backend):
    name = 'torch'
    summary = 'PyTorch operations chunked over the edges (any device)'
    devices = ('cpu', 'cuda', 'mps', 'xpu')
    dtypes = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

    def runs_on(self, device: torch.device) -> bool:
        return True

    def forward(self, ops: Operands, want_alpha: bool
                ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        return forward(ops, want_alpha, _chunk_size(ops))

    def backward(self, ops: Operands, cot: Cotangents, want_edge_grad: bool,
                 want_src_grad: bool) -> Gradients:
        return backward(ops, cot, want_edge_grad, _chunk_size(ops))


def _chunk_size(ops: Operands) -> int:
    if ops.chunk_size is not None:
        return ops.chunk_size
    return default_chunk_size(*ops.att.shape)


BACKEND = TorchBackend()
