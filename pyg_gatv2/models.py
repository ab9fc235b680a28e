"""Networks built from the GATv2 layers."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from pyg_gatv2.conv import GATv2Conv


class GATv2(torch.nn.Module):
    r"""A GATv2 node classifier: a stack of :class:`GATv2Conv` layers as in
    the `"How Attentive are Graph Attention Networks?"
    <https://arxiv.org/abs/2105.14491>`_ paper, with the layout of the GAT
    paper's transductive models.

    Every layer but the last concatenates its ``heads`` outputs of
    ``hidden_channels`` each and is followed by an ELU; the last layer
    averages its ``output_heads`` outputs (``concat=False``) into
    :obj:`out_channels` logits. Dropout acts on the input of every layer and
    on the attention coefficients. The defaults are the GAT paper's Cora
    setting.

    Args:
        in_channels (int): Size of each input node feature.
        out_channels (int): Number of classes.
        hidden_channels (int, optional): Features per head in the hidden
            layers. (default: :obj:`8`)
        heads (int, optional): Attention heads in the hidden layers.
            (default: :obj:`8`)
        output_heads (int, optional): Attention heads of the last layer,
            averaged. (default: :obj:`1`)
        num_layers (int, optional): Number of :class:`GATv2Conv` layers.
            (default: :obj:`2`)
        dropout (float, optional): Dropout probability on the input of every
            layer. (default: :obj:`0.6`)
        attention_dropout (float, optional): Dropout probability on the
            normalized attention coefficients. (default: :obj:`0.6`)
        conv (type, optional): The layer class, called with
            :class:`GATv2Conv`'s arguments; pass
            :class:`torch_geometric.nn.GATv2Conv` to compare with PyG's layer:
            under one seed both draw the same initial weights and dropout
            masks, so training follows the same course up to rounding.
            (default: :class:`GATv2Conv`)

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, F_{in})`,
          edge indices :math:`(2, |\mathcal{E}|)`
        - **output:** logits :math:`(|\mathcal{V}|, C)`
    """
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 8,
        heads: int = 8,
        output_heads: int = 1,
        num_layers: int = 2,
        dropout: float = 0.6,
        attention_dropout: float = 0.6,
        conv: Callable[..., torch.nn.Module] = GATv2Conv,
    ) -> None:
        super().__init__()
        for name, value in [('in_channels', in_channels),
                            ('out_channels', out_channels),
                            ('hidden_channels', hidden_channels),
                            ('heads', heads), ('output_heads', output_heads),
                            ('num_layers', num_layers)]:
            if isinstance(value, bool) or not isinstance(value, int) or (
                    value < 1):
                raise ValueError(f"'{self.__class__.__name__}' expects "
                                 f"{name} to be a positive integer, got "
                                 f'{value!r}')
        for name, value in [('dropout', dropout),
                            ('attention_dropout', attention_dropout)]:
            if not 0.0 <= value < 1.0:
                raise ValueError(f"'{self.__class__.__name__}' expects "
                                 f'{name} in [0, 1), got {value!r}')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.hidden_channels = hidden_channels
        self.heads = heads
        self.output_heads = output_heads
        self.num_layers = num_layers
        self.dropout = dropout
        self.attention_dropout = attention_dropout

        self.convs = torch.nn.ModuleList()
        channels = in_channels
        for _ in range(num_layers - 1):
            self.convs.append(
                conv(channels, hidden_channels, heads=heads,
                     dropout=attention_dropout))
            channels = hidden_channels * heads
        self.convs.append(
            conv(channels, out_channels, heads=output_heads, concat=False,
                 dropout=attention_dropout))

    def reset_parameters(self) -> None:
        r"""Resets all learnable parameters of the module."""
        for conv in self.convs:
            conv.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """Returns the class logits of every node."""
        x = F.dropout(x, p=self.dropout, training=self.training)
        for conv in self.convs[:-1]:
            x = F.elu(conv(x, edge_index))
            x = F.dropout(x, p=self.dropout, training=self.training)
        return self.convs[-1](x, edge_index)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'{self.out_channels}, hidden_channels='
                f'{self.hidden_channels}, heads={self.heads}, '
                f'output_heads={self.output_heads}, '
                f'num_layers={self.num_layers})')
