"""Which implementations run: the kernels of the fused attention and the
softmax of message passing, chosen in one place.

:class:`pyg_gatv2.GATv2Conv` computes attention on one of two paths, and
each path has its own choice of implementation:

- **fused** (the default path): the backends of the fused attention
  operator :func:`pyg_gatv2.fused_gatv2_attention`, one module each
  in :mod:`pyg_gatv2.fused.backends`. ``'cpp'``: multi-threaded C++ CPU
  kernels for float32 and float64, compiled when the package is installed,
  for several CPU levels (:func:`~pyg_gatv2.cpu_capability`); ``'triton'``: GPU
  kernels for CUDA tensors (and CPU tensors under ``TRITON_INTERPRET=1``,
  Triton's interpreter); ``'torch'``: PyTorch operations chunked over the
  edges, on any device and dtype; ``'auto'`` (default): the first of these
  that runs the features' device and dtype here (Triton only for CUDA
  tensors).
- **softmax** (the message-passing path: ``fused=False`` and the calls the
  fused path does not cover): the scatter-softmax over each node's incoming
  edges. ``'torch_scatter'``: torch-scatter's reductions; ``'native'``:
  torch's own ``scatter_reduce`` and ``index_add``; ``'auto'`` (default):
  torch-scatter where it is installed, native under :func:`torch.compile`
  and otherwise.

:func:`~pyg_gatv2.set_backends` chooses for every later call and
:func:`~pyg_gatv2.use_backends` for a block;
:func:`~pyg_gatv2.current_backends` says what is chosen and
:func:`~pyg_gatv2.describe_backends` what can run here, and why not.

Example:
    >>> import pyg_gatv2
    >>> pyg_gatv2.set_backends(fused='torch')
    >>> with pyg_gatv2.use_backends(fused='cpp', softmax='native'):
    ...     pyg_gatv2.current_backends()
    {'fused': 'cpp', 'softmax': 'native'}
    >>> pyg_gatv2.current_backends()
    {'fused': 'torch', 'softmax': 'auto'}
    >>> pyg_gatv2.set_backends(fused='auto')
"""
import contextlib
from collections.abc import Iterator
from typing import Dict, Optional, Tuple

from . import softmax
from .fused import backends as fused_backends
from .fused import cpp_library

__all__ = ['set_backends', 'use_backends', 'current_backends',
           'available_backends', 'describe_backends', 'cpu_capability']


def set_backends(fused: Optional[str] = None,
                 softmax: Optional[str] = None) -> None:
    """Chooses the backends of every later call; an argument left
    :obj:`None` keeps the current choice.

    Args:
        fused (str, optional): ``'auto'``, ``'cpp'``, ``'triton'`` or
            ``'torch'``. (default: :obj:`None`)
        softmax (str, optional): ``'auto'``, ``'torch_scatter'`` or
            ``'native'``. (default: :obj:`None`)

    Raises:
        ValueError: for an unknown name, or a backend that cannot run on
            this machine (saying why); neither choice changes then.
    """
    _choose(fused, softmax, 'set_backends')


def _choose(fused: Optional[str], softmax_name: Optional[str],
            caller: str) -> None:
    previous = current_backends()
    try:
        if fused is not None:
            fused_backends.choose(fused, caller)
        if softmax_name is not None:
            softmax.choose(softmax_name, caller)
    except ValueError:
        _restore(previous)
        raise


def _restore(choices: Dict[str, str]) -> None:
    fused_backends.choose(choices['fused'], 'use_backends')
    softmax.choose(choices['softmax'], 'use_backends')


@contextlib.contextmanager
def use_backends(fused: Optional[str] = None,
                 softmax: Optional[str] = None) -> Iterator[None]:
    """Context manager that chooses backends for the block, as
    :func:`set_backends` does, and restores the previous choices after."""
    previous = current_backends()
    _choose(fused, softmax, 'use_backends')
    try:
        yield
    finally:
        _restore(previous)


def current_backends() -> Dict[str, str]:
    """The choices, ``{'fused': ..., 'softmax': ...}`` (``'auto'`` unless
    chosen)."""
    return {'fused': fused_backends.chosen(), 'softmax': softmax.chosen()}


def available_backends() -> Dict[str, Tuple[str, ...]]:
    """The backends that can run on this machine, fastest first:
    ``{'fused': ..., 'softmax': ...}`` (each fused backend for its own
    devices and dtypes)."""
    return {'fused': fused_backends.available(),
            'softmax': softmax.available()}


def cpu_capability() -> Optional[str]:
    """The CPU level the C++ kernels run (``'avx512'``, ``'avx2'`` or
    ``'default'``; the best this CPU runs unless
    ``PYG_GATV2_CPU_CAPABILITY`` names another), or :obj:`None` where they
    were not built."""
    return cpp_library.capability()


def describe_backends() -> str:
    """A few lines on every fused backend: what it is, what it runs, and
    whether it can run here or why not; then the CPU level and the softmax
    backends."""
    lines = []
    for backend in fused_backends.registry().values():
        reason = backend.unavailable_reason()
        state = 'available' if reason is None else f'unavailable: {reason}'
        dtypes = ', '.join(str(t).removeprefix('torch.')
                           for t in backend.dtypes)
        lines.append(f'fused {backend.name!r}: {backend.summary}; '
                     f"{'/'.join(backend.devices)}, {dtypes}; {state}")
    capability = cpu_capability()
    if capability is not None:
        lines.append(f'C++ kernels: CPU level {capability!r} (this CPU '
                     f"runs {', '.join(cpp_library.capabilities())})")
    lines.append('softmax: ' + ', '.join(available_backends()['softmax']))
    return '\n'.join(lines)
