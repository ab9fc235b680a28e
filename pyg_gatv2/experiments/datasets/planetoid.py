"""The Planetoid citation graphs Cora, CiteSeer and PubMed, verified.

The datasets of `"Revisiting Semi-Supervised Learning with Graph Embeddings"
<https://arxiv.org/abs/1603.08861>`_, loaded through
:class:`torch_geometric.datasets.Planetoid`, with three additions:

* the raw files may come from a read-only folder (``raw_dir=`` or the
  ``PYG_GATV2_RAW_DIR`` environment variable) instead of the network;
* every Cora and CiteSeer raw file is checked against the size and SHA-256 of
  the published file, and the files of every dataset are checked for
  consistency with each other;
* the raw files are Python pickles: they are read by an unpickler that admits
  only the numpy, scipy and builtin types they are made of, so a tampered
  file cannot run code;
* the processed file, a cache of the raw files, is written aside and
  renamed, and one that cannot be read (cut short by a full disk, or by an
  interruption before it was written so) is made again from the raw files.
"""
import collections
import hashlib
import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import scipy.sparse
import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.datasets import Planetoid
from torch_geometric.io.planetoid import edge_index_from_dict
from torch_geometric.transforms import NormalizeFeatures
from torch_geometric.utils import index_to_mask

__all__ = ['PlanetoidFileError', 'SafePlanetoid', 'load_planetoid']

_NAMES = ('Cora', 'CiteSeer', 'PubMed')
_SPLITS = ('public', 'full', 'random')
_RAW_DIR_ENV = 'PYG_GATV2_RAW_DIR'
_ROOT_ENV = 'PYG_GATV2_ROOT'
# The Planetoid format: the first ``len(y)`` nodes are the training nodes, the
# next 500 the validation nodes.
_NUM_VAL = 500

# Size in bytes and SHA-256 of each raw file that ``Planetoid.url`` serves.
# PubMed's are not known here: its files get the structural checks only.
_CHECKSUMS: dict[str, tuple[int, str]] = {
    'ind.cora.x': (22119, '23cfa55d91c6f624233f5eb7b6e3f141'
                          'f1bd2b2ae39608a63cf5d084bb27baab'),
    'ind.cora.tx': (148025, 'b9afbaa4a400df991f6f02ef677e1e44'
                            'da55ffc04801fd02f9e673987829226a'),
    'ind.cora.allx': (257305, '9419ba2f26f5c35243db64aba110e0f3'
                              '5a04851609e0dc5433450676ca6b8543'),
    'ind.cora.y': (4054, '94465c14eb53e04ca262198dcbb2521e'
                         'e8af60fb3f3d546cd6ca24a511b0e7d1'),
    'ind.cora.ty': (28135, '41f5ac76596a1699cc33f53084a2419e'
                           '92961c42bb75f36fc38e616d348532ad'),
    'ind.cora.ally': (47959, '2b998f5cc7fedc86e7f97ca2498f47a1'
                             'ffc1462c29e2d578b23bf3f62b6e7d71'),
    'ind.cora.graph': (59847, '58f13302f39dde8852dad6fe6d15b89b'
                              '077b6d7f837626bce671ef80344b383d'),
    'ind.cora.test.index': (5000, '297ce89af2b51a6a194181c7dbe1796c'
                                  '6a1cf9cd9349a88383b1b1e227867875'),
    'ind.citeseer.x': (31087, 'd20de19150741e555de0ed037195630f'
                              'c194114ebc7fd72ced62810148aa22f6'),
    'ind.citeseer.tx': (260321, '539a8906a2da97628d212f2fdd668c10'
                                '9a8b3f0d36574b59e5d3fd5b5303da21'),
    'ind.citeseer.allx': (595021, '2ac30345d95c9ec933a817ee0bdd6a5f'
                                  '077f8c184a20e696910192d534414668'),
    'ind.citeseer.y': (3014, '8ba87e515d8e3ee3cf52f6d2c5b86aa7'
                             '3f11ecad825a808455209ec26cd54924'),
    'ind.citeseer.ty': (24135, '55e5bd1ba1e733a04598753ad1a8d579'
                               '57f4b8f89e74519f41f4f4938767e4ce'),
    'ind.citeseer.ally': (55623, 'f704b2d986dde6c2669934de1f3ae569'
                                 '6a6cf9455c0f6b2646a2d135ea0a1c95'),
    'ind.citeseer.graph': (61987, 'd79a4ef9d3e7169aee8946145f6b7306'
                                  'e35bc79bffad26346cfb94e10e9912a7'),
    'ind.citeseer.test.index': (5000, '2af990671580b6b2df5d158d1038f829'
                                      '2e30c9cd821b5453f399659b25b723d4'),
}

