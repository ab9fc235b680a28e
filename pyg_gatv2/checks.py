"""Input checks shared by the layers and kernels, and how strict they are.

Checks of shapes, dtypes and devices read only tensor metadata and run on
every eager call. Checks of tensor *values* (node indices in range, NaN
features) read the data: on a GPU each one waits for the device, so by
default they run only where that costs no synchronisation:

- ``'default'``: the index range is checked when the fused path builds the
  layout of a new ``edge_index`` (once per graph, the check cached with the
  layout), and on every message-passing call with CPU tensors. NaN features
  propagate to the output as they do in PyG's layer.
- ``'strict'``: the index range is checked on every call, on every path and
  device, and NaN in node or edge features raises an error naming them.

Example:
    >>> import torch
    >>> import pyg_gatv2
    >>> conv = pyg_gatv2.GATv2Conv(4, 8, heads=2)
    >>> x = torch.randn(3, 4)
    >>> x[0, 0] = float('nan')
    >>> edge_index = torch.tensor([[0, 1, 2], [1, 2, 0]])
    >>> conv(x, edge_index).isnan().any()   # 'default': NaN propagates
    tensor(True)
    >>> with pyg_gatv2.validation('strict'):    # just for this block
    ...     conv(x, edge_index)
    Traceback (most recent call last):
        ...
    ValueError: 'GATv2Conv' got NaN in its source node features; ...
    >>> pyg_gatv2.set_validation('strict')      # for every later call
    >>> pyg_gatv2.get_validation()
    'strict'
    >>> pyg_gatv2.set_validation('default')
"""
import contextlib
from collections.abc import Iterator
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch_geometric import EdgeIndex
from torch_geometric.typing import SparseTensor

from pyg_gatv2.adjacency import is_sparse_adjacency

__all__ = ['set_validation', 'get_validation', 'validation', 'is_strict',
           'check_index_range', 'check_no_nan', 'check_node_features',
           'check_edge_index', 'check_adjacency', 'check_edge_attr',
           'check_positive_ints', 'check_probabilities']

VALIDATION_MODES = ('default', 'strict')
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
_FEATURE_SHAPES = {2: '[num_nodes, num_features]',
                   3: '[batch_size, num_nodes, num_features]'}

_mode = 'default'


def set_validation(mode: str) -> None:
    """Selects how much of the input's values every call checks.

    Args:
        mode (str): ``'default'`` or ``'strict'`` (see
            :mod:`pyg_gatv2.checks`).
    """
    global _mode
    if mode not in VALIDATION_MODES:
        raise ValueError(f"'set_validation' got mode={mode!r}; choose one of "
                         f"{', '.join(map(repr, VALIDATION_MODES))}")
    _mode = mode


def get_validation() -> str:
    """The mode selected by :func:`set_validation` (``'default'`` unless
    set)."""
    return _mode


@contextlib.contextmanager
def validation(mode: str) -> Iterator[None]:
    """Context manager that selects a validation mode temporarily."""
    previous = _mode
    set_validation(mode)
    try:
        yield
    finally:
        set_validation(previous)


def is_strict() -> bool:
    """Whether value checks run on every call."""
    return _mode == 'strict'


def check_index_range(edge_index: Tensor, num_src: int, num_dst: int,
                      caller: str) -> None:
    """Raises a :class:`ValueError` unless every source index of
    ``edge_index`` lies in ``[0, num_src)`` and every target index in
    ``[0, num_dst)``. Reads the data: a device synchronisation on a GPU."""
    if edge_index.numel() == 0:
        return
    low = int(edge_index.min())
    if low < 0:
        raise ValueError(
            f"'{caller}' got a negative node index ({low}) in "
            "'edge_index'; indices must lie in [0, num_nodes)")
    highs = edge_index.amax(dim=1).tolist()
    for high, role, num in zip(highs, ('source', 'target'),
                               (num_src, num_dst), strict=True):
        if high >= num:
            raise ValueError(
                f"'{caller}' got {role} node index {high} in 'edge_index' "
                f"but only {num} {role} nodes in 'x'; indices must lie in "
                f'[0, {num}) (check that edge_index and x belong to the '
                'same graph)')


def _has_nan(x: Tensor) -> bool:
    # A sum is NaN whenever an element is, and costs a fraction of a full
    # isnan pass over wide input features; the exact test runs only when the
    # sum is not finite (an infinity or an overflow).
    if x.numel() == 0 or bool(torch.isfinite(x.sum())):
        return False
    return bool(torch.isnan(x).any())


