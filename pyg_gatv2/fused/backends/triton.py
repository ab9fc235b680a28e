"""The Triton backend: GPU kernels for CUDA tensors of any floating dtype.

The kernels (:mod:`pyg_gatv2.fused.backends.triton_kernels`) are imported
when they first run, so that this module, and the registry, need no triton.
Under ``TRITON_INTERPRET=1`` Triton's interpreter runs them on CPU tensors,
slowly: the backend then takes CPU tensors too, when asked for by name, and
``'auto'`` still never chooses it for them.
"""
import importlib.util
import os
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..operands import Cotangents, Gradients, Operands
from . import Backend

__all__ = ['BACKEND', 'interpreting']


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET=1`` runs Triton kernels on CPU tensors
    (Triton's interpreter)."""
    return os.environ.get('TRITON_INTERPRET') == '1'


class TritonBackend(Backend):
    name = 'triton'
    summary = 'Triton GPU kernels (CPU tensors in Triton\'s interpreter)'
    devices = ('cuda', )
    dtypes = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
    reads_lower_precision = True

    def unavailable_reason(self) -> Optional[str]:
        if importlib.util.find_spec('triton') is None:
            return ("the triton package is not installed: pip install "
                    "'pyg-gatv2[gpu]'")
        if not (torch.cuda.is_available() or interpreting()):
            return ('no CUDA GPU is present (TRITON_INTERPRET=1 runs the '
                    'kernels on CPU tensors, slowly)')
        return None

    def runs_on(self, device: torch.device) -> bool:
        return device.type == 'cuda' or (device.type == 'cpu'
                                         and interpreting())

    def chosen_for(self, device: torch.device) -> bool:
        return device.type == 'cuda'

    def forward(self, ops: Operands, want_alpha: bool
                ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        from . import triton_kernels
        return triton_kernels.run_forward(ops, want_alpha)

    def backward(self, ops: Operands, cot: Cotangents, want_edge_grad: bool,
                 want_src_grad: bool) -> Gradients:
        from . import triton_kernels
        return triton_kernels.run_backward(ops, cot, want_edge_grad,
                                           want_src_grad)


BACKEND = TritonBackend()
