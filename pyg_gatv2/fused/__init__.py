"""Fused, memory-efficient GATv2 attention (FlashAttention-style)."""
from .csr import EdgeLayout, clear_layout_cache, edge_layout
from .function import (
    FusedGATv2Attention,
    available_backends,
    fused_gatv2_attention,
)

__all__ = [
    'fused_gatv2_attention',
    'FusedGATv2Attention',
    'available_backends',
    'edge_layout',
    'EdgeLayout',
    'clear_layout_cache',
]