_PathLike = Union[str, os.PathLike]


class PlanetoidFileError(OSError):
    """A Planetoid raw or processed file is missing, corrupt or unsafe.

    An :class:`OSError`, like any other failure to obtain usable data from a
    file; the message names the file, what is wrong with it and how to obtain
    a good copy.
    """


def _file_error(path: _PathLike, problem: str,
                remedy: str) -> PlanetoidFileError:
    return PlanetoidFileError(f'{path}: {problem}; {remedy}')


def _replace_hint(path: Path) -> str:
    return f'replace it with the original from {Planetoid.url}/{path.name}'


def _latin1_encode(text: str, encoding: str) -> bytes:
    # Python 3 pickles bytes at protocol 2 as _codecs.encode(text, 'latin1')
    # (and b'' as bytes()); any other codec is refused.
    if encoding not in ('latin1', 'latin-1') or not isinstance(text, str):
        raise pickle.UnpicklingError(
            f"_codecs.encode with codec '{encoding}' is not allowed")
    return text.encode('latin1')


def _allowed_globals() -> dict[tuple[str, str], Any]:
    # numpy pickles arrays through private functions that moved from
    # numpy.core to numpy._core in numpy 2: take them from numpy itself and
    # accept both module paths.
    reconstruct = np.ndarray(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], Any] = {
        ('numpy', 'ndarray'): np.ndarray,
        ('numpy', 'dtype'): np.dtype,
        ('collections', 'defaultdict'): collections.defaultdict,
        ('_codecs', 'encode'): _latin1_encode,
    }
    for core in ('numpy.core', 'numpy._core'):
        allowed[(f'{core}.multiarray', '_reconstruct')] = reconstruct
        allowed[(f'{core}.numeric', '_frombuffer')] = frombuffer
    # The raw files were written by scipy.sparse.csr (Python 2); today's
    # scipy pickles the same class from scipy.sparse._csr.
    for module in ('scipy.sparse.csr', 'scipy.sparse._csr', 'scipy.sparse'):
        allowed[(module, 'csr_matrix')] = scipy.sparse.csr_matrix
    for module in ('__builtin__', 'builtins'):  # Python 2 and 3 names
        for container in (list, dict, tuple, set, frozenset, bytes):
            allowed[(module, container.__name__)] = container
    return allowed


