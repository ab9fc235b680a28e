"""Fused, memory-efficient GATv2 attention (FlashAttention-style), as torch
custom ops that :func:`torch.compile` and :func:`torch.export.export` see."""
from .csr import EdgeLayout, clear_layout_cache, edge_layout
from .op import (
    available_backends,
    fused_gatv2_attention,
    get_backend,
    set_backend,
    use_backend,
)

__all__ = [
    'fused_gatv2_attention',
    'available_backends',
    'set_backend',
    'get_backend',
    'use_backend',
    'edge_layout',
    'EdgeLayout',
    'clear_layout_cache',
]
