"""The parameters that every GATv2 layer holds, under PyG's names.

:class:`pyg_gatv2.GATv2Conv` and :class:`pyg_gatv2.DenseGATv2Conv` build
them here, so that both have the state_dict of
:class:`torch_geometric.nn.GATv2Conv`: ``lin_l``, ``lin_r`` (the same module
with shared weights), ``att``, ``lin_edge`` (``None`` without edge
features), ``res`` and ``bias`` (``None`` when off).
"""
from typing import Optional

import torch
from torch.nn import Module, Parameter
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.nn.inits import glorot, zeros

__all__ = ['init_parameters', 'reset_parameters']


def init_parameters(layer: Module, in_src: int, in_dst: int,
                    edge_dim: Optional[int], bias: bool) -> None:
    """Creates the parameters of ``layer`` from its ``heads``,
    ``out_channels``, ``concat``, ``share_weights`` and ``residual``
    attributes, for ``in_src`` source and ``in_dst`` target features (``-1``
    for lazy initialisation)."""
    heads, out_channels = layer.heads, layer.out_channels
    layer.lin_l = Linear(in_src, heads * out_channels, bias=bias,
                         weight_initializer='glorot')
    if layer.share_weights:
        layer.lin_r = layer.lin_l
    else:
        layer.lin_r = Linear(in_dst, heads * out_channels, bias=bias,
                             weight_initializer='glorot')

    layer.att = Parameter(torch.empty(1, heads, out_channels))

    if edge_dim is not None:
        layer.lin_edge = Linear(edge_dim, heads * out_channels, bias=False,
                                weight_initializer='glorot')
    else:
        layer.lin_edge = None

    total_out_channels = out_channels * (heads if layer.concat else 1)
    if layer.residual:
        layer.res = Linear(in_dst, total_out_channels, bias=False,
                           weight_initializer='glorot')
    else:
        layer.register_parameter('res', None)

    if bias:
        layer.bias = Parameter(torch.empty(total_out_channels))
    else:
        layer.register_parameter('bias', None)


def reset_parameters(layer: Module) -> None:
    """Draws the initial values of the parameters made by
    :func:`init_parameters`, as PyG's layer does."""
    layer.lin_l.reset_parameters()
    layer.lin_r.reset_parameters()
    if layer.lin_edge is not None:
        layer.lin_edge.reset_parameters()
    if layer.res is not None:
        layer.res.reset_parameters()
    glorot(layer.att)
    zeros(layer.bias)
