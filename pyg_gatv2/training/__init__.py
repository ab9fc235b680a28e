"""Training GATv2 node classifiers: the loop, early stopping, checkpoints
and the result records."""
from .checkpoint import Checkpoints, RunState
from .early_stopping import STOP_CRITERIA, EarlyStopping
from .node_classification import (
    PAPER_SETTINGS,
    evaluate,
    fit,
    resolve_device,
    train_epoch,
    train_node_classifier,
)
from .results import (
    HISTORY_KEYS,
    EpochMetrics,
    SeedResult,
    TrainingDivergedError,
    TrainResult,
)

__all__ = [
    'EarlyStopping',
    'EpochMetrics',
    'PAPER_SETTINGS',
    'SeedResult',
    'TrainResult',
    'TrainingDivergedError',
    'evaluate',
    'fit',
    'resolve_device',
    'train_epoch',
    'train_node_classifier',
    'Checkpoints',
    'RunState',
    'STOP_CRITERIA',
    'HISTORY_KEYS',
]
