"""Figures: training curves of node classification runs, DictionaryLookup
accuracy and attention."""
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from pyg_gatv2.experiments.lookup import LookupResult
from pyg_gatv2.experiments.training.results import TrainResult

__all__ = ['plot_dictionary_lookup', 'plot_training_curves']

# Curve name in the history, legend label, colour.
_LOSS_CURVES = (('loss', 'train (with dropout)', 'tab:blue'),
                ('val_loss', 'validation', 'tab:orange'))
_ACC_CURVES = (('train_acc', 'train', 'tab:blue'),
               ('val_acc', 'validation', 'tab:orange'),
               ('test_acc', 'test', 'tab:green'))


def _stack(result: TrainResult, key: str) -> np.ndarray:
    """The runs' curves as rows, padded with NaN after early stopping."""
    length = max(len(run.history[key]) for run in result.runs)
    rows = np.full((len(result.runs), length), np.nan)
    for row, run in zip(rows, result.runs, strict=True):
        row[:len(run.history[key])] = run.history[key]
    return rows


def _draw(ax, result: TrainResult, curves) -> None:
    epochs = np.arange(1, _stack(result, 'epoch').shape[1] + 1)
    several = len(result.runs) > 1
    for key, label, colour in curves:
        rows = _stack(result, key)
        mean = np.nanmean(rows, axis=0)
        ax.plot(epochs, mean, color=colour, lw=1.4, label=label)
        if several:
            std = np.nanstd(rows, axis=0)
            ax.fill_between(epochs, mean - std, mean + std, color=colour,
                            alpha=0.2, lw=0)
    ax.set_xlabel('epoch')
    ax.set_xlim(1, epochs[-1])
    ax.grid(alpha=0.3)


