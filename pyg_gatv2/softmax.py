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

    Args:
        src (torch.Tensor): Scores, ``[E, *]``.
        index (torch.Tensor): Group (target node) of each score, ``[E]``.
        num_nodes (int): Number of groups.
        ptr (torch.Tensor, optional): CSR pointer ``[num_nodes + 1]`` when
            :obj:`index` is sorted; lets torch-scatter use segment
            reductions. (default: :obj:`None`)
        backend (str, optional): ``'torch_scatter'``, ``'native'``,
            ``'auto'``, or :obj:`None` for the backend chosen with
            :func:`pyg_gatv2.set_backends`. (default: :obj:`None`)

    Returns:
        torch.Tensor: Normalised weights, same shape and dtype as
        :obj:`src`.
    """
    backend = _resolve(backend)
    dtype = src.dtype
    if dtype in (torch.float16, torch.bfloat16):
        src = src.float()
    if backend == 'torch_scatter':
        index = index.long()  # torch-scatter takes int64 indices only
        src_max = _scatter_max(src.detach(), index, num_nodes, ptr)
    else:
        src_max = _native_max(src.detach(), index, num_nodes)
    out = (src - src_max.index_select(0, index)).exp()
    if backend == 'torch_scatter':
        out_sum = _scatter_sum(out, index, num_nodes, ptr)
    else:
        out_sum = _native_sum(out, index, num_nodes)
    return (out / out_sum.index_select(0, index)).to(dtype)
