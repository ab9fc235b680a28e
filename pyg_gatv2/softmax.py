"""Scatter-softmax over the incoming edges of each node.

Two backends compute the same function:

* ``'torch_scatter'``: :mod:`torch_scatter`'s scatter/segment reductions, the
  fast path on CPU and CUDA when the package is installed;
* ``'native'``: :meth:`torch.Tensor.scatter_reduce` and
  :meth:`torch.Tensor.index_add`, always available and traceable by
  :func:`torch.compile`.

The default (``'auto'``) picks ``'torch_scatter'`` when it is importable and
``'native'`` otherwise; under :func:`torch.compile` it always picks
``'native'``, because torch-scatter's operators break the graph. Users
choose through :mod:`pyg_gatv2.backends`.
"""
import importlib.util
from typing import Optional

import torch
from torch import Tensor
from torch_geometric.index import index2ptr

from pyg_gatv2 import checks

__all__ = ['BACKENDS', 'scatter_softmax', 'available', 'choose', 'chosen']

BACKENDS = ('torch_scatter', 'native')

# The backend of calls that name none: 'auto' or a name.
_chosen = 'auto'


def _has_torch_scatter() -> bool:
    return importlib.util.find_spec('torch_scatter') is not None


def available() -> tuple[str, ...]:
    """The backends usable here, fastest first."""
    return BACKENDS if _has_torch_scatter() else ('native', )


def _check(name: str, caller: str) -> str:
    if name != 'auto' and name not in BACKENDS:
        choices = ', '.join(map(repr, ('auto', ) + BACKENDS))
        raise ValueError(f"'{caller}' got softmax backend {name!r}; choose "
                         f'one of {choices}')
    if name == 'torch_scatter' and not _has_torch_scatter():
        raise ValueError(f"'{caller}': the softmax backend 'torch_scatter' "
                         'cannot run here: the torch-scatter package is not '
                         'installed (pip install --no-build-isolation '
                         'torch-scatter)')
    return name


def choose(name: str, caller: str) -> None:
    """Makes ``name`` (``'auto'``, ``'torch_scatter'`` or ``'native'``) the
    backend of calls that name none; a :class:`ValueError` says why not."""
    global _chosen
    _chosen = _check(name, caller)


def chosen() -> str:
    """The backend of calls that name none (``'auto'`` unless chosen)."""
    return _chosen


def _resolve(backend: Optional[str]) -> str:
    if backend is None:
        if torch.compiler.is_compiling():
            return 'native'
        backend = _chosen
    else:
        backend = _check(backend, 'scatter_softmax')
    if backend == 'auto':
        return 'torch_scatter' if _has_torch_scatter() else 'native'
    return backend


def _check_input(src: Tensor, index: Tensor, num_nodes: int,
                 ptr: Optional[Tensor]) -> None:
    name = 'scatter_softmax'
    for arg, value in (('src', src), ('index', index), ('ptr', ptr)):
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"'{name}' expects '{arg}' to be a tensor (got "
                            f"'{type(value).__name__}')")
    if not src.is_floating_point():
        raise TypeError(
            f"'{name}' expects floating-point scores 'src' (got "
            f"'{src.dtype}'); convert them with 'src.float()'")
    if src.dim() == 0:
        raise ValueError(f"'{name}' expects 'src' of shape [E, *], one row "
                         'per entry (got a scalar)')
    for arg, value in (('index', index), ('ptr', ptr)):
        if value is not None and value.dtype not in (torch.int64,
                                                     torch.int32):
            raise TypeError(
                f"'{name}' expects '{arg}' of dtype int64 or int32 (got "
                f"'{value.dtype}'); convert it with '{arg}.long()'")
        if value is not None and value.device != src.device:
            raise ValueError(
                f"'{name}' got '{arg}' on '{value.device}' but 'src' on "
                f"'{src.device}'; move it with '{arg}.to(src.device)'")
    if index.dim() != 1 or index.size(0) != src.size(0):
        raise ValueError(
            f"'{name}' expects 'index' of shape [E] = [{src.size(0)}], the "
            f"group of each row of 'src' (got {tuple(index.shape)})")
    if ptr is not None and tuple(ptr.shape) != (num_nodes + 1, ):
        raise ValueError(
            f"'{name}' expects 'ptr' of shape [num_nodes + 1] = "
            f'[{num_nodes + 1}] (got {tuple(ptr.shape)})')
    # Reading the values waits for a GPU and breaks a compiled graph: as
    # the layers check edge_index, they are read on the CPU, and everywhere
    # in 'strict' validation.
    if not (checks.is_strict() or (index.device.type == 'cpu'
                                   and not torch.compiler.is_compiling())):
        return
    if index.numel() > 0:
        low, high = (int(value) for value in index.aminmax())
        if low < 0:
            raise ValueError(
                f"'{name}' got a negative group ({low}) in 'index'; groups "
                'must lie in [0, num_nodes)')
        if high >= num_nodes:
            raise ValueError(
                f"'{name}' got group {high} in 'index' but num_nodes="
                f'{num_nodes}; groups must lie in [0, num_nodes) (pass '
                'num_nodes=int(index.max()) + 1, or the index that belongs '
                "to 'src')")
    if ptr is not None and not (
            bool((index[1:] >= index[:-1]).all())
            and torch.equal(ptr.long(), index2ptr(index, num_nodes).long())):
        raise ValueError(
            f"'{name}' got a 'ptr' that does not describe the groups of "
            "'index'; pass ptr=None, or sort the entries by 'index' and pass "
            "ptr=torch_geometric.index.index2ptr(index, num_nodes)")


