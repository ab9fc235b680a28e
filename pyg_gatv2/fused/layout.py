"""Destination-sorted (CSR) and source-sorted (CSC) edge layouts, cached.

The fused kernels walk the edges of each destination node in one contiguous
run (CSR) and, for the gradient of the source features, the edges of each
source node (CSC). Building both costs a sort of the edge list, so the layout
of an ``edge_index`` is cached across calls: training loops pass the same
tensor every epoch. An entry is found again only for the very same tensor
object, and used only after its indices are compared with a copy taken when
the layout was built, so that no edit can leave a stale layout in use, not
even one that bypasses autograd's version counter (through ``.data``,
``.numpy()`` or DLPack). On CPU the comparison reads ``2 * num_edges``
integers, a small fraction of one kernel pass. On a GPU it would make the
host wait for the device on every call, so there the version counter
proves the indices unchanged, and the copy is taken and compared only under
``pyg_gatv2.set_validation('strict')`` (a layout built without one is
rebuilt when strict validation finds it). An entry is dropped when its tensor
is freed, and the cache keeps at most a few entries; it is safe to use from
several threads.

The torch custom ops of :mod:`pyg_gatv2.fused.op` pass a layout as its
three CSR tensors; :func:`layout_of` finds the :class:`EdgeLayout` that owns
them again, with what it computed lazily (the CSC, the work bounds).

Self-loops can be *implicit*: with ``add_self_loops=True`` the layout drops
every edge ``i -> i`` of ``edge_index`` and appends one loop per node
``i < min(num_src, num_dst)`` after the other in-edges of ``i``, as
:func:`torch_geometric.utils.remove_self_loops` followed by
:func:`torch_geometric.utils.add_self_loops` do, without rebuilding the edge
list on every call.
"""
import weakref
from typing import Dict, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .. import checks
from ..checks import check_edge_index, check_index_range
from ..weak_cache import WeakCache, same_values
from . import cpp_library

__all__ = ['EdgeLayout', 'Chunks', 'edge_layout', 'layout_of',
           'clear_layout_cache', 'index_dtype']

_CACHE_SIZE = 8
# key -> (copy of the tensor's indices (None on a GPU outside strict
# validation), its version counter, layout)
_cache = WeakCache(_CACHE_SIZE)
# The live layouts by the memory of their CSR tensors, so that layout_of
# finds a layout from aliases of them too (autograd saves detached ones).
_owners: 'weakref.WeakValueDictionary[tuple, EdgeLayout]' = (
    weakref.WeakValueDictionary())


