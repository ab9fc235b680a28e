"""Tests for the verified, offline-capable Planetoid loader."""
import _compat_pickle
import builtins
import codecs
import hashlib
import os
import pickle
import re
import shutil
import subprocess
import tempfile
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import torch
import torch_geometric.io.fs
import torch_geometric.io.planetoid
from _planetoid_data import (
    NUM_CLASSES,
    NUM_FEATURES,
    NUM_KNOWN,
    NUM_NODES,
    NUM_TEST,
    NUM_TRAIN,
    NUM_VAL,
    dump,
    features,
    one_hot,
    write_planetoid_raw,
)
from torch_geometric.data import Data
from torch_geometric.datasets import Planetoid
from torch_geometric.io import read_planetoid_data

from pyg_gatv2.experiments import load_planetoid
from pyg_gatv2.experiments.datasets import PlanetoidFileError, SafePlanetoid
from pyg_gatv2.experiments.datasets.planetoid import _read_pickle

RAW_KEYS = ('x', 'tx', 'allx', 'y', 'ty', 'ally', 'graph', 'test.index')


@pytest.fixture(autouse=True)
def downloads(monkeypatch):
    """Every download fails as it does without network, and is recorded;
    the package's environment variables start unset."""
    calls = []

    def cp(path1, path2, *args, **kwargs):
        calls.append(path1)
        raise urllib.error.URLError('network disabled in tests')

    monkeypatch.setattr(torch_geometric.io.fs, 'cp', cp)
    for var in ('PYG_GATV2_RAW_DIR', 'PYG_GATV2_ROOT'):
        monkeypatch.delenv(var, raising=False)
    return calls


@pytest.fixture
def synth(tmp_path):
    """A synthetic dataset named PubMed, the one name without checksums."""
    return write_planetoid_raw(tmp_path / 'raw')


def load_synth(tmp_path, **kwargs):
    kwargs.setdefault('root', tmp_path / 'root')
    kwargs.setdefault('raw_dir', tmp_path / 'raw')
    return load_planetoid('PubMed', **kwargs)


def copy_raw(source: Path, target: Path) -> None:
    """Copies raw files without their read-only permissions."""
    target.mkdir(parents=True)
    for path in source.iterdir():
        shutil.copyfile(path, target / path.name)


def snapshot(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)):
        None if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob('*')
    }


def processed(root: Path, name: str = 'PubMed') -> Path:
    return root / name / 'processed' / 'data.pt'


