"""The OGB node-classification graphs ogbn-arxiv and ogbn-products.

The datasets of `"Open Graph Benchmark: Datasets for Machine Learning on
Graphs" <https://arxiv.org/abs/2005.00687>`_, on which the GATv2 paper
reports 71.87 (ogbn-arxiv, 8 heads) and 80.63 (ogbn-products, 1 head). They
are loaded through the ``ogb`` package's
:class:`~ogb.nodeproppred.PygNodePropPredDataset`, with its official split
and :class:`~ogb.nodeproppred.Evaluator`, and four changes:

* the processed file is read with :func:`torch.load`'s ``weights_only``
  default, allowing only PyG's data classes, instead of failing under
  torch >= 2.6;
* a folder without OGB's release marker is an error that says what to do,
  where ``ogb`` would ask on stdin whether to delete it;
* a missing folder is downloaded without asking on stdin (``ogb`` asks for
  downloads over 1 GB, such as ogbn-products), and a failed download leaves
  nothing behind;
* a missing, corrupt or inconsistent file is an :class:`OGBFileError` that
  names the file and how to replace it.
"""
import os
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import index_to_mask, to_undirected

from .ogb_files import SPLIT_FILES, OGBFileError, import_ogb, refetch_hint

__all__ = ['OGBFileError', 'OGB_NAMES', 'load_ogb', 'ogb_accuracy']

#: The OGB datasets that
#: :func:`~pyg_gatv2.experiments.datasets.load_ogb` loads.
OGB_NAMES = ('ogbn-arxiv', 'ogbn-products')

_PathLike = Union[str, os.PathLike]
_ArrayLike = Union[Tensor, np.ndarray]


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name.lower() not in OGB_NAMES:
        raise ValueError(f'Unknown OGB dataset {name!r}; choose one of '
                         f"{', '.join(map(repr, OGB_NAMES))}")
    return name.lower()


def _check_loaded(data: Data, split: dict[str, Tensor], num_classes: int,
                  folder: Path, url: str) -> None:
    """Raises unless :obj:`data` and :obj:`split` make a consistent
    node-classification task."""
    x, y, edge_index = data.x, data.y, data.edge_index
    n = data.num_nodes
    problem = None
    if x is None or x.dim() != 2 or x.size(0) != n:
        problem = (f'the node features should be {n} rows, one per node, '
                   f'got {None if x is None else tuple(x.shape)}')
    elif not x.is_floating_point() or not torch.isfinite(x).all():
        problem = 'the node features are not all finite floats'
    elif y is None or y.numel() != n or y.dtype != torch.long:
        problem = (f'the labels should be {n} integers, got '
                   f'{None if y is None else (tuple(y.shape), y.dtype)} '
                   '(labels missing?)')
    elif n and (y.min() < 0 or y.max() >= num_classes):
        problem = f'labels lie outside 0..{num_classes - 1}'
    elif edge_index.numel() and (edge_index.min() < 0
                                 or edge_index.max() >= n):
        problem = f'edges name nodes outside 0..{n - 1}'
    else:
        for part in SPLIT_FILES:
            index = split[part]
            if index.numel() and (index.min() < 0 or index.max() >= n):
                problem = f'the {part} split names nodes outside 0..{n - 1}'
                break
        else:
            counts = sum(index_to_mask(split[p], n).long()
                         for p in SPLIT_FILES)
            if counts.max() > 1:
                problem = 'the train, valid and test splits overlap'
    if problem is not None:
        raise OGBFileError(f'{folder}: {problem}, so its files do not '
                           f'belong together; {refetch_hint(folder, url)}')


