"""GATv2 maths shared by the sparse, dense and fused layers."""
from typing import Optional

import torch.nn.functional as F
from torch import Tensor


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
