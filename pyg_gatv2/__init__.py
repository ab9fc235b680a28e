"""pyg_gatv2: a fast, memory-efficient drop-in GATv2Conv for PyG."""
from pyg_gatv2.backends import (
    current_backends,
    set_fused_backend,
    set_softmax_backend,
    use_backends,
)
from pyg_gatv2.checks import get_validation, set_validation, validation
from pyg_gatv2.conv import GATv2Conv
from pyg_gatv2.datasets import DictionaryLookup, load_planetoid
from pyg_gatv2.dense import DenseGATv2Conv
from pyg_gatv2.lookup import LookupResult, evaluate_lookup, train_lookup
from pyg_gatv2.models import GAT, DictionaryLookupNet, GATv2
from pyg_gatv2.softmax import (
    available_backends,
    get_backend,
    scatter_softmax,
    set_backend,
    use_backend,
)
from pyg_gatv2.training import (
    TrainingDivergedError,
    TrainResult,
    fit,
    train_node_classifier,
)

__version__ = '0.1.0'

__all__ = [
    '__version__',
    'GATv2Conv',
    'DenseGATv2Conv',
    'scatter_softmax',
    'available_backends',
    'get_backend',
    'set_backend',
    'use_backend',
    'set_fused_backend',
    'set_softmax_backend',
    'use_backends',
    'current_backends',
    'set_validation',
    'get_validation',
    'validation',
    'load_planetoid',
    'GATv2',
    'GAT',
    'fit',
    'train_node_classifier',
    'TrainResult',
    'TrainingDivergedError',
    'DictionaryLookup',
    'DictionaryLookupNet',
    'train_lookup',
    'evaluate_lookup',
    'LookupResult',
]
