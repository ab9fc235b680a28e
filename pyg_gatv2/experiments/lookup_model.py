"""The network of the DictionaryLookup experiment, with GATv2 or GAT
layers, sparse or dense."""

import torch
from torch import Tensor
from torch.func import functional_call
from torch_geometric.data import Data
from torch_geometric.nn import DenseGATConv, GATConv
from torch_geometric.typing import OptTensor
from torch_geometric.utils import to_dense_adj, to_dense_batch

from pyg_gatv2.checks import check_positive_ints, check_probabilities
from pyg_gatv2.conv import GATv2Conv
from pyg_gatv2.dense import DenseGATv2Conv

LOOKUP_CONVS = ('gatv2', 'gat', 'dense_gatv2', 'dense_gat')
LOOKUP_READOUTS = ('linear', 'tied')
# The layer behind each name, for reports and figures.
LOOKUP_LAYERS = {
    'gatv2': 'GATv2 (pyg_gatv2.GATv2Conv)',
    'gat': 'GAT (torch_geometric GATConv)',
    'dense_gatv2': 'GATv2 (pyg_gatv2.DenseGATv2Conv)',
    'dense_gat': 'GAT (torch_geometric DenseGATConv)',
}


def _dropout16(x: Tensor, p: float, training: bool) -> Tensor:
    r"""Dropout with 16 random bits per entry, drawn four to a 64-bit
    integer.

    An entry is kept when its 16 bits, read as an integer :math:`u` in
    :math:`[0, 2^{16})`, reach :math:`\mathrm{round}(p \cdot 2^{16})`, so
    :obj:`p` acts rounded to a multiple of :math:`2^{-16}` (exactly for
    :math:`p = 0.5`). On the CPU, :func:`torch.nn.functional.dropout` draws
    a random number per entry, and on the DictionaryLookup network's
    outputs that took about a tenth of a training step; this draws a
    quarter as many.
    """
    if not training or p == 0.0:
        return x
    words = torch.randint(torch.iinfo(torch.int64).min,
                          torch.iinfo(torch.int64).max,
                          ((x.numel() + 3) // 4, ), dtype=torch.int64,
                          device=x.device)
    bits = words.view(torch.int16)[:x.numel()].view_as(x)
    keep = bits >= round(p * 65536) - 32768
    return x * keep.to(x.dtype) * (1.0 / (1.0 - p))


class DictionaryLookupNet(torch.nn.Module):
    r"""The DictionaryLookup network of the `"How Attentive are Graph
    Attention Networks?" <https://arxiv.org/abs/2105.14491>`_ paper
    (Section 4.1), as in the authors' code: embeddings, one attention layer,
    dropout and a linear readout on the query nodes.

    A node holding key id :math:`a` and value id :math:`b` starts as
    :math:`\mathbf{h} = \mathrm{ReLU}(\mathbf{K}_a + \mathbf{V}_b)`, the sum
    of two learned embeddings. One attention layer of
    :obj:`hidden_channels` outputs (:obj:`heads` heads of
    ``hidden_channels // heads``, concatenated) carries the key nodes'
    features to the query nodes; dropout follows it, and a readout turns
    each query's output :math:`\mathbf{x}'_q` into one logit per value.

    The layers are built as in the authors' code. GATv2 is our
    :class:`~pyg_gatv2.GATv2Conv` with :obj:`share_weights=True`,
    :obj:`bias=False` and :obj:`add_self_loops=False`, so every query
    attends over the :math:`k` keys. GAT is PyG's
    :class:`~torch_geometric.nn.GATConv` with its defaults, a bias and
    :obj:`add_self_loops=True`, so every query attends over the keys and
    itself. The dense variants compute the same functions on the batch's
    dense adjacency: :obj:`'dense_gatv2'` with our
    :class:`~pyg_gatv2.DenseGATv2Conv` (the state_dict of :obj:`'gatv2'`),
    :obj:`'dense_gat'` with PyG's :class:`~torch_geometric.nn.DenseGATConv`
    (the parameters of :obj:`'gat'`, with ``att_src`` and ``att_dst`` of
    shape ``[1, 1, heads, C]`` instead of ``[1, heads, C]``; under one seed
    both draw the same initial weights). On these small, complete bipartite
    graphs the dense GAT takes a fraction of the message-passing time.

    Readouts:

    * :obj:`'linear'` (the paper's): ``Linear(hidden_channels, k,
      bias=False)``.
    * :obj:`'tied'` (ours, not in the paper): the logit of value :math:`v`
      is :math:`\mathbf{x}'_q \cdot \mathbf{m}_v`, where
      :math:`\mathbf{m}_v` is the layer's output for a node that holds
      :math:`\mathrm{ReLU}(\mathbf{V}_v)` and attends only to itself. The
      readout starts out aligned with attending to the own key, so it fits
      in far fewer steps than the free linear map. Neither readout lets
      static attention solve the task.

    Dropout acts in training only; the authors' code also drops at
    evaluation (it calls :func:`torch.nn.functional.dropout` without the
    training flag), which is not copied here.

    Args:
        k (int): Number of keys per graph (key and value ids are
            ``0..k-1``, the empty value is ``k``).
        hidden_channels (int, optional): Size of the embeddings and of the
            layer's output, split evenly over the heads. (default:
            :obj:`128`)
        heads (int, optional): Attention heads, concatenated. (default:
            :obj:`1`)
        conv (str, optional): The attention layer: :obj:`'gatv2'`,
            :obj:`'gat'`, :obj:`'dense_gatv2'` or :obj:`'dense_gat'`, see
            above. (default: :obj:`'gatv2'`)
        readout (str, optional): :obj:`'linear'` or :obj:`'tied'`, see
            above. (default: :obj:`'linear'`)
        dropout (float, optional): Dropout probability on the layer's
            output. (default: :obj:`0.5`)

    Shapes:
        - **input:** ids :math:`(|\mathcal{V}|, 2)` (long), edge indices
          :math:`(2, |\mathcal{E}|)`, query mask :math:`(|\mathcal{V}|)`,
          batch vector :math:`(|\mathcal{V}|)` *(optional)*
        - **output:** logits :math:`(|\mathcal{Q}|, k)`, one row per query
          node in node order
    """
    def __init__(self, k: int, hidden_channels: int = 128, heads: int = 1,
                 conv: str = 'gatv2', readout: str = 'linear',
                 dropout: float = 0.5) -> None:
        super().__init__()
        name = self.__class__.__name__
        check_positive_ints(name, k=k, hidden_channels=hidden_channels,
                            heads=heads)
        if hidden_channels % heads != 0:
            raise ValueError(
                f"'{name}' splits hidden_channels={hidden_channels} over "
                f'heads={heads}, which does not divide it; pick '
                'hidden_channels as a multiple of heads')
        if conv not in LOOKUP_CONVS:
            raise ValueError(f"'{name}' got conv={conv!r}; choose one of "
                             f"{', '.join(map(repr, LOOKUP_CONVS))}")
        if readout not in LOOKUP_READOUTS:
            raise ValueError(f"'{name}' got readout={readout!r}; choose one "
                             f"of {', '.join(map(repr, LOOKUP_READOUTS))}")
        check_probabilities(name, dropout=dropout)
        self.k = k
        self.hidden_channels = hidden_channels
        self.heads = heads
        self.conv_name = conv
        self.readout = readout
        self.dropout = dropout

        self.key_emb = torch.nn.Embedding(k + 1, hidden_channels)
        self.value_emb = torch.nn.Embedding(k + 1, hidden_channels)
        out_channels = hidden_channels // heads
        gatv2 = dict(heads=heads, share_weights=True, bias=False,
                     add_self_loops=False)
        if conv == 'gatv2':
            self.conv = GATv2Conv(hidden_channels, out_channels, **gatv2)
        elif conv == 'dense_gatv2':
            self.conv = DenseGATv2Conv(hidden_channels, out_channels,
                                       **gatv2)
        elif conv == 'gat':
            self.conv = GATConv(hidden_channels, out_channels, heads=heads,
                                add_self_loops=True)
        else:
            self.conv = DenseGATConv(hidden_channels, out_channels,
                                     heads=heads)
        if readout == 'linear':
            self.lin = torch.nn.Linear(hidden_channels, k, bias=False)
        else:
            self.register_module('lin', None)

    def reset_parameters(self) -> None:
        r"""Resets all learnable parameters of the module."""
        self.key_emb.reset_parameters()
        self.value_emb.reset_parameters()
        self.conv.reset_parameters()
        if self.lin is not None:
            self.lin.reset_parameters()

    def _check_ids(self, x: Tensor) -> None:
        name = self.__class__.__name__
        if x.dim() != 2 or x.size(1) != 2 or x.is_floating_point():
            raise ValueError(
                f"'{name}' expects integer ids of shape [num_nodes, 2] "
                f'(key id, value id), got {x.dtype} of shape '
                f'{tuple(x.shape)}')
        if x.numel() > 0 and (int(x.min()) < 0 or int(x.max()) > self.k):
            raise ValueError(
                f"'{name}' was built for k={self.k} (ids 0..{self.k}), got "
                f'ids in [{int(x.min())}, {int(x.max())}]; build it with '
                "the dataset's k")

    def _gat_twin(self, h: Tensor, edge_index: Tensor):
        """The :obj:`'dense_gat'` layer run as PyG's GATConv with the same
        weights, for the attention weights that DenseGATConv does not
        return."""
        heads, channels = self.heads, self.hidden_channels // self.heads
        # Built on the meta device: every parameter is replaced below, and
        # no random numbers are drawn.
        with torch.device('meta'):
            twin = GATConv(self.hidden_channels, channels, heads=heads,
                           add_self_loops=True)
        conv = self.conv
        weights = {
            'lin.weight': conv.lin.weight,
            'att_src': conv.att_src.view(1, heads, channels),
            'att_dst': conv.att_dst.view(1, heads, channels),
            'bias': conv.bias,
        }
        return functional_call(twin, weights, (h, edge_index),
                               {'return_attention_weights': True})

    def _attend(self, h: Tensor, edge_index: Tensor, batch: OptTensor,
                return_attention_weights: bool):
        if self.conv_name in ('gatv2', 'gat'):
            return self.conv(h, edge_index,
                             return_attention_weights=return_attention_weights
                             or None)
        if self.conv_name == 'dense_gat' and return_attention_weights:
            return self._gat_twin(h, edge_index)
        dense, mask = to_dense_batch(h, batch)
        adj = to_dense_adj(edge_index, batch, max_num_nodes=dense.size(1))
        if self.conv_name == 'dense_gat':
            # PyG's dense layers read adj[b, i, j] as an edge j -> i.
            return self.conv(dense, adj.transpose(1, 2), mask)[mask]
        out = self.conv(dense, adj, mask,
                        return_attention_weights=return_attention_weights)
        if return_attention_weights:
            out, alpha = out
            return out[mask], alpha
        return out[mask]

    def forward(self, x: Tensor, edge_index: Tensor, query_mask: Tensor,
                batch: OptTensor = None,
                return_attention_weights: bool = False):
        r"""Returns the logits of the query nodes.

        Args:
            x (torch.Tensor): Key and value id of every node.
            edge_index (torch.Tensor): Key-to-query edges.
            query_mask (torch.Tensor): :obj:`True` on query nodes.
            batch (torch.Tensor, optional): Graph of every node; needed only
                by the dense layers for several graphs.
                (default: :obj:`None`)
            return_attention_weights (bool, optional): Also return the
                layer's attention weights: :obj:`(edge_index, alpha)` with
                ``alpha`` of shape ``[num_edges, heads]`` for the sparse
                layers and :obj:`'dense_gat'` (the edges include the
                self-loops GAT adds), ``alpha`` of shape
                ``[B, N, N, heads]`` (target, source) for
                :obj:`'dense_gatv2'`. (default: :obj:`False`)
        """
        self._check_ids(x)
        h = (self.key_emb(x[:, 0]) + self.value_emb(x[:, 1])).relu()
        out = self._attend(h, edge_index, batch, return_attention_weights)
        if return_attention_weights:
            out, alpha = out
        out = _dropout16(out[query_mask], self.dropout, self.training)
        if self.lin is not None:
            logits = self.lin(out)
        else:
            logits = out @ self._value_messages().t()
        return (logits, alpha) if return_attention_weights else logits

    def _value_messages(self) -> Tensor:
        values = self.value_emb.weight[:self.k].relu()
        if self.conv_name == 'dense_gatv2':
            eye = torch.eye(self.k, dtype=torch.bool, device=values.device)
            return self.conv(values, eye)
        if self.conv_name == 'dense_gat':
            # No edges: the layer adds the self-loops.
            empty = values.new_zeros(1, self.k, self.k)
            return self.conv(values.unsqueeze(0), empty).squeeze(0)
        loops = torch.arange(self.k, device=values.device).repeat(2, 1)
        return self.conv(values, loops)

    @torch.no_grad()
    def key_attention(self, x: Tensor, edge_index: Tensor,
                      query_mask: Tensor, batch: OptTensor = None) -> Tensor:
        r"""The attention of every query over every key, graph by graph.

        The graphs must be laid out as
        :func:`~pyg_gatv2.experiments.datasets.dictionary_lookup_graph`
        builds them and :meth:`torch_geometric.data.Batch.from_data_list`
        stacks them: each graph's :math:`k` key nodes, then its :math:`k`
        query nodes. Runs in the mode the model is in.

        Args:
            x (torch.Tensor): Key and value id of every node.
            edge_index (torch.Tensor): Key-to-query edges.
            query_mask (torch.Tensor): :obj:`True` on query nodes.
            batch (torch.Tensor, optional): Graph of every node, as in
                :meth:`forward`. (default: :obj:`None`)

        Returns:
            torch.Tensor: ``[graphs, heads, k, k]``; row ``i`` is a graph's
            ``i``-th query, column ``j`` its ``j``-th key, so the key each
            query must look up lies on the diagonal. GAT's rows sum to less
            than one: the rest goes to the query's self-loop.
        """
        k = self.k
        position = torch.arange(query_mask.numel(), device=x.device)
        if (query_mask.numel() % (2 * k)
                or not torch.equal(query_mask, position % (2 * k) >= k)):
            raise ValueError(
                f"'{self.__class__.__name__}.key_attention' expects graphs "
                f'of {k} key nodes followed by {k} query nodes, as '
                'dictionary_lookup_graph builds them (got a query_mask of '
                f'another layout)')
        _, alpha = self(x, edge_index, query_mask, batch,
                        return_attention_weights=True)
        if isinstance(alpha, Tensor):  # dense: [graphs, target, source, heads]
            return alpha[:, k:, :k].permute(0, 3, 1, 2)
        (src, dst), alpha = alpha
        graph = dst // (2 * k)
        src, dst = src - 2 * k * graph, dst - 2 * k * graph
        key_to_query = (src < k) & (dst >= k)  # not GAT's self-loops
        out = alpha.new_zeros(query_mask.numel() // (2 * k), alpha.size(1),
                              k, k)
        out[graph[key_to_query], :, dst[key_to_query] - k,
            src[key_to_query]] = alpha[key_to_query]
        return out

    @torch.no_grad()
    def attention_matrix(self, data: Data) -> Tensor:
        r"""The attention of every query over every key in one graph, in
        evaluation mode: :meth:`key_attention` of that graph.

        Args:
            data (torch_geometric.data.Data): One DictionaryLookup graph (see
                :func:`~pyg_gatv2.experiments.datasets.dictionary_lookup_graph`).

        Returns:
            torch.Tensor: ``[heads, k, k]``, as :meth:`key_attention` gives
            it for one graph.
        """
        was_training = self.training
        self.eval()
        try:
            return self.key_attention(data.x, data.edge_index,
                                      data.query_mask)[0]
        finally:
            self.train(was_training)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(k={self.k}, '
                f'hidden_channels={self.hidden_channels}, heads={self.heads}'
                f", conv='{self.conv_name}', readout='{self.readout}', "
                f'dropout={self.dropout})')
