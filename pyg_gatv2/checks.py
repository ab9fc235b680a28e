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
    >>> import pyg_gatv2
    >>> pyg_gatv2.set_validation('strict')      # for every call from now on
    >>> with pyg_gatv2.validation('strict'):    # just for this block
    ...     out = conv(x, edge_index)
"""
import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ['set_validation', 'get_validation', 'validation', 'is_strict',
           'check_index_range', 'check_no_nan']

VALIDATION_MODES = ('default', 'strict')

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
