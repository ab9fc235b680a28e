"""Sparse vs dense GATv2, the report: crossovers, fitted slopes, tables
and the figure, from the rows that :func:`_sparse_dense_measure.run_case`
gives.
"""
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from _common import markdown_table, write_report
from _sparse_dense_cases import LABELS
from _sparse_dense_measure import TOLERANCE

COLORS = {'dense': 'C3', 'sparse': 'C0', 'fused': 'C2', 'pyg': 'C7'}


def write(stem: Path, rows: list[dict], impls: list[str],
          header: str) -> str:
    """Writes ``<stem>.md``, ``.csv`` and ``.png``; returns the Markdown."""
    names = '; '.join(f'`{i}` = {LABELS[i]}' for i in impls)
    sections = [
        f'# Sparse vs dense GATv2\n\n{header}',
        f'Implementations: {names}.',
        'Every timed case was first checked: outputs agree with the '
        f'reference to {TOLERANCE:g} times its largest entry (at least 1) '
        '(column `check`: largest difference).',
        f'## Crossovers and fitted slopes\n\n{summary(rows, impls)}',
        f'## Tables\n\n{tables(rows, impls)}',
    ]
    if failures(rows):
        sections.append(f'Errors:\n\n{failures(rows)}')
    sections.append(f'Figure: `{stem.name}.png`; all rows: '
                    f'`{stem.name}.csv`.\n')
    report = '\n\n'.join(sections)
    write_report(stem, report, rows, plot=lambda path: plot(
        rows, impls, path, header.split('\n')[0]))
    return report


def series_key(row: dict) -> tuple[str, str]:
    return row['setting'], row['degree']


def measured(rows: list[dict], setting: str, degree: str, impl: str,
             key: str) -> tuple[np.ndarray, np.ndarray]:
    points = sorted((r['N'], r[key] + (r['input_mib'] if key ==
                                       'peak_train_mib' else 0.0))
                    for r in rows
                    if (r['setting'], r['degree'], r['impl']) == (
                        setting, degree, impl) and r['status'] == 'ok'
                    and not math.isnan(r[key]))
    if not points:
        return np.empty(0), np.empty(0)
    n, y = zip(*points, strict=True)
    return np.array(n, dtype=float), np.array(y, dtype=float)


