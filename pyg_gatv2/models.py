"""Networks built from the GATv2 layers."""

from collections.abc import Callable
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.models import GAT as PyGGAT

from pyg_gatv2.adjacency import is_sparse_adjacency
from pyg_gatv2.checks import (
    check_edge_index,
    check_positive_ints,
    check_probabilities,
)
from pyg_gatv2.conv import GATv2Conv
from pyg_gatv2.fused import buffers, cpp_library


def sparse_feature_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    r"""Dropout that draws random numbers only for the nonzero entries of
    :obj:`x`.

    Dropping a zero leaves it zero, so this has the distribution of
    :func:`torch.nn.functional.dropout`; on bag-of-words features such as
    Planetoid's (about 1% nonzero) it is several times faster, since
    :func:`torch.nn.functional.dropout` draws a random number per entry.
    The draws are ``torch.rand(k) >= p`` for the :math:`k` nonzero entries
    in row-major order, on every device. On the CPU, the C++ library finds
    and writes the entries of float32 and float64 inputs in two passes
    over :obj:`x` (``gatv2_count_nonzero`` and ``gatv2_drop_nonzero`` in
    ``pyg_gatv2/fused/_kernels/gatv2.h``); torch does for other devices
    and dtypes and where the library was not built, to the same result
    for the same draws. Inputs that need a gradient (whose zeros would
    then get one) or that have more than an eighth of their entries
    nonzero go to :func:`torch.nn.functional.dropout`.

    Args:
        x (torch.Tensor): Features of any shape.
        p (float): Probability of zeroing an entry.
        training (bool): Apply dropout; otherwise return :obj:`x`.
    """
    if not training or p == 0.0:
        return x
    if not 0.0 <= p <= 1.0:
        raise ValueError(f'dropout probability has to be between 0 and 1, '
                         f'but got {p}')
    if p == 1.0:
        return x * 0.0
    if x.requires_grad:
        return F.dropout(x, p=p, training=True)
    return _nonzero_dropout(x, p)


# One operator to torch.compile, which cannot trace a search whose result
# sizes the random draws.
@torch.library.custom_op('pyg_gatv2::nonzero_dropout', mutates_args=())
def _nonzero_dropout(x: Tensor, p: float) -> Tensor:
    # The C++ library finds and writes the nonzero entries where it runs,
    # torch elsewhere; the rule for dense inputs and the draws are shared.
    on_library = (x.device.type == 'cpu' and x.dtype in cpp_library.DTYPES
                  and cpp_library.load() is not None)
    flat = x.reshape(-1)
    if on_library:
        offsets = cpp_library.count_nonzero(flat)
        num_nonzero = int(offsets[-1])
    else:
        nonzero = flat.nonzero().squeeze(1)
        num_nonzero = nonzero.numel()
    if 8 * num_nonzero > x.numel():
        return F.dropout(x, p=p, training=True)
    keep = torch.rand(num_nonzero, device=x.device) >= p
    if on_library:
        out = cpp_library.drop_nonzero(flat, offsets, keep, 1.0 / (1.0 - p))
    else:
        # The nonzero entries times their scale (zero where dropped, so
        # that a dropped NaN or infinity stays NaN, as under F.dropout)
        # written into zeros: one pass over the output, where multiplying
        # by a tensor of scales took two and a buffer more.
        scale = keep.to(x.dtype) * (1.0 / (1.0 - p))
        out = torch.zeros_like(flat)
        out[nonzero] = flat[nonzero] * scale
    return out.view(x.shape)


@_nonzero_dropout.register_fake
def _(x, p):
    return x.new_empty(x.shape)


