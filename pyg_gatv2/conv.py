"""GATv2Conv: the drop-in replacement for PyG's GATv2 layer, and its choice
between the fused attention operator and message passing."""
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric import EdgeIndex
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.dense.linear import Linear, is_uninitialized_parameter
from torch_geometric.typing import (
    Adj,
    OptTensor,
    PairTensor,
    SparseTensor,
    torch_sparse,
)
from torch_geometric.utils import (
    add_self_loops,
    is_torch_sparse_tensor,
    remove_self_loops,
)
from torch_geometric.utils.sparse import set_sparse_value

from pyg_gatv2 import checks
from pyg_gatv2.adjacency import (
    is_sparse_adjacency,
    sparse_edge_index,
    sparse_message_order,
)
from pyg_gatv2.functional import combine_heads, gatv2_logits, self_loop_attr
from pyg_gatv2.fused import (
    EdgeLayout,
    edge_layout,
    fused_gatv2_attention,
    kernel_width,
)
from pyg_gatv2.parameters import init_parameters, reset_parameters
from pyg_gatv2.projection import linear
from pyg_gatv2.softmax import scatter_softmax

_HOOKS = ('propagate', 'message', 'aggregate', 'message_and_aggregate',
          'edge_update')


def _paddable(lin: torch.nn.Module) -> bool:
    """Whether ``lin`` is a plain PyG :class:`Linear` with its weight
    initialised and no hooks, so that projecting with its weight padded
    by zero rows is what calling it computes."""
    return (type(lin) is Linear and not is_uninitialized_parameter(lin.weight)
            and not lin._forward_hooks and not lin._forward_pre_hooks)


