"""Destination-sorted (CSR) and source-sorted (CSC) edge layouts, cached.

The fused kernels walk the edges of each destination node in one contiguous
run (CSR) and, for the gradient of the source features, the edges of each
source node (CSC). Building both costs a sort of the edge list, so the layout
of an ``edge_index`` is cached across calls: training loops pass the same
tensor every epoch. An entry is found again only for the very same tensor
object, unchanged since (same storage, shape, strides and version counter),
so an in-place edit or a new tensor builds a fresh layout; it is dropped
when its tensor is freed, and the cache keeps at most a few entries.

Self-loops can be *implicit*: with ``add_self_loops=True`` the layout drops
every edge ``i -> i`` of ``edge_index`` and appends one loop per node
``i < min(num_src, num_dst)`` after the other in-edges of ``i``, as
:func:`torch_geometric.utils.remove_self_loops` followed by
:func:`torch_geometric.utils.add_self_loops` do, without rebuilding the edge
list on every call.
"""
import weakref
from collections import OrderedDict
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = ['EdgeLayout', 'edge_layout', 'clear_layout_cache']

_CACHE_SIZE = 8
_cache: 'OrderedDict[tuple, Tuple[weakref.ref, EdgeLayout]]' = OrderedDict()


class EdgeLayout:
    r"""The edges of a graph sorted by destination and by source.

    Edges are named by *virtual edge ids*: ``0 .. num_edges - 1`` are the
    columns of the caller's ``edge_index``; ``num_edges + i`` is the implicit
    self-loop of node ``i`` (``0 <= i < num_loops``).

    Attributes:
        num_src (int): Number of source nodes.
        num_dst (int): Number of destination nodes.
        num_edges (int): Number of columns of the caller's ``edge_index``.
        num_loops (int): Number of implicit self-loops.
        dst_ptr (torch.Tensor): CSR offsets, shape ``[num_dst + 1]``.
        dst_col (torch.Tensor): Source node of each CSR position.
        dst_eid (torch.Tensor): Virtual edge id of each CSR position.
    """
    def __init__(self, num_src: int, num_dst: int, num_edges: int,
                 num_loops: int, dst_ptr: Tensor, dst_col: Tensor,
                 dst_eid: Tensor):
        self.num_src = num_src
        self.num_dst = num_dst
        self.num_edges = num_edges
        self.num_loops = num_loops
        self.dst_ptr = dst_ptr
        self.dst_col = dst_col
        self.dst_eid = dst_eid
        self._dst_row: Optional[Tensor] = None
        self._kept_eid: Optional[Tensor] = None
        self._csc: Optional[Tuple[Tensor, Tensor, Tensor]] = None
        self._bounds: Dict[tuple, np.ndarray] = {}

    @property
    def num_virtual(self) -> int:
        """Number of virtual edges, ``num_edges + num_loops``."""
        return self.num_edges + self.num_loops

    @property
    def num_kept(self) -> int:
        """Number of edges the attention runs over (loops included)."""
        return self.dst_col.numel()

    @property
    def dst_row(self) -> Tensor:
        """Destination node of each CSR position."""
        if self._dst_row is None:
            deg = self.dst_ptr.diff()
            self._dst_row = torch.repeat_interleave(
                torch.arange(self.num_dst, device=deg.device), deg,
                output_size=self.num_kept)
        return self._dst_row

    @property
    def kept_eid(self) -> Tensor:
        """Virtual ids of the edges the attention runs over, ascending: the
        caller's edges that were kept, in their order, then the loops. This
        is the edge order of ``remove_self_loops`` + ``add_self_loops``."""
        if self._kept_eid is None:
            self._kept_eid = torch.sort(self.dst_eid).values
        return self._kept_eid

    @property
    def csc(self) -> Tuple[Tensor, Tensor, Tensor]:
        """``(src_ptr, src_pos, src_row)``: for each source node, the CSR
        positions of its out-edges and their destination nodes."""
        if self._csc is None:
            pos = torch.argsort(self.dst_col, stable=True)
            deg = torch.bincount(self.dst_col, minlength=self.num_src)
            ptr = _offsets(deg)
            self._csc = (ptr, pos, self.dst_row[pos])
        return self._csc

    def bounds(self, by: str, num_chunks: int) -> np.ndarray:
        """Splits the destination (``by='dst'``) or source (``by='src'``)
        nodes into at most ``num_chunks`` contiguous ranges of about equal
        work (edges plus nodes), so that a parallel loop over the ranges
        stays balanced on skewed degree distributions."""
        key = (by, num_chunks)
        if key not in self._bounds:
            ptr = (self.dst_ptr if by == 'dst' else self.csc[0]).numpy()
            rows = ptr.size - 1
            work = ptr + np.arange(rows + 1)
            targets = np.linspace(0, work[-1], num_chunks + 1)
            cuts = np.searchsorted(work, targets, side='left')
            cuts[0], cuts[-1] = 0, rows
            self._bounds[key] = np.unique(cuts).astype(np.int64)
        return self._bounds[key]