def seed_prefixes(edge_index: Tensor, num_seeds: int, num_layers: int,
                  num_nodes: int) -> List[int]:
    r"""How many of the first nodes each layer of a
    :obj:`num_layers`-layer network must compute so that the first
    :obj:`num_seeds` nodes get their outputs.

    Returns :math:`[n_0, \ldots, n_L]` with :math:`n_0` = :obj:`num_seeds`
    and :math:`n_{k+1}` the smallest prefix that holds the first
    :math:`n_k` nodes and the sources of every edge into them: the layer
    :math:`k` steps below the output reads nodes :math:`[0, n_{k+1})` and
    writes :math:`[0, n_k)`. On a subgraph of
    :class:`~torch_geometric.loader.NeighborLoader`, which numbers the seeds
    first and then the nodes of each hop in turn, :math:`n_k` is about the
    nodes within :math:`k` hops of the seeds. No order is assumed: on any
    numbering the prefixes hold every node the seeds depend on.

    Args:
        edge_index (torch.Tensor): Edges as (source, target) rows.
        num_seeds (int): The nodes whose outputs are wanted: the first ones.
        num_layers (int): Layers of the network.
        num_nodes (int): Nodes of the graph.
    """
    if (isinstance(num_seeds, bool) or not isinstance(num_seeds, int)
            or not 0 < num_seeds <= num_nodes):
        raise ValueError(f"got num_seeds={num_seeds!r} for a graph of "
                         f'{num_nodes} nodes; pass the number of seed nodes '
                         'that come first, as NeighborLoader batches give '
                         "it in 'batch.batch_size'")
    src, dst = edge_index[0], edge_index[1]
    prefixes = [num_seeds]
    for _ in range(num_layers):
        into = src[dst < prefixes[-1]]
        reach = int(into.max()) + 1 if into.numel() else 0
        prefixes.append(max(prefixes[-1], reach))
    return prefixes


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
        - **output:** logits :math:`(|\mathcal{V}|, C)`, or
          :math:`(\text{num\_seeds}, C)` with :obj:`num_seeds`
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
        name = self.__class__.__name__
        check_positive_ints(name, in_channels=in_channels,
                            out_channels=out_channels,
                            hidden_channels=hidden_channels, heads=heads,
                            output_heads=output_heads, num_layers=num_layers)
        check_probabilities(name, dropout=dropout,
                            attention_dropout=attention_dropout)
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

    def forward(self, x: Tensor, edge_index: Tensor,
                num_seeds: Optional[int] = None) -> Tensor:
        r"""Returns the class logits of every node, or with
        :obj:`num_seeds` of the first :obj:`num_seeds` nodes only.

        With :obj:`num_seeds` (a mini-batch of
        :class:`~torch_geometric.loader.NeighborLoader`, whose seed nodes
        come first), each layer computes only the nodes that the seeds'
        logits depend on, as PyG's ``trim_to_layer`` does: the last layer
        only the seeds, the one before only the seeds and their sampled
        neighbours, and so on (see :func:`~pyg_gatv2.models.seed_prefixes`).
        The seeds' logits are those of the whole subgraph; dropout draws
        masks for the nodes computed only.
        """
        prefixes = None
        if num_seeds is not None:
            # The prefixes are read from the rows of 'edge_index': checked
            # here, or a wrong one fails obscurely inside, or reaches the
            # layers sliced out of shape.
            name = self.__class__.__name__
            if is_sparse_adjacency(edge_index):
                raise ValueError(
                    f"'{name}' with num_seeds needs 'edge_index' as a [2, "
                    'num_edges] tensor (got a sparse adjacency); pass the '
                    "graph's edge_index, or leave num_seeds out")
            check_edge_index(edge_index, name)
            prefixes = seed_prefixes(edge_index, num_seeds, len(self.convs),
                                     x.size(0))
            x = x[:prefixes[-1]]
        x = sparse_feature_dropout(x, self.dropout, self.training)
        for layer, conv in enumerate(self.convs):
            if prefixes is None:
                x = conv(x, edge_index)
            else:
                # Each layer reads one prefix and writes the next smaller
                # one: the nodes one hop nearer the seeds.
                num_dst = prefixes[len(self.convs) - 1 - layer]
                x = conv((x, x[:num_dst]),
                         edge_index[:, edge_index[1] < num_dst])
            if layer < len(self.convs) - 1:
                x = F.elu(x)
                x = F.dropout(x, p=self.dropout, training=self.training)
        return x

    @torch.no_grad()
    def inference(
        self,
        loader,
        device: Optional[Union[str, torch.device]] = None,
        embedding_device: Union[str, torch.device] = 'cpu',
    ) -> Tensor:
        r"""Returns the class logits of every node of a graph too large
        for one full-batch pass, computed layer by layer, as PyG's
        ``BasicGNN.inference`` does.

        Each layer runs over all nodes in the loader's batches of
        destination nodes, each with its whole one-hop in-neighbourhood,
        and its output for every node is kept (on
        :obj:`embedding_device`) as the input of the next layer. A batch
        computes its seeds only (their in-edges, on the fused kernels), so
        memory holds one layer's input and output for all nodes plus one
        batch's subgraph, instead of the whole graph's layout and every
        layer's activations; the kernels' buffers of each batch are given
        back after it (:func:`pyg_gatv2.fused.buffers.empty_cache`). The
        logits equal those of
        :meth:`forward` on the whole graph in evaluation mode.

        Args:
            loader (torch_geometric.loader.NeighborLoader): The graph's
                nodes in order, each batch with all its in-neighbours:
                ``NeighborLoader(data, num_neighbors=[-1], batch_size=...,
                shuffle=False)``, over every node (no ``input_nodes``).
            device (torch.device, optional): Where the layers run; the
                model's device if :obj:`None`. (default: :obj:`None`)
            embedding_device (torch.device, optional): Where each layer's
                output for all nodes is kept. (default: :obj:`'cpu'`)
        """
        from torch_geometric.loader import NeighborLoader
        name = f'{self.__class__.__name__}.inference'
        if self.training:
            raise RuntimeError(f"'{name}' computes evaluation-mode outputs; "
                               'call model.eval() first')
        if not isinstance(loader, NeighborLoader):
            raise TypeError(f"'{name}' expects a NeighborLoader (got "
                            f'{type(loader).__name__})')
        num_neighbors = loader.node_sampler.num_neighbors
        if list(num_neighbors.values if hasattr(num_neighbors, 'values')
                else num_neighbors) != [-1]:
            raise ValueError(
                f"'{name}' expects a loader of whole one-hop "
                'neighbourhoods: build it with num_neighbors=[-1] (got '
                f'{num_neighbors!r})')
        data = loader.data
        num_nodes = data.num_nodes
        if len(loader.dataset) != num_nodes:
            raise ValueError(
                f"'{name}' expects a loader over all {num_nodes} nodes of the "
                f'graph (got {len(loader.dataset)} input nodes); build it '
                'without input_nodes')
        if device is None:
            device = next(self.parameters()).device
        x_all = data.x.to(embedding_device)
        last = len(self.convs) - 1
        for layer, conv in enumerate(self.convs):
            outputs: List[Tensor] = []
            done = 0
            for batch in loader:
                num_seeds = batch.batch_size
                seeds = batch.n_id[:num_seeds]
                if not torch.equal(seeds.cpu(), torch.arange(
                        done, done + num_seeds)):
                    raise ValueError(
                        f"'{name}' expects the nodes in order: build the "
                        'loader with shuffle=False')
                done += num_seeds
                x = x_all[batch.n_id.to(x_all.device)].to(device)
                edge_index = batch.edge_index.to(device)
                edge_index = edge_index[:, edge_index[1] < num_seeds]
                x = conv((x, x[:num_seeds]), edge_index)
                if layer < last:
                    x = F.elu(x)
                outputs.append(x.to(embedding_device))
                # For graphs whose memory is tight: each batch's kernel
                # buffers go back to the system instead of waiting in the
                # cache for a batch they may not fit.
                buffers.empty_cache()
            x_all = torch.cat(outputs, dim=0)
        return x_all

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'{self.out_channels}, hidden_channels='
                f'{self.hidden_channels}, heads={self.heads}, '
                f'output_heads={self.output_heads}, '
                f'num_layers={self.num_layers})')


