"""The Triton backend: GPU kernels for CUDA tensors of any floating dtype.

The kernels (``pyg_gatv2.fused.backends.triton_kernels``) are imported
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

__all__ = ['BACKEND', 'interpreting', 'autotune']

autotune = False
"""Whether the Triton kernels are autotuned (default :obj:`False`).

Set to :obj:`True`, as ``torch.backends.cudnn.benchmark`` is, it makes the
first launch of each kernel for a shape of rows (heads x channels) and
dtype of the features time a small set of configurations (edges per
block, warps per program) and keep the fastest for the later ones. It is
off by default because the edges per block set the order of the sums:
tuned results can differ from untuned ones in their last bits, and
between two processes that time differently."""


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
        return triton_kernels.run_forward(ops, want_alpha, autotune)

    def backward(self, ops: Operands, cot: Cotangents, want_edge_grad: bool,
                 want_src_grad: bool) -> Gradients:
        from . import triton_kernels
        return triton_kernels.run_backward(ops, cot, want_edge_grad,
                                           want_src_grad, autotune)


BACKEND = TritonBackend()
