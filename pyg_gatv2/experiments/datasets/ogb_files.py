"""The files of the OGB node-classification datasets: where they lie, what
a download holds, and the checks that name a missing or corrupt one. None
of this imports ``ogb`` until it reads its metadata."""
from pathlib import Path
from typing import Any, Optional

import numpy as np
from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
from torch_geometric.data.storage import GlobalStorage

from pyg_gatv2.extras import require

__all__ = ['OGBFileError', 'SPLIT_FILES', 'PYG_GLOBALS', 'import_ogb',
           'meta_info', 'dataset_folder', 'refetch_hint', 'read_gz_csv',
           'raw_paths', 'check_present', 'first_bad_file']

SPLIT_FILES = ('train', 'valid', 'test')
# What a PyG processed file holds besides tensors, dicts and tuples.
PYG_GLOBALS = [DataEdgeAttr, DataTensorAttr, GlobalStorage]


class OGBFileError(OSError):
    """An OGB file is missing, corrupt or inconsistent, or cannot be
    downloaded; the message names the file and how to obtain a good copy."""


def import_ogb() -> Any:
    """``ogb.nodeproppred``; raises
    :class:`~pyg_gatv2.extras.MissingExtraError`, naming the ``ogb`` extra,
    without the package."""
    require('ogb', 'pyg_gatv2.experiments.datasets.ogb')
    import ogb.nodeproppred
    return ogb.nodeproppred


def meta_info(name: str) -> Any:
    """The row of ``ogb``'s ``master.csv`` for :obj:`name` (a
    :class:`pandas.Series`), as
    :class:`~ogb.nodeproppred.PygNodePropPredDataset` reads it."""
    import pandas as pd  # a dependency of ogb
    path = Path(import_ogb().__file__).parent / 'master.csv'
    master = pd.read_csv(path, index_col=0, keep_default_na=False)
    return master[name]


def dataset_folder(root: Path, name: str) -> Path:
    # As PygNodePropPredDataset: an older '<dir>_pyg' download wins.
    folder = root / name.replace('-', '_')
    pyg_folder = folder.with_name(folder.name + '_pyg')
    return pyg_folder if pyg_folder.exists() else folder


def refetch_hint(folder: Path, url: str) -> str:
    return (f'delete {folder} and load again to download it, or download '
            f'{url} yourself and unzip it so that its top folder becomes '
            f'{folder}')


def read_gz_csv(path: Path) -> np.ndarray:
    import pandas as pd
    return pd.read_csv(path, compression='gzip', header=None).values


def raw_paths(folder: Path, meta: Any) -> list[Path]:
    """The raw files that ogb's processing reads."""
    extra = meta['additional node files']
    names = ['edge', 'node-feat', 'node-label', 'num-node-list',
             'num-edge-list'] + ([] if extra == 'None' else extra.split(','))
    return [folder / 'raw' / f'{n}.csv.gz' for n in names]


def check_present(folder: Path, meta: Any, url: str) -> None:
    """Raises unless :obj:`folder` holds every file of a download."""
    marker = folder / f"RELEASE_v{meta['version']}.txt"
    if not marker.is_file():
        raise OGBFileError(
            f'{marker}: missing, so {folder} holds another release of '
            f'{meta.name} or an incomplete download; '
            f'{refetch_hint(folder, url)}')
    split = folder / 'split' / meta['split']
    needed = raw_paths(folder, meta)
    if not (split / 'split_dict.pt').is_file():
        needed += [split / f'{part}.csv.gz' for part in SPLIT_FILES]
    for path in needed:
        if not path.is_file():
            raise OGBFileError(f'{path}: missing; '
                               f'{refetch_hint(folder, url)}')


def first_bad_file(
        paths: list[Path]) -> tuple[Optional[Path], Optional[Exception]]:
    """The first of :obj:`paths` that cannot be read as a gzipped CSV, and
    why; ``(None, None)`` if all can."""
    for path in paths:
        try:
            read_gz_csv(path)
        except Exception as err:  # any failure of gzip, zlib or pandas
            return path, err
    return None, None
