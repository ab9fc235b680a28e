"""Figures: training curves of node classification runs."""
import math
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
from matplotlib.figure import Figure

from pyg_gatv2.train import TrainResult

__all__ = ['plot_training_curves']

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
            :func:`~pyg_gatv2.train.train_node_classifier` returned.
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