def _native_max(src: Tensor, index: Tensor, num_nodes: int) -> Tensor:
    expanded = index.view((-1, ) + (1, ) * (src.dim() - 1)).expand_as(src)
    out = src.new_zeros((num_nodes, ) + src.shape[1:])
    return out.scatter_reduce(0, expanded, src, 'amax', include_self=False)


def _native_sum(src: Tensor, index: Tensor, num_nodes: int) -> Tensor:
    out = src.new_zeros((num_nodes, ) + src.shape[1:])
    return out.index_add(0, index, src)


def _scatter_max(src: Tensor, index: Tensor, num_nodes: int,
                 ptr: Optional[Tensor]) -> Tensor:
    import torch_scatter
    if ptr is not None:
        return torch_scatter.segment_csr(src, ptr, reduce='max')
    return torch_scatter.scatter_max(src, index, dim=0, dim_size=num_nodes)[0]


def _scatter_sum(src: Tensor, index: Tensor, num_nodes: int,
                 ptr: Optional[Tensor]) -> Tensor:
    import torch_scatter
    if ptr is not None:
        return torch_scatter.segment_csr(src, ptr, reduce='sum')
    return torch_scatter.scatter_sum(src, index, dim=0, dim_size=num_nodes)


def scatter_softmax(
    src: Tensor,
    index: Tensor,
    num_nodes: int,
    ptr: Optional[Tensor] = None,
    backend: Optional[str] = None,
) -> Tensor:
    r"""Softmax of :obj:`src` over the entries that share an :obj:`index`.

    .. math::
        \alpha_{e} = \frac{\exp(s_e - m_{i})}
        {\sum_{e' : \mathrm{index}(e') = i} \exp(s_{e'} - m_{i})},
        \quad i = \mathrm{index}(e),\;
        m_i = \max_{e' : \mathrm{index}(e') = i} s_{e'}

    The maximum is subtracted first, so logits of any finite size neither
    overflow nor underflow to an all-zero group; half-precision inputs are
    reduced in float32. Indices with no entry simply receive nothing.

    The types and shapes are checked on every call. Reading the values
    (every index in ``[0, num_nodes)``, :obj:`ptr` the pointer of
    :obj:`index`) waits for a GPU, so it is done as the layers check
    ``edge_index`` (see :mod:`pyg_gatv2.checks`): on CPU tensors outside
    :func:`torch.compile`, and always in ``'strict'`` validation.

    Args:
        src (torch.Tensor): Scores, ``[E, *]``.
        index (torch.Tensor): Group (target node) of each score, ``[E]``.
        num_nodes (int): Number of groups.
        ptr (torch.Tensor, optional): CSR pointer ``[num_nodes + 1]`` of a
            sorted :obj:`index` (group :math:`i` is entries ``ptr[i]`` to
            ``ptr[i + 1] - 1``); lets torch-scatter use segment
            reductions. Both must describe the same groups:
            :func:`torch_geometric.utils.softmax` reads :obj:`ptr` in place
            of :obj:`index` where it can, this function reads both.
            (default: :obj:`None`)
        backend (str, optional): ``'torch_scatter'``, ``'native'``,
            ``'auto'``, or :obj:`None` for the backend chosen with
            :func:`pyg_gatv2.set_backends`. (default: :obj:`None`)

    Returns:
        torch.Tensor: Normalised weights, same shape and dtype as
        :obj:`src`.
    """
    _check_input(src, index, num_nodes, ptr)
    backend = _resolve(backend)
    dtype = src.dtype
    if dtype in (torch.float16, torch.bfloat16):
        src = src.float()
    if backend == 'torch_scatter':
        # torch-scatter takes int64 indices and pointers only.
        index = index.long()
        ptr = None if ptr is None else ptr.long()
        src_max = _scatter_max(src.detach(), index, num_nodes, ptr)
    else:
        src_max = _native_max(src.detach(), index, num_nodes)
    out = (src - src_max.index_select(0, index)).exp()
    if backend == 'torch_scatter':
        out_sum = _scatter_sum(out, index, num_nodes, ptr)
    else:
        out_sum = _native_sum(out, index, num_nodes)
    return (out / out_sum.index_select(0, index)).to(dtype)
