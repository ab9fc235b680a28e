"""pyg_gatv2: a fast, memory-efficient drop-in GATv2Conv for PyG."""

__version__ = '0.1.0'

__all__ = [
    '__version__',
]