def _accuracy_floor(result: TrainResult) -> float:
    """A lower limit for the accuracy axis that leaves out the first tenth
    of the epochs, where accuracies climb from chance, so that the plateau
    where the best epoch lies is not squashed against the top."""
    curves = np.concatenate([_stack(result, key) for key in ('val_acc',
                                                             'test_acc')])
    tail = np.nanmean(curves, axis=0)[curves.shape[1] // 10:]
    return max(0.0, math.floor(10 * float(np.min(tail)) - 1) / 10)


def plot_training_curves(
    result: TrainResult,
    path: Union[str, os.PathLike],
    title: Optional[str] = None,
) -> Path:
    """Plots the losses and accuracies of every epoch and saves a PNG.

    With several seeds, each curve is the mean over the seeds still training
    at that epoch, with a band of one standard deviation. Dotted lines mark
    the best validation epoch (the mean over seeds) and the test accuracy
    read there. The accuracy axis starts below the plateau, so the climb of
    the first epochs may leave the frame.

    Args:
        result (TrainResult): What
            :func:`~pyg_gatv2.experiments.training.train_node_classifier`
            returned.
        path (str or os.PathLike): The PNG file to write.
        title (str, optional): The figure title; the seed count and test
            accuracy are added below it. (default: :obj:`None`)

    Returns:
        pathlib.Path: :obj:`path`.
    """
    if not result.runs:
        raise ValueError("'plot_training_curves' got a result without runs; "
                         'train at least one seed first')
    path = Path(path)
    fig = Figure(figsize=(11, 4.2), layout='constrained')
    loss_ax, acc_ax = fig.subplots(1, 2)
    _draw(loss_ax, result, _LOSS_CURVES)
    _draw(acc_ax, result, _ACC_CURVES)

    best = float(np.mean([run.best_epoch for run in result.runs]))
    for ax in (loss_ax, acc_ax):
        ax.axvline(best, color='0.3', ls=':', lw=1,
                   label=f'best val. epoch ({best:.0f})' if ax is acc_ax
                   else None)
    acc_ax.axhline(result.test_acc_mean, color='tab:green', ls=':', lw=1,
                   label=f'test acc. at best ({result.test_acc_mean:.3f})')
    loss_ax.set_ylabel('cross-entropy')
    loss_ax.set_ylim(bottom=0)
    loss_ax.set_title('Loss')
    acc_ax.set_ylabel('accuracy')
    acc_ax.set_ylim(_accuracy_floor(result), 1.0)
    acc_ax.set_title('Accuracy')
    loss_ax.legend(loc='best', frameon=False)
    acc_ax.legend(loc='lower right', frameon=False)

    seeds = len(result.runs)
    if seeds == 1:
        subtitle = (f'test accuracy {result.test_acc_mean:.3f} at the best '
                    f'validation epoch (seed {result.runs[0].seed})')
    else:
        subtitle = (f'test accuracy {result.test_acc_mean:.3f} \u00b1 '
                    f'{result.test_acc_std:.3f} over {seeds} seeds; mean '
                    '\u00b1 std over the seeds still training')
    fig.suptitle(subtitle if title is None else f'{title}\n{subtitle}')
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


# Attention layer name in LookupResult.conv -> the family shown in the
# legend and its colours for 1 head and for more heads.
_LOOKUP_FAMILY = {'gat': 'GAT', 'dense_gat': 'GAT', 'gatv2': 'GATv2',
                  'dense_gatv2': 'GATv2'}
_LOOKUP_COLOURS = {'GAT': ('tab:red', 'tab:orange'),
                   'GATv2': ('tab:blue', 'tab:cyan')}


def _lookup_label(conv: str, heads: int, convs: Sequence[str]) -> str:
    family = _LOOKUP_FAMILY.get(conv, conv)
    # Name the dense variant only where both variants are shown.
    twins = [c for c in convs if _LOOKUP_FAMILY.get(c, c) == family]
    if len(twins) > 1 and conv.startswith('dense_'):
        family += ' (dense)'
    return f"{family} {heads} head{'s' if heads > 1 else ''}"


def _lookup_style(conv: str, heads: int) -> dict:
    family = _LOOKUP_FAMILY.get(conv, conv)
    one, more = _LOOKUP_COLOURS.get(family, ('tab:gray', 'tab:brown'))
    if heads == 1:
        return dict(color=one, marker='o', ls='-')
    return dict(color=more, marker='s', ls='--')


def _draw_attention(fig: Figure, ax, result: LookupResult,
                    label: str) -> None:
    heads = np.asarray(result.attention)
    att = heads.mean(axis=0)
    k = att.shape[0]
    # Each panel on its own scale: what matters is how every row ranks the
    # keys, and static attention may be nearly flat.
    top = float(att.max())
    image = ax.imshow(att, cmap='viridis', vmin=0.0, vmax=top)
    # Outline the correct key of every query: the diagonal.
    for i in range(k):
        ax.add_patch(Rectangle((i - 0.42, i - 0.42), 0.84, 0.84, fill=False,
                               edgecolor='tab:red', lw=1.5))
    if k <= 10:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f'{att[i, j]:.2f}', ha='center', va='center',
                        fontsize=6.5,
                        color='black' if att[i, j] > 0.6 * top else 'white')
    ticks = range(k)
    ax.set_xticks(ticks, [f'k{j}' for j in ticks], fontsize=7)
    ax.set_yticks(ticks, [f'q{i}' for i in ticks], fontsize=7)
    ax.xaxis.tick_top()
    ax.set_xlabel('key node', fontsize=9)
    ax.set_ylabel('query node', fontsize=9)

    argmax = att.argmax(axis=1)
    rankings = {tuple(np.argsort(-row, kind='stable')) for row in att}
    plural = 's' if len(rankings) > 1 else ''
    right = sum(p == y for p, y in zip(result.example_pred,
                                        result.example_y, strict=True))
    heads_note = (f', mean of {heads.shape[0]} heads'
                  if heads.shape[0] > 1 else '')
    ax.set_title(
        f'{label}, k={k}, seed {result.seed}\nattention on one test graph'
        f'{heads_note}\nown key on top for '
        f'{int((argmax == np.arange(k)).sum())}/{k} queries, '
        f'{len(rankings)} distinct key ranking{plural}, {right}/{k} right',
        fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8, label='attention')


