"""The experiments run with the layer: datasets, node-classification
training (full batch, sampled mini-batches, DDP), the DictionaryLookup
experiment, plots and the ``pyg-gatv2`` command line. They need the
``train`` extra (``pip install 'pyg-gatv2[train]'``); the layer and its
kernels (:mod:`pyg_gatv2`) do not."""
from pyg_gatv2.extras import require

require('train', 'pyg_gatv2.experiments')

from pyg_gatv2.experiments.datasets import (  # noqa: E402
    DictionaryLookup,
    load_planetoid,
)
from pyg_gatv2.experiments.lookup import (  # noqa: E402
    LookupResult,
    evaluate_lookup,
    train_lookup,
)
from pyg_gatv2.experiments.lookup_model import (  # noqa: E402
    DictionaryLookupNet,
)
from pyg_gatv2.experiments.training import (  # noqa: E402
    TrainingDivergedError,
    TrainResult,
    fit,
    train_node_classifier,
)

__all__ = [
    'load_planetoid',
    'DictionaryLookup',
    'DictionaryLookupNet',
    'fit',
    'train_node_classifier',
    'TrainResult',
    'TrainingDivergedError',
    'train_lookup',
    'evaluate_lookup',
    'LookupResult',
]