class Reduce:
    """Pickles as a call of ``fn(*args)``, as a malicious file would."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def test_synthetic_graph_loads_as_constructed(tmp_path, synth):
    dataset = load_planetoid('pubmed', root=tmp_path / 'root',
                             raw_dir=tmp_path / 'raw',
                             normalize_features=False)
    assert isinstance(dataset, Planetoid) and dataset.name == 'PubMed'
    assert (dataset.num_features, dataset.num_classes) == (NUM_FEATURES,
                                                           NUM_CLASSES)
    data = dataset[0]
    assert torch.equal(data.x, synth.x)
    assert torch.equal(data.y, synth.y)
    assert set(map(tuple, data.edge_index.t().tolist())) == synth.edges
    assert data.edge_index.size(1) == len(synth.edges)  # loop, dup dropped
    assert data.train_mask.nonzero().view(-1).tolist() == list(
        range(NUM_TRAIN))
    assert data.val_mask.nonzero().view(-1).tolist() == list(
        range(NUM_TRAIN, NUM_KNOWN))
    assert torch.equal(data.test_mask.nonzero().view(-1),
                       synth.test_index.sort().values)
    root_raw = tmp_path / 'root' / 'PubMed' / 'raw'
    assert sorted(p.name for p in root_raw.iterdir()) == sorted(
        f'ind.pubmed.{key}' for key in RAW_KEYS)
    assert processed(tmp_path / 'root').is_file()


def test_synthetic_graph_matches_pyg_reader(tmp_path, synth):
    ours = load_synth(tmp_path, normalize_features=False)[0]
    reference = read_planetoid_data(str(synth.raw_dir), 'pubmed')
    assert sorted(ours.keys()) == sorted(reference.keys())
    for key in reference.keys():
        assert torch.equal(ours[key], reference[key]), key


@pytest.mark.parametrize('name', ['pubmed', 'PUBMED', 'PubMed'])
def test_name_is_case_insensitive(tmp_path, synth, name):
    dataset = load_planetoid(name, root=tmp_path / 'root',
                             raw_dir=tmp_path / 'raw')
    assert dataset.name == 'PubMed'
    assert repr(dataset) == 'PubMed()'


def test_feature_normalisation_on_and_off_share_processed_data(
        tmp_path, synth):
    normalised = load_synth(tmp_path)[0].x
    stamp = processed(tmp_path / 'root').stat().st_mtime_ns
    raw = load_synth(tmp_path, normalize_features=False)[0].x
    assert processed(tmp_path / 'root').stat().st_mtime_ns == stamp
    assert torch.equal(raw, synth.x)
    assert torch.allclose(normalised, synth.x / synth.x.sum(1, keepdim=True))
    assert torch.allclose(normalised.sum(1), torch.ones(NUM_NODES))


def test_full_split(tmp_path, synth):
    data = load_synth(tmp_path, split='Full')[0]
    assert torch.equal(data.train_mask, ~(data.val_mask | data.test_mask))
    assert int(data.train_mask.sum()) == NUM_NODES - NUM_VAL - NUM_TEST
    assert int(data.val_mask.sum()) == NUM_VAL
    assert int(data.test_mask.sum()) == NUM_TEST


def test_random_split(tmp_path, synth):
    def masks(seed):
        torch.manual_seed(seed)
        data = load_synth(tmp_path, split='random', num_train_per_class=4,
                          num_val=30, num_test=40)[0]
        return data, torch.stack([data.train_mask, data.val_mask,
                                  data.test_mask])

    data, first = masks(0)
    assert data.y[data.train_mask].bincount().tolist() == [4] * NUM_CLASSES
    assert first.sum(1).tolist() == [4 * NUM_CLASSES, 30, 40]
    assert first.sum(0).max() == 1  # disjoint
    assert torch.equal(masks(0)[1], first)
    assert not torch.equal(masks(1)[1], first)


@pytest.mark.parametrize('kwargs, match', [
    (dict(name='Coraa'), "'Cora', 'CiteSeer', 'PubMed'"),
    (dict(name=None), "'Cora', 'CiteSeer', 'PubMed'"),
    (dict(name='cora', split='geom-gcn'), "'public', 'full', 'random'"),
    (dict(name='cora', num_val=-1), 'num_val=-1'),
    (dict(name='cora', num_train_per_class=2.5), 'num_train_per_class=2.5'),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        load_planetoid(root=tmp_path / 'root', **kwargs)
    assert not (tmp_path / 'root').exists()


@pytest.mark.parametrize('env, root, expected', [
    ({}, 'explicit', 'explicit'),
    ({'PYG_GATV2_ROOT': 'env'}, 'explicit', 'explicit'),
    ({'PYG_GATV2_ROOT': 'env', 'XDG_CACHE_HOME': 'xdg'}, None, 'env'),
    ({'XDG_CACHE_HOME': 'xdg'}, None, 'xdg/pyg_gatv2'),
    ({}, None, 'home/.cache/pyg_gatv2'),
    ({'XDG_CACHE_HOME': 'relative/xdg'}, None, 'home/.cache/pyg_gatv2'),
])
def test_root_resolution(tmp_path, synth, monkeypatch, env, root, expected):
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    monkeypatch.delenv('XDG_CACHE_HOME', raising=False)
    for var, value in env.items():
        absolute = not value.startswith('relative')
        monkeypatch.setenv(var, str(tmp_path / value) if absolute else value)
    monkeypatch.setenv('PYG_GATV2_RAW_DIR', str(tmp_path / 'raw'))
    dataset = load_planetoid(
        'pubmed', root=None if root is None else tmp_path / root)
    assert Path(dataset.root) == tmp_path / expected
    assert processed(tmp_path / expected).is_file()


def test_raw_dir_argument_beats_environment(tmp_path, synth, monkeypatch):
    (tmp_path / 'empty').mkdir()
    monkeypatch.setenv('PYG_GATV2_RAW_DIR', str(tmp_path / 'empty'))
    data = load_synth(tmp_path, normalize_features=False)[0]
    assert torch.equal(data.x, synth.x)
    with pytest.raises(PlanetoidFileError, match='empty'):
        load_synth(tmp_path, root=tmp_path / 'other', raw_dir=None)


@pytest.mark.parametrize('explicit_root', [True, False])
def test_writes_only_under_root(tmp_path, synth, monkeypatch, explicit_root):
    for folder in ('home', 'cwd', 'tmp'):
        (tmp_path / folder).mkdir()
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    monkeypatch.delenv('XDG_CACHE_HOME', raising=False)
    monkeypatch.chdir(tmp_path / 'cwd')
    monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path / 'tmp'))
    root = (tmp_path / 'root' if explicit_root else
            tmp_path / 'home' / '.cache' / 'pyg_gatv2')
    raw_before = snapshot(tmp_path / 'raw')
    before = snapshot(tmp_path)

    load_planetoid('PubMed', root=root if explicit_root else None,
                   raw_dir=tmp_path / 'raw')

    after = snapshot(tmp_path)
    changed = {p for p in before.keys() | after.keys()
               if before.get(p, 0) != after.get(p, 0)}
    assert changed  # the test sees writes at all
    outside = {p for p in changed if not (
        (tmp_path / p).is_relative_to(root)  # under root
        or root.is_relative_to(tmp_path / p))}  # a parent made for it
    assert outside == set()
    assert snapshot(tmp_path / 'raw') == raw_before


def test_read_only_raw_dir_gives_writable_copies(tmp_path, synth):
    for path in synth.raw_dir.iterdir():
        path.chmod(0o444)
    load_synth(tmp_path)
    for path in (tmp_path / 'root' / 'PubMed' / 'raw').iterdir():
        assert path.stat().st_mode & 0o200, path


def test_root_holding_raw_files_works_offline(tmp_path, synth, downloads):
    copy_raw(synth.raw_dir, tmp_path / 'root' / 'PubMed' / 'raw')
    data = load_synth(tmp_path, raw_dir=None, normalize_features=False)[0]
    assert torch.equal(data.x, synth.x)
    assert downloads == []


def test_missing_file_without_network(tmp_path, synth, downloads):
    root_raw = tmp_path / 'root' / 'PubMed' / 'raw'
    copy_raw(synth.raw_dir, root_raw)
    (root_raw / 'ind.pubmed.graph').unlink()
    with pytest.raises(PlanetoidFileError) as info:
        load_synth(tmp_path, raw_dir=None)
    message = str(info.value)
    for part in ('ind.pubmed.graph', 'PYG_GATV2_RAW_DIR', 'raw_dir=',
                 'URLError'):
        assert part in message
    assert isinstance(info.value, OSError)
    assert isinstance(info.value.__cause__, urllib.error.URLError)
    assert downloads  # PyG's download was tried
    assert not processed(tmp_path / 'root').exists()


def test_failed_download_leaves_no_partial_file(tmp_path, synth,
                                                monkeypatch):
    def partial_cp(path1, path2, *args, **kwargs):
        Path(path2, path1.rpartition('/')[2]).write_bytes(b'\x80\x02')
        raise ConnectionResetError('connection lost')

    monkeypatch.setattr(torch_geometric.io.fs, 'cp', partial_cp)
    with pytest.raises(PlanetoidFileError, match='ConnectionResetError'):
        load_synth(tmp_path, raw_dir=None)
    assert list((tmp_path / 'root' / 'PubMed' / 'raw').iterdir()) == []


def test_file_missing_from_raw_dir(tmp_path, synth, downloads):
    (synth.raw_dir / 'ind.pubmed.ty').unlink()
    with pytest.raises(PlanetoidFileError) as info:
        load_synth(tmp_path)
    assert 'ind.pubmed.ty' in str(info.value)
    assert str(synth.raw_dir) in str(info.value)
    assert downloads == []  # a raw folder means no download
    assert list((tmp_path / 'root' / 'PubMed' / 'raw').iterdir()) == []


def test_pyg_plain_unpickling_is_never_used(tmp_path, synth, monkeypatch):
    class NoPickle:
        @staticmethod
        def load(*args, **kwargs):
            raise AssertionError('plain pickle.load used on a raw file')

    monkeypatch.setattr(torch_geometric.io.planetoid, 'pickle', NoPickle)
    data = load_synth(tmp_path, normalize_features=False)[0]
    assert torch.equal(data.x, synth.x)


def malicious_payloads(marker: Path) -> list:
    return [
        Reduce(os.system, f'touch {marker}'),
        Reduce(eval, f'open({str(marker)!r}, "w").close()'),
        Reduce(subprocess.call, ['touch', str(marker)]),
    ]


@pytest.mark.parametrize('payload', range(3))
@pytest.mark.parametrize('key, nested', [('x', False), ('graph', False),
                                         ('graph', True)])
@pytest.mark.parametrize('protocol', [2, 4])
def test_malicious_pickle_is_refused(tmp_path, synth, payload, key, nested,
                                     protocol):
    marker = tmp_path / 'marker'
    evil = malicious_payloads(marker)[payload]
    obj = {0: [evil]} if nested else evil
    path = synth.raw_dir / f'ind.pubmed.{key}'
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    with pytest.raises(PlanetoidFileError) as info:
        load_synth(tmp_path)
    module, name = evil.fn.__module__, evil.fn.__name__
    if protocol < 3:  # pickle writes the Python 2 names, as pickle.py does
        module, name = _compat_pickle.REVERSE_NAME_MAPPING.get(
            (module, name), (module, name))
        module = _compat_pickle.REVERSE_IMPORT_MAPPING.get(module, module)
    assert f"refused to unpickle the global '{module}.{name}'" in str(
        info.value)
    assert path.name in str(info.value)
    assert not marker.exists()
    assert not processed(tmp_path / 'root').exists()


def test_codec_other_than_latin1_is_refused(tmp_path, synth):
    dump(synth.raw_dir / 'ind.pubmed.y', Reduce(codecs.encode, 'x', 'rot13'))
    with pytest.raises(PlanetoidFileError, match="codec 'rot13'"):
        load_synth(tmp_path)


@pytest.mark.parametrize('protocol', [2, 4, 5])
@pytest.mark.parametrize('obj', [
    np.arange(6, dtype=np.int32).reshape(2, 3),
    scipy.sparse.csr_matrix(np.eye(3, dtype=np.float32)),
    {0: [1, 2], 1: [0]},
])
def test_restricted_unpickler_reads_what_numpy_and_scipy_write(
        tmp_path, obj, protocol):
    path = tmp_path / 'obj.pkl'
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    out = _read_pickle(path)
    if scipy.sparse.issparse(obj):
        assert (out != obj).nnz == 0
    elif isinstance(obj, np.ndarray):
        assert np.array_equal(out, obj) and out.dtype == obj.dtype
    else:
        assert out == obj


@pytest.mark.parametrize('damage, match', [
    (lambda b: b[:len(b) // 2], 'truncated or corrupt'),
    (lambda b: b + b'junk', 'unexpected bytes'),
])
def test_damaged_file_without_checksum(tmp_path, synth, damage, match):
    path = synth.raw_dir / 'ind.pubmed.allx'
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(PlanetoidFileError, match=match) as info:
        load_synth(tmp_path)
    assert 'ind.pubmed.allx' in str(info.value)


def _write(key, obj):
    def edit(raw_dir):
        path = raw_dir / f'ind.pubmed.{key}'
        if isinstance(obj, bytes):
            path.write_bytes(obj)
        else:
            dump(path, obj() if callable(obj) else obj)
    return edit


def _nan_allx():
    x = features(np.arange(NUM_KNOWN))
    x[3, 2] = np.nan
    return scipy.sparse.csr_matrix(x)


def _bad_csr():
    x = scipy.sparse.csr_matrix(features(np.arange(NUM_KNOWN)))
    x.indices[0] = NUM_FEATURES + 7
    return x


def _graph_out_of_range():
    return {0: [1, NUM_NODES + 5], 1: [0]}


@pytest.mark.parametrize('edit, match', [
    (_write('ty', one_hot(np.arange(NUM_KNOWN, NUM_NODES - 1))),
     'ind.pubmed.tx has 12 rows but ind.pubmed.ty has 11'),
    (_write('tx', scipy.sparse.csr_matrix((NUM_TEST, 5), dtype=np.float32)),
     'ind.pubmed.x has 6 columns but ind.pubmed.tx has 5'),
    (_write('allx', lambda: scipy.sparse.csr_matrix(features(np.arange(300)))),
     'ind.pubmed.allx has 300 rows but ind.pubmed.ally has 506'),
    (_write('test.index', b'506\n506\n' + b'507\n' * 10),
     'distinct test nodes starting at 506'),
    (_write('test.index', b'\xff\xfe'), 'not a text file of node indices'),
    (_write('graph', _graph_out_of_range),
     'spans nodes 0..523 but the features and labels describe nodes 0..517'),
    (_write('test.index', b''.join(b'%d\n' % i for i in range(506, 517))
            + b'1000000000\n'), 'describe nodes 0..1000000000'),
    (_write('graph', [[1], [0]]), 'list where a dict from node index'),
    (_write('allx', _nan_allx), 'NaN or infinite'),
    (_write('allx', 'hello'), 'str where a 2-D numeric matrix'),
    (_write('allx', _bad_csr), 'malformed CSR matrix'),
])
def test_inconsistent_files_are_reported(tmp_path, synth, edit, match):
    edit(synth.raw_dir)
    with pytest.raises(PlanetoidFileError, match=re.escape(match)):
        load_synth(tmp_path)
    assert not processed(tmp_path / 'root').exists()


def test_force_reload_verifies_the_raw_files_again(tmp_path, synth):
    load_synth(tmp_path)
    path = tmp_path / 'root' / 'PubMed' / 'raw' / 'ind.pubmed.ally'
    path.write_bytes(path.read_bytes()[:40])
    assert load_synth(tmp_path)[0].num_nodes == NUM_NODES  # processed used
    with pytest.raises(PlanetoidFileError, match='ind.pubmed.ally'):
        load_synth(tmp_path, force_reload=True)


def test_inconsistent_processed_file_is_reported(tmp_path, synth):
    load_synth(tmp_path)
    bad = Data(x=torch.zeros(4, 2), y=torch.zeros(3, dtype=torch.long),
               edge_index=torch.zeros(2, 0, dtype=torch.long),
               train_mask=torch.zeros(4, dtype=torch.bool),
               val_mask=torch.zeros(4, dtype=torch.bool),
               test_mask=torch.zeros(4, dtype=torch.bool))
    SafePlanetoid.save([bad], processed(tmp_path / 'root'))
    with pytest.raises(PlanetoidFileError, match='force_reload=True'):
        load_synth(tmp_path)
    assert load_synth(tmp_path, force_reload=True)[0].num_nodes == NUM_NODES


@pytest.mark.parametrize('damage', [
    lambda path: path.write_bytes(path.read_bytes()[:1000]),
    lambda path: path.write_bytes(path.read_bytes()[:100]),
    lambda path: path.write_bytes(b''),
    lambda path: path.write_bytes(b'garbage\n' * 100),
    lambda path: torch.save(['not', 'a', 'dataset'], path),
], ids=['truncated-1000', 'truncated-100', 'empty', 'garbage', 'other-object'])
def test_unreadable_processed_file_is_processed_again(tmp_path, synth,
                                                      damage):
    first = load_synth(tmp_path)[0]
    path = processed(tmp_path / 'root')
    damage(path)
    with pytest.warns(UserWarning, match=re.escape(
            f'{path}: cannot be loaded (') + r'\w+\), so it is truncated, '
            'corrupt or unsafe; processing the raw files again'):
        again = load_synth(tmp_path)[0]
    for key in first.keys():
        assert torch.equal(again[key], first[key]), key
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # the file was written anew
        load_synth(tmp_path)


class RunsCode:
    """Pickled as a call of exec: what a tampered file could hold."""
    def __reduce__(self):
        return exec, ('import builtins; builtins.pyg_gatv2_ran = True', )


def test_a_processed_file_that_would_run_code_is_not_run(tmp_path, synth):
    first = load_synth(tmp_path)[0]
    path = processed(tmp_path / 'root')
    data, slices, data_cls = torch.load(path, weights_only=True)
    torch.save((data, slices, data_cls, RunsCode()), path)
    with pytest.warns(UserWarning, match='truncated, corrupt or unsafe'):
        again = load_synth(tmp_path)[0]
    assert not hasattr(builtins, 'pyg_gatv2_ran')
    assert torch.equal(again.x, first.x)


def test_interrupted_processing_leaves_no_processed_file(tmp_path, synth,
                                                         monkeypatch):
    def cut_short(obj, path):
        Path(path).write_bytes(b'PK\x03\x04')  # the start of a torch file
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(torch_geometric.io.fs, 'torch_save', cut_short)
        with pytest.raises(KeyboardInterrupt):
            load_synth(tmp_path)
    assert not processed(tmp_path / 'root').exists()
    assert load_synth(tmp_path)[0].num_nodes == NUM_NODES


@pytest.mark.parametrize('name, nodes, edges, num_features, classes, train', [
    ('Cora', 2708, 10556, 1433, 7, 140),
    ('CiteSeer', 3327, 9104, 3703, 6, 120),
])
def test_real_dataset(planetoid_raw_dir, tmp_path, downloads, name, nodes,
                      edges, num_features, classes, train):
    dataset = load_planetoid(name.lower(), root=tmp_path / 'root',
                             raw_dir=planetoid_raw_dir,
                             normalize_features=False)
    data = dataset[0]
    assert (data.num_nodes, data.num_edges) == (nodes, edges)
    assert (dataset.num_features, dataset.num_classes) == (num_features,
                                                           classes)
    assert [int(data[f'{split}_mask'].sum())
            for split in ('train', 'val', 'test')] == [train, 500, 1000]
    assert downloads == []

    # PyG's own loader on a copy of the same files gives the same graph.
    copy_raw(planetoid_raw_dir / name / 'raw', tmp_path / 'pyg' / name / 'raw')
    reference = Planetoid(str(tmp_path / 'pyg'), name)
    assert (reference.num_features, reference.num_classes) == (num_features,
                                                               classes)
    for key in reference[0].keys():
        assert torch.equal(data[key], reference[0][key]), key


def _flip_byte(data: bytes) -> bytes:
    return data[:100] + bytes([data[100] ^ 1]) + data[101:]


@pytest.mark.parametrize('damage, match', [
    (_flip_byte, 'SHA-256'),
    (lambda b: b[:1000], 'has 1000 bytes where the published file has 257305'
     ': the file is truncated'),
    (lambda b: b + b'\n', 'too long'),
])
@pytest.mark.parametrize('where', ['root', 'raw_dir'])
def test_damaged_cora_file(planetoid_raw_dir, tmp_path, damage, match,
                           where):
    target = tmp_path / where / 'Cora' / 'raw'
    copy_raw(planetoid_raw_dir / 'Cora' / 'raw', target)
    path = target / 'ind.cora.allx'
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(PlanetoidFileError, match=re.escape(match)) as info:
        load_planetoid('Cora', root=tmp_path / 'root',
                       raw_dir=tmp_path / 'raw_dir')
    assert str(path) in str(info.value)
    assert f'{Planetoid.url}/ind.cora.allx' in str(info.value)
    assert not processed(tmp_path / 'root', 'Cora').exists()
    if where == 'raw_dir':  # nothing is copied from a folder with a bad file
        assert list((tmp_path / 'root' / 'Cora' / 'raw').iterdir()) == []


def test_malicious_cora_file_is_refused_by_checksum(planetoid_raw_dir,
                                                    tmp_path):
    marker = tmp_path / 'marker'
    target = tmp_path / 'root' / 'Cora' / 'raw'
    copy_raw(planetoid_raw_dir / 'Cora' / 'raw', target)
    dump(target / 'ind.cora.graph', Reduce(os.system, f'touch {marker}'))
    with pytest.raises(PlanetoidFileError, match='ind.cora.graph'):
        load_planetoid('Cora', root=tmp_path / 'root')
    assert not marker.exists()
