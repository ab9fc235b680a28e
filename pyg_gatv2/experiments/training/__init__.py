"""Training GATv2 node classifiers: the loop, early stopping, checkpoints,
the result records, mini-batches of sampled neighbourhoods and
multi-process (DDP) training."""
from .checkpoint import CheckpointError, Checkpoints, RunState
from .distributed import DistributedError, process_group
from .early_stopping import STOP_CRITERIA, EarlyStopping
from .node_classification import (
    PAPER_SETTINGS,
    CheckpointFiles,
    Checkpointing,
    Recipe,
    Sampling,
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
from .sampling import FullBatch, NeighborBatches, SamplingUnavailableError

__all__ = [
    'EarlyStopping',
    'EpochMetrics',
    'PAPER_SETTINGS',
    'Recipe',
    'Sampling',
    'CheckpointFiles',
    'Checkpointing',
    'SeedResult',
    'TrainResult',
    'TrainingDivergedError',
    'evaluate',
    'fit',
    'resolve_device',
    'train_epoch',
    'train_node_classifier',
    'CheckpointError',
    'Checkpoints',
    'RunState',
    'STOP_CRITERIA',
    'HISTORY_KEYS',
    'DistributedError',
    'FullBatch',
    'NeighborBatches',
    'SamplingUnavailableError',
    'process_group',
]
