"""Which implementations run: the fused kernels and the softmax, chosen here.

:class:`pyg_gatv2.GATv2Conv` computes attention on one of two paths, and
each path has its own choice of implementation:

- **fused** (the default path): the kernels of the fused attention operator
  :func:`pyg_gatv2.fused.fused_gatv2_attention`. ``'cpp'``: multi-threaded
  C++ CPU kernels for float32 and float64, compiled when the package is
  installed; ``'numba'``: the same kernels in numba, compiled on first use;
  ``'triton'``: GPU kernels for CUDA tensors (and CPU tensors under
  ``TRITON_INTERPRET=1``, Triton's interpreter); ``'torch'``: PyTorch
  operations chunked over the edges, on any device and dtype; ``'auto'``
  (default): cpp (else numba) for CPU tensors and triton for CUDA tensors
  where they apply and are installed, else torch.
- **softmax** (the message-passing path: ``fused=False`` and the calls the
  fused path does not cover): the scatter-softmax over each node's incoming
  edges. ``'torch_scatter'``: torch-scatter's reductions; ``'native'``:
  torch's own ``scatter_reduce`` and ``index_add``; ``'auto'`` (default):
  torch-scatter where it is installed, native under :func:`torch.compile`
  and otherwise.

Example:
    >>> import pyg_gatv2
    >>> pyg_gatv2.set_fused_backend('torch')        # from now on
    >>> with pyg_gatv2.use_backends(fused='numba', softmax='native'):
    ...     out = conv(x, edge_index)                 # just for this block
    >>> pyg_gatv2.current_backends()
    {'fused': 'torch', 'softmax': 'auto'}
"""
import contextlib
import functools
import importlib.util
import os
from collections.abc import Iterator
from typing import Dict, Optional, Tuple

__all__ = ['FUSED_BACKENDS', 'SOFTMAX_BACKENDS', 'set_fused_backend',
           'set_softmax_backend', 'get_fused_backend', 'get_softmax_backend',
           'use_backends', 'current_backends', 'available_fused_backends',
           'available_softmax_backends', 'check_backend', 'cpp_kernels_built',
           'triton_runs_here', 'triton_interpreting']

FUSED_BACKENDS = ('auto', 'cpp', 'numba', 'triton', 'torch')
SOFTMAX_BACKENDS = ('auto', 'torch_scatter', 'native')

_selected = {'fused': 'auto', 'softmax': 'auto'}


@functools.lru_cache(maxsize=None)
def _installed(package: str) -> bool:
    # Asked on every call of the fused operator; a package does not appear
    # or go while the process runs.
    return importlib.util.find_spec(package) is not None


def triton_interpreting() -> bool:
    """Whether ``TRITON_INTERPRET=1`` runs Triton kernels on CPU tensors
    (Triton's interpreter)."""
    return os.environ.get('TRITON_INTERPRET') == '1'


def triton_runs_here() -> bool:
    """Whether Triton kernels can run: triton is installed, and a CUDA GPU
    is there or Triton's interpreter runs them on the CPU."""
    if not _installed('triton'):
        return False
    import torch
    return torch.cuda.is_available() or triton_interpreting()


@functools.lru_cache(maxsize=None)
def cpp_kernels_built() -> bool:
    """Whether the C++ kernels were built when the package was installed
    (they need a C++ compiler with OpenMP)."""
    from .fused import cpp
    return cpp.load() is not None


def available_fused_backends() -> Tuple[str, ...]:
    """The fused-kernel backends usable here, fastest first."""
    return tuple(name for name, usable in (
        ('cpp', cpp_kernels_built()), ('numba', _installed('numba')),
        ('triton', triton_runs_here()), ('torch', True)) if usable)


def available_softmax_backends() -> Tuple[str, ...]:
    """The softmax backends usable here, fastest first."""
    return (('torch_scatter', 'native') if _installed('torch_scatter') else
            ('native', ))


def check_backend(kind: str, name: Optional[str], caller: str) -> str:
    """Returns the backend ``name`` of ``kind`` (``'fused'`` or ``'softmax'``;
    :obj:`None` is ``'auto'``), or raises a :class:`ValueError` naming the
    choices when it is unknown or its package is missing."""
    names = FUSED_BACKENDS if kind == 'fused' else SOFTMAX_BACKENDS
    name = 'auto' if name is None else name
    if name not in names:
        raise ValueError(f"'{caller}' got {kind} backend {name!r}; choose "
                         f"one of {', '.join(map(repr, names))}")
    if name == 'auto':
        return name
    available = (available_fused_backends() if kind == 'fused' else
                 available_softmax_backends())
    if name not in available:
        needs = {
            'cpp': ('the C++ kernels, built when the package is installed '
                    "with a C++ compiler that has OpenMP ('pip install -e "
                    ".')"),
            'numba': "the numba package ('pip install numba')",
            'triton': ("the triton package ('pip install triton') and a "
                       'CUDA GPU, or TRITON_INTERPRET=1 for CPU tensors'),
            'torch_scatter': ("the torch-scatter package ('pip install "
                              "--no-build-isolation torch-scatter')"),
        }[name]
        raise ValueError(f"'{caller}': the {kind} backend {name!r} needs "
                         f'{needs}; or choose one of {available}')
    return name


def set_fused_backend(name: str) -> None:
    """Selects the kernels of the fused attention operator (``'auto'``,
    ``'cpp'``, ``'numba'``, ``'triton'`` or ``'torch'``), for every call that
    does not name one."""
    _selected['fused'] = check_backend('fused', name, 'set_fused_backend')


def set_softmax_backend(name: Optional[str]) -> None:
    """Selects the softmax of the message-passing path (``'auto'`` or
    :obj:`None`, ``'torch_scatter'`` or ``'native'``)."""
    _selected['softmax'] = check_backend('softmax', name, 'set_softmax_backend')


def get_fused_backend() -> str:
    """The fused-kernel backend selected (``'auto'`` unless set)."""
    return _selected['fused']


def get_softmax_backend() -> str:
    """The softmax backend selected (``'auto'`` unless set)."""
    return _selected['softmax']


def current_backends() -> Dict[str, str]:
    """Both selections, ``{'fused': ..., 'softmax': ...}``."""
    return dict(_selected)


@contextlib.contextmanager
def use_backends(fused: Optional[str] = None,
                 softmax: Optional[str] = None) -> Iterator[None]:
    """Context manager that selects backends for the block; an argument
    left :obj:`None` keeps the current selection."""
    previous = dict(_selected)
    try:
        if fused is not None:
            _selected['fused'] = check_backend('fused', fused, 'use_backends')
        if softmax is not None:
            _selected['softmax'] = check_backend('softmax', softmax,
                                                 'use_backends')
        yield
    finally:
        _selected.update(previous)
