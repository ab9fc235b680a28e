"""Tests for the OGB loader on small graphs written in OGB's own layout."""
import builtins
import re
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from _ogb_data import (
    LAYOUT,
    NUM_NODES,
    TEST,
    TRAIN,
    VALID,
    edges,
    features,
    labels,
    write_gz_csv,
    write_ogb,
)
from torch_geometric.utils import to_undirected

from pyg_gatv2.experiments.datasets import load_ogb, ogb_accuracy
from pyg_gatv2.experiments.datasets.ogb import OGBFileError
from pyg_gatv2.extras import MissingExtraError

URLS = {'ogbn-arxiv':
        'http://snap.stanford.edu/ogb/data/nodeproppred/arxiv.zip',
        'ogbn-products':
        'http://snap.stanford.edu/ogb/data/nodeproppred/products.zip'}


@pytest.fixture(params=list(LAYOUT))
def name(request) -> str:
    return request.param


@pytest.fixture
def root(tmp_path, name) -> Path:
    """A root folder holding the dataset as a download leaves it."""
    write_ogb(tmp_path / LAYOUT[name][0], name)
    return tmp_path


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Every download fails as without network, and is recorded; reading
    stdin fails, so a prompt is an error, never a hang."""
    calls = []

    def urlopen(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError('network disabled in tests')

    def no_input(prompt=''):
        raise AssertionError(f'prompted on stdin: {prompt!r}')

    monkeypatch.setattr(urllib.request, 'urlopen', urlopen)
    monkeypatch.setattr(builtins, 'input', no_input)
    return calls


def test_load_gives_the_files_contents(root, name, offline):
    data = load_ogb(name, root)
    num_classes = LAYOUT[name][3]
    assert data.num_nodes == NUM_NODES
    assert data.num_classes == num_classes
    assert data.x.dtype == torch.float32
    assert torch.equal(data.x, torch.from_numpy(features()))
    assert data.y.dtype == torch.long and data.y.shape == (NUM_NODES, )
    assert torch.equal(data.y, torch.from_numpy(labels(num_classes)))
    # Every edge in both directions, once: 11 chain edges and 0 - 5.
    expected = to_undirected(torch.from_numpy(edges()), num_nodes=NUM_NODES)
    assert expected.size(1) == 24
    assert torch.equal(data.edge_index, expected)
    for mask, index in ((data.train_mask, TRAIN), (data.val_mask, VALID),
                        (data.test_mask, TEST)):
        assert mask.dtype == torch.bool
        assert mask.nonzero().view(-1).tolist() == list(index)
    assert offline == []


def test_second_load_reads_the_processed_file(root, name, monkeypatch):
    first = load_ogb(name, root)
    processed = (root / LAYOUT[name][0] / 'processed' /
                 'geometric_data_processed.pt')
    assert processed.is_file()

    import ogb.nodeproppred.dataset_pyg as dataset_pyg

    def no_processing(*args, **kwargs):
        raise AssertionError('processed the raw files again')

    monkeypatch.setattr(dataset_pyg, 'read_graph_pyg', no_processing)
    second = load_ogb(name, root)
    for key in ('x', 'y', 'edge_index', 'train_mask', 'val_mask',
                'test_mask'):
        assert torch.equal(first[key], second[key])
    # torch.load's weights_only default stays in force for other callers.
    with pytest.raises(Exception, match='weights_only|Weights only'):
        torch.load(processed)


def test_name_is_checked(tmp_path):
    with pytest.raises(ValueError, match="'ogbn-arxiv', 'ogbn-products'"):
        load_ogb('ogbn-mag', tmp_path)
    assert not any(tmp_path.iterdir())


def test_missing_release_marker_is_an_error_not_a_prompt(root, name):
    marker = root / LAYOUT[name][0] / 'RELEASE_v1.txt'
    marker.unlink()
    with pytest.raises(OGBFileError, match='RELEASE_v1.txt: missing') as err:
        load_ogb(name, root)
    assert 'delete' in str(err.value) and URLS[name] in str(err.value)


@pytest.mark.parametrize('path', [
    'raw/edge.csv.gz', 'raw/node-feat.csv.gz', 'raw/node-label.csv.gz',
    'raw/num-node-list.csv.gz', 'raw/num-edge-list.csv.gz',
    'split/{split}/train.csv.gz', 'split/{split}/valid.csv.gz',
    'split/{split}/test.csv.gz'
])
def test_missing_file_is_named(root, name, path, offline):
    folder = root / LAYOUT[name][0]
    missing = folder / path.format(split=LAYOUT[name][2])
    missing.unlink()
    with pytest.raises(OGBFileError) as err:
        load_ogb(name, root)
    assert f'{missing}: missing' in str(err.value)
    assert offline == []  # PyG would have downloaded over the folder


def test_missing_file_after_processing_is_named(root, name):
    load_ogb(name, root)
    split = root / LAYOUT[name][0] / 'split' / LAYOUT[name][2]
    (split / 'valid.csv.gz').unlink()
    with pytest.raises(OGBFileError, match='valid.csv.gz: missing'):
        load_ogb(name, root)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:20])


def scramble(path: Path) -> None:
    path.write_bytes(b'this is not gzip data at all\n' * 3)


@pytest.mark.parametrize('damage', [truncate, scramble])
@pytest.mark.parametrize('path', [
    'raw/edge.csv.gz', 'raw/node-feat.csv.gz', 'raw/node-label.csv.gz',
    'raw/num-edge-list.csv.gz', 'split/{split}/test.csv.gz'
])
def test_corrupt_file_is_named(root, name, path, damage):
    bad = root / LAYOUT[name][0] / path.format(split=LAYOUT[name][2])
    damage(bad)
    with pytest.raises(OGBFileError) as err:
        load_ogb(name, root)
    assert str(err.value).startswith(f'{bad}: not a readable gzipped CSV')
    assert 'delete' in str(err.value)


def test_label_outside_the_classes_is_an_error(root, name):
    folder = root / LAYOUT[name][0]
    y = labels(LAYOUT[name][3])
    y[3] = LAYOUT[name][3]
    write_gz_csv(folder / 'raw' / 'node-label.csv.gz', y[:, None], '%d')
    with pytest.raises(OGBFileError, match='labels lie outside 0..'):
        load_ogb(name, root)


def test_missing_labels_are_an_error(root, name):
    folder = root / LAYOUT[name][0]
    y = labels(LAYOUT[name][3]).astype(float)
    y[2] = np.nan
    write_gz_csv(folder / 'raw' / 'node-label.csv.gz', y[:, None], '%g')
    with pytest.raises(OGBFileError, match='labels should be 12 integers'):
        load_ogb(name, root)


def test_feature_rows_must_match_the_nodes(root, name):
    folder = root / LAYOUT[name][0]
    write_gz_csv(folder / 'raw' / 'node-feat.csv.gz', features()[:-2],
                 '%.4f')
    with pytest.raises(OGBFileError, match='12 rows, one per node'):
        load_ogb(name, root)


@pytest.mark.parametrize('part,index,problem', [
    ('test', [9, 10, 12], 'test split names nodes outside 0..11'),
    ('valid', [5, 6, 7], 'splits overlap'),
])
def test_bad_split_is_an_error(root, name, part, index, problem):
    folder = root / LAYOUT[name][0] / 'split' / LAYOUT[name][2]
    write_gz_csv(folder / f'{part}.csv.gz', np.array(index)[:, None], '%d')
    with pytest.raises(OGBFileError, match=problem):
        load_ogb(name, root)


def test_edge_outside_the_nodes_is_an_error(root, name):
    raw = root / LAYOUT[name][0] / 'raw'
    e = edges()
    e[1, 0] = NUM_NODES
    write_gz_csv(raw / 'edge.csv.gz', e.T, '%d')
    with pytest.raises(OGBFileError, match='edges name nodes outside'):
        load_ogb(name, root)


def test_missing_ogb_names_the_extra(root, name, monkeypatch):
    monkeypatch.setitem(sys.modules, 'ogb', None)  # as if not installed
    message = re.escape(
        "pyg_gatv2.experiments.datasets.ogb needs the 'ogb' extra of "
        "pyg-gatv2 (missing: ogb): pip install 'pyg-gatv2[ogb]'")
    with pytest.raises(MissingExtraError, match=f'^{message}$'):
        load_ogb(name, root)
    with pytest.raises(MissingExtraError, match=f'^{message}$'):
        ogb_accuracy(name, torch.zeros(3), torch.zeros(3))


def test_corrupt_processed_file_is_named(root, name):
    load_ogb(name, root)
    processed = root / LAYOUT[name][0] / 'processed'
    truncate(processed / 'geometric_data_processed.pt')
    with pytest.raises(OGBFileError) as err:
        load_ogb(name, root)
    assert str(err.value).startswith(
        f'{processed / "geometric_data_processed.pt"}: cannot be loaded')
    assert f'delete {processed}' in str(err.value)
    shutil.rmtree(processed)
    assert load_ogb(name, root).num_nodes == NUM_NODES


def serve_zip(tmp_path: Path, name: str, monkeypatch) -> list:
    """Makes urlopen serve :obj:`name`'s zip, built as OGB serves it, from
    a local file; returns the URLs asked for."""
    _, zip_name, *_ = LAYOUT[name]
    source = write_ogb(tmp_path / 'server' / zip_name, name)
    archive = tmp_path / 'server' / f'{zip_name}.zip'
    with zipfile.ZipFile(archive, 'w') as z:
        for path in sorted(source.rglob('*')):
            z.write(path, path.relative_to(source.parent))
    asked = []
    real_urlopen = urllib.request.OpenerDirector.open

    def urlopen(url, *args, **kwargs):
        asked.append(url)
        if url != URLS[name]:
            raise urllib.error.URLError(f'unexpected URL {url}')
        return real_urlopen(urllib.request.build_opener(),
                            archive.as_uri())

    monkeypatch.setattr(urllib.request, 'urlopen', urlopen)
    return asked


def test_missing_folder_is_downloaded_without_asking(tmp_path, name,
                                                     monkeypatch):
    asked = serve_zip(tmp_path, name, monkeypatch)
    root = tmp_path / 'data'
    data = load_ogb(name, root)
    assert asked == [URLS[name]]
    assert torch.equal(data.x, torch.from_numpy(features()))
    assert data.train_mask.nonzero().view(-1).tolist() == list(TRAIN)
    # The dataset folder and nothing else: no zip, no scratch folder.
    assert [p.name for p in root.iterdir()] == [LAYOUT[name][0]]
    assert (root / LAYOUT[name][0] / 'RELEASE_v1.txt').is_file()


def test_failed_download_leaves_nothing(tmp_path, name, offline):
    root = tmp_path / 'data'
    with pytest.raises(OGBFileError) as err:
        load_ogb(name, root)
    assert str(err.value).startswith(f'{URLS[name]}: download failed')
    assert 'network disabled in tests' in str(err.value)
    assert 'unzip it' in str(err.value)
    assert offline == [URLS[name]]
    assert list(root.iterdir()) == []


@pytest.mark.parametrize('shape', [(-1, ), (-1, 1)])
def test_ogb_accuracy(name, shape):
    y_true = torch.tensor([0, 1, 2, 2, 3, 3, 4, 5]).view(shape)
    y_pred = torch.tensor([0, 1, 1, 2, 3, 0, 4, 5]).view(shape)
    assert ogb_accuracy(name, y_true, y_pred) == 0.75
    assert ogb_accuracy(name, y_true.numpy(), y_true.numpy()) == 1.0


def test_ogb_accuracy_checks_its_input():
    y = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match='logits.argmax'):
        ogb_accuracy('ogbn-arxiv', y, torch.randn(3, 40))
    with pytest.raises(ValueError, match='3 true labels and 2 predictions'):
        ogb_accuracy('ogbn-arxiv', y, y[:2])
    with pytest.raises(ValueError, match='no labels'):
        ogb_accuracy('ogbn-arxiv', y[:0], y[:0])
    with pytest.raises(TypeError, match='pass a tensor or an array'):
        ogb_accuracy('ogbn-arxiv', [0, 1, 2], y)
    with pytest.raises(ValueError, match='Unknown OGB dataset'):
        ogb_accuracy('ogbn-proteins', y, y)