def plot_dictionary_lookup(
    results: Sequence[LookupResult],
    path: Union[str, os.PathLike],
    attention_k: Optional[int] = None,
    title: Optional[str] = None,
) -> Path:
    """Plots DictionaryLookup accuracy against :math:`k` in the layout of
    Figure 2 of the GATv2 paper, with the attention each layer learned, and
    saves a PNG.

    The first two panels show the training and the test accuracy per query
    node against :math:`k`, one line per layer and number of heads (the
    mean over seeds; with several seeds, bars span the lowest to the highest
    seed), with chance level :math:`1/k`; an open marker says that the
    epoch cap ended at least one of its runs before the stopping rule did
    (``stop == 'max_epochs'``). One heatmap per layer follows, for
    its run with the fewest heads and the lowest seed: the attention of
    every query (row) over every key (column) on the first test graph of
    size :obj:`attention_k`, the correct keys outlined on the diagonal (each
    heatmap on its own colour scale). Static attention ranks the keys the
    same way in every row.

    Args:
        results (Sequence[LookupResult]): What
            :func:`~pyg_gatv2.experiments.lookup.train_lookup` returned, for
            one or more layers, heads, sizes and seeds.
        path (str or os.PathLike): The PNG file to write.
        attention_k (int, optional): The size whose attention to show.
            (default: :obj:`10` if every layer has it, else the largest size
            that every layer has)
        title (str, optional): The figure title. (default: :obj:`None`)

    Returns:
        pathlib.Path: :obj:`path`.
    """
    if not results:
        raise ValueError("'plot_dictionary_lookup' got no results; train at "
                         'least one network first')
    ks = sorted({r.k for r in results})
    convs = list(dict.fromkeys(r.conv for r in results))
    shown = _attention_runs(results, convs, ks, attention_k)
    path = Path(path)
    fig = Figure(figsize=(8.4 + 4.6 * len(convs), 5.2),
                 layout='constrained')
    axes = fig.subplots(1, 2 + len(convs),
                        width_ratios=[1.0, 1.0] + [1.1] * len(convs))
    for ax, split in zip(axes[:2], ('train', 'test'), strict=True):
        _draw_accuracy(ax, results, split, convs, ks)
    axes[1].legend(loc='center right', fontsize=7.5, frameon=False)
    for ax, conv in zip(axes[2:], convs, strict=True):
        result = shown[conv]
        _draw_attention(fig, ax, result,
                        _lookup_label(conv, result.heads, convs))
    if title is not None:
        fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _attention_runs(results: Sequence[LookupResult], convs: list[str],
                    ks: list[int], attention_k: Optional[int]
                    ) -> dict[str, LookupResult]:
    """The run whose attention each layer's heatmap shows: of size
    ``attention_k`` (by default 10, else the largest every layer has), the
    fewest heads and the lowest seed."""
    if attention_k is None:
        shared = set.intersection(*({r.k for r in results if r.conv == conv}
                                    for conv in convs))
        attention_k = 10 if 10 in shared else max(shared, default=ks[-1])
    if attention_k not in ks:
        raise ValueError(f"'plot_dictionary_lookup' got attention_k="
                         f'{attention_k}, but the results hold k in {ks}')
    shown = {}
    for conv in convs:
        candidates = [r for r in results
                      if r.conv == conv and r.k == attention_k]
        if candidates:
            shown[conv] = min(candidates, key=lambda r: (r.heads, r.seed))
    missing = [conv for conv in convs if conv not in shown]
    if missing:
        raise ValueError(f"'plot_dictionary_lookup' has no result for k="
                         f'{attention_k} of {missing}; pass them or another '
                         'attention_k')
    return shown


def _draw_accuracy(ax, results: Sequence[LookupResult], split: str,
                   convs: list[str], ks: list[int]) -> None:
    """One line per layer and number of heads of the ``split`` accuracy
    against k: the mean over seeds, bars from the lowest to the highest,
    open markers where the epoch cap cut a run."""
    groups = sorted({(r.conv, r.heads) for r in results},
                    key=lambda g: (_LOOKUP_FAMILY.get(g[0], g[0]), g[1]))
    for conv, heads in groups:
        x, mean, low, high, cut = [], [], [], [], []
        for k in ks:
            runs = [r for r in results
                    if (r.conv, r.heads, r.k) == (conv, heads, k)]
            accs = [getattr(r, f'{split}_node_acc') for r in runs]
            if accs:
                x.append(k)
                mean.append(float(np.mean(accs)))
                low.append(mean[-1] - min(accs))
                high.append(max(accs) - mean[-1])
                cut.append(any(r.stop == 'max_epochs' for r in runs))
        style = _lookup_style(conv, heads)
        ax.errorbar(x, mean, yerr=[low, high], capsize=3, lw=1.5, ms=5,
                    label=_lookup_label(conv, heads, convs), **style)
        cut = np.array(cut, dtype=bool)
        # Above the errorbar's filled markers (zorder 2.1).
        ax.plot(np.array(x)[cut], np.array(mean)[cut], ls='none', ms=5,
                marker=style['marker'], mec=style['color'], mfc='white',
                zorder=3)
    if any(r.stop == 'max_epochs' for r in results):
        ax.plot([], [], ls='none', marker='o', mec='0.3', mfc='white',
                label='cut by the epoch cap')
    grid = np.linspace(ks[0], ks[-1], 200) if len(ks) > 1 else np.array(
        ks, dtype=float)
    ax.plot(grid, 1.0 / grid, ':', color='0.4', label='chance (1/k)')
    ax.set_xticks(ks)
    ax.set_ylim(0.0, 1.03)
    ax.set_xlabel('k (keys per graph)')
    ax.set_ylabel('accuracy per query node')
    ax.set_title(f'{split.capitalize()} accuracy', fontsize=10)
    ax.grid(alpha=0.3)
