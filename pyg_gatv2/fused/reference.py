"""The fused operator's maths in plain, differentiable PyTorch.

One tensor per edge, nothing recomputed: the readable statement of what the
kernels compute, for tests to compare against, and the path that gives the
fused operator its higher-order gradients (autograd differentiates it as
many times as asked).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.utils import softmax

from ..functional import gatv2_logits
from .layout import EdgeLayout

__all__ = ['attention']


def attention(
    x_l: Tensor,
    x_r: Tensor,
    att: Tensor,
    edge_term: Optional[Tensor],
    loop_term: Optional[Tensor],
    mask: Optional[Tensor],
    layout: EdgeLayout,
    slope: float,
) -> Tuple[Tensor, Tensor]:
    """Returns ``out`` [N_dst, H, C] and the softmax weights
    [virtual edges, H] of :func:`pyg_gatv2.fused.fused_gatv2_attention`."""
    # Scatters take int64 indices only (layouts may hold int32 ones).
    src, dst, eid = (t.long() for t in (layout.dst_col, layout.dst_row,
                                        layout.dst_eid))
    term = None
    if edge_term is not None:
        term = torch.cat([edge_term, loop_term])[eid]
    logit = gatv2_logits(x_r[dst], x_l[src], att, slope, term)
    prob = softmax(logit, dst, num_nodes=layout.num_dst)
    weight = prob if mask is None else prob * mask[eid]
    out = x_r.new_zeros(x_r.shape).index_add(
        0, dst, x_l[src] * weight.unsqueeze(-1))
    alpha = prob.new_zeros(layout.num_virtual, prob.size(1))
    return out, alpha.index_copy(0, eid, prob)
