"""What the tests of the training loop share: a small graph whose answers
are known, the model trained on it, and comparisons of runs and states."""
import torch
import torch.nn.functional as F
from torch_geometric.data import Data

from pyg_gatv2.experiments.training import TrainResult
from pyg_gatv2.models import GATv2

NUM_FEATURES, NUM_CLASSES = 12, 3


def toy_graph(num_nodes: int = 90, seed: int = 0) -> Data:
    """Noisy one-hot class features on a graph that mostly links nodes of
    the same class; 30 training, 30 validation and 30 test nodes."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(num_nodes) % NUM_CLASSES
    x = F.one_hot(y, NUM_FEATURES).float()
    x = x + torch.randn(num_nodes, NUM_FEATURES, generator=gen)
    src = torch.arange(num_nodes).repeat_interleave(4)
    hop = torch.randint(1, num_nodes // NUM_CLASSES, (src.numel(), ),
                        generator=gen)
    dst = (src + NUM_CLASSES * hop) % num_nodes  # same class
    noise = torch.randint(0, num_nodes, (2, num_nodes // 3), generator=gen)
    node = torch.arange(num_nodes)
    return Data(x=x, y=y,
                edge_index=torch.cat([torch.stack([src, dst]), noise], 1),
                train_mask=node < 30, val_mask=(node >= 30) & (node < 60),
                test_mask=node >= 60)


def build() -> GATv2:
    """A fresh two-layer GATv2 for :func:`toy_graph`."""
    return GATv2(NUM_FEATURES, NUM_CLASSES)


def same_runs(a: TrainResult, b: TrainResult) -> None:
    """Every field of every run equal, the timing aside."""
    assert len(a.runs) == len(b.runs)
    for run_a, run_b in zip(a.runs, b.runs, strict=True):
        run_a.seconds = run_b.seconds = 0.0
        assert run_a == run_b
        assert run_a.history == run_b.history


def assert_same_state(a: dict, b: dict) -> None:
    """Two state dicts with the same keys and bit-equal tensors."""
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class Interrupt(Exception):
    """Raised from a callback to stop a run part-way, as a crash would."""


def rankings(att: torch.Tensor) -> set:
    """The distinct orders of the keys, one per query row of ``att``."""
    return {tuple(row.argsort(descending=True, stable=True).tolist())
            for row in att}
