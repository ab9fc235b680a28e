"""The fused path of :class:`pyg_gatv2.GATv2Conv`.

Self-loops are handled the way :func:`fused_gatv2_attention` allows without
rebuilding the edge list: existing loops are skipped and one implicit loop
per node is added inside the kernels, so the cached layout of the caller's
``edge_index`` is reused on every call. Dropout draws its mask exactly as
PyG's message-passing layer draws it (same shape, same random stream), so
both paths agree under the same seed.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric import EdgeIndex
from torch_geometric.utils import (
    add_self_loops,
    is_torch_sparse_tensor,
    remove_self_loops,
)

from ..functional import self_loop_attr
from .csr import edge_layout
from .function import fused_gatv2_attention

__all__ = ['fused_path_blocker', 'fused_conv_forward']

_HOOKS = ('propagate', 'message', 'aggregate', 'message_and_aggregate',
          'edge_update')


def fused_path_blocker(conv, edge_index) -> Optional[str]:
    """Why the fused path cannot run this call of ``conv``, or :obj:`None`.
    """
    if not isinstance(edge_index, Tensor) or is_torch_sparse_tensor(
            edge_index):
        return 'sparse adjacency input (pass edge_index as a [2, E] tensor)'
    if torch.compiler.is_compiling():
        return 'torch.compile tracing'
    if conv.explain:
        return 'explain mode'
    if conv.decomposed_layers > 1:
        return 'decomposed_layers > 1'
    if conv.aggr not in ('add', 'sum') or conv.flow != 'source_to_target':
        return f"aggr={conv.aggr!r} or flow={conv.flow!r}"
    for name in _HOOKS:
        if (getattr(conv, f'_{name}_forward_pre_hooks')
                or getattr(conv, f'_{name}_forward_hooks')):
            return f'registered {name} hooks'
    return None


def fused_conv_forward(
    conv,
    x_l: Tensor,
    x_r: Tensor,
    edge_index: Tensor,
    edge_attr: Optional[Tensor],
    return_attention_weights: bool,
) -> Tuple[Tensor, Optional[Tuple[Tensor, Tensor]]]:
    """Attention and aggregation of ``conv`` on the fused path.

    Returns the aggregated features ``[N_dst, heads, channels]`` and, if
    asked for, ``(edge_index, alpha)`` exactly as the message-passing path
    returns them (self-loops removed and appended, alpha after dropout).
    """
    H, C = conv.heads, conv.out_channels
    raw_index = edge_index
    if isinstance(edge_index, EdgeIndex):
        edge_index = edge_index.as_tensor()
    num_src, num_dst = x_l.size(0), x_r.size(0)
    loops = conv.add_self_loops
    layout = edge_layout(edge_index, num_src, num_dst, loops,
                         caller=conv.__class__.__name__)

    # The attention runs in the dtype the message-passing path computes it
    # in: that of the features and 'att' promoted (float32 when autocast
    # hands bfloat16 or float16 projections to float32 parameters).
    dtype = torch.promote_types(x_l.dtype, conv.att.dtype)
    edge_term = loop_term = None
    if edge_attr is not None and conv.lin_edge is not None:
        if edge_attr.dim() == 1:
            edge_attr = edge_attr.view(-1, 1)
        edge_term = conv.lin_edge(edge_attr).view(-1, H, C).to(dtype)
        if loops:
            kept_index, kept_attr = remove_self_loops(edge_index, edge_attr)
            loop_attr = self_loop_attr(kept_index, kept_attr,
                                       layout.num_loops, layout.num_dst,
                                       conv.fill_value)
            loop_term = conv.lin_edge(loop_attr).view(-1, H, C).to(dtype)

    # Edges in the order of the message-passing path (loops removed, then
    # appended) as virtual edge ids of the layout.
    order = layout.kept_eid if loops else None
    mask = None
    if conv.training and conv.dropout > 0:
        num = layout.num_kept if loops else layout.num_edges
        mask = F.dropout(x_l.new_ones(num, H, dtype=dtype), p=conv.dropout)
        if order is not None:
            mask = mask.new_zeros(layout.num_virtual, H).index_copy_(
                0, order, mask)

    result = fused_gatv2_attention(
        x_l.to(dtype), x_r.to(dtype), conv.att.to(dtype), layout, edge_term,
        loop_edge_term=loop_term,
        add_self_loops=loops, negative_slope=conv.negative_slope,
        dropout_mask=mask, return_attention_weights=return_attention_weights)
    out, alpha = result if return_attention_weights else (result, None)
    if conv.concat and conv.res is None and conv.bias is None:
        # The operator keeps its output for backward. Without a bias or a
        # residual the layer would return a view of it, and an in-place
        # operation on the layer's output (fine with message passing) would
        # break backward.
        out = out.clone()
    if not return_attention_weights:
        return out, None

    if mask is not None:
        alpha = alpha * mask
    if order is not None:
        alpha = alpha[order]
        raw_index, _ = remove_self_loops(raw_index)
        raw_index, _ = add_self_loops(raw_index,
                                      num_nodes=layout.num_loops)
    return out, (raw_index, alpha)
