"""The edges of a sparse adjacency as the fused path reads them, cached.

A :class:`torch_sparse.SparseTensor` or :mod:`torch.sparse` adjacency of
shape ``[num_targets, num_sources]`` runs on the fused operator as the
``[2, E]`` edges (sources, then targets) of its entries, those that message
passing attends over. Reading them costs a pass over the entries (a sort
where self-loops are added to a :mod:`torch.sparse` adjacency, whose
duplicate entries message passing then merges), and a new edge tensor at
every call would miss the cache of edge layouts
(:func:`pyg_gatv2.fused.edge_layout`). So the edges of an adjacency are
kept while it lives, and reused while its index tensors are the same: the
same memory and version counters and, on the CPU, the same values as a
copy taken when the edges were read (an edit that bypasses the version
counter is seen there too). The cache keeps a few entries and is safe to
use from several threads.
"""
import dataclasses
from typing import Optional, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.index import ptr2index
from torch_geometric.typing import SparseTensor
from torch_geometric.utils import is_torch_sparse_tensor

from pyg_gatv2.weak_cache import WeakCache, same_values

__all__ = ['is_sparse_adjacency', 'sparse_edge_index',
           'sparse_message_order', 'clear_sparse_edge_cache']

_CACHE_SIZE = 8
Adjacency = Union[Tensor, SparseTensor]


@dataclasses.dataclass
class _Entry:
    # (data pointer, version, size) of each index tensor of the adjacency.
    stamp: tuple
    # Copies of the index tensors (on the CPU only).
    copies: Optional[Tuple[Tensor, ...]]
    edge_index: Tensor
    # sparse_message_order, once asked for.
    order: Optional[Tensor] = None


# (id of the adjacency, add_self_loops) -> _Entry
_cache = WeakCache(_CACHE_SIZE)


def is_sparse_adjacency(edge_index: object) -> bool:
    """Whether ``edge_index`` is a sparse adjacency: a
    :class:`torch_sparse.SparseTensor` or a :mod:`torch.sparse` tensor."""
    return isinstance(edge_index, SparseTensor) or (
        isinstance(edge_index, Tensor) and is_torch_sparse_tensor(edge_index))


def sparse_edge_index(adj: Adjacency, add_self_loops: bool) -> Tensor:
    r"""The edges ``[2, E]`` (sources, then targets) that message passing
    attends over for the sparse adjacency ``adj``
    (``[num_targets, num_sources]``), cached while ``adj`` lives.

    One edge per entry, in the order in which message passing reads the
    entries (a CSC adjacency's as its CSR conversion orders them); with
    ``add_self_loops`` a :mod:`torch.sparse` adjacency's duplicate entries
    are merged and its edges sorted by target, then source, as
    :func:`torch_geometric.utils.add_self_loops` rebuilds it (a
    :class:`~torch_sparse.SparseTensor` keeps its entries, as
    :func:`torch_sparse.set_diag` does). The existing self-loops stay: the
    fused operator skips them where it adds its own.
    """
    if torch.compiler.is_compiling():
        return _read_edges(adj, add_self_loops)
    return _entry(adj, add_self_loops).edge_index


def sparse_message_order(adj: Adjacency) -> Tensor:
    r"""The edges that message passing attends over for the sparse
    adjacency ``adj`` with self-loops, in its order, as ids of the fused
    operator's edges (cached with :func:`sparse_edge_index`).

    The fused operator's edges are those of
    ``sparse_edge_index(adj, add_self_loops=True)``, ``E`` of them, then
    the loops ``E + i`` for ``i < min(num_targets, num_sources)``, and it
    skips the edges ``i -> i``. Message passing takes the same edges but
    the loops among the others, sorted by target, then source
    (:func:`torch_sparse.set_diag` on a :class:`~torch_sparse.SparseTensor`,
    :func:`torch_geometric.utils.add_self_loops` on a :mod:`torch.sparse`
    adjacency, both of whose edges come sorted so). The attention dropout
    draws its mask in this order, so that both paths drop the same
    attention weights under one seed.
    """
    num_loops, num_src = min(adj.size(0), adj.size(1)), adj.size(1)
    if torch.compiler.is_compiling():
        return _message_order(_read_edges(adj, True), num_loops, num_src)
    entry = _entry(adj, add_self_loops=True)
    if entry.order is None:
        entry.order = _message_order(entry.edge_index, num_loops, num_src)
    return entry.order