def check_no_nan(x: Tensor, what: str, caller: str) -> None:
    """Raises a :class:`ValueError` if ``x`` holds a NaN. Reads the data: a
    device synchronisation on a GPU."""
    if _has_nan(x):
        raise ValueError(
            f"'{caller}' got NaN in {what}; check the data (e.g. "
            'torch.isnan(t).nonzero()) or, during training, lower the '
            "learning rate (validation is 'strict'; "
            "pyg_gatv2.set_validation('default') lets NaN propagate)")


def check_node_features(x: Tensor, lin: torch.nn.Module, caller: str,
                        role: str = '', dims: Tuple[int, ...] = (2, )
                        ) -> None:
    """Checks node features ``x`` against the projection ``lin`` that
    receives them: shape (``dims`` dimensions), floating-point dtype,
    feature count, and the dtype and device of the parameters (the dtype
    not under autocast, where the projection casts); NaN in ``'strict'``
    validation. ``role`` (``'source'``, ``'target'``) names the features of
    a bipartite layer in messages."""
    what = f'{role} node features' if role else 'node features'
    if x.dim() not in dims:
        shapes = ' or '.join(_FEATURE_SHAPES[dim] for dim in dims)
        raise ValueError(
            f"'{caller}' expects {what} of shape {shapes} (got shape "
            f'{tuple(x.shape)}); reshape them')
    if not x.is_floating_point():
        raise TypeError(
            f"'{caller}' expects floating-point {what} (got '{x.dtype}'); "
            "convert them with 'x.float()'")
    if lin.in_channels > 0 and x.size(-1) != lin.in_channels:
        features = f'{role} input features' if role else 'input features'
        raise ValueError(
            f"'{caller}' was built for {lin.in_channels} {features} but got "
            f'{x.size(-1)}; build it with in_channels={x.size(-1)} (or -1 '
            'to infer it)')
    if is_strict():
        check_no_nan(x, f'its {what}', caller)
    _check_like_parameters(x, lin.weight, what, 'x', caller)


def _check_like_parameters(t: Tensor, weight: Tensor, what: str, name: str,
                           caller: str) -> None:
    """Checks that ``t`` (``what``, the argument ``name``) is on the device
    of the projection weight ``weight`` that receives it and, outside
    autocast (where the projection casts), of its dtype; nothing while the
    weight is not yet initialised."""
    if isinstance(weight, torch.nn.parameter.UninitializedParameter):
        return
    if t.device != weight.device:
        raise ValueError(
            f"'{caller}' got {what} on '{t.device}' but its parameters are "
            f"on '{weight.device}'; move one to the other (e.g. "
            f"'{name}.to(\"{weight.device}\")')")
    if (t.dtype != weight.dtype
            and not torch.is_autocast_enabled(t.device.type)):
        raise TypeError(
            f"'{caller}' got {what} of dtype '{t.dtype}' but its parameters "
            f"are '{weight.dtype}'; convert one to the other (e.g. "
            f"'{name}.to({weight.dtype})' or 'conv.to({t.dtype})')")


def check_edge_index(edge_index: Tensor, caller: str) -> None:
    """Checks that ``edge_index`` is a ``[2, num_edges]`` integer tensor.
    """
    if not isinstance(edge_index, Tensor):
        raise TypeError(
            f"'{caller}' expects 'edge_index' to be a [2, E] integer tensor, "
            'an EdgeIndex or a sparse adjacency (got '
            f"'{type(edge_index).__name__}')")
    if edge_index.layout != torch.strided:
        raise TypeError(
            f"'{caller}' takes a sparse adjacency as a torch.sparse COO, "
            f"CSR or CSC tensor or a SparseTensor (got layout "
            f"'{edge_index.layout}'); convert it with 'adj.to_sparse_csr()'")
    if edge_index.dtype not in _INT_DTYPES:
        raise TypeError(
            f"'{caller}' expects 'edge_index' of an integer dtype (got "
            f"'{edge_index.dtype}'); convert it with 'edge_index.long()'")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(
            f"'{caller}' expects 'edge_index' of shape [2, num_edges] (got "
            f"{tuple(edge_index.shape)}); transpose a [num_edges, 2] list "
            "with 'edge_index.t()'")