def _offsets(deg: Tensor) -> Tensor:
    ptr = deg.new_zeros(deg.numel() + 1)
    torch.cumsum(deg, dim=0, out=ptr[1:])
    return ptr


def _check(edge_index: Tensor, num_src: int, num_dst: int,
           caller: str) -> None:
    if not isinstance(edge_index, Tensor):
        raise TypeError(f"'{caller}' expects 'edge_index' as a tensor "
                        f"(got {type(edge_index).__name__})")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"'{caller}' expects 'edge_index' of shape "
                         f"[2, num_edges] (got {list(edge_index.shape)})")
    if edge_index.dtype not in (torch.long, torch.int):
        raise TypeError(f"'{caller}' expects an integer 'edge_index' "
                        f"(got {edge_index.dtype}); pass a torch.long tensor")
    if edge_index.numel() == 0:
        return
    if int(edge_index.min()) < 0:
        raise ValueError(f"'{caller}' got negative node indices in "
                         "'edge_index'")
    src_max, dst_max = (int(v) for v in edge_index.amax(dim=1))
    if src_max >= num_src:
        raise ValueError(f"'{caller}' got 'edge_index' with source node "
                         f"{src_max} but only {num_src} source nodes; "
                         f"check 'edge_index' against the node features")
    if dst_max >= num_dst:
        raise ValueError(f"'{caller}' got 'edge_index' with destination "
                         f"node {dst_max} but only {num_dst} destination "
                         f"nodes; check 'edge_index' against the node "
                         f"features")


def _build(edge_index: Tensor, num_src: int, num_dst: int,
           add_self_loops: bool, caller: str) -> EdgeLayout:
    _check(edge_index, num_src, num_dst, caller)
    edge_index = edge_index.long()
    src, dst = edge_index[0], edge_index[1]
    num_edges = src.numel()
    eid = torch.arange(num_edges, device=src.device)
    num_loops = 0
    if add_self_loops:
        keep = src != dst
        src, dst, eid = src[keep], dst[keep], eid[keep]
        num_loops = min(num_src, num_dst)
        loop = torch.arange(num_loops, device=src.device)
        src = torch.cat([src, loop])
        dst = torch.cat([dst, loop])
        eid = torch.cat([eid, loop + num_edges])
    # A stable sort keeps the caller's order among the in-edges of a node
    # and puts the implicit loop last, as PyG's add_self_loops does.
    perm = torch.argsort(dst, stable=True)
    ptr = _offsets(torch.bincount(dst, minlength=num_dst))
    return EdgeLayout(num_src, num_dst, num_edges, num_loops, ptr,
                      src[perm].contiguous(), eid[perm].contiguous())


def edge_layout(edge_index: Tensor, num_src: int, num_dst: int,
                add_self_loops: bool = False,
                caller: str = 'edge_layout') -> EdgeLayout:
    r"""Returns the (cached) :class:`EdgeLayout` of ``edge_index``.

    Args:
        edge_index (torch.Tensor): Edge indices of shape ``[2, num_edges]``,
            row 0 the source and row 1 the destination of each edge.
        num_src (int): Number of source nodes.
        num_dst (int): Number of destination nodes.
        add_self_loops (bool, optional): If set to :obj:`True`, drops the
            edges ``i -> i`` of ``edge_index`` and adds one implicit
            self-loop to every node ``i < min(num_src, num_dst)``.
            (default: :obj:`False`)
        caller (str, optional): The name that error messages give for the
            function that was called. (default: :obj:`'edge_layout'`)
    """
    if not isinstance(edge_index, Tensor) or edge_index.is_inference():
        # Inference tensors carry no version counter to key a cache on.
        return _build(edge_index, num_src, num_dst, add_self_loops, caller)
    key = (id(edge_index), edge_index.data_ptr(), edge_index._version,
           tuple(edge_index.shape), tuple(edge_index.stride()),
           edge_index.dtype, str(edge_index.device), int(num_src),
           int(num_dst), bool(add_self_loops))
    hit = _cache.get(key)
    # The weak reference tells a live tensor from a new one that happens
    # to reuse the id and the memory of a freed one.
    if hit is not None and hit[0]() is edge_index:
        _cache.move_to_end(key)
        return hit[1]
    layout = _build(edge_index, num_src, num_dst, add_self_loops, caller)
    # The entry goes when the tensor goes, so that a loop over fresh edge
    # tensors (mini-batches) does not keep their layouts alive.
    _cache[key] = (weakref.ref(edge_index, lambda _: _cache.pop(key, None)),
                   layout)
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return layout


def clear_layout_cache() -> None:
    """Empties the cache of edge layouts."""
    _cache.clear()
