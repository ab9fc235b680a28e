"""pyg_gatv2: a fast, memory-efficient drop-in GATv2Conv for PyG.

The layers, the models built from them, the fused attention operator and
the choice of its backends. The experiments run with them (datasets,
training, DictionaryLookup, the command line) are in
:mod:`pyg_gatv2.experiments`, behind the ``train`` extra.
"""
from pyg_gatv2.backends import (
    available_backends,
    cpu_capability,
    current_backends,
    describe_backends,
    set_backends,
    use_backends,
)
from pyg_gatv2.checks import get_validation, set_validation, validation
from pyg_gatv2.conv import GATv2Conv
from pyg_gatv2.dense import DenseGATv2Conv
from pyg_gatv2.fused import fused_gatv2_attention
from pyg_gatv2.models import GAT, GATv2
from pyg_gatv2.softmax import scatter_softmax

__version__ = '0.2.0'

__all__ = [
    '__version__',
    'GATv2Conv',
    'DenseGATv2Conv',
    'GAT',
    'GATv2',
    'fused_gatv2_attention',
    'scatter_softmax',
    'set_backends',
    'use_backends',
    'current_backends',
    'available_backends',
    'describe_backends',
    'cpu_capability',
    'set_validation',
    'get_validation',
    'validation',
]