def load_ogb(name: str, root: _PathLike) -> Data:
    r"""Loads ogbn-arxiv or ogbn-products with the official split.

    Reads ``<root>/ogbn_arxiv`` (or ``<root>/ogbn_products``) as a download
    of OGB leaves it (``RELEASE_v1.txt``, ``raw/*.csv.gz``,
    ``split/<split>/{train,valid,test}.csv.gz``), processing the raw files
    once into ``processed/``; if the folder does not exist, downloads it
    first (ogbn-arxiv about 80 MB, ogbn-products about 1.4 GB). The edges
    are made undirected, as in the GATv2 paper and PyG's OGB examples
    (ogbn-arxiv is a directed citation graph).

    Args:
        name (str): ``'ogbn-arxiv'`` or ``'ogbn-products'``.
        root (str or os.PathLike): Folder that holds the dataset folder.

    Returns:
        torch_geometric.data.Data: ``x`` (float), ``y`` (``[N]`` long),
        ``edge_index`` (undirected, coalesced), boolean ``train_mask``,
        ``val_mask`` and ``test_mask`` from ``get_idx_split()``, and
        ``num_classes``.

    Raises:
        ValueError: For another name.
        ~pyg_gatv2.extras.MissingExtraError: Without the ``ogb`` package
            (an :class:`ImportError` naming the extra to install).
        ~pyg_gatv2.experiments.datasets.ogb.OGBFileError: When a file is
            missing, corrupt or inconsistent, or the download fails.

    Example:
        >>> from pyg_gatv2.experiments.datasets import load_ogb
        >>> data = load_ogb('ogbn-arxiv', 'data/ogb')  # doctest: +SKIP
        >>> data.num_nodes, data.num_classes  # doctest: +SKIP
        (169343, 40)
    """
    name = _check_name(name)
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    import_ogb()  # a clear error without the package
    from .ogb_dataset import CheckedNodePropPredDataset
    dataset = CheckedNodePropPredDataset(name, root)
    split = dataset.official_split()
    graph = dataset[0]
    data = Data(x=graph.x, y=graph.y.view(-1), edge_index=graph.edge_index,
                num_nodes=graph.num_nodes)
    _check_loaded(data, split, dataset.num_classes, Path(dataset.root),
                  dataset._url)
    data.edge_index = to_undirected(data.edge_index, num_nodes=data.num_nodes)
    data.train_mask = index_to_mask(split['train'], data.num_nodes)
    data.val_mask = index_to_mask(split['valid'], data.num_nodes)
    data.test_mask = index_to_mask(split['test'], data.num_nodes)
    data.num_classes = dataset.num_classes
    return data


def _as_labels(name: str, arg: str, value: _ArrayLike) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise TypeError(f'ogb_accuracy got {arg} of type '
                        f'{type(value).__name__}; pass a tensor or an array')
    if value.ndim == 2 and value.shape[1] == 1:
        value = value[:, 0]
    if value.ndim != 1:
        raise ValueError(
            f'ogb_accuracy got {arg} of shape {value.shape}; pass one class '
            f'label per node, shape [N] or [N, 1] (for logits of {name}, '
            'pass logits.argmax(dim=-1))')
    return value.reshape(-1, 1)


def ogb_accuracy(name: str, y_true: _ArrayLike, y_pred: _ArrayLike) -> float:
    """Accuracy of the class labels :obj:`y_pred` against :obj:`y_true`, by
    OGB's official :class:`~ogb.nodeproppred.Evaluator` for :obj:`name`.

    Args:
        name (str): ``'ogbn-arxiv'`` or ``'ogbn-products'``.
        y_true (torch.Tensor or numpy.ndarray): True labels, ``[N]`` or
            ``[N, 1]``.
        y_pred (torch.Tensor or numpy.ndarray): Predicted labels, same shape.
    """
    name = _check_name(name)
    true = _as_labels(name, 'y_true', y_true)
    pred = _as_labels(name, 'y_pred', y_pred)
    if true.shape != pred.shape:
        raise ValueError(f'ogb_accuracy got {true.shape[0]} true labels and '
                         f'{pred.shape[0]} predictions; pass one of each per '
                         'node')
    if true.shape[0] == 0:
        raise ValueError('ogb_accuracy got no labels; pass at least one node')
    evaluator = import_ogb().Evaluator(name)
    return float(evaluator.eval({'y_true': true, 'y_pred': pred})['acc'])
