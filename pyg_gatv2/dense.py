"""DenseGATv2Conv: GATv2 on a dense adjacency matrix."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from pyg_gatv2 import checks
from pyg_gatv2.conv import GATv2Conv
from pyg_gatv2.functional import combine_heads, gatv2_logits
from pyg_gatv2.parameters import init_parameters, reset_parameters

DEFAULT_MEMORY_BUDGET = 256 * 2**20


class DenseGATv2Conv(torch.nn.Module):
    r"""The GATv2 operator from the `"How Attentive are Graph Attention
    Networks?" <https://arxiv.org/abs/2105.14491>`_ paper on a dense
    (optionally batched and padded) adjacency matrix: the same function and
    parameters as :class:`pyg_gatv2.GATv2Conv`, computed for all node pairs.

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
    ``sparse(x, edge_index)`` (for a graph without duplicate edges). Only
    whether an entry is nonzero counts; its value is not an edge weight. This
    is the transpose of the convention of
    :class:`torch_geometric.nn.dense.DenseGATConv`; the two agree on
    symmetric graphs. A target node with no incoming edge outputs only the
    residual and bias.

    A batch of graphs of different sizes is passed padded, with the node
    mask of :func:`torch_geometric.utils.to_dense_batch`: padded nodes
    neither send nor receive attention (adjacency entries that touch them
    are ignored), get no self-loop, and their output rows are exactly zero.

    The attention of all :math:`N^2` node pairs needs tensors of shape
    ``[B, N, N, H, C]``; the layer never builds one whole but processes the
    target nodes in chunks sized to :obj:`memory_budget`. Under autograd
    each chunk is recomputed in the backward pass
    (:func:`torch.utils.checkpoint.checkpoint`), so that training, too, keeps
    only one chunk of working memory alive. Results do not depend on the
    chunk size (up to floating-point rounding); with dropout, the mask is
    drawn chunk by chunk.

    Args:
        in_channels (int): Size of each input sample, or :obj:`-1` to derive
            it from the first input.
        out_channels (int): Size of each output sample per head.
        heads (int, optional): Number of attention heads. (default: :obj:`1`)
        concat (bool, optional): If set to :obj:`False`, the heads are
            averaged instead of concatenated. (default: :obj:`True`)
        negative_slope (float, optional): LeakyReLU angle of the negative
            slope. (default: :obj:`0.2`)
        dropout (float, optional): Dropout probability of the normalised
            attention coefficients. (default: :obj:`0.0`)
        add_self_loops (bool, optional): If set to :obj:`False`, will not set
            the diagonal of the adjacency (of the valid nodes).
            (default: :obj:`True`)
        bias (bool, optional): If set to :obj:`False`, the layer will not
            learn an additive bias. (default: :obj:`True`)
        share_weights (bool, optional): If set to :obj:`True`, the same
            matrix is applied to the source and the target node of every
            edge. (default: :obj:`False`)
        residual (bool, optional): If set to :obj:`True`, the layer adds a
            learnable skip-connection. (default: :obj:`False`)
        memory_budget (int, optional): Bytes of working memory for the
            pairwise attention terms; the target nodes are processed in
            chunks that fit it (at least one node at a time). :obj:`None`
            processes all nodes at once. Can be overridden per call.
            (default: :obj:`268435456`, 256 MiB)

    Shapes:
        - **input:**
          node features :math:`(N, F_{in})` or :math:`(B, N, F_{in})`,
          adjacency :math:`(N, N)` or :math:`(B, N, N)`,
          node mask :math:`(N)` or :math:`(B, N)` *(optional)*
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
        memory_budget: Optional[int] = DEFAULT_MEMORY_BUDGET,
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
        self.memory_budget = _check_budget(self.__class__.__name__,
                                           memory_budget)

        init_parameters(self, in_channels, in_channels, None, bias)

        self.reset_parameters()

    def reset_parameters(self):
        reset_parameters(self)

    @classmethod
    def from_sparse(
        cls,
        conv: GATv2Conv,
        memory_budget: Optional[int] = DEFAULT_MEMORY_BUDGET,
    ) -> 'DenseGATv2Conv':
        """Builds a dense layer that shares the parameters of :obj:`conv`.

        The returned layer holds the same parameter objects, so training
        either layer updates both.

        Args:
            conv (GATv2Conv): A sparse layer without edge features on a
                non-bipartite graph.
            memory_budget (int, optional): As in the constructor.
                (default: :obj:`268435456`, 256 MiB)
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
                    share_weights=conv.share_weights, residual=conv.residual,
                    memory_budget=memory_budget)
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
        mask: Optional[Tensor] = None,
        return_attention_weights: bool = False,
        memory_budget: Optional[int] = None,
    ):
        r"""Runs the forward pass of the module.

        Args:
            x (torch.Tensor): Node features, ``[N, F]`` or ``[B, N, F]``.
            adj (torch.Tensor): Adjacency, ``[N, N]`` or ``[B, N, N]``, of
                any real or boolean dtype; a nonzero ``adj[..., j, i]`` is an
                edge from :math:`j` to :math:`i`.
            mask (torch.Tensor, optional): Boolean node mask, ``[N]`` or
                ``[B, N]``, :obj:`False` for padding (as returned by
                :func:`torch_geometric.utils.to_dense_batch`).
                (default: :obj:`None`)
            return_attention_weights (bool, optional): Also return the
                attention weights ``[B, N, N, H]`` indexed by (target,
                source). (default: :obj:`False`)
            memory_budget (int, optional): Overrides the layer's
                :obj:`memory_budget` for this call. (default: :obj:`None`)
        """
        self._check_input(x, adj, mask)
        budget = self.memory_budget
        if memory_budget is not None:
            budget = _check_budget(self.__class__.__name__, memory_budget)
        unbatched = x.dim() == 2
        if unbatched:
            x, adj = x.unsqueeze(0), adj.unsqueeze(0)
            mask = None if mask is None else mask.unsqueeze(0)
        B, N, _ = x.shape
        H, C = self.heads, self.out_channels

        if mask is not None:
            # Padding may hold anything; zeros keep it out of every sum.
            x = x.masked_fill(~mask.unsqueeze(-1), 0.)
        x_l = self.lin_l(x).view(B, N, H, C)
        x_r = x_l if self.share_weights else self.lin_r(x).view(B, N, H, C)
        # The weighted sum runs over all node pairs, and a non-edge's zero
        # weight times an infinite or NaN feature is NaN: the sum takes the
        # finite features only, and the indicator of the others marks the
        # targets that an edge brings one to (NaN in the sparse layer).
        finite = torch.isfinite(x_l)
        x_finite = torch.where(finite, x_l, 0.)
        nonfinite = (~finite).to(x_l.dtype).view(B, N, H * C)

        size = self.chunk_size(B, N, x.dtype, budget)
        recompute = size < N and torch.is_grad_enabled() and any(
            t.requires_grad for t in (x_l, x_r, self.att))
        outs, alphas = [], []
        if N == 0:  # no node: nothing to attend, empty results
            outs, alphas = [x_l], [x_l.new_zeros(B, 0, 0, H)]
        for start in range(0, N, size):
            end = min(start + size, N)
            args = (x_r[:, start:end], x_l, x_finite, nonfinite, self.att,
                    adj[:, :, start:end], mask, start)
            if recompute:
                out, alpha = checkpoint(self._attend, *args,
                                        use_reentrant=False)
            else:
                out, alpha = self._attend(*args)
            outs.append(out)
            if return_attention_weights:
                alphas.append(alpha)
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

        res = self.res(x) if self.res is not None else None
        out = combine_heads(out, self.concat, res, self.bias)
        if mask is not None:
            out = out.masked_fill(~mask.unsqueeze(-1), 0.)
        if unbatched:
            out = out.squeeze(0)
        if not return_attention_weights:
            return out
        alpha = alphas[0] if len(alphas) == 1 else torch.cat(alphas, dim=1)
        return out, alpha.squeeze(0) if unbatched else alpha

    def chunk_size(
        self,
        batch_size: int,
        num_nodes: int,
        dtype: torch.dtype = torch.float32,
        memory_budget: Optional[int] = None,
    ) -> int:
        """The number of target nodes processed at once for a batch of
        :obj:`batch_size` graphs of :obj:`num_nodes` nodes.

        Args:
            batch_size (int): Number of graphs.
            num_nodes (int): Nodes per graph (padded).
            dtype (torch.dtype, optional): Feature dtype.
                (default: :obj:`torch.float32`)
            memory_budget (int, optional): Bytes; :obj:`None` takes the
                layer's. (default: :obj:`None`)
        """
        budget = self.memory_budget if memory_budget is None else (
            _check_budget(self.__class__.__name__, memory_budget))
        if budget is None:
            return max(num_nodes, 1)
        itemsize = torch.empty((), dtype=dtype).element_size()
        # Per target node: the [B, N, H, C] pre-activation, its LeakyReLU,
        # the product with `att` and, in backward, their gradients (about
        # five alive at once), a handful of [B, N, H] score tensors and the
        # edge mask, boolean and in the feature dtype.
        per_node = batch_size * num_nodes * (
            (self.heads * (5 * self.out_channels + 8) + 1) * itemsize + 2)
        return max(1, min(num_nodes, budget // max(per_node, 1)))

    def _attend(self, x_r: Tensor, x_l: Tensor, x_finite: Tensor,
                nonfinite: Tensor, att: Tensor, adj: Tensor,
                mask: Optional[Tensor], start: int) -> tuple[Tensor, Tensor]:
        # Targets start .. start + n of every graph attend over all sources.
        n, N = x_r.size(1), x_l.size(1)
        edge = adj.transpose(1, 2) != 0  # [B, n, N]: source j -> target i
        if self.add_self_loops:
            target = torch.arange(start, start + n, device=adj.device)
            source = torch.arange(N, device=adj.device)
            edge = edge | (target.view(-1, 1) == source.view(1, -1))
        if mask is not None:
            edge = edge & mask[:, start:start + n, None] & mask[:, None, :]
        logits = gatv2_logits(x_r.unsqueeze(2), x_l.unsqueeze(1), att,
                              self.negative_slope)
        alpha = masked_softmax(logits, edge.unsqueeze(-1), dim=2)
        alpha = F.dropout(alpha, p=self.dropout, training=self.training)
        out = torch.einsum('bijh,bjhc->bihc', alpha, x_finite)
        # An edge from a non-finite feature gives NaN in the sparse layer
        # whatever its weight (a weight of zero included): so here.
        reached = torch.bmm(edge.to(nonfinite.dtype), nonfinite) > 0
        out = out.masked_fill(reached.view(out.shape), float('nan'))
        return out, alpha

    def _check_input(self, x: Tensor, adj: Tensor,
                     mask: Optional[Tensor]) -> None:
        name = self.__class__.__name__
        for arg, value in (('x', x), ('adj', adj), ('mask', mask)):
            if arg == 'mask' and value is None:
                continue
            if not isinstance(value, Tensor):
                raise TypeError(f"'{name}' expects '{arg}' to be a tensor "
                                f"(got '{type(value).__name__}')")
            if value.layout != torch.strided:
                raise TypeError(
                    f"'{name}' expects a dense '{arg}' (got layout "
                    f"'{value.layout}'); convert it with '{arg}.to_dense()' "
                    "or use 'GATv2Conv' on the sparse graph")
        if x.dim() not in (2, 3):
            raise ValueError(
                f"'{name}' expects node features of shape [N, F] or "
                f'[B, N, F] (got {tuple(x.shape)})')
        if adj.dim() != x.dim() or adj.shape[-2:] != (x.size(-2),
                                                     x.size(-2)):
            expected = '[N, N]' if x.dim() == 2 else '[B, N, N]'
            raise ValueError(
                f"'{name}' got node features of shape {tuple(x.shape)} and "
                f'an adjacency of shape {tuple(adj.shape)}; the adjacency '
                f'must be {expected} with N = {x.size(-2)} (for one graph '
                "from 'edge_index', use 'to_dense_adj(edge_index, "
                "max_num_nodes=N)[0]')")
        if x.dim() == 3 and adj.size(0) != x.size(0):
            raise ValueError(
                f"'{name}' got {x.size(0)} feature matrices but "
                f'{adj.size(0)} adjacency matrices; pass one per graph')
        if adj.is_complex():
            raise TypeError(
                f"'{name}' expects a real or boolean adjacency (got "
                f"'{adj.dtype}')")
        if mask is not None:
            expected = tuple(x.shape[:-1])
            if tuple(mask.shape) != expected:
                raise ValueError(
                    f"'{name}' got a node mask of shape {tuple(mask.shape)} "
                    f'but expects {list(expected)}, one entry per node (as '
                    "returned by 'to_dense_batch')")
            if mask.dtype != torch.bool:
                raise TypeError(
                    f"'{name}' expects a boolean node mask (got "
                    f"'{mask.dtype}'); convert it with 'mask.bool()'")
        device = self.lin_l.weight.device
        for arg, value in (('adj', adj), ('mask', mask)):
            if value is not None and value.device != device:
                raise ValueError(
                    f"'{name}' got '{arg}' on '{value.device}' but its "
                    f"parameters are on '{device}'; move it with "
                    f"'{arg}.to(\"{device}\")'")
        features = x
        if checks.is_strict() and mask is not None and x.device == device:
            # Padding may hold anything, NaN too: the layer zeroes it before
            # use. Only the nodes the mask keeps are screened.
            features = x.detach().masked_fill(~mask.unsqueeze(-1), 0.)
        checks.check_node_features(features, self.lin_l, name, dims=(2, 3))

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'{self.out_channels}, heads={self.heads})')


def _check_budget(name: str, memory_budget: Optional[int]) -> Optional[int]:
    if memory_budget is None:
        return None
    if (isinstance(memory_budget, bool) or not isinstance(memory_budget, int)
            or memory_budget <= 0):
        raise ValueError(
            f"'{name}' expects memory_budget to be a positive number of "
            f'bytes or None (got {memory_budget!r})')
    return memory_budget


def masked_softmax(logits: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Softmax of :obj:`logits` over the entries where :obj:`mask` holds.

    Entries outside the mask are exactly zero, with zero gradient, whatever
    their logits. A slice without any entry gives zeros, never NaN; a slice
    with a non-finite logit in the mask gives NaN in the mask, as a softmax
    over the masked entries alone would.

    Args:
        logits (torch.Tensor): Scores.
        mask (torch.Tensor): Boolean mask broadcastable to :obj:`logits`.
        dim (int): The dimension to normalise over.
    """
    logits = logits.masked_fill(~mask, float('-inf'))
    peak = logits.detach().amax(dim=dim, keepdim=True)
    # An empty slice, whose peak is -inf, is shifted by zero: exp(-inf) = 0,
    # where -inf - -inf would be NaN.
    peak = torch.where(mask.any(dim=dim, keepdim=True), peak, 0.)
    weights = (logits - peak).exp()
    total = weights.sum(dim=dim, keepdim=True)
    # In a slice whose total is NaN, 0 / NaN would reach the entries
    # outside the mask, and through them every node that is no neighbour.
    return torch.where(mask, weights / total.clamp_min(
        torch.finfo(total.dtype).tiny), 0.)