class GAT(PyGGAT):
    r""":class:`torch_geometric.nn.models.GAT` with this package's
    :class:`GATv2Conv` as its :obj:`v2=True` layer.

    The same arguments, defaults, layers and state_dict keys as PyG's model,
    so that a checkpoint loads into either; under one seed both draw the
    same initial weights. :obj:`v2=False` builds PyG's
    :class:`~torch_geometric.nn.conv.GATConv` layers, as PyG's model does.
    ``fused`` is passed on to every :class:`GATv2Conv` (see its docs).

    Example:
        >>> from pyg_gatv2 import GAT
        >>> model = GAT(1433, 64, num_layers=2, out_channels=7, heads=8,
        ...             v2=True)
        >>> model.convs[0]
        GATv2Conv(1433, 8, heads=8)
    """
    def init_conv(self, in_channels: Union[int, Tuple[int, int]],
                  out_channels: int, **kwargs) -> MessagePassing:
        fused = kwargs.pop('fused', None)
        if not kwargs.get('v2', False):
            if fused is not None:
                raise ValueError(
                    f"'{self.__class__.__name__}' got fused={fused!r} but "
                    'builds GATConv layers (v2=False); pass v2=True for '
                    "this package's GATv2Conv")
            return super().init_conv(in_channels, out_channels, **kwargs)
        # PyG's model decides the per-head size and concatenation; its layer
        # is built on the meta device, so it allocates no memory and draws
        # no random numbers, and ours takes its place.
        with torch.device('meta'):
            pyg = super().init_conv(in_channels, out_channels, **kwargs)
        options = {key: value for key, value in kwargs.items()
                   if key not in ('v2', 'heads', 'concat')}
        return GATv2Conv(pyg.in_channels, pyg.out_channels, heads=pyg.heads,
                         concat=pyg.concat, dropout=pyg.dropout, fused=fused,
                         **options)