def _entry(adj: Adjacency, add_self_loops: bool) -> _Entry:
    """The cache entry of ``adj``, read afresh where it is missing or
    stale."""
    indices = _index_tensors(adj)
    if any(t.is_inference() for t in indices):
        # No version counter to prove them unchanged: read afresh.
        return _Entry((), None, _read_edges(adj, add_self_loops))
    stamp = tuple((t.data_ptr(), t._version, t.numel()) for t in indices)
    key = (id(adj), add_self_loops)
    entry = _cache.get(key, adj)
    if entry is not None and entry.stamp == stamp and (
            entry.copies is None or all(
                same_values(copy, t)
                for copy, t in zip(entry.copies, indices, strict=True))):
        return entry
    edge_index = _read_edges(adj, add_self_loops)
    copies = (tuple(t.clone() for t in indices)
              if edge_index.device.type == 'cpu' else None)
    entry = _Entry(stamp, copies, edge_index)
    _cache.put(key, adj, entry)
    return entry


def clear_sparse_edge_cache() -> None:
    """Empties the cache of the edges of sparse adjacencies."""
    _cache.clear()


def _index_tensors(adj: Adjacency) -> Tuple[Tensor, ...]:
    """The tensors that hold the structure of ``adj``."""
    if isinstance(adj, SparseTensor):
        return adj.storage.rowptr(), adj.storage.col()
    if adj.layout == torch.sparse_coo:
        return (adj._indices(), )
    if adj.layout == torch.sparse_csr:
        return adj.crow_indices(), adj.col_indices()
    return adj.ccol_indices(), adj.row_indices()


def _read_edges(adj: Adjacency, add_self_loops: bool) -> Tensor:
    if isinstance(adj, SparseTensor):
        row, col, _ = adj.coo()
        return torch.stack([col, row])
    if adj.layout == torch.sparse_coo:
        # _indices(): the entries as stored, where indices() refuses an
        # uncoalesced adjacency.
        row, col = adj._indices()
    else:
        # Message passing reads a CSC adjacency converted to CSR.
        adj = adj.to_sparse_csr() if adj.layout == torch.sparse_csc else adj
        col = adj.col_indices()
        row = ptr2index(adj.crow_indices(), col.numel())
    if add_self_loops:
        num_src = adj.size(1)
        key = torch.unique(row * num_src + col)
        row = torch.div(key, num_src, rounding_mode='floor')
        col = key - row * num_src
    return torch.stack([col, row]).detach()


def _message_order(edge_index: Tensor, num_loops: int,
                   num_src: int) -> Tensor:
    """The ids of the edges ``edge_index`` (sorted by target, then
    source) that are not loops, and of the loops ``E + i``, merged in the
    order of target, then source."""
    src, dst = edge_index
    kept = torch.nonzero(src != dst).view(-1)
    keys = dst[kept] * num_src + src[kept]
    loops = torch.arange(num_loops, device=kept.device)
    loop_keys = loops * (num_src + 1)
    # Each edge moves past the loops sorted before it, each loop past the
    # edges sorted before it; no edge has a loop's key.
    order = kept.new_empty(kept.numel() + num_loops)
    order[torch.arange(kept.numel(), device=kept.device)
          + torch.searchsorted(loop_keys, keys)] = kept
    order[loops + torch.searchsorted(keys, loop_keys)] = (
        loops + edge_index.size(1))
    return order
