"""Sparse vs dense GATv2, the measurement of one case: budget, check, time,
memory.

:func:`run_case` skips an implementation whose time or memory, projected
from the largest smaller case of its series (:class:`History`), exceeds the
budget; checks that all that fit agree with the dense layer's output (or,
where the dense layer is out of budget, PyG's) before anything is timed;
times forward and forward + backward in this process; and measures peak
memory in a fresh one (:func:`memory_worker`), where glibc's mmap threshold
is pinned so that freed memory leaves the resident set at once (which would
slow the timed runs severalfold). Returns one row per implementation.
"""
import argparse
import math
from typing import Optional

import torch
from _common import (
    WorkerFailed,
    compare,
    failure,
    median_time,
    peak_memory,
    pin_malloc,
    run_isolated,
)
from _sparse_dense_cases import MiB, Plan, Runner, build_runners, costs

TOLERANCE = 1e-5
# The first of these that gave an output is what the others must match.
REFERENCES = ('dense', 'pyg', 'sparse', 'fused')


class History:
    """Measured costs per series and implementation, to project larger
    cases."""
    def __init__(self):
        self.points: dict[tuple, list[tuple[float, dict]]] = {}

    def add(self, series: tuple, impl: str, work: float, row: dict) -> None:
        self.points.setdefault((series, impl), []).append((work, row))

    def project(self, series: tuple, impl: str, work: float,
                key: str) -> Optional[float]:
        """:obj:`key` of the largest smaller case of the series, scaled by
        the work (an upper bound where fixed overheads dominate it)."""
        known = [(w, r[key]) for w, r in self.points.get((series, impl), [])
                 if w <= work and not math.isnan(r[key])]
        if not known:
            return None
        w, value = max(known)
        return value * work / w


def run_case(plan: Plan, impls: list[str], args: argparse.Namespace,
             device: torch.device, history: History) -> list[dict]:
    """Budget, check, time and memory of :obj:`impls` on one case; one row
    per implementation, its ``status`` ``'ok'`` or why not."""
    rows, work = new_rows(plan, impls, args)
    checked, timed = within_budget(plan, rows, work, history, args)
    if len(checked) < 2:
        for name in checked:
            rows[name]['status'] = 'skipped: nothing to check against'
        return list(rows.values())
    case = plan.build()
    for row in rows.values():
        row['edges'] = case.edge_index.size(1)
        row['avg_degree'] = round(row['edges'] / row['nodes'], 2)
    runners = build_runners(case, checked, args, device)
    if not check(runners, rows):
        for name in timed:
            if rows[name]['status'] == '':
                rows[name]['status'] = 'not timed: another output disagrees'
        return list(rows.values())
    timed = [name for name in timed if rows[name]['status'] == '']
    time_runs(runners, rows, timed, args, device)
    del runners, case
    timed = [name for name in timed if rows[name]['status'] == '']
    measure_memory(plan, rows, timed, args)
    for name in timed:
        if rows[name]['status'] == 'ok':
            history.add(plan.series, name, work[name], rows[name])
    return list(rows.values())


def new_rows(plan: Plan, impls: list[str], args: argparse.Namespace
             ) -> tuple[dict[str, dict], dict[str, float]]:
    """An empty row per implementation, and the work of each (the unit in
    which :class:`History` projects)."""
    nodes, edges = plan.counts()
    base = dict(setting=plan.setting, N=plan.num_nodes,
                graphs=plan.num_graphs, nodes=nodes, edges=edges,
                degree=plan.degree, avg_degree=round(edges / nodes, 2))
    nan = float('nan')
    rows, work = {}, {}
    for name in impls:
        work[name], input_bytes = costs(plan, name, args)
        rows[name] = dict(base, impl=name, status='', reference='',
                          max_diff=nan, fwd_ms=nan, train_ms=nan,
                          input_mib=input_bytes / MiB, peak_fwd_mib=nan,
                          peak_train_mib=nan)
    return rows, work