class Chunks(NamedTuple):
    """What :meth:`EdgeLayout.chunks` returns: the nodes of a layout that
    have more than ``size`` edges, and their edges cut into runs
    (*chunks*) of at most ``size`` positions each, so that a GPU kernel can
    spread one node's edges over several programs. Every tensor is in the
    layout's index dtype, on its device.

    Attributes:
        nodes (torch.Tensor): The nodes with more than ``size`` edges,
            ascending, ``[num_nodes]``.
        node_ptr (torch.Tensor): The first chunk of each of them, and the
            number of chunks, ``[num_nodes + 1]``.
        node (torch.Tensor): The node of each chunk, ``[num_chunks]``.
        start (torch.Tensor): The first position of each chunk.
        end (torch.Tensor): The position after its last one.
    """
    nodes: Tensor
    node_ptr: Tensor
    node: Tensor
    start: Tensor
    end: Tensor


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
        self_loops (bool): Whether the layout drops the edges ``i -> i`` of
            ``edge_index`` and adds the implicit self-loops.
        dst_ptr (torch.Tensor): CSR offsets, shape ``[num_dst + 1]``.
            Layouts hold their indices in :func:`index_dtype`.
        dst_col (torch.Tensor): Source node of each CSR position.
        dst_eid (torch.Tensor): Virtual edge id of each CSR position.
        csr_tensors (tuple of torch.Tensor): ``dst_ptr``, ``dst_col`` and
            ``dst_eid`` as given, at their full sizes.

    ``dst_col`` and ``dst_eid`` may be given with ``num_virtual`` entries,
    the edges ``i -> i`` that the self-loops replace after the
    ``num_kept`` CSR positions: their sizes then do not depend on the data,
    which is how the custom ops pass them (:attr:`csr_tensors`).
    """
    def __init__(self, num_src: int, num_dst: int, num_edges: int,
                 num_loops: int, self_loops: bool, dst_ptr: Tensor,
                 dst_col: Tensor, dst_eid: Tensor,
                 num_kept: Optional[int] = None):
        self.num_src = num_src
        self.num_dst = num_dst
        self.num_edges = num_edges
        self.num_loops = num_loops
        self.self_loops = self_loops
        self.dst_ptr = dst_ptr
        self.csr_tensors = (dst_ptr, dst_col, dst_eid)
        self.dst_col = dst_col[:num_kept]
        self.dst_eid = dst_eid[:num_kept]
        self._dst_row: Optional[Tensor] = None
        self._kept_eid: Optional[Tensor] = None
        self._csc: Optional[Tuple[Tensor, Tensor, Tensor]] = None
        self._bounds: Dict[tuple, np.ndarray] = {}
        self._chunks: Dict[tuple, Optional[Chunks]] = {}
        _owners[_memory(*self.csr_tensors)] = self

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
                torch.arange(self.num_dst, dtype=deg.dtype,
                             device=deg.device), deg,
                output_size=self.num_kept)
        return self._dst_row

    @property
    def kept_eid(self) -> Tensor:
        """Virtual ids of the edges the attention runs over, ascending (the
        caller's edges that were kept, in their order, then the loops). This
        is the edge order of ``remove_self_loops`` + ``add_self_loops``."""
        if self._kept_eid is None:
            # Every virtual edge but the edges i -> i that the loops
            # replace, which follow the CSR positions.
            dropped = self.csr_tensors[2][self.num_kept:]
            keep = torch.ones(self.num_virtual, dtype=torch.bool,
                              device=self.dst_ptr.device)
            keep[dropped] = False
            self._kept_eid = torch.nonzero_static(
                keep, size=self.num_virtual - dropped.numel()).view(-1)
        return self._kept_eid

    @property
    def csc(self) -> Tuple[Tensor, Tensor, Tensor]:
        """``(src_ptr, src_pos, src_row)``: for each source node, the CSR
        positions of its out-edges and their destination nodes."""
        if self._csc is None:
            with torch.profiler.record_function(
                    'pyg_gatv2::build_layout_by_source'):
                self._csc = self._build_csc()
        return self._csc

    def _build_csc(self) -> Tuple[Tensor, Tensor, Tensor]:
        if _on_library(self.dst_col):
            return cpp_library.layout_by_source(self.dst_ptr, self.dst_col,
                                                self.num_src)
        ptr, pos = _sort(self.dst_col, self.num_src)
        return ptr, pos.to(ptr.dtype), self.dst_row[pos]

    def bounds(self, by: str, num_chunks: int) -> np.ndarray:
        """Splits the destination (``by='dst'``) or source (``by='src'``)
        nodes into at most ``num_chunks`` contiguous ranges of about equal
        work (edges plus nodes), so that a parallel loop over the ranges
        stays balanced on skewed degree distributions."""
        key = (by, num_chunks)
        if key not in self._bounds:
            ptr = self._offsets_by(by, num_chunks, 'bounds').numpy()
            rows = ptr.size - 1
            work = ptr + np.arange(rows + 1)
            targets = np.linspace(0, work[-1], num_chunks + 1)
            cuts = np.searchsorted(work, targets, side='left')
            cuts[0], cuts[-1] = 0, rows
            self._bounds[key] = np.unique(cuts).astype(np.int64)
        return self._bounds[key]

    def chunks(self, by: str, size: int) -> Optional[Chunks]:
        """The destination (``by='dst'``) or source (``by='src'``) nodes
        of more than ``size`` edges, with their CSR (or CSC) positions cut
        into :class:`Chunks` of at most ``size``; :obj:`None` where no node
        has that many. Building them reads two counts back from the
        device in one transfer, once per layout."""
        key = (by, size)
        if key not in self._chunks:
            self._chunks[key] = _cut(self._offsets_by(by, size, 'chunks'),
                                     size)
        return self._chunks[key]

    def _offsets_by(self, by: str, count: int, caller: str) -> Tensor:
        """The CSR offsets (``by='dst'``) or the CSC ones (``'src'``), for
        a method given ``count`` (a positive number of ranges or edges)."""
        if by not in ('dst', 'src'):
            raise ValueError(f"'{caller}' got by={by!r}; pass 'dst' (the "
                             "destinations' in-edges) or 'src' (the "
                             "sources' out-edges)")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"'{caller}' got {count!r} where it needs a "
                             'positive whole number')
        return self.dst_ptr if by == 'dst' else self.csc[0]


def _on_library(t: Tensor) -> bool:
    """Whether the C++ library builds the layouts of ``t``'s device."""
    return t.device.type == 'cpu' and cpp_library.load() is not None


_INT32_MAX = torch.iinfo(torch.int32).max


def index_dtype(edge_index: Tensor, num_src: int, num_dst: int,
                add_self_loops: bool) -> torch.dtype:
    """The dtype of the indices of the layout of ``edge_index``.

    ``torch.int32`` where the caller's indices are int32, every offset of
    the layout fits (edges plus self-loops below ``2**31``) and the layout
    is not built by the C++ library (which builds int64 layouts on the
    CPU): on a GPU, int32 indices halve the layout's memory and the bytes
    its kernels read per edge. Else ``torch.int64``.
    """
    num_loops = min(num_src, num_dst) if add_self_loops else 0
    fits = max(edge_index.size(1) + num_loops, num_src, num_dst) < _INT32_MAX
    if (edge_index.dtype == torch.int32 and fits
            and not _on_library(edge_index)):
        return torch.int32
    return torch.int64


def _sort(keys: Tensor, num_keys: int) -> Tuple[Tensor, Tensor]:
    """The offsets of the runs of ``0 .. num_keys - 1`` in ``keys`` sorted,
    and the stable order that sorts them, with torch's stable sort (where
    the C++ library does not build the layout)."""
    # Not bincount: it reads the maximum back to the host to size its
    # output. The counts and offsets are in the keys' dtype.
    deg = torch.zeros(num_keys, dtype=keys.dtype, device=keys.device
                      ).index_add_(0, keys, torch.ones_like(keys))
    return _offsets(deg), torch.argsort(keys, stable=True)


def _cut(ptr: Tensor, size: int) -> Optional[Chunks]:
    """The :class:`Chunks` of the runs ``ptr`` delimits."""
    deg = ptr.diff()
    # The chunks of each node, none for those of at most 'size' edges; the
    # number of nodes cut and of chunks read back together, one wait for
    # the device.
    counts = torch.where(
        deg > size, torch.div(deg + (size - 1), size, rounding_mode='floor'),
        0)
    num_nodes, num_chunks = torch.stack([(counts > 0).sum(),
                                         counts.sum()]).tolist()
    if num_nodes == 0:
        return None
    nodes = torch.nonzero_static(counts > 0, size=num_nodes).view(-1).to(
        ptr.dtype)
    counts = counts[nodes]
    node_ptr = _offsets(counts)
    # Each chunk's index into nodes.
    which = torch.repeat_interleave(counts, output_size=num_chunks)
    nth = torch.arange(num_chunks, dtype=ptr.dtype,
                       device=ptr.device) - node_ptr[which]
    node = nodes[which]
    start = ptr[node] + nth * size
    end = torch.minimum(start + size, ptr[node + 1])
    return Chunks(nodes, node_ptr, node, start, end)


def _memory(*tensors: Tensor) -> tuple:
    # A live layout keeps its tensors, so their memory is not reused while
    # the entry stands.
    return tuple((t.device, t.data_ptr(), t.numel()) for t in tensors)


def _offsets(deg: Tensor) -> Tensor:
    ptr = deg.new_zeros(deg.numel() + 1)
    torch.cumsum(deg, dim=0, out=ptr[1:])
    return ptr


def _build(edge_index: Tensor, num_src: int, num_dst: int,
           add_self_loops: bool, caller: str,
           copy: Optional[Tensor] = None) -> EdgeLayout:
    """Builds the layout of ``edge_index``, filling ``copy`` (of its shape,
    in :func:`index_dtype`) with its indices on the way, if given. The
    profiler shows it as ``pyg_gatv2::build_layout_by_destination`` (and
    the CSC, built when backward first needs it, as
    ``pyg_gatv2::build_layout_by_source``)."""
    with torch.profiler.record_function(
            'pyg_gatv2::build_layout_by_destination'):
        return _build_csr(edge_index, num_src, num_dst, add_self_loops,
                          caller, copy)


def _build_csr(edge_index: Tensor, num_src: int, num_dst: int,
               add_self_loops: bool, caller: str,
               copy: Optional[Tensor]) -> EdgeLayout:
    check_edge_index(edge_index, caller)
    edge_index = edge_index.to(index_dtype(edge_index, num_src, num_dst,
                                           add_self_loops))
    num_edges = edge_index.size(1)
    num_loops = min(num_src, num_dst) if add_self_loops else 0
    if _on_library(edge_index):
        built = cpp_library.layout_by_destination(
            edge_index, num_src, num_dst, add_self_loops, copy)
        if built is None:
            # The library found an index out of range; the check says which.
            check_index_range(edge_index, num_src, num_dst, caller)
            raise ValueError(f"'{caller}' got a node index out of range in "
                             "'edge_index'")
        ptr, col, eid = built
    else:
        check_index_range(edge_index, num_src, num_dst, caller)
        if copy is not None:
            copy.copy_(edge_index)
        src, dst = edge_index[0], edge_index[1]
        eid = torch.arange(num_edges + num_loops, dtype=src.dtype,
                           device=src.device)
        if add_self_loops:
            loop = eid[num_edges:] - num_edges
            # The edges i -> i that the loops replace sort under the key
            # num_dst, after the last CSR position.
            dst = torch.cat([dst.masked_fill(src == dst, num_dst), loop])
            src = torch.cat([src, loop])
        # A stable sort keeps the caller's order among the in-edges of a
        # node and puts the implicit loop last, as PyG's add_self_loops does.
        ptr, perm = _sort(dst, num_dst + 1)
        col, eid = src[perm], eid[perm]
    ptr = ptr[:num_dst + 1]
    return EdgeLayout(num_src, num_dst, num_edges, num_loops,
                      add_self_loops, ptr, col, eid, num_kept=int(ptr[-1]))


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
    if num_src < 0 or num_dst < 0:
        raise ValueError(f"'{caller}' expects node counts of at least 0 "
                         f'(got num_src={num_src}, num_dst={num_dst})')
    if not isinstance(edge_index, Tensor) or edge_index.is_inference():
        # Inference tensors cannot be copied outside inference mode.
        return _build(edge_index, num_src, num_dst, add_self_loops, caller)
    key = (id(edge_index), edge_index.data_ptr(), tuple(edge_index.shape),
           tuple(edge_index.stride()), edge_index.dtype,
           str(edge_index.device), int(num_src), int(num_dst),
           bool(add_self_loops))
    # The cache tells a live tensor from a new one that happens to reuse
    # the id and the memory of a freed one; the copy proves that the
    # indices did not change since the layout was built.
    hit = _cache.get(key, edge_index)
    if hit is not None and _same_indices(hit[0], hit[1], edge_index):
        return hit[2]
    # Before index_dtype reads the shape (_build checks it again, for its
    # other callers).
    check_edge_index(edge_index, caller)
    copy = None
    if edge_index.device.type == 'cpu' or checks.is_strict():
        copy = torch.empty(edge_index.shape, dtype=index_dtype(
            edge_index, num_src, num_dst, add_self_loops),
            device=edge_index.device)
    layout = _build(edge_index, num_src, num_dst, add_self_loops, caller,
                    copy)
    _cache.put(key, edge_index, (copy, edge_index._version, layout))
    return layout


def _same_indices(copy: Optional[Tensor], version: int,
                  edge_index: Tensor) -> bool:
    if edge_index.device.type == 'cpu':
        return same_values(copy, edge_index)
    if edge_index._version != version:
        return False
    # The comparison waits for the device: only when asked for.
    if not checks.is_strict():
        return True
    return copy is not None and torch.equal(copy, edge_index.to(copy.dtype))


def layout_of(dst_ptr: Tensor, dst_col: Tensor, dst_eid: Tensor,
              num_src: int, num_edges: int, self_loops: bool) -> EdgeLayout:
    """The :class:`EdgeLayout` whose :attr:`~EdgeLayout.csr_tensors` these
    are: the one that built them while it lives, else a new one around
    them.

    Args:
        dst_ptr (torch.Tensor): CSR offsets ``[num_dst + 1]``.
        dst_col (torch.Tensor): Source node of each CSR position.
        dst_eid (torch.Tensor): Virtual edge id of each CSR position.
        num_src (int): Number of source nodes.
        num_edges (int): Number of columns of the caller's ``edge_index``.
        self_loops (bool): Whether the layout has the implicit self-loops.
    """
    layout = _owners.get(_memory(dst_ptr, dst_col, dst_eid))
    if (layout is not None and layout.num_src == num_src
            and layout.num_edges == num_edges
            and layout.self_loops == self_loops):
        return layout
    num_dst = dst_ptr.numel() - 1
    num_loops = min(num_src, num_dst) if self_loops else 0
    num_kept = int(dst_ptr[-1]) if self_loops else None
    return EdgeLayout(num_src, num_dst, num_edges, num_loops, self_loops,
                      dst_ptr, dst_col, dst_eid, num_kept=num_kept)


def clear_layout_cache() -> None:
    """Empties the cache of edge layouts."""
    _cache.clear()
