"""GATv2Conv: the drop-in replacement for PyG's GATv2 layer."""
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Parameter
from torch_geometric import EdgeIndex
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.nn.inits import glorot, zeros
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

from pyg_gatv2.checks import check_index_range, check_no_nan, is_strict
from pyg_gatv2.functional import combine_heads, gatv2_logits, self_loop_attr
from pyg_gatv2.fused.layer import fused_conv_forward, fused_path_blocker
from pyg_gatv2.softmax import scatter_softmax

_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


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
    only when the layer is built with :obj:`edge_dim`. The softmax runs on the
    backend chosen in :mod:`pyg_gatv2.softmax`.

    By default the attention runs on the fused path of
    :mod:`pyg_gatv2.fused`: logits, softmax and aggregation in one
    memory-efficient operator that keeps no per-edge feature tensor for
    backward (numba kernels on CPU, chunked PyTorch elsewhere; see
    :func:`pyg_gatv2.fused.set_backend`). Calls it does not cover fall back
    to message passing automatically: a :class:`torch_sparse.SparseTensor`
    or :class:`torch.sparse` adjacency, :func:`torch.compile` tracing,
    explain mode, :obj:`decomposed_layers > 1`, an :obj:`aggr` other than
    :obj:`"add"` or :obj:`flow="target_to_source"`, and registered
    message-passing hooks.

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

        self.lin_l = Linear(in_src, heads * out_channels, bias=bias,
                            weight_initializer='glorot')
        if share_weights:
            self.lin_r = self.lin_l
        else:
            self.lin_r = Linear(in_dst, heads * out_channels, bias=bias,
                                weight_initializer='glorot')

        self.att = Parameter(torch.empty(1, heads, out_channels))

        if edge_dim is not None:
            self.lin_edge = Linear(edge_dim, heads * out_channels, bias=False,
                                   weight_initializer='glorot')
        else:
            self.lin_edge = None

        total_out_channels = out_channels * (heads if concat else 1)

        if residual:
            self.res = Linear(in_dst, total_out_channels, bias=False,
                              weight_initializer='glorot')
        else:
            self.register_parameter('res', None)

        if bias:
            self.bias = Parameter(torch.empty(total_out_channels))
        else:
            self.register_parameter('bias', None)

        self.reset_parameters()

    def reset_parameters(self):
        super().reset_parameters()
        self.lin_l.reset_parameters()
        self.lin_r.reset_parameters()
        if self.lin_edge is not None:
            self.lin_edge.reset_parameters()
        if self.res is not None:
            self.res.reset_parameters()
        glorot(self.att)
        zeros(self.bias)

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
        H, C = self.heads, self.out_channels
        x_src, x_dst = self._split_input(x)
        if not torch.compiler.is_compiling():
            self._check_features(x_src, x_dst)

        res: Optional[Tensor] = None
        if self.res is not None:
            res = self.res(x_dst)

        x_l = self.lin_l(x_src).view(-1, H, C)
        if self.share_weights and x_dst is x_src:
            x_r = x_l
        else:
            x_r = self.lin_r(x_dst).view(-1, H, C)

        blocker = 'fused=False'
        if self.fused is not False:
            blocker = fused_path_blocker(self, edge_index)
        if not torch.compiler.is_compiling():
            self._check_edges(edge_index, edge_attr, x_l.size(0),
                              x_r.size(0), fused_path=blocker is None)

        if self.fused is not False:
            if blocker is None:
                out, attention = fused_conv_forward(
                    self, x_l, x_r, edge_index, edge_attr,
                    bool(return_attention_weights))
                out = combine_heads(out, self.concat, res, self.bias)
                return out if attention is None else (out, attention)
            if self.fused:
                raise ValueError(
                    f"'{self.__class__.__name__}' was built with fused=True "
                    f"but the fused path does not support {blocker}; build "
                    "it with fused=None to fall back to message passing")

        # torch's scatter_add_ (under PyG's aggregation) gets its gradient
        # wrong for int32 indices; int64 ones are right.
        index_dtype = None
        if (isinstance(edge_index, Tensor) and edge_index.dtype != torch.long
                and not edge_index.is_sparse
                and edge_index.layout == torch.strided):
            index_dtype = edge_index.dtype
            edge_index = edge_index.long()

        # PyG's message passing reads CSR and COO adjacencies, not CSC.
        csc_input = (isinstance(edge_index, Tensor)
                     and edge_index.layout == torch.sparse_csc)
        if csc_input:
            edge_index = edge_index.to_sparse_csr()

        if self.add_self_loops:
            if isinstance(edge_index, SparseTensor):
                if self.edge_dim is None:
                    edge_index = torch_sparse.set_diag(edge_index)
                else:
                    raise NotImplementedError(
                        f"'{self.__class__.__name__}' cannot add self-loops "
                        "to a 'SparseTensor' with edge features; pass "
                        "'edge_index' as a [2, E] tensor instead")
            else:
                num_loops = min(x_l.size(0), x_r.size(0))
                edge_index, edge_attr = remove_self_loops(
                    edge_index, edge_attr)
                if edge_attr is not None:
                    edge_attr = torch.cat([
                        edge_attr,
                        self_loop_attr(edge_index, edge_attr, num_loops,
                                       x_r.size(0), self.fill_value)
                    ])
                edge_index, _ = add_self_loops(edge_index,
                                               num_nodes=num_loops)

        alpha = self.edge_updater(edge_index, x=(x_l, x_r),
                                  edge_attr=edge_attr)
        out = self.propagate(edge_index, x=(x_l, x_r), alpha=alpha)
        out = combine_heads(out, self.concat, res, self.bias)

        if return_attention_weights:
            if isinstance(edge_index, SparseTensor):
                return out, edge_index.set_value(alpha, layout='coo')
            if is_torch_sparse_tensor(edge_index):
                adj = set_sparse_value(edge_index, alpha)
                if csc_input:
                    adj = adj.to_sparse_csc()
                return out, (adj, alpha)
            if index_dtype is not None:
                edge_index = edge_index.to(index_dtype)
            return out, (edge_index, alpha)
        return out

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

    def _check_features(self, x_src: Tensor, x_dst: Tensor) -> None:
        name = self.__class__.__name__
        for role, x, lin in (('source', x_src, self.lin_l),
                             ('target', x_dst, self.lin_r)):
            if x.dim() != 2:
                raise ValueError(
                    f"'{name}' expects {role} node features of shape "
                    f"[num_nodes, num_features] (got shape {tuple(x.shape)}); "
                    "reshape them to two dimensions")
            if not x.is_floating_point():
                raise TypeError(
                    f"'{name}' expects floating-point {role} node features "
                    f"(got '{x.dtype}'); convert them with 'x.float()'")
            if lin.in_channels > 0 and x.size(-1) != lin.in_channels:
                raise ValueError(
                    f"'{name}' was built for {lin.in_channels} {role} input "
                    f"features but got {x.size(-1)}; build it with "
                    f"in_channels={x.size(-1)} (or -1 to infer it)")
            if is_strict():
                check_no_nan(x, f'its {role} node features', name)
            weight = lin.weight
            if isinstance(weight, torch.nn.parameter.UninitializedParameter):
                continue
            # Under autocast the projections cast the features themselves.
            if (x.dtype != weight.dtype
                    and not torch.is_autocast_enabled(x.device.type)):
                raise TypeError(
                    f"'{name}' got {role} node features of dtype '{x.dtype}' "
                    f"but its parameters are '{weight.dtype}'; convert one "
                    f"to the other (e.g. 'x.to({weight.dtype})' or "
                    f"'conv.to({x.dtype})')")
            if x.device != weight.device:
                raise ValueError(
                    f"'{name}' got {role} node features on '{x.device}' but "
                    f"its parameters are on '{weight.device}'; move one to "
                    f"the other (e.g. 'x.to(\"{weight.device}\")')")

    def _check_edges(self, edge_index: Adj, edge_attr: OptTensor,
                     num_src: int, num_dst: int, fused_path: bool) -> None:
        name = self.__class__.__name__
        if isinstance(edge_index, SparseTensor):
            num_edges = edge_index.nnz()
            if edge_index.size(0) != num_dst or edge_index.size(1) != num_src:
                raise ValueError(
                    f"'{name}' got a sparse adjacency of size "
                    f'{tuple(edge_index.sizes())} but expects '
                    f'[num_targets, num_sources] = [{num_dst}, {num_src}]')
        elif not isinstance(edge_index, Tensor):
            raise TypeError(
                f"'{name}' expects 'edge_index' to be a [2, E] integer "
                'tensor, an EdgeIndex or a sparse adjacency (got '
                f"'{type(edge_index).__name__}')")
        elif is_torch_sparse_tensor(edge_index):
            num_edges = edge_index._nnz()
            if edge_index.dim() != 2 or tuple(edge_index.shape) != (num_dst,
                                                                   num_src):
                raise ValueError(
                    f"'{name}' got a sparse adjacency of shape "
                    f'{tuple(edge_index.shape)} but expects '
                    f'[num_targets, num_sources] = [{num_dst}, {num_src}]')
        else:
            if edge_index.dtype not in _INT_DTYPES:
                raise TypeError(
                    f"'{name}' expects 'edge_index' of an integer dtype (got "
                    f"'{edge_index.dtype}'); convert it with "
                    "'edge_index.long()'")
            if edge_index.dim() != 2 or edge_index.size(0) != 2:
                raise ValueError(
                    f"'{name}' expects 'edge_index' of shape [2, num_edges] "
                    f'(got {tuple(edge_index.shape)}); transpose a '
                    "[num_edges, 2] list with 'edge_index.t()'")
            if edge_index.device != self.att.device:
                raise ValueError(
                    f"'{name}' got 'edge_index' on '{edge_index.device}' but "
                    f"its parameters are on '{self.att.device}'; move it "
                    f"with 'edge_index.to(\"{self.att.device}\")'")
            num_edges = edge_index.size(1)
            # The fused path checks the range once per graph, when it builds
            # the layout; elsewhere the check would wait for the device on
            # every call of a GPU layer.
            if is_strict() or (not fused_path
                               and edge_index.device.type == 'cpu'):
                if isinstance(edge_index, EdgeIndex):
                    edge_index = edge_index.as_tensor()
                check_index_range(edge_index, num_src, num_dst, name)

        if edge_attr is None:
            return
        if self.lin_edge is None:
            raise ValueError(
                f"'{name}' got 'edge_attr' but was built with edge_dim=None; "
                'build it with edge_dim=<number of edge features> or do not '
                "pass 'edge_attr'")
        if not isinstance(edge_attr, Tensor):
            raise TypeError(f"'{name}' expects 'edge_attr' to be a tensor "
                            f"(got '{type(edge_attr).__name__}')")
        if not edge_attr.is_floating_point():
            raise TypeError(
                f"'{name}' expects floating-point 'edge_attr' (got "
                f"'{edge_attr.dtype}'); convert it with 'edge_attr.float()'")
        dim = edge_attr.size(-1) if edge_attr.dim() == 2 else 1
        # With edge_dim=-1 the size is taken from the first edge_attr.
        expected = self.lin_edge.in_channels
        if edge_attr.dim() not in (1, 2) or expected not in (-1, dim):
            raise ValueError(
                f"'{name}' was built with edge_dim={self.edge_dim} and "
                f"expects 'edge_attr' of shape [num_edges, {expected}] (got "
                f'{tuple(edge_attr.shape)})')
        if is_strict():
            check_no_nan(edge_attr, "'edge_attr'", name)
        if edge_attr.size(0) != num_edges:
            raise ValueError(
                f"'{name}' got 'edge_attr' for {edge_attr.size(0)} edges but "
                f"'edge_index' has {num_edges}; pass one row per edge")