class GATv2Conv(MessagePassing):
    r"""The GATv2 operator from the `"How Attentive are Graph Attention
    Networks?" <https://arxiv.org/abs/2105.14491>`_ paper, a drop-in
    replacement for :class:`torch_geometric.nn.conv.GATv2Conv` with the same
    constructor, forward signature, parameters and state_dict keys.

    .. math::
        \mathbf{x}^{\prime}_i = \sum_{j \in \mathcal{N}(i) \cup \{ i \}}
        \alpha_{i,j}\mathbf{\Theta}_{t}\mathbf{x}_{j},

    where the attention coefficients :math:`\alpha_{i,j}` are computed as

    .. math::
        \alpha_{i,j} =
        \frac{
        \exp\left(\mathbf{a}^{\top}\mathrm{LeakyReLU}\left(
        \mathbf{\Theta}_{s} \mathbf{x}_i + \mathbf{\Theta}_{t} \mathbf{x}_j
        + \mathbf{\Theta}_{e} \mathbf{e}_{i,j}
        \right)\right)}
        {\sum_{k \in \mathcal{N}(i) \cup \{ i \}}
        \exp\left(\mathbf{a}^{\top}\mathrm{LeakyReLU}\left(
        \mathbf{\Theta}_{s} \mathbf{x}_i + \mathbf{\Theta}_{t} \mathbf{x}_k
        + \mathbf{\Theta}_{e} \mathbf{e}_{i,k}
        \right)\right)},

    the edge term :math:`\mathbf{\Theta}_{e} \mathbf{e}_{i,j}` being present
    only when the layer is built with :obj:`edge_dim`.

    By default the attention runs on the fused path of
    :mod:`pyg_gatv2.fused`: logits, softmax and aggregation in one
    memory-efficient operator that keeps no per-edge feature tensor for
    backward (C++ kernels on CPU, Triton on CUDA, chunked PyTorch
    elsewhere; see :mod:`pyg_gatv2.backends`). It is a torch custom op, so
    :func:`torch.compile` keeps it in the compiled graph and
    :func:`torch.export.export` exports it. Calls it does not cover fall back
    to message passing automatically: a sparse adjacency
    (:class:`torch_sparse.SparseTensor` or :class:`torch.sparse`) with edge
    features, explain mode,
    :obj:`decomposed_layers > 1`, an :obj:`aggr` other than :obj:`"add"` or
    :obj:`flow="target_to_source"`, and registered message-passing hooks.
    A sparse adjacency otherwise runs fused, its entries read as the edges
    ``[col, row]`` (:func:`pyg_gatv2.adjacency.sparse_edge_index`).

    Args:
        in_channels (int or tuple): Size of each input sample, or :obj:`-1` to
            derive the size from the first input(s) to the forward method.
            A tuple gives the sizes of source and target features of a
            bipartite graph.
        out_channels (int): Size of each output sample per head.
        heads (int, optional): Number of attention heads. (default: :obj:`1`)
        concat (bool, optional): If set to :obj:`False`, the heads are
            averaged instead of concatenated. (default: :obj:`True`)
        negative_slope (float, optional): LeakyReLU angle of the negative
            slope. (default: :obj:`0.2`)
        dropout (float, optional): Dropout probability of the normalised
            attention coefficients. (default: :obj:`0.0`)
        add_self_loops (bool, optional): If set to :obj:`False`, will not add
            self-loops to the input graph. (default: :obj:`True`)
        edge_dim (int, optional): Edge feature dimensionality, if any.
            (default: :obj:`None`)
        fill_value (float or torch.Tensor or str, optional): How the edge
            features of added self-loops are made (when :obj:`edge_dim` is
            set): a value or tensor, or the name of a reduction over the
            node's incoming edge features (:obj:`'add'`, :obj:`'mean'`,
            :obj:`'min'`, :obj:`'max'`, :obj:`'mul'`). (default: :obj:`'mean'`)
        bias (bool, optional): If set to :obj:`False`, the layer will not
            learn an additive bias. (default: :obj:`True`)
        share_weights (bool, optional): If set to :obj:`True`, the same
            matrix is applied to the source and the target node of every
            edge, *i.e.* :math:`\mathbf{\Theta}_{s} = \mathbf{\Theta}_{t}`.
            (default: :obj:`False`)
        residual (bool, optional): If set to :obj:`True`, the layer adds a
            learnable skip-connection. (default: :obj:`False`)
        fused (bool, optional): :obj:`None` uses the fused path where it
            applies, :obj:`True` requires it (an error where it does not
            apply), :obj:`False` always uses message passing.
            (default: :obj:`None`)
        **kwargs (optional): Additional arguments of
            :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:**
          node features :math:`(|\mathcal{V}|, F_{in})` or
          :math:`((|\mathcal{V_s}|, F_{s}), (|\mathcal{V_t}|, F_{t}))`
          if bipartite,
          edge indices :math:`(2, |\mathcal{E}|)` (or a sparse adjacency
          :math:`(|\mathcal{V_t}|, |\mathcal{V_s}|)`),
          edge features :math:`(|\mathcal{E}|, D)` *(optional)*
        - **output:** node features :math:`(|\mathcal{V}_t|, H * F_{out})`,
          or :math:`(|\mathcal{V}_t|, F_{out})` if :obj:`concat=False`.
          If :obj:`return_attention_weights=True`, also
          :math:`((2, |\mathcal{E}|), (|\mathcal{E}|, H))` (edges including
          added self-loops), or a sparse adjacency holding the weights.

    Example:
        >>> import torch
        >>> from pyg_gatv2 import GATv2Conv
        >>> conv = GATv2Conv(16, 8, heads=4)
        >>> conv
        GATv2Conv(16, 8, heads=4)
        >>> x = torch.randn(5, 16)
        >>> edge_index = torch.tensor([[0, 1, 2, 3, 4], [1, 2, 3, 4, 0]])
        >>> conv(x, edge_index).shape
        torch.Size([5, 32])
        >>> conv.fused_path_blocker(edge_index) is None    # runs fused
        True
    """
    def __init__(
        self,
        in_channels: Union[int, tuple[int, int]],
        out_channels: int,
        heads: int = 1,
        concat: bool = True,
        negative_slope: float = 0.2,
        dropout: float = 0.0,
        add_self_loops: bool = True,
        edge_dim: Optional[int] = None,
        fill_value: Union[float, Tensor, str] = 'mean',
        bias: bool = True,
        share_weights: bool = False,
        residual: bool = False,
        fused: Optional[bool] = None,
        **kwargs,
    ):
        super().__init__(node_dim=0, **kwargs)
        if fused not in (None, True, False):
            raise TypeError(f"'{self.__class__.__name__}' expects fused=None, "
                            f"True or False (got {fused!r})")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.heads = heads
        self.concat = concat
        self.negative_slope = negative_slope
        self.dropout = dropout
        self.add_self_loops = add_self_loops
        self.edge_dim = edge_dim
        self.fill_value = fill_value
        self.residual = residual
        self.share_weights = share_weights
        self.fused = fused

        if isinstance(in_channels, int):
            in_src = in_dst = in_channels
        else:
            in_src, in_dst = in_channels
        init_parameters(self, in_src, in_dst, edge_dim, bias)

        self.reset_parameters()

    def reset_parameters(self):
        super().reset_parameters()
        reset_parameters(self)

    def forward(
        self,
        x: Union[Tensor, PairTensor],
        edge_index: Adj,
        edge_attr: OptTensor = None,
        return_attention_weights: Optional[bool] = None,
    ):
        r"""Runs the forward pass of the module.

        Args:
            x (torch.Tensor or (torch.Tensor, torch.Tensor)): The input node
                features, or a ``(source, target)`` pair of them.
            edge_index (torch.Tensor or SparseTensor): The edge indices
                ``[2, E]`` (or :class:`torch_geometric.EdgeIndex`), or a
                sparse adjacency (:class:`torch.sparse` COO/CSR/CSC or
                :class:`torch_sparse.SparseTensor`) of shape
                ``[num_targets, num_sources]``.
            edge_attr (torch.Tensor, optional): The edge features, ``[E, D]``
                or ``[E]``. (default: :obj:`None`)
            return_attention_weights (bool, optional): If set to any value,
                also returns ``(edge_index, alpha)`` (or the sparse adjacency
                holding :obj:`alpha`), the attention weights of every edge,
                added self-loops included. (default: :obj:`None`)
        """
        C = self.out_channels
        x_src, x_dst = self._split_input(x)
        blocker = self.fused_path_blocker(edge_index)
        self._check_forward_input(x_src, x_dst, edge_index, edge_attr,
                                  fused_path=blocker is None)
        if self.fused and blocker is not None:
            raise ValueError(
                f"'{self.__class__.__name__}' was built with fused=True but "
                f"the fused path does not support {blocker}; build it with "
                'fused=None to fall back to message passing')
        adjacency = None
        if blocker is None and is_sparse_adjacency(edge_index):
            adjacency = edge_index
            edge_index = sparse_edge_index(adjacency, self.add_self_loops)

        layout = None
        if blocker is None and not torch.compiler.is_compiling():
            # Sorted before the projections exist, so that a large graph's
            # first step does not hold the sort's work space beside them.
            layout = edge_layout(_as_tensor(edge_index), x_src.size(0),
                                 x_dst.size(0), self.add_self_loops,
                                 caller=self.__class__.__name__)
        res: Optional[Tensor] = None
        if self.res is not None:
            res = self.res(x_dst)
        width = C if blocker is not None else self._kernel_width(x_src)
        x_l = self._project(self.lin_l, x_src, width)
        if self.share_weights and x_dst is x_src:
            x_r = x_l
        else:
            x_r = self._project(self.lin_r, x_dst, width)

        want_alpha = bool(return_attention_weights)
        if blocker is None:
            out, attention = self._fused_attention(
                x_l, x_r, edge_index, layout, edge_attr, want_alpha,
                adjacency)
        else:
            out, attention = self._propagate_attention(
                x_l, x_r, edge_index, edge_attr, want_alpha)
        out = combine_heads(out, self.concat, res, self.bias)
        return out if attention is None else (out, attention)

    def _kernel_width(self, x: Tensor) -> int:
        """The channels per head to project into for the fused operator:
        the width its kernels run (:func:`pyg_gatv2.fused.kernel_width`)
        where the projections are plain, initialised :class:`Linear`
        layers that can take zero rows, else :obj:`out_channels`."""
        C = self.out_channels
        for lin in (self.lin_l, self.lin_r, self.lin_edge):
            if lin is not None and not _paddable(lin):
                return C
        dtype = torch.promote_types(x.dtype, self.att.dtype)
        return kernel_width(self.heads, C, x.device, dtype)

    def _project(self, lin: torch.nn.Module, x: Tensor,
                 width: int) -> Tensor:
        """``lin(x)`` as ``[N, heads, width]``: each head's
        :obj:`out_channels` channels, then zeros up to ``width`` (from
        zero rows of the weight and the bias). A plain :class:`Linear`
        projects through :func:`pyg_gatv2.projection.linear`, which reads
        only the nonzero entries of a mostly-zero input."""
        H, C = self.heads, self.out_channels
        if not _paddable(lin):
            return lin(x).view(-1, H, C)
        weight, bias = lin.weight, lin.bias
        if width != C:
            weight = F.pad(weight.view(H, C, -1),
                           (0, 0, 0, width - C)).view(H * width, -1)
            bias = (None if bias is None else F.pad(
                bias.view(H, C), (0, width - C)).view(-1))
        return linear(x, weight, bias).view(-1, H, width)

    def fused_path_blocker(self, edge_index: Adj) -> Optional[str]:
        """Why a call with this ``edge_index`` cannot run on the fused
        operator (a phrase for error messages), or :obj:`None` when it
        can."""
        if self.fused is False:
            return 'fused=False'
        if is_sparse_adjacency(edge_index):
            if self.lin_edge is not None:
                return ('edge features with a sparse adjacency (pass '
                        "edge_index as a [2, E] tensor and 'edge_attr' in "
                        'its order)')
            if (isinstance(edge_index, Tensor)
                    and edge_index.layout == torch.sparse_coo
                    and not edge_index.is_coalesced()
                    and not self.add_self_loops):
                return ('an uncoalesced sparse COO adjacency (coalesce it '
                        "with 'adj.coalesce()')")
        elif not isinstance(edge_index, Tensor):
            return f"edge_index of type '{type(edge_index).__name__}'"
        if self.explain:
            return 'explain mode'
        if self.decomposed_layers > 1:
            return 'decomposed_layers > 1'
        if self.aggr not in ('add', 'sum') or self.flow != 'source_to_target':
            return f"aggr={self.aggr!r} or flow={self.flow!r}"
        for name in _HOOKS:
            if (getattr(self, f'_{name}_forward_pre_hooks')
                    or getattr(self, f'_{name}_forward_hooks')):
                return f'registered {name} hooks'
        return None

    def _fused_attention(self, x_l: Tensor, x_r: Tensor, edge_index: Tensor,
                         layout: Optional[EdgeLayout], edge_attr: OptTensor,
                         want_alpha: bool, adjacency: Adj = None):
        """Attention and aggregation on the fused operator.

        Existing self-loops are skipped and one implicit loop per node is
        added inside the kernels, so the cached layout of the caller's
        ``edge_index`` serves every call. The dropout mask is drawn as the
        message-passing path draws it (same shape, same random stream), so
        both paths agree under one seed. Returns ``[N_dst, H, C]`` and, if
        asked for, ``(edge_index, alpha)`` as message passing returns them
        (self-loops removed and appended, alpha after dropout).

        ``layout`` is that of ``edge_index``, which :meth:`forward` builds
        (or finds cached) before projecting. Under :func:`torch.compile`
        it is :obj:`None`: the layout is the custom op
        ``pyg_gatv2::edge_layout``, and nothing here waits for data: the
        dropout mask covers every edge (those that self-loops replace are
        never read), the features of the loops are reduced from every edge
        (``functional.self_loop_attr``), and only attention weights with
        self-loops, whose edge count depends on the data, break the graph.
        """
        raw_index = edge_index
        edge_index = _as_tensor(edge_index)
        loops = self.add_self_loops
        num_src, num_dst = x_l.size(0), x_r.size(0)
        num_loops = min(num_src, num_dst) if loops else 0
        num_virtual = edge_index.size(1) + num_loops

        # The attention runs in the dtype that message passing computes it
        # in: that of the features and 'att' promoted (float32 when autocast
        # hands bfloat16 or float16 projections to float32 parameters). The
        # operator reads features of a lower precision itself.
        features = torch.promote_types(x_l.dtype, x_r.dtype)
        dtype = torch.promote_types(features, self.att.dtype)
        width = x_l.size(-1)
        edge_term = loop_term = None
        if edge_attr is not None and self.lin_edge is not None:
            edge_term, loop_term = self._edge_terms(
                edge_index, edge_attr, (num_loops, num_dst), width)

        # Edges in the order of message passing (loops removed, then
        # appended; a sparse adjacency's among the others) as virtual edge
        # ids of the layout.
        order = None
        if loops and want_alpha:
            if adjacency is not None:
                order = sparse_message_order(adjacency)
            else:
                order = (layout.kept_eid if layout is not None else
                         _kept_edges(edge_index, num_loops))
        if not 0.0 <= self.dropout <= 1.0:
            # As message passing's F.dropout refuses it, training or not.
            raise ValueError(
                f"'{self.__class__.__name__}' got dropout={self.dropout}: "
                'dropout probability has to be between 0 and 1')
        mask = None
        if self.training and self.dropout > 0:
            mask = self._dropout_mask(x_l, layout, num_virtual, dtype,
                                      adjacency)

        att = self.att
        if width != self.out_channels:
            # Zero channels up to 'width'. Copied in rather than padded: the
            # gradient of a pad is a slice of the padded one, which with a
            # single head keeps the padded strides, and DDP then warns that
            # the gradient's strides differ from the parameter's.
            channels = torch.arange(self.out_channels, device=att.device)
            att = att.new_zeros(*att.shape[:-1], width).index_copy(
                -1, channels, att)
        result = fused_gatv2_attention(
            _cast(x_l, features), _cast(x_r, features), _cast(att, dtype),
            edge_index if layout is None else layout, edge_term,
            loop_edge_term=loop_term, add_self_loops=loops,
            negative_slope=self.negative_slope, dropout_mask=mask,
            return_attention_weights=want_alpha)
        out, alpha = result if want_alpha else (result, None)
        out = out[..., :self.out_channels]
        if self.concat and self.res is None and self.bias is None:
            # The operator keeps its output for backward. Without a bias or
            # a residual the layer would return a view of it, and an
            # in-place operation on the layer's output (fine with message
            # passing) would break backward.
            out = out.clone()
        if not want_alpha:
            return out, None
        if mask is not None:
            alpha = alpha * mask
        if order is not None:
            alpha = alpha[order]
        if adjacency is not None:
            return out, self._sparse_attention(adjacency, alpha, num_loops,
                                               num_dst)
        if order is not None:
            raw_index, _ = remove_self_loops(raw_index)
            raw_index, _ = add_self_loops(raw_index, num_nodes=num_loops)
        return out, (raw_index, alpha)

    def _sparse_attention(self, adj: Adj, alpha: Tensor, num_loops: int,
                          num_dst: int):
        """The attention weights ``alpha`` (in the order message passing
        attends over ``adj``) as message passing returns them for the
        sparse adjacency ``adj``: in the adjacency it attends over."""
        if isinstance(adj, SparseTensor):
            if self.add_self_loops:
                adj = torch_sparse.set_diag(adj)
            return adj.set_value(alpha, layout='coo')
        csc_input = adj.layout == torch.sparse_csc
        if csc_input:
            adj = adj.to_sparse_csr()
        if self.add_self_loops:
            adj, _ = self._with_self_loops(adj, None, num_loops, num_dst)
        adj = set_sparse_value(adj, alpha)
        return (adj.to_sparse_csc() if csc_input else adj, alpha)

    def _edge_terms(self, edge_index: Tensor, edge_attr: Tensor,
                    sizes: tuple[int, int], width: int
                    ) -> tuple[Tensor, Optional[Tensor]]:
        """The projected edge features ``[E, H, width]`` and, with
        self-loops, those of the loops, filled as :obj:`fill_value` says
        (``sizes``: the number of loops and of destination nodes)."""
        if edge_attr.dim() == 1:
            edge_attr = edge_attr.view(-1, 1)
        edge_term = self._project(self.lin_edge, edge_attr, width)
        if not self.add_self_loops:
            return edge_term, None
        loop_attr = self_loop_attr(edge_index, edge_attr, *sizes,
                                   self.fill_value)
        return edge_term, self._project(self.lin_edge, loop_attr, width)

    def _dropout_mask(self, x: Tensor, layout: Optional[EdgeLayout],
                      num_virtual: int, dtype: torch.dtype,
                      adjacency: Adj = None) -> Tensor:
        """The dropout mask of the attention weights ``[virtual edges, H]``,
        drawn as message passing draws its dropout: over the edges it
        attends over, in their order (after the others, the loops of an
        ``edge_index``; among them, those of a sparse ``adjacency``)."""
        H = self.heads
        if layout is None or not self.add_self_loops:
            return F.dropout(x.new_ones(num_virtual, H, dtype=dtype),
                             p=self.dropout)
        order = (layout.kept_eid if adjacency is None else
                 sparse_message_order(adjacency))
        mask = F.dropout(x.new_ones(layout.num_kept, H, dtype=dtype),
                         p=self.dropout)
        return mask.new_zeros(num_virtual, H).index_copy_(0, order, mask)

    def _propagate_attention(self, x_l: Tensor, x_r: Tensor, edge_index: Adj,
                             edge_attr: OptTensor, want_alpha: bool):
        """Attention and aggregation by message passing; returns
        ``[N_dst, H, C]`` and, if asked for, the attention weights with
        their edges (or sparse adjacency)."""
        # torch's scatter_add_ (under PyG's aggregation) gets its gradient
        # wrong for int32 indices; int64 ones are right.
        index_dtype = None
        if (isinstance(edge_index, Tensor) and edge_index.dtype != torch.long
                and edge_index.layout == torch.strided):
            index_dtype = edge_index.dtype
            edge_index = edge_index.long()
        # PyG's message passing reads CSR and COO adjacencies, not CSC.
        csc_input = (isinstance(edge_index, Tensor)
                     and edge_index.layout == torch.sparse_csc)
        if csc_input:
            edge_index = edge_index.to_sparse_csr()
        if self.add_self_loops:
            edge_index, edge_attr = self._with_self_loops(
                edge_index, edge_attr, min(x_l.size(0), x_r.size(0)),
                x_r.size(0))

        alpha = self.edge_updater(edge_index, x=(x_l, x_r),
                                  edge_attr=edge_attr)
        out = self.propagate(edge_index, x=(x_l, x_r), alpha=alpha)
        if not want_alpha:
            return out, None
        if isinstance(edge_index, SparseTensor):
            return out, edge_index.set_value(alpha, layout='coo')
        if is_torch_sparse_tensor(edge_index):
            adj = set_sparse_value(edge_index, alpha)
            return out, (adj.to_sparse_csc() if csc_input else adj, alpha)
        if index_dtype is not None:
            edge_index = edge_index.to(index_dtype)
        return out, (edge_index, alpha)

    def _with_self_loops(self, edge_index: Adj, edge_attr: OptTensor,
                         num_loops: int, num_dst: int):
        if isinstance(edge_index, SparseTensor):
            if self.edge_dim is not None:
                raise NotImplementedError(
                    f"'{self.__class__.__name__}' cannot add self-loops to "
                    "a 'SparseTensor' with edge features; pass 'edge_index' "
                    'as a [2, E] tensor instead')
            return torch_sparse.set_diag(edge_index), edge_attr
        if is_torch_sparse_tensor(edge_index) and edge_attr is not None:
            # PyG's remove_self_loops asserts that no edge features come
            # with a sparse adjacency.
            raise NotImplementedError(
                f"'{self.__class__.__name__}' cannot add self-loops to a "
                "torch.sparse adjacency with edge features; pass "
                "'edge_index' as a [2, E] tensor and 'edge_attr' in its "
                'order instead')
        edge_index, edge_attr = remove_self_loops(edge_index, edge_attr)
        if edge_attr is not None:
            edge_attr = torch.cat([
                edge_attr,
                self_loop_attr(edge_index, edge_attr, num_loops, num_dst,
                               self.fill_value)
            ])
        edge_index, _ = add_self_loops(edge_index, num_nodes=num_loops)
        return edge_index, edge_attr

    def edge_update(self, x_j: Tensor, x_i: Tensor, edge_attr: OptTensor,
                    index: Tensor, ptr: OptTensor,
                    dim_size: Optional[int]) -> Tensor:
        edge_term: Optional[Tensor] = None
        if edge_attr is not None and self.lin_edge is not None:
            if edge_attr.dim() == 1:
                edge_attr = edge_attr.view(-1, 1)
            edge_term = self.lin_edge(edge_attr).view(-1, self.heads,
                                                      self.out_channels)
        alpha = gatv2_logits(x_i, x_j, self.att, self.negative_slope,
                             edge_term)
        num_nodes = dim_size if dim_size is not None else x_i.size(0)
        alpha = scatter_softmax(alpha, index, num_nodes, ptr)
        return F.dropout(alpha, p=self.dropout, training=self.training)

    def message(self, x_j: Tensor, alpha: Tensor) -> Tensor:
        return x_j * alpha.unsqueeze(-1)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'{self.out_channels}, heads={self.heads})')

    def _split_input(
        self,
        x: Union[Tensor, PairTensor],
    ) -> tuple[Tensor, Tensor]:
        name = self.__class__.__name__
        if isinstance(x, Tensor):
            return x, x
        if isinstance(x, (tuple, list)) and len(x) == 2:
            x_src, x_dst = x
            if not isinstance(x_src, Tensor) or not isinstance(x_dst, Tensor):
                raise TypeError(
                    f"'{name}' got a bipartite input whose source or target "
                    "features are not tensors (e.g. None); pass "
                    "'(x_src, x_dst)' with both tensors, or one tensor 'x' "
                    "for a graph whose sources and targets are the same")
            return x_src, x_dst
        raise TypeError(
            f"'{name}' expects 'x' to be a tensor or a (source, target) pair "
            f"of tensors (got '{type(x).__name__}')")

    def _check_forward_input(self, x_src: Tensor, x_dst: Tensor,
                             edge_index: Adj, edge_attr: OptTensor,
                             fused_path: bool) -> None:
        name = self.__class__.__name__
        for role, x, lin in (('source', x_src, self.lin_l),
                             ('target', x_dst, self.lin_r)):
            checks.check_node_features(x, lin, name, role)
        num_edges = checks.check_adjacency(
            edge_index, x_src.size(0), x_dst.size(0), self.att.device, name,
            # The fused path checks the range once per graph, when it builds
            # the layout; elsewhere the check would wait for the device on
            # every call of a GPU layer, and break a compiled graph.
            check_range=not (fused_path or torch.compiler.is_compiling()))
        if edge_attr is not None:
            checks.check_edge_attr(edge_attr, self.lin_edge, self.edge_dim,
                                   num_edges, name)


def _as_tensor(edge_index: Tensor) -> Tensor:
    """The plain tensor of an :class:`~torch_geometric.EdgeIndex`, or
    ``edge_index`` itself."""
    if isinstance(edge_index, EdgeIndex):
        return edge_index.as_tensor()
    return edge_index


def _cast(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` in ``dtype``, cast only where its dtype differs: torch.export
    records a cast that changes nothing as a check of the dtype it saw, which
    a program exported without autocast then fails under autocast (and the
    other way round)."""
    return x if x.dtype == dtype else x.to(dtype)


def _kept_edges(edge_index: Tensor, num_loops: int) -> Tensor:
    """The virtual edge ids that ``remove_self_loops`` + ``add_self_loops``
    keep, in their order: the edges ``j -> i``, ``j != i``, then the
    loops."""
    num_edges = edge_index.size(1)
    kept = (edge_index[0] != edge_index[1]).nonzero().view(-1)
    return torch.cat([kept, torch.arange(num_edges, num_edges + num_loops,
                                          device=kept.device)])
