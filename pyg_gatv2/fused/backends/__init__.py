"""The backends of the fused attention: one module each, one registry.

Each backend module defines ``BACKEND``, a :class:`Backend`: its name, the
devices and dtypes it runs, whether it can run on this machine (and why
not), its forward and backward kernels, and whether its backward needs the
forward output. :data:`PRIORITY` lists the modules, fastest first; the
dispatcher (:func:`select`) walks them in that order and takes the first
that can run a call, or, for a backend asked for by name, says why it
cannot. Adding a backend is one module here and one entry in
:data:`PRIORITY`. The choice of calls that name no backend is kept here
(:func:`choose`); users make it through :mod:`pyg_gatv2.backends`.
"""
import functools
import importlib
from typing import Dict, List, Optional, Tuple

import torch

from ..operands import Cotangents, Gradients, Operands

__all__ = ['Backend', 'PRIORITY', 'registry', 'names', 'get', 'select',
           'available', 'choose', 'chosen']

#: The backend modules of this package, fastest first.
PRIORITY = ('cpp', 'triton', 'torch')

# The backend of calls that name none: 'auto' or a name.
_chosen = 'auto'


class Backend:
    """A backend of the fused attention.

    Attributes:
        name (str): The name users select it by.
        summary (str): One line on what it is.
        devices (tuple of str): The device types it runs on.
        dtypes (tuple of torch.dtype): The dtypes it computes in (that of
            the attention vector).
        needs_output (bool): Whether its backward reads the forward output
            (to form ``D_i = <grad_out_i, out_i>``); the C++ kernels sum
            ``D_i`` over the edges instead, so autograd need not keep it.
        reads_lower_precision (bool): Whether its kernels read features
            stored in a lower precision than the attention vector they
            compute in (bfloat16 projections beside float32 parameters, as
            :func:`torch.autocast` gives) as they are; for the other
            backends the operator computes on copies in the attention
            vector's dtype.
    """
    name: str = ''
    summary: str = ''
    devices: Tuple[str, ...] = ()
    dtypes: Tuple[torch.dtype, ...] = ()
    needs_output: bool = True
    reads_lower_precision: bool = False

    def unavailable_reason(self) -> Optional[str]:
        """Why the backend cannot run on this machine at all (a missing
        package or library, and how to get it), or :obj:`None`."""
        return None

    def runs_on(self, device: torch.device) -> bool:
        """Whether it can run tensors on ``device``."""
        return device.type in self.devices

    def chosen_for(self, device: torch.device) -> bool:
        """Whether ``'auto'`` may choose it for tensors on ``device``
        (where it runs and is available)."""
        return True

    def reasons(self, device: torch.device, dtype: torch.dtype) -> List[str]:
        """Why it cannot run features on ``device`` in ``dtype`` here; empty
        when it can."""
        found = []
        unavailable = self.unavailable_reason()
        if unavailable is not None:
            found.append(unavailable)
        if not self.runs_on(device):
            found.append(f'it runs on {" or ".join(self.devices)} tensors, '
                         f'not {device.type}')
        if dtype not in self.dtypes:
            found.append('it runs ' + ', '.join(
                str(t).removeprefix('torch.') for t in self.dtypes) +
                f', not {str(dtype).removeprefix("torch.")}')
        return found

    def width(self, heads: int, channels: int, dtype: torch.dtype) -> int:
        """The channels per head its kernels run ``heads`` x ``channels``
        at in ``dtype``: ``channels``, unless it pads heads with zero
        channels to a width its kernels run faster."""
        return channels

    def forward(self, ops: Operands, want_alpha: bool
                ) -> Tuple[torch.Tensor, torch.Tensor,
                           Optional[torch.Tensor]]:
        """``out`` [num_dst, H, C], the log-sum-exp [num_dst, H] and, with
        ``want_alpha``, the softmax weights [virtual edges, H]."""
        raise NotImplementedError

    def backward(self, ops: Operands, cot: Cotangents, want_edge_grad: bool,
                 want_src_grad: bool) -> Gradients:
        """The gradients of the operands: of ``x_l`` only with
        ``want_src_grad``, of the edge terms only with
        ``want_edge_grad``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f'<fused backend {self.name!r}: {self.summary}>'


@functools.lru_cache(maxsize=None)
def registry() -> Dict[str, Backend]:
    """The backends, by name, in :data:`PRIORITY` order."""
    found = {}
    for module in PRIORITY:
        backend = importlib.import_module(f'{__name__}.{module}').BACKEND
        found[backend.name] = backend
    return found


def names() -> Tuple[str, ...]:
    """The names of the backends, fastest first."""
    return tuple(registry())


def get(name: str, caller: str) -> Backend:
    """The backend called ``name``; a :class:`ValueError` naming the
    choices when there is none."""
    backend = registry().get(name)
    if backend is None:
        raise ValueError(f"'{caller}' got fused backend {name!r}; choose one "
                         f"of {', '.join(map(repr, ('auto', ) + names()))}")
    return backend


def available() -> Tuple[str, ...]:
    """The backends that can run on this machine, fastest first (each for
    its own devices and dtypes)."""
    return tuple(name for name, backend in registry().items()
                 if backend.unavailable_reason() is None)


def choose(name: str, caller: str) -> None:
    """Makes ``name`` (``'auto'`` or a backend that can run on this
    machine) the backend of calls that name none; a :class:`ValueError`
    says why not."""
    global _chosen
    if name != 'auto':
        reason = get(name, caller).unavailable_reason()
        if reason is not None:
            raise ValueError(f"'{caller}': the fused backend {name!r} cannot "
                             f'run here: {reason}')
    _chosen = name


def chosen() -> str:
    """The backend of calls that name none (``'auto'`` unless chosen)."""
    return _chosen


def select(name: Optional[str], device: torch.device, dtype: torch.dtype,
           caller: str) -> Backend:
    """The backend for features on ``device`` in ``dtype``.

    ``name`` :obj:`None` takes the one :func:`chosen`. ``'auto'`` takes the
    first backend of :data:`PRIORITY` that can run them (the torch backend
    runs any); a name takes that backend, or raises a :class:`ValueError`
    that says why it cannot run them and which backends can.
    """
    if name is None:
        name = _chosen
    if name == 'auto':
        for backend in registry().values():
            if backend.chosen_for(device) and not backend.reasons(device,
                                                                  dtype):
                return backend
        raise RuntimeError(f"'{caller}': no fused backend runs "
                           f'{dtype} tensors on {device}')
    backend = get(name, caller)
    why = backend.reasons(device, dtype)
    if why:
        able = [other.name for other in registry().values()
                if not other.reasons(device, dtype)]
        raise ValueError(
            f"'{caller}' cannot run on the fused backend {name!r}: "
            f"{'; '.join(why)}. Backends that can run {dtype} tensors on "
            f"{device}: {', '.join(map(repr, able))} (or 'auto')")
    return backend