def within_budget(plan: Plan, rows: dict[str, dict], work: dict[str, float],
                  history: History, args: argparse.Namespace
                  ) -> tuple[list[str], list[str]]:
    """The implementations whose forward fits the budgets (to check) and
    those whose forward + backward does too (to time), projected from
    smaller cases; the others get a ``'skipped: projected ...'`` status."""
    limit = (args.cora_max_seconds if plan.setting == 'cora' else
             args.max_seconds)
    checked, timed = [], []
    for name, row in rows.items():
        fits = {}
        for mode in ('train', 'fwd'):
            ms = history.project(plan.series, name, work[name], f'{mode}_ms')
            peak = history.project(plan.series, name, work[name],
                                   f'peak_{mode}_mib')
            nbytes = (row['input_mib'] + (peak or 0.0)) * MiB
            if ms is not None and ms / 1e3 > limit:
                fits[mode] = f'skipped: projected {ms / 1e3:.3g} s'
            elif nbytes > args.max_memory * 2**30:
                fits[mode] = f'skipped: projected {nbytes / 2**30:.3g} GiB'
            else:
                fits[mode] = ''
        row['status'] = fits['train'] or fits['fwd']
        if not fits['fwd']:
            checked.append(name)
            if not fits['train']:
                timed.append(name)
    return checked, timed


def check(runners: dict[str, Runner], rows: dict[str, dict]) -> bool:
    """Compares every output with the reference's (:data:`REFERENCES`);
    returns whether all agree. Without two outputs, nothing is checked and
    nothing agrees."""
    outputs = {}
    for name, runner in runners.items():
        try:
            outputs[name] = runner.dense_output()
        except (RuntimeError, ValueError) as error:
            rows[name]['status'] = failure(error)
    if len(outputs) < 2:
        for name in outputs:
            rows[name]['status'] = 'skipped: nothing to check against'
        return False
    reference = next(r for r in REFERENCES if r in outputs)
    agree = True
    for name, out in outputs.items():
        result = compare(out, outputs[reference], TOLERANCE)
        rows[name]['reference'] = reference
        rows[name]['max_diff'] = result.max_abs
        if not result.ok:
            rows[name]['status'] = 'MISMATCH'
            agree = False
    return agree


def time_runs(runners: dict[str, Runner], rows: dict[str, dict],
              names: list[str], args: argparse.Namespace,
              device: torch.device) -> None:
    """Median ms of the forward pass and of forward + backward."""
    timing = dict(min_seconds=args.min_seconds, clock=args.clock)
    for name in names:
        runner, row = runners[name], rows[name]
        try:
            row['fwd_ms'] = 1e3 * median_time(runner.forward, device,
                                              **timing)
            row['train_ms'] = 1e3 * median_time(runner.train_step, device,
                                                **timing)
        except (RuntimeError, ValueError) as error:
            row['status'] = failure(error)


def measure_memory(plan: Plan, rows: dict[str, dict], names: list[str],
                   args: argparse.Namespace) -> None:
    """Peak MiB of forward and of forward + backward of :obj:`names`,
    measured in a fresh process; status ``'ok'`` or why not."""
    if not names:
        return
    spec = dict(plan=plan.to_json(), impls=names, args=vars(args))
    try:
        peaks = run_isolated(memory_worker, spec, threads=args.threads)
    except WorkerFailed as error:
        peaks = {name: str(error) for name in names}
    for name, result in peaks.items():
        if isinstance(result, str):
            rows[name]['status'] = result
            continue
        rows[name]['peak_fwd_mib'], rows[name]['peak_train_mib'] = result
        rows[name]['status'] = 'ok'


def memory_worker(spec: dict) -> dict:
    """Runs in the process of :func:`_common.run_isolated`: implementation
    -> [forward MiB, forward + backward MiB], or why not."""
    if not pin_malloc():
        print("Could not fix the allocator's mmap threshold: CPU memory "
              'figures may be too low after large cases', flush=True)
    args = argparse.Namespace(**spec['args'])
    device = torch.device(args.device)
    plan = Plan.from_json(spec['plan'])
    runners = build_runners(plan.build(), spec['impls'], args, device)
    result: dict[str, object] = {}
    for name, runner in runners.items():
        try:
            runner.train_step()  # the first call allocates what persists
            result[name] = (peak_memory(runner.forward, device) / MiB,
                            peak_memory(runner.train_step, device) / MiB)
        except (RuntimeError, ValueError) as error:
            result[name] = failure(error)
    return result
