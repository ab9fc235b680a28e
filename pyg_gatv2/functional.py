"""GATv2 maths shared by the sparse, dense and fused layers."""
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.utils.loop import compute_loop_attr


def gatv2_logits(
    x_i: Tensor,
    x_j: Tensor,
    att: Tensor,
    negative_slope: float,
    edge_term: Optional[Tensor] = None,
) -> Tensor:
    r"""Unnormalised GATv2 attention scores
    :math:`e_{ij} = \mathbf{a}^{\top}\mathrm{LeakyReLU}(\mathbf{\Theta}_s
    \mathbf{x}_i + \mathbf{\Theta}_t \mathbf{x}_j + \mathbf{\Theta}_e
    \mathbf{e}_{ij})`.

    Args:
        x_i (torch.Tensor): Projected target features, ``[..., H, C]``.
        x_j (torch.Tensor): Projected source features, broadcastable with
            :obj:`x_i`.
        att (torch.Tensor): Attention vector, broadcastable to ``[H, C]``.
        negative_slope (float): LeakyReLU slope.
        edge_term (torch.Tensor, optional): Projected edge features,
            broadcastable with :obj:`x_i`. (default: :obj:`None`)

    Returns:
        torch.Tensor: Scores of shape ``[..., H]``.
    """
    z = x_i + x_j
    if edge_term is not None:
        z = z + edge_term
    return (F.leaky_relu(z, negative_slope) * att).sum(dim=-1)


def combine_heads(
    out: Tensor,
    concat: bool,
    res: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
) -> Tensor:
    """Concatenates or averages the heads of ``out`` (``[..., H, C]``), then
    adds the residual and the bias.

    Args:
        out (torch.Tensor): Aggregated messages, ``[..., H, C]``.
        concat (bool): Concatenate the heads (``[..., H * C]``) instead of
            averaging them (``[..., C]``).
        res (torch.Tensor, optional): Residual term. (default: :obj:`None`)
        bias (torch.Tensor, optional): Bias. (default: :obj:`None`)
    """
    if concat:
        out = out.flatten(start_dim=-2)
    else:
        out = out.mean(dim=-2)
    if res is not None:
        out = out + res
    if bias is not None:
        out = out + bias
    return out


def self_loop_attr(
    edge_index: Tensor,
    edge_attr: Tensor,
    num_loops: int,
    num_dst: int,
    fill_value: Union[float, Tensor, str],
) -> Tensor:
    """Edge features of the self-loops ``i -> i``, ``i < num_loops``, that
    :func:`torch_geometric.utils.add_self_loops` would append to the graph
    after :func:`~torch_geometric.utils.remove_self_loops`: ``fill_value``
    itself, or the reduction it names (``'mean'``, ``'add'``, ...) over
    the features of the node's in-edges other than its self-loops.

    No edge is removed: a self-loop's features are reduced into a row past
    the last, which is dropped, so that every shape is known before the
    data is (no graph break under :func:`torch.compile`, no wait for the
    device on a GPU). Unlike :func:`~torch_geometric.utils.add_self_loops`,
    it also takes a bipartite graph whose targets outnumber the loops: the
    in-edges of targets without a loop count for nothing.

    Args:
        edge_index (torch.Tensor): Edges ``[2, E]``; their self-loops
            count for nothing.
        edge_attr (torch.Tensor): Their features, ``[E, D]``.
        num_loops (int): Number of self-loops, ``min(num_src, num_dst)``.
        num_dst (int): Number of target nodes.
        fill_value (float or torch.Tensor or str): The loop features or the
            name of the reduction.
    """
    # int64 indices: torch's scatter reductions get their gradient wrong
    # for int32 ones.
    src, dst = edge_index.long()
    rows = max(num_dst, num_loops)
    dst = torch.where(src == dst, rows, dst)
    return compute_loop_attr(torch.stack([src, dst]), edge_attr, rows + 1,
                             False, fill_value)[:num_loops]
