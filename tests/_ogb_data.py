"""Small OGB node-classification graphs in the layout of OGB's zip files.

Every quantity is a simple function of the node index, so a test can state
what loading must give: a directed chain ``0 -> 1 -> ... -> 11`` plus
``5 -> 0`` and ``0 -> 5``, features ``(i / 2, i / 4 - 1, -i)``, labels
``7 i mod C``, and nodes 0-5, 6-8 and 9-11 for training, validation and
test.
"""
import gzip
from pathlib import Path

import numpy as np

NUM_NODES = 12
# dataset -> (folder, name in the zip, split folder, classes, inverse edges
# added by ogb, additional node files)
LAYOUT = {
    'ogbn-arxiv': ('ogbn_arxiv', 'arxiv', 'time', 40, False, ['node_year']),
    'ogbn-products': ('ogbn_products', 'products', 'sales_ranking', 47, True,
                      []),
}
TRAIN, VALID, TEST = range(0, 6), range(6, 9), range(9, 12)


def features() -> np.ndarray:
    i = np.arange(NUM_NODES, dtype=np.float32)[:, None]
    return np.concatenate([i * 0.5, i * 0.25 - 1, -i], axis=1)


def labels(num_classes: int) -> np.ndarray:
    # Spread over the whole label range, the last class included.
    return (np.arange(NUM_NODES) * 7) % num_classes


def edges() -> np.ndarray:
    """A directed chain 0 -> 1 -> ... -> 11, plus 5 -> 0 and 0 -> 5."""
    chain = [(i, i + 1) for i in range(NUM_NODES - 1)]
    return np.array(chain + [(5, 0), (0, 5)]).T


def write_gz_csv(path: Path, rows: np.ndarray, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, 'wt') as f:
        np.savetxt(f, rows, fmt=fmt, delimiter=',')


def write_ogb(folder: Path, name: str) -> Path:
    """Writes ``name`` in the layout of OGB's zip into :obj:`folder`."""
    _, _, split, num_classes, _, extra = LAYOUT[name]
    folder.mkdir(parents=True)
    (folder / 'RELEASE_v1.txt').write_text('v1\n')
    raw = folder / 'raw'
    e = edges()
    write_gz_csv(raw / 'edge.csv.gz', e.T, '%d')
    write_gz_csv(raw / 'node-feat.csv.gz', features(), '%.4f')
    write_gz_csv(raw / 'node-label.csv.gz', labels(num_classes)[:, None],
                 '%d')
    write_gz_csv(raw / 'num-node-list.csv.gz', np.array([[NUM_NODES]]), '%d')
    write_gz_csv(raw / 'num-edge-list.csv.gz', np.array([[e.shape[1]]]),
                 '%d')
    for key in extra:
        write_gz_csv(raw / f'{key}.csv.gz',
                     2000 + np.arange(NUM_NODES)[:, None], '%d')
    for part, index in (('train', TRAIN), ('valid', VALID), ('test', TEST)):
        write_gz_csv(folder / 'split' / split / f'{part}.csv.gz',
                     np.array(index)[:, None], '%d')
    return folder