def fit_slope(n: np.ndarray, y: np.ndarray) -> Optional[tuple[float, int]]:
    """Slope of log y against log N over the larger half of the points
    (at least two), and the smallest N of the fit."""
    if len(n) < 2:
        return None
    start = min(len(n) // 2, len(n) - 2)
    slope = np.polyfit(np.log(n[start:]), np.log(y[start:]), 1)[0]
    return float(slope), int(n[start])


@dataclass
class Crossing:
    """How :obj:`impl` and the dense layer compare along one series."""
    impl: str
    at: Optional[float]  # N where they swap places (log-log interpolated)
    first: str  # the smaller one below :obj:`at` (or everywhere)
    low: float  # the range of N where both ran
    high: float
    ratio: float  # impl / dense at :obj:`high`

    def __str__(self) -> str:
        tail = f'{self.impl}/dense = {self.ratio:.2g} at N = {self.high:.0f}'
        if self.at is None:
            return (f'{self.first} smaller at every N where both ran '
                    f'({self.low:.0f} to {self.high:.0f}); {tail}')
        then = 'dense' if self.first == self.impl else self.impl
        return (f'{self.first} smaller below N ~ {self.at:.0f}, {then} '
                f'above; {tail}')


def crossover(rows: list[dict], setting: str, degree: str, impl: str,
              key: str) -> Optional[Crossing]:
    """Where :obj:`impl` and the dense layer swap places in :obj:`key`;
    None without a size where both ran."""
    n_d, y_d = measured(rows, setting, degree, 'dense', key)
    n_s, y_s = measured(rows, setting, degree, impl, key)
    common = sorted(set(n_d) & set(n_s))
    if not common:
        return None
    dense = dict(zip(n_d, y_d, strict=True))
    other = dict(zip(n_s, y_s, strict=True))
    gap = [math.log(other[n] / dense[n]) for n in common]
    at = None
    for a in range(len(common) - 1):
        if (gap[a] > 0) != (gap[a + 1] > 0):
            la, lb = math.log(common[a]), math.log(common[a + 1])
            at = math.exp(la + (lb - la) * gap[a] / (gap[a] - gap[a + 1]))
            break
    return Crossing(impl, at, 'dense' if gap[0] > 0 else impl, common[0],
                    common[-1], math.exp(gap[-1]))


def summary(rows: list[dict], impls: list[str]) -> str:
    lines = []
    series = sorted({series_key(r) for r in rows if r['setting'] != 'cora'},
                    key=lambda s: (s[0] != 'single', _degree_order(s[1])))
    for setting, degree in series:
        title = (f'{setting} graph' if setting == 'single' else
                 f'batch of {_graphs(rows, setting)} graphs')
        lines.append(f'- **{title}, average in-degree {degree}**')
        for impl in impls:
            if impl == 'dense':
                continue
            for key, what in (('train_ms', 'time (forward+backward)'),
                              ('peak_train_mib', 'memory (inputs+peak)')):
                crossing = crossover(rows, setting, degree, impl, key)
                if crossing:
                    lines.append(f'  - {LABELS[impl]} vs dense, {what}: '
                                 f'{crossing}')
        slopes = []
        for impl in impls:
            for key, what in (('train_ms', 'time'),
                              ('peak_train_mib', 'memory')):
                fit = fit_slope(*measured(rows, setting, degree, impl, key))
                if fit:
                    slopes.append(f'{impl} {what} N^{fit[0]:.2f} '
                                  f'(N >= {fit[1]})')
        if slopes:
            lines.append('  - fitted slopes: ' + '; '.join(slopes))
    return '\n'.join(lines)


def _degree_order(spec: str) -> float:
    return 1 / float(spec[2:]) if spec.startswith('N/') else -1 / float(spec)


def _graphs(rows: list[dict], setting: str) -> int:
    return next(r['graphs'] for r in rows if r['setting'] == setting)


def cell(row: dict, key: str) -> str:
    if row['status'] == 'ok':
        value = row[key]
        if key == 'peak_train_mib':
            value += row['input_mib']
        return f'{value:.3g}' if not math.isnan(value) else 'n/a'
    if row['status'].startswith('skipped: projected'):
        return 'skip (' + row['status'].split('projected ')[1] + ')'
    if row['status'].startswith('error'):
        return 'error'  # the message is listed under the tables
    return row['status']


def failures(rows: list[dict]) -> str:
    """The distinct errors, with the cases they stopped."""
    seen: dict[tuple[str, str], int] = {}
    for row in rows:
        if row['status'].startswith('error'):
            key = (row['impl'], row['status'])
            seen[key] = seen.get(key, 0) + 1
    return '\n'.join(f'- `{impl}` ({count} cases): {status}'
                     for (impl, status), count in seen.items())


def tables(rows: list[dict], impls: list[str]) -> str:
    cases: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        key = (row['setting'], row['N'], row['degree'])
        cases.setdefault(key, {})[row['impl']] = row
    ratios = [impl for impl in ('sparse', 'fused') if impl in impls]
    out = []
    for key, title in (
            ('train_ms', 'Forward + backward, median ms'),
            ('fwd_ms', 'Forward (inference), median ms'),
            ('peak_train_mib', 'Memory of forward + backward: inputs + '
             'peak growth, MiB')):
        table = []
        for by_impl in cases.values():
            first = next(iter(by_impl.values()))
            checked = [r for r in by_impl.values() if r['reference']]
            check = 'n/a'
            if checked:
                worst = max(r['max_diff'] for r in checked)
                check = f"{worst:.1e} vs {checked[0]['reference']}"
            line = {'case': first['setting'], 'N': first['N'],
                    'graphs': first['graphs'], 'edges': first['edges'],
                    'avg deg': first['avg_degree'], 'check': check}
            for impl in impls:
                line[impl] = cell(by_impl[impl], key)
            dense = by_impl['dense']
            for impl in ratios:
                other, ratio = by_impl[impl], ''
                if dense['status'] == other['status'] == 'ok':
                    ratio = f'{_total(other, key) / _total(dense, key):.2g}'
                line[f'{impl}/dense'] = ratio
            table.append(line)
        columns = ['case', 'N', 'graphs', 'edges', 'avg deg', 'check']
        out.append(f'### {title}\n\n' + markdown_table(
            table, columns + list(impls) + [f'{i}/dense' for i in ratios]))
    return '\n\n'.join(out)


def _total(row: dict, key: str) -> float:
    return row[key] + (row['input_mib'] if key == 'peak_train_mib' else 0.)


def plot(rows: list[dict], impls: list[str], path: Path, header: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    settings = [s for s in ('single', 'batch')
                if any(r['setting'] == s for r in rows)]
    degrees = sorted({r['degree'] for r in rows if r['setting'] != 'cora'},
                     key=_degree_order)
    panels = [(s, k) for s in settings
              for k in ('train_ms', 'peak_train_mib')]
    fig, axes = plt.subplots(len(degrees), len(panels), squeeze=False,
                             figsize=(4.6 * len(panels), 3.6 * len(degrees)))
    for i, degree in enumerate(degrees):
        for j, (setting, key) in enumerate(panels):
            ax = axes[i][j]
            for impl in impls:
                n, y = measured(rows, setting, degree, impl, key)
                if len(n) == 0:
                    continue
                fit = fit_slope(n, y)
                label = impl + (f' (slope {fit[0]:.2f})' if fit else '')
                ax.plot(n, y, 'o-', color=COLORS[impl], label=label, ms=4)
                if setting == 'single' and degree == degrees[0]:
                    cora = [r for r in rows if r['setting'] == 'cora'
                            and r['impl'] == impl and r['status'] == 'ok']
                    for r in cora:
                        ax.plot(r['N'], _total(r, key), '*', ms=12,
                                color=COLORS[impl])
            _mark_crossover(ax, rows, setting, degree, key)
            ax.set_xscale('log', base=2)
            ax.set_yscale('log')
            what = 'time (ms)' if key == 'train_ms' else 'memory (MiB)'
            where = ('one graph' if setting == 'single' else
                     f'{_graphs(rows, setting)} graphs')
            ax.set_title(f'{where}, avg in-degree {degree}: {what}',
                         fontsize=9)
            ax.set_xlabel('N (nodes per graph)')
            ax.grid(True, which='both', alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(header + '\nforward + backward; memory = inputs + peak; '
                 'stars: Cora; dotted line: sparse and dense cross',
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _mark_crossover(ax, rows, setting, degree, key) -> None:
    crossing = crossover(rows, setting, degree, 'sparse', key)
    if crossing and crossing.at is not None:
        ax.axvline(crossing.at, color='k', ls=':', lw=1)
        ax.annotate(f'N~{crossing.at:.0f}', (crossing.at, ax.get_ylim()[0]),
                    fontsize=7, xytext=(3, 3), textcoords='offset points')
