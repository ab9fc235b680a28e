"""Fused, memory-efficient GATv2 attention (FlashAttention-style), as torch
custom ops that :func:`torch.compile` and :func:`torch.export.export` see."""
from .layout import (
    Chunks,
    EdgeLayout,
    clear_layout_cache,
    edge_layout,
    index_dtype,
)
from .op import fused_gatv2_attention, kernel_width

__all__ = [
    'fused_gatv2_attention',
    'kernel_width',
    'edge_layout',
    'EdgeLayout',
    'Chunks',
    'clear_layout_cache',
    'index_dtype',
]