def check_adjacency(edge_index, num_src: int, num_dst: int,
                    device: torch.device, caller: str,
                    check_range: bool) -> int:
    """Checks a graph given as ``edge_index`` (a tensor or an
    :class:`~torch_geometric.EdgeIndex`) or as a sparse adjacency
    (:mod:`torch.sparse` or :class:`torch_sparse.SparseTensor`) of shape
    ``[num_dst, num_src]``; returns its number of edges.

    The index range is read (a device synchronisation on a GPU) when
    ``check_range`` is set and the indices are on the CPU, and always in
    ``'strict'`` validation.
    """
    sparse = is_sparse_adjacency(edge_index)
    if not sparse:
        check_edge_index(edge_index, caller)
    where = (edge_index.device() if isinstance(edge_index, SparseTensor)
             else edge_index.device)
    if where != device:
        raise ValueError(
            f"'{caller}' got 'edge_index' on '{where}' but its parameters "
            f"are on '{device}'; move it with 'edge_index.to(\"{device}\")'")
    if sparse:
        size = tuple(edge_index.sizes() if isinstance(
            edge_index, SparseTensor) else edge_index.shape)
        if size != (num_dst, num_src):
            raise ValueError(
                f"'{caller}' got a sparse adjacency of shape {size} but "
                'expects [num_targets, num_sources] = '
                f'[{num_dst}, {num_src}]')
        if isinstance(edge_index, SparseTensor):
            return edge_index.nnz()
        return edge_index._nnz()
    if isinstance(edge_index, EdgeIndex):
        for got, num, role in zip(edge_index.sparse_size(),
                                  (num_src, num_dst), ('source', 'target'),
                                  strict=True):
            if got is not None and got != num:
                raise ValueError(
                    f"'{caller}' got an EdgeIndex of {got} {role} nodes "
                    f"(sparse_size) but {num} {role} nodes in 'x'; build "
                    'it with sparse_size=(num_src, num_dst) of this graph')
    if is_strict() or (check_range and edge_index.device.type == 'cpu'):
        if isinstance(edge_index, EdgeIndex):
            edge_index = edge_index.as_tensor()
        check_index_range(edge_index, num_src, num_dst, caller)
    return edge_index.size(1)


def check_edge_attr(edge_attr: Tensor, lin_edge: Optional[torch.nn.Module],
                    edge_dim: Optional[int], num_edges: int,
                    caller: str) -> None:
    """Checks edge features against the edge projection ``lin_edge`` (or
    its absence) and the number of edges; NaN in ``'strict'`` validation.
    """
    if lin_edge is None:
        raise ValueError(
            f"'{caller}' got 'edge_attr' but was built with edge_dim=None; "
            'build it with edge_dim=<number of edge features> or do not '
            "pass 'edge_attr'")
    if not isinstance(edge_attr, Tensor):
        raise TypeError(f"'{caller}' expects 'edge_attr' to be a tensor "
                        f"(got '{type(edge_attr).__name__}')")
    if not edge_attr.is_floating_point():
        raise TypeError(
            f"'{caller}' expects floating-point 'edge_attr' (got "
            f"'{edge_attr.dtype}'); convert it with 'edge_attr.float()'")
    dim = edge_attr.size(-1) if edge_attr.dim() == 2 else 1
    # With edge_dim=-1 the size is taken from the first edge_attr.
    expected = lin_edge.in_channels
    # Compared one by one: 'in' would not compare a symbolic size (under
    # torch.compile with dynamic shapes) by value.
    if edge_attr.dim() not in (1, 2) or (expected != -1 and expected != dim):
        raise ValueError(
            f"'{caller}' was built with edge_dim={edge_dim} and expects "
            f"'edge_attr' of shape [num_edges, {expected}] (got "
            f'{tuple(edge_attr.shape)})')
    _check_like_parameters(edge_attr, lin_edge.weight, "'edge_attr'",
                           'edge_attr', caller)
    if is_strict():
        check_no_nan(edge_attr, "'edge_attr'", caller)
    if edge_attr.size(0) != num_edges:
        raise ValueError(
            f"'{caller}' got 'edge_attr' for {edge_attr.size(0)} edges but "
            f"'edge_index' has {num_edges}; pass one row per edge")


def check_positive_ints(caller: str, **values: object) -> None:
    """Raises a :class:`ValueError` naming the first of ``values`` that is
    not a positive integer (``True`` is not an integer here)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"'{caller}' expects {name} to be a positive "
                             f'integer, got {value!r}')


def check_probabilities(caller: str, **values: float) -> None:
    """Raises a :class:`ValueError` naming the first of ``values`` outside
    ``[0, 1)`` (a dropout probability)."""
    for name, value in values.items():
        if not 0.0 <= value < 1.0:
            raise ValueError(f"'{caller}' expects {name} in [0, 1), got "
                             f'{value!r}')
