"""DenseGATv2Conv: GATv2 on a dense adjacency matrix."""
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Parameter
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.nn.inits import glorot, zeros

from pyg_gatv2.conv import GATv2Conv
from pyg_gatv2.functional import combine_heads, gatv2_logits


class DenseGATv2Conv(torch.nn.Module):
    r"""The GATv2 operator from the `"How Attentive are Graph Attention
    Networks?" <https://arxiv.org/abs/2105.14491>`_ paper on a dense
    (optionally batched) adjacency matrix: the same function and parameters as
    :class:`pyg_gatv2.GATv2Conv`, computed for all node pairs at once.

    .. math::
        \mathbf{x}^{\prime}_i = \sum_{j : A_{ji} \neq 0}
        \alpha_{i,j}\mathbf{\Theta}_{t}\mathbf{x}_{j},
        \qquad
        \alpha_{i,j} = \operatorname{softmax}_{j : A_{ji} \neq 0}\left(
        \mathbf{a}^{\top}\mathrm{LeakyReLU}\left(
        \mathbf{\Theta}_{s} \mathbf{x}_i + \mathbf{\Theta}_{t} \mathbf{x}_j
        \right)\right)

    The adjacency follows :func:`torch_geometric.utils.to_dense_adj`:
    :math:`A_{ji} \neq 0` is an edge from source :math:`j` to target
    :math:`i`, so ``dense(x, to_dense_adj(edge_index)[0])`` equals
    ``sparse(x, edge_index)`` (for a graph without duplicate edges). This is
    the transpose of the convention of
    :class:`torch_geometric.nn.dense.DenseGATConv`; the two agree on
    symmetric graphs. A target node with no incoming edge outputs only the
    residual and bias.

    Args:
        in_channels (int): Size of each input sample.
        out_channels (int): Size of each output sample per head.
        heads (int, optional): Number of attention heads. (default: :obj:`1`)
        concat (bool, optional): If set to :obj:`False`, the heads are
            averaged instead of concatenated. (default: :obj:`True`)
        negative_slope (float, optional): LeakyReLU angle of the negative
            slope. (default: :obj:`0.2`)
        dropout (float, optional): Dropout probability of the normalised
            attention coefficients. (default: :obj:`0.0`)
        add_self_loops (bool, optional): If set to :obj:`False`, will not set
            the diagonal of the adjacency. (default: :obj:`True`)
        bias (bool, optional): If set to :obj:`False`, the layer will not
            learn an additive bias. (default: :obj:`True`)
        share_weights (bool, optional): If set to :obj:`True`, the same
            matrix is applied to the source and the target node of every
            edge. (default: :obj:`False`)
        residual (bool, optional): If set to :obj:`True`, the layer adds a
            learnable skip-connection. (default: :obj:`False`)

    Shapes:
        - **input:**
          node features :math:`(N, F_{in})` or :math:`(B, N, F_{in})`,
          adjacency :math:`(N, N)` or :math:`(B, N, N)`
        - **output:** node features :math:`(N, H * F_{out})` or
          :math:`(B, N, H * F_{out})` (:math:`F_{out}` if
          :obj:`concat=False`); with :obj:`return_attention_weights=True`
          also :math:`\alpha` of shape :math:`(B, N_{target}, N_{source}, H)`
          (without the batch dimension for unbatched input).
    """
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        heads: int = 1,
        concat: bool = True,
        negative_slope: float = 0.2,
        dropout: float = 0.0,
        add_self_loops: bool = True,
        bias: bool = True,
        share_weights: bool = False,
        residual: bool = False,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.heads = heads
        self.concat = concat
        self.negative_slope = negative_slope
        self.dropout = dropout
        self.add_self_loops = add_self_loops
        self.share_weights = share_weights
        self.residual = residual

        self.lin_l = Linear(in_channels, heads * out_channels, bias=bias,
                            weight_initializer='glorot')
        if share_weights:
            self.lin_r = self.lin_l
        else:
            self.lin_r = Linear(in_channels, heads * out_channels, bias=bias,
                                weight_initializer='glorot')
        self.att = Parameter(torch.empty(1, heads, out_channels))

        total_out_channels = out_channels * (heads if concat else 1)
        if residual:
            self.res = Linear(in_channels, total_out_channels, bias=False,
                              weight_initializer='glorot')
        else:
            self.register_parameter('res', None)
        if bias:
            self.bias = Parameter(torch.empty(total_out_channels))
        else:
            self.register_parameter('bias', None)

        self.reset_parameters()

    def reset_parameters(self):
        self.lin_l.reset_parameters()
        self.lin_r.reset_parameters()
        if self.res is not None:
            self.res.reset_parameters()
        glorot(self.att)
        zeros(self.bias)

    @classmethod
    def from_sparse(cls, conv: GATv2Conv) -> 'DenseGATv2Conv':
        """Builds a dense layer that shares the parameters of :obj:`conv`.

        The returned layer holds the same parameter objects, so training
        either layer updates both.

        Args:
            conv (GATv2Conv): A sparse layer without edge features on a
                non-bipartite graph.
        """
        if conv.lin_edge is not None:
            raise ValueError(
                f"'{cls.__name__}' has no edge features, but the given "
                f"'{conv.__class__.__name__}' was built with "
                f'edge_dim={conv.edge_dim}; build it with edge_dim=None')
        if not isinstance(conv.in_channels, int):
            raise ValueError(
                f"'{cls.__name__}' works on one node set, but the given "
                f"'{conv.__class__.__name__}' is bipartite "
                f'(in_channels={conv.in_channels})')
        dense = cls(1, conv.out_channels, heads=conv.heads,
                    concat=conv.concat, negative_slope=conv.negative_slope,
                    dropout=conv.dropout, add_self_loops=conv.add_self_loops,
                    bias=conv.bias is not None,
                    share_weights=conv.share_weights, residual=conv.residual)
        dense.in_channels = conv.in_channels
        dense.lin_l = conv.lin_l
        dense.lin_r = conv.lin_r
        dense.att = conv.att
        dense.res = conv.res
        dense.bias = conv.bias
        return dense

    def forward(
        self,
        x: Tensor,
        adj: Tensor,
        return_attention_weights: bool = False,
    ):
        r"""Runs the forward pass of the module.

        Args:
            x (torch.Tensor): Node features, ``[N, F]`` or ``[B, N, F]``.
            adj (torch.Tensor): Adjacency, ``[N, N]`` or ``[B, N, N]``; a
                nonzero ``adj[..., j, i]`` is an edge from :math:`j` to
                :math:`i`.
            return_attention_weights (bool, optional): Also return the
                attention weights ``[B, N, N, H]`` indexed by (target,
                source). (default: :obj:`False`)
        """
        unbatched = x.dim() == 2
        self._check_input(x, adj)
        if unbatched:
            x, adj = x.unsqueeze(0), adj.unsqueeze(0)
        B, N, _ = x.shape
        H, C = self.heads, self.out_channels

        x_l = self.lin_l(x).view(B, N, H, C)
        x_r = x_l if self.share_weights else self.lin_r(x).view(B, N, H, C)

        # edge[b, i, j]: is there an edge from source j to target i?
        edge = adj.transpose(1, 2) != 0
        if self.add_self_loops:
            eye = torch.eye(N, dtype=torch.bool, device=x.device)
            edge = edge | eye

        logits = gatv2_logits(x_r.unsqueeze(2), x_l.unsqueeze(1), self.att,
                              self.negative_slope)
        alpha = masked_softmax(logits, edge.unsqueeze(-1), dim=2)
        alpha = F.dropout(alpha, p=self.dropout, training=self.training)
        out = torch.einsum('bijh,bjhc->bihc', alpha, x_l)

        res = self.res(x) if self.res is not None else None
        out = combine_heads(out, self.concat, res, self.bias)
        if unbatched:
            out, alpha = out.squeeze(0), alpha.squeeze(0)
        if return_attention_weights:
            return out, alpha
        return out

    def _check_input(self, x: Tensor, adj: Tensor) -> None:
        name = self.__class__.__name__
        if x.dim() not in (2, 3):
            raise ValueError(
                f"'{name}' expects node features of shape [N, F] or "
                f'[B, N, F] (got {tuple(x.shape)})')
        if not x.is_floating_point():
            raise TypeError(
                f"'{name}' expects floating-point node features (got "
                f"'{x.dtype}'); convert them with 'x.float()'")
        if adj.dim() != x.dim() or adj.shape[-2:] != (x.size(-2),
                                                     x.size(-2)):
            expected = '[N, N]' if x.dim() == 2 else '[B, N, N]'
            raise ValueError(
                f"'{name}' got node features of shape {tuple(x.shape)} and "
                f'an adjacency of shape {tuple(adj.shape)}; the adjacency '
                f'must be {expected} with N = {x.size(-2)}')
        if x.dim() == 3 and adj.size(0) != x.size(0):
            raise ValueError(
                f"'{name}' got {x.size(0)} feature matrices but "
                f'{adj.size(0)} adjacency matrices; pass one per graph')
        if self.in_channels > 0 and x.size(-1) != self.in_channels:
            raise ValueError(
                f"'{name}' was built for {self.in_channels} input features "
                f'but got {x.size(-1)}; build it with '
                f'in_channels={x.size(-1)}')


def masked_softmax(logits: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Softmax of :obj:`logits` over the entries where :obj:`mask` holds.

    A slice without any entry gives zeros, with zero gradient, never NaN.

    Args:
        logits (torch.Tensor): Scores.
        mask (torch.Tensor): Boolean mask broadcastable to :obj:`logits`.
        dim (int): The dimension to normalise over.
    """
    logits = logits.masked_fill(~mask, float('-inf'))
    peak = logits.detach().amax(dim=dim, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    weights = (logits - peak).exp()
    total = weights.sum(dim=dim, keepdim=True)
    return weights / total.clamp_min(torch.finfo(total.dtype).tiny)

