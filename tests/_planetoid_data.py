"""Tiny synthetic datasets in the raw-file format of Planetoid.

The files are written as the originals were: pickles at protocol 2 of CSR
feature matrices, one-hot label arrays and a ``defaultdict(list)`` graph, and
a text file of test node indices. Every quantity is a simple function of the
node index, so a test can state what loading must give:

* node ``i`` has features 1 in columns ``i % F`` and ``(i // F) % F``;
* node ``i`` has label ``i % C``;
* the graph is a ring (``i <-> i + 1 mod N``), plus a self-loop on node 0 and
  a duplicate edge ``0 -> 1``, which loading must drop.
"""
import collections
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse
import torch
from torch import Tensor

NUM_FEATURES = 6
NUM_CLASSES = 3
NUM_TRAIN = 6  # two per class
NUM_VAL = 500  # fixed by the Planetoid format
NUM_TEST = 12
NUM_KNOWN = NUM_TRAIN + NUM_VAL  # the rows of allx
NUM_NODES = NUM_KNOWN + NUM_TEST


@dataclass
class SyntheticPlanetoid:
    """What loading the written files must give."""
    raw_dir: Path
    x: Tensor
    y: Tensor
    test_index: Tensor
    edges: set


def features(nodes: np.ndarray) -> np.ndarray:
    out = np.zeros((len(nodes), NUM_FEATURES), dtype=np.float32)
    out[np.arange(len(nodes)), nodes % NUM_FEATURES] = 1
    out[np.arange(len(nodes)), (nodes // NUM_FEATURES) % NUM_FEATURES] = 1
    return out


def one_hot(nodes: np.ndarray) -> np.ndarray:
    return np.eye(NUM_CLASSES, dtype=np.int32)[nodes % NUM_CLASSES]


def dump(path: Path, obj: Any) -> None:
    """Pickles ``obj`` to ``path`` at protocol 2, like the original files."""
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_planetoid_raw(folder: Path, name: str = 'PubMed',
                        seed: int = 0) -> SyntheticPlanetoid:
    """Writes ``<folder>/<name>/raw/ind.<name>.*`` and returns the truth.

    The test nodes are listed in a shuffled order, so that loading must
    place each row of ``tx``/``ty`` at the node its index names.
    """
    raw_dir = folder / name / 'raw'
    raw_dir.mkdir(parents=True)
    prefix = f'ind.{name.lower()}.'
    known = np.arange(NUM_KNOWN)
    test_index = NUM_KNOWN + np.random.default_rng(seed).permutation(
        NUM_TEST)
    train = np.arange(NUM_TRAIN)
    for key, nodes in (('x', train), ('allx', known), ('tx', test_index)):
        dump(raw_dir / f'{prefix}{key}', scipy.sparse.csr_matrix(
            features(nodes)))
    for key, nodes in (('y', train), ('ally', known), ('ty', test_index)):
        dump(raw_dir / f'{prefix}{key}', one_hot(nodes))
    graph = collections.defaultdict(list)
    for i in range(NUM_NODES):
        graph[i] += [(i - 1) % NUM_NODES, (i + 1) % NUM_NODES]
    graph[0] += [0, 1]
    dump(raw_dir / f'{prefix}graph', graph)
    (raw_dir / f'{prefix}test.index').write_text(
        ''.join(f'{i}\n' for i in test_index))

    nodes = np.arange(NUM_NODES)
    edges = {(i, (i + d) % NUM_NODES) for i in nodes.tolist() for d in (-1, 1)}
    return SyntheticPlanetoid(
        raw_dir=raw_dir, x=torch.from_numpy(features(nodes)),
        y=torch.from_numpy(nodes % NUM_CLASSES),
        test_index=torch.from_numpy(test_index), edges=edges)