_ALLOWED_GLOBALS = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only numpy arrays, CSR matrices and builtin containers."""

    def __init__(self, file: Any, path: Path) -> None:
        # The raw files were pickled by Python 2, whose byte strings are
        # decoded as latin1, as in PyG.
        super().__init__(file, encoding='latin1')
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _file_error(
                self.path, f"refused to unpickle the global '{module}.{name}'"
                ': a Planetoid raw file holds only numpy arrays, scipy CSR '
                'matrices and a dict of lists, so this file is not a genuine '
                'one and was not loaded', _replace_hint(self.path)) from None


def _read_pickle(path: Path) -> Any:
    try:
        with open(path, 'rb') as f:
            obj = _RestrictedUnpickler(f, path).load()
            trailing = len(f.read())
    except PlanetoidFileError:
        raise
    except Exception as err:
        raise _file_error(
            path, f'cannot be unpickled ({type(err).__name__}: {err}): the '
            'file is truncated or corrupt', _replace_hint(path)) from err
    if trailing:
        raise _file_error(
            path, f'has {trailing} unexpected bytes after the pickled object',
            _replace_hint(path))
    return obj


def _describe(obj: Any) -> str:
    shape = getattr(obj, 'shape', None)
    return type(obj).__name__ + ('' if shape is None else f' {shape}')


def _read_matrix(path: Path) -> Tensor:
    obj = _read_pickle(path)
    if isinstance(obj, scipy.sparse.csr_matrix):
        try:
            # Malformed index arrays would make toarray() read out of bounds.
            obj.check_format(full_check=True)
            obj = obj.toarray()
        except Exception as err:
            raise _file_error(path, f'holds a malformed CSR matrix ({err})',
                              _replace_hint(path)) from err
    if (not isinstance(obj, np.ndarray) or obj.ndim != 2
            or obj.dtype.kind not in 'biuf'):
        raise _file_error(
            path, f'holds a {_describe(obj)} where a 2-D numeric matrix was '
            'expected', _replace_hint(path))
    out = torch.from_numpy(np.asarray(obj, dtype=np.float32))
    if not torch.isfinite(out).all():
        raise _file_error(path, 'holds NaN or infinite values',
                          _replace_hint(path))
    return out


def _read_graph(path: Path) -> dict[int, list[int]]:
    graph = _read_pickle(path)
    if not (isinstance(graph, dict) and all(
            isinstance(node, int) and isinstance(nbrs, list)
            and all(isinstance(nbr, int) for nbr in nbrs)
            for node, nbrs in graph.items())):
        raise _file_error(
            path, f'holds a {_describe(graph)} where a dict from node index '
            'to a list of neighbour indices was expected', _replace_hint(path))
    return graph


def _read_index(path: Path) -> Tensor:
    try:
        index = [int(token) for token in path.read_text('ascii').split()]
    except (UnicodeDecodeError, ValueError) as err:
        raise _file_error(
            path, f'is not a text file of node indices, one per line ({err})',
            _replace_hint(path)) from err
    return torch.tensor(index, dtype=torch.long)


def _check_file(path: Path, remedy: str) -> None:
    """Raises if ``path`` is missing or differs from the published file."""
    if not path.is_file():
        raise _file_error(path, 'missing', remedy)
    known = _CHECKSUMS.get(path.name)
    if known is None:
        return
    size, sha256 = known
    actual_size = path.stat().st_size
    if actual_size != size:
        what = 'truncated' if actual_size < size else 'too long'
        raise _file_error(
            path, f'has {actual_size} bytes where the published file has '
            f'{size}: the file is {what}', remedy)
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != sha256:
        raise _file_error(
            path, f'has SHA-256 {actual} where the published file has '
            f'{sha256}: the file is corrupt or not the original', remedy)


def _check_data(data: Data, source: _PathLike, remedy: str) -> None:
    """Raises unless ``data`` is a consistent node-classification graph."""
    x, y, edge_index = data.x, data.y, data.edge_index
    problem = None
    if x is None or x.dim() != 2 or not x.is_floating_point():
        problem = f'x should be a 2-D float tensor, got {_describe(x)}'
    elif y is None or tuple(y.shape) != (x.size(0), ):
        problem = (f'y should have shape ({x.size(0)},) like the {x.size(0)} '
                   f'feature rows, got {_describe(y)}')
    elif any(data.get(key) is None or data.get(key).size(0) != x.size(0)
             for key in ('train_mask', 'val_mask', 'test_mask')):
        problem = f'the split masks do not all have {x.size(0)} entries'
    elif (edge_index is None or edge_index.dim() != 2
          or edge_index.size(0) != 2):
        problem = f'edge_index should be [2, E], got {_describe(edge_index)}'
    elif edge_index.numel() and (edge_index.min() < 0
                                 or edge_index.max() >= x.size(0)):
        problem = f'edge_index has node indices outside 0..{x.size(0) - 1}'
    elif not torch.isfinite(x).all():
        problem = 'x has NaN or infinite values'
    if problem is not None:
        raise _file_error(source, problem, remedy)


def _read_planetoid(raw_dir: Path, name: str) -> Data:
    """Builds the graph from the raw files as PyG's
    :func:`~torch_geometric.io.read_planetoid_data` does, but with the
    restricted unpickler and checks that the files belong together.
    """
    path = {key: raw_dir / f'ind.{name.lower()}.{key}'
            for key in ('x', 'tx', 'allx', 'y', 'ty', 'ally', 'graph',
                        'test.index')}
    m = {key: _read_matrix(path[key])
         for key in ('x', 'tx', 'allx', 'y', 'ty', 'ally')}
    graph = _read_graph(path['graph'])
    test_index = _read_index(path['test.index'])

    def fail(problem: str) -> PlanetoidFileError:
        return _file_error(
            raw_dir, f'{problem}, so the raw files of {name} do not belong '
            'together', f'replace them with the originals from '
            f'{Planetoid.url}/')

    for a, b in (('x', 'tx'), ('x', 'allx'), ('y', 'ty'), ('y', 'ally')):
        if m[a].size(1) != m[b].size(1):
            raise fail(f'{path[a].name} has {m[a].size(1)} columns but '
                       f'{path[b].name} has {m[b].size(1)}')
    for a, b in (('x', 'y'), ('tx', 'ty'), ('allx', 'ally')):
        if m[a].size(0) != m[b].size(0):
            raise fail(f'{path[a].name} has {m[a].size(0)} rows but '
                       f'{path[b].name} has {m[b].size(0)}')
    num_train, num_known = m['y'].size(0), m['allx'].size(0)
    if num_train + _NUM_VAL > num_known:
        raise fail(f'{path["allx"].name} has {num_known} rows, fewer than '
                   f'the {num_train} training and {_NUM_VAL} validation nodes')
    if test_index.numel() != m['tx'].size(0):
        raise fail(f'{path["test.index"].name} lists {test_index.numel()} '
                   f'nodes but {path["tx"].name} has {m["tx"].size(0)} rows')
    sorted_index = test_index.sort().values
    if (test_index.numel() == 0 or sorted_index[0] != num_known
            or (sorted_index[1:] == sorted_index[:-1]).any()):
        raise fail(f'{path["test.index"].name} should list distinct test '
                   f'nodes starting at {num_known}, the row count of '
                   f'{path["allx"].name}')
    # Test nodes follow the allx nodes. CiteSeer's test indices have gaps
    # (isolated nodes): those nodes get zero features and label 0, as in PyG.
    num_nodes = int(sorted_index[-1]) + 1
    ids = [i for node, nbrs in graph.items() for i in (node, *nbrs)] or [-1]
    if min(ids) < 0 or max(ids) != num_nodes - 1:
        raise fail(f'{path["graph"].name} spans nodes {min(ids)}..{max(ids)}'
                   ' but the features and labels describe nodes '
                   f'0..{num_nodes - 1}')

    x = m['allx'].new_zeros(num_nodes, m['allx'].size(1))
    x[:num_known] = m['allx']
    x[test_index] = m['tx']
    one_hot = m['ally'].new_zeros(num_nodes, m['ally'].size(1))
    one_hot[:num_known] = m['ally']
    one_hot[test_index] = m['ty']

    data = Data(x=x, edge_index=edge_index_from_dict(graph, num_nodes),
                y=one_hot.argmax(dim=1))
    data.train_mask = index_to_mask(torch.arange(num_train), num_nodes)
    data.val_mask = index_to_mask(
        torch.arange(num_train, num_train + _NUM_VAL), num_nodes)
    data.test_mask = index_to_mask(test_index, num_nodes)
    return data


def _canonical_name(name: str) -> str:
    names = {known.lower(): known for known in _NAMES}
    if not isinstance(name, str) or name.lower() not in names:
        raise ValueError(f'Unknown Planetoid dataset {name!r}; choose one of '
                         f"{', '.join(map(repr, _NAMES))} (any case)")
    return names[name.lower()]


def _default_root() -> Path:
    root = os.environ.get(_ROOT_ENV)
    if root:
        return Path(root).expanduser()
    cache = os.environ.get('XDG_CACHE_HOME')
    if not cache or not os.path.isabs(cache):  # relative: ignored, per XDG
        cache = os.path.join(os.path.expanduser('~'), '.cache')
    return Path(cache) / 'pyg_gatv2'


class SafePlanetoid(Planetoid):
    r"""A :class:`torch_geometric.datasets.Planetoid` whose raw files are
    verified, read without running pickled code, and optionally copied from a
    read-only folder instead of downloaded.

    Use :func:`load_planetoid`, which picks the root folder and the feature
    normalisation; this class takes the same arguments as
    :class:`~torch_geometric.datasets.Planetoid` plus :obj:`raw_source`.
    The ``'geom-gcn'`` split is not supported.

    Args:
        root (str or os.PathLike): Folder under which ``<name>/raw`` and
            ``<name>/processed`` are kept.
        name (str): ``'Cora'``, ``'CiteSeer'`` or ``'PubMed'``, in any case.
        split (str, optional): ``'public'``, ``'full'`` or ``'random'``, as
            in :class:`~torch_geometric.datasets.Planetoid`.
            (default: ``'public'``)
        num_train_per_class (int, optional): Training nodes per class of the
            ``'random'`` split. (default: :obj:`20`)
        num_val (int, optional): Validation nodes of the ``'random'`` split.
            (default: :obj:`500`)
        num_test (int, optional): Test nodes of the ``'random'`` split.
            (default: :obj:`1000`)
        transform (callable, optional): Applied to the data on every access.
            (default: :obj:`None`)
        pre_transform (callable, optional): Applied to the data before it is
            saved. (default: :obj:`None`)
        raw_source (str or os.PathLike, optional): A folder of raw files in
            Planetoid's layout, ``<raw_source>/<name>/raw/ind.<name>.*``.
            Missing raw files are verified there and copied into
            ``<root>/<name>/raw``; nothing is downloaded and nothing is
            written into this folder. If :obj:`None`, missing raw files are
            downloaded as by :class:`~torch_geometric.datasets.Planetoid`.
            (default: :obj:`None`)
        force_reload (bool, optional): Whether to process the raw files
            again; a processed file that cannot be read is processed again
            without it. (default: :obj:`False`)
    """
    def __init__(
        self,
        root: _PathLike,
        name: str,
        split: str = 'public',
        num_train_per_class: int = 20,
        num_val: int = 500,
        num_test: int = 1000,
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        raw_source: Optional[_PathLike] = None,
        force_reload: bool = False,
    ) -> None:
        name = _canonical_name(name)
        if not isinstance(split, str) or split.lower() not in _SPLITS:
            raise ValueError(
                f"'SafePlanetoid' got split {split!r}; choose one of "
                f"{', '.join(map(repr, _SPLITS))} (for 'geom-gcn' use "
                'torch_geometric.datasets.Planetoid)')
        for arg, value in (('num_train_per_class', num_train_per_class),
                           ('num_val', num_val), ('num_test', num_test)):
            if isinstance(value, bool) or not isinstance(value, int) or (
                    value < 0):
                raise ValueError(f"'SafePlanetoid' got {arg}={value!r}; pass "
                                 'a non-negative integer')
        self.raw_source = (None if raw_source is None else
                           Path(raw_source).expanduser())
        super().__init__(os.fspath(root), name, split.lower(),
                         num_train_per_class, num_val, num_test, transform,
                         pre_transform, force_reload)
        _check_data(self._data, self.processed_paths[0],
                    'pass force_reload=True to process the raw files again')

    def download(self) -> None:
        """Copies the missing raw files from :obj:`raw_source` after
        verifying them, or, without a source, downloads them as
        :class:`~torch_geometric.datasets.Planetoid` does."""
        raw_dir = Path(self.raw_dir)
        missing = [f for f in self.raw_file_names
                   if not (raw_dir / f).is_file()]
        if self.raw_source is not None:
            self._copy_raw_files(missing)
            return
        try:
            super().download()
        except Exception as err:
            for f in missing:  # a failed download may leave partial files
                (raw_dir / f).unlink(missing_ok=True)
            raise _file_error(
                raw_dir, f'missing {", ".join(missing)}, and downloading them '
                f'from {self.url} failed ({type(err).__name__}: {err})',
                'without network, put the raw files in <folder>/'
                f'{self.name}/raw/ and pass raw_dir=<folder> or set '
                f'{_RAW_DIR_ENV}=<folder>') from err

    def _copy_raw_files(self, names: list[str]) -> None:
        source = self.raw_source / self.name / 'raw'
        absent = [f for f in names if not (source / f).is_file()]
        if absent:
            raise _file_error(
                self.raw_dir, f'missing {", ".join(absent)}, which the raw '
                f'folder {self.raw_source} (raw_dir= or {_RAW_DIR_ENV}) lacks '
                f'too at {source}', 'put the files there, or give no raw '
                f'folder (unset {_RAW_DIR_ENV}) to download them from '
                f'{self.url}')
        for f in names:
            _check_file(source / f, _replace_hint(source / f))
        for f in names:
            # Copy under a temporary name so that no partial file is left.
            part = Path(self.raw_dir) / f'{f}.part'
            shutil.copyfile(source / f, part)
            os.replace(part, Path(self.raw_dir) / f)

    def process(self) -> None:
        """Verifies the raw files, reads them with the restricted unpickler
        and saves the checked graph."""
        raw_dir = Path(self.raw_dir)
        for f in self.raw_file_names:
            _check_file(raw_dir / f, (
                f'delete it and load again to have it copied from the raw '
                f'folder (raw_dir= or {_RAW_DIR_ENV}) or downloaded, or '
                f'{_replace_hint(raw_dir / f)}'))
        data = _read_planetoid(raw_dir, self.name)
        _check_data(data, raw_dir, f'replace the raw files with the '
                    f'originals from {self.url}/')
        if self.pre_transform is not None:
            data = self.pre_transform(data)
        # Written aside and renamed: an interrupted run leaves no truncated
        # file for the next one to load.
        path = Path(self.processed_paths[0])
        part = path.with_name(path.name + '.part')
        self.save([data], os.fspath(part))
        os.replace(part, path)

    def load(self, path: str, data_cls: type = Data) -> None:
        """Loads the processed file with ``torch.load(weights_only=True)``
        and nothing else: PyG's loader retries a file that names other
        globals with the full unpickler, which runs what the file says. A
        file that cannot be read so is made again from the raw files, whose
        cache it is."""
        try:
            self._load_weights_only(path)
            return
        except Exception as err:
            # The type only: torch's message for a file that is not made of
            # tensors advises loading it with weights_only=False.
            problem = type(err).__name__
        warnings.warn(f'{path}: cannot be loaded ({problem}), so it is '
                      'truncated, corrupt or unsafe; processing the raw '
                      'files again', stacklevel=2)
        self.process()
        self._load_weights_only(path)

    def _load_weights_only(self, path: str) -> None:
        # What InMemoryDataset.load does with the file's contents.
        out = torch.load(path, weights_only=True)
        if not isinstance(out, tuple) or len(out) not in (2, 3):
            raise TypeError(f'{path} holds no processed dataset')
        data, self.slices = out[:2]
        data_cls = out[2] if len(out) == 3 else Data
        self.data = data_cls.from_dict(data) if isinstance(data,
                                                           dict) else data


def load_planetoid(
    name: str,
    root: Optional[_PathLike] = None,
    raw_dir: Optional[_PathLike] = None,
    split: str = 'public',
    normalize_features: bool = True,
    num_train_per_class: int = 20,
    num_val: int = 500,
    num_test: int = 1000,
    force_reload: bool = False,
) -> Planetoid:
    r"""Loads Cora, CiteSeer or PubMed, verified, offline where possible.

    The raw files come from ``<root>/<name>/raw`` if they are there, else
    from the read-only folder :obj:`raw_dir` (copied after verification),
    else from the network as in
    :class:`~torch_geometric.datasets.Planetoid`. Before processing, every
    Cora and CiteSeer raw file is checked against the size and SHA-256 of the
    published file; PubMed's checksums are not known here, so its files get
    only the structural checks (restricted unpickling, consistent shapes,
    finite features) that all datasets get.

    Args:
        name (str): ``'Cora'``, ``'CiteSeer'`` or ``'PubMed'``, in any case.
        root (str or os.PathLike, optional): Folder for the raw and processed
            files (``<root>/Cora/raw``, ``<root>/Cora/processed``). If
            :obj:`None`, ``$PYG_GATV2_ROOT``, else
            ``$XDG_CACHE_HOME/pyg_gatv2``, else ``~/.cache/pyg_gatv2``.
            (default: :obj:`None`)
        raw_dir (str or os.PathLike, optional): Read-only folder of raw files
            in Planetoid's layout, ``<raw_dir>/Cora/raw/ind.cora.*``. If
            :obj:`None`, ``$PYG_GATV2_RAW_DIR`` if set. When a folder is
            given, nothing is downloaded and nothing is written into it.
            (default: :obj:`None`)
        split (str, optional): ``'public'`` (the fixed split of the paper),
            ``'full'`` (every node outside the validation and test sets
            trains) or ``'random'`` (drawn with :func:`torch.randperm`, so
            seed with :func:`torch.manual_seed`). (default: ``'public'``)
        normalize_features (bool, optional): Whether to scale each feature
            row to sum to one
            (:class:`~torch_geometric.transforms.NormalizeFeatures`).
            (default: :obj:`True`)
        num_train_per_class (int, optional): Training nodes per class of the
            ``'random'`` split. (default: :obj:`20`)
        num_val (int, optional): Validation nodes of the ``'random'`` split.
            (default: :obj:`500`)
        num_test (int, optional): Test nodes of the ``'random'`` split.
            (default: :obj:`1000`)
        force_reload (bool, optional): Whether to process the raw files
            again; a processed file that cannot be read is processed again
            without it, with a warning. (default: :obj:`False`)

    Returns:
        torch_geometric.datasets.Planetoid: A :class:`SafePlanetoid`;
        ``dataset[0]`` has ``x``, ``edge_index``, ``y``, ``train_mask``,
        ``val_mask`` and ``test_mask``.

    Raises:
        ValueError: For an unknown name or split.
        PlanetoidFileError: When a raw file is missing and cannot be obtained,
            differs from the published file, or is inconsistent or unsafe.

    Example:
        >>> from pyg_gatv2.experiments import load_planetoid
        >>> dataset = load_planetoid('cora')  # doctest: +SKIP
        >>> data = dataset[0]  # doctest: +SKIP
        >>> dataset.num_features, dataset.num_classes  # doctest: +SKIP
        (1433, 7)
    """
    if raw_dir is None:
        raw_dir = os.environ.get(_RAW_DIR_ENV) or None
    return SafePlanetoid(
        _default_root() if root is None else Path(root).expanduser(), name,
        split=split, num_train_per_class=num_train_per_class,
        num_val=num_val, num_test=num_test,
        transform=NormalizeFeatures() if normalize_features else None,
        raw_source=raw_dir, force_reload=force_reload)
