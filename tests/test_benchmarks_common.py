"""The benchmark harness, benchmarks/_common.py: isolation, checks, timing
order, failures, data paths and the CSV round trip (no timings asserted)."""
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
from _common import (  # noqa: E402
    WorkerFailed,
    compare,
    failure,
    interleaved_medians,
    raw_dir,
    read_csv,
    run_isolated,
    write_csv,
)


def echo_worker(spec: dict) -> dict:
    return dict(doubled=2 * spec['value'], pid=os.getpid(),
                threads=torch.get_num_threads())


def killed_worker(spec: dict) -> dict:
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


def raising_worker(spec: dict) -> dict:
    raise ValueError(spec['message'])


def test_run_isolated_returns_the_result_of_another_process():
    result = run_isolated(echo_worker, {'value': 21}, threads=1)
    assert result['doubled'] == 42
    assert result['pid'] != os.getpid()
    assert result['threads'] == 1


@pytest.mark.parametrize('worker, reason', [
    (killed_worker, 'out of memory (worker killed by SIGKILL)'),
    (raising_worker, 'error: worker exit code 1'),
])
def test_run_isolated_reports_a_dead_worker(worker, reason):
    with pytest.raises(WorkerFailed) as info:
        run_isolated(worker, {'message': 'no'})
    assert str(info.value) == reason


def test_compare():
    expected = torch.tensor([[0.5, -4.0], [2.0, 0.0]])
    same = compare(expected.clone(), expected, 1e-5)
    assert same.ok and same.max_abs == 0.0
    # Within 1e-5 of the largest entry (4), not of each entry.
    close = compare(expected + torch.tensor([[3e-5, 0.0], [0.0, 0.0]]),
                    expected, 1e-5)
    assert close.ok and close.max_rel == pytest.approx(3e-5 / 4, rel=1e-3)
    far = compare(expected + 1e-3, expected, 1e-5)
    assert not far.ok and far.max_abs == pytest.approx(1e-3)
    with pytest.raises(ValueError, match='shapes'):
        compare(expected[0], expected, 1e-5)


@pytest.mark.parametrize('error, status', [
    (torch.OutOfMemoryError('CUDA out of memory. Tried'), 'out of memory'),
    (MemoryError(), 'out of memory'),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"),
     'out of memory'),
    (ValueError('bad shape\nmore detail'), 'error: ValueError: bad shape'),
])
def test_failure(error, status):
    assert failure(error) == status


def test_interleaved_medians_alternate_the_runs():
    calls = []
    medians = interleaved_medians(
        {'a': lambda: calls.append('a'), 'b': lambda: calls.append('b')},
        torch.device('cpu'), repeats=3)
    assert calls == ['a', 'b'] * 3
    assert set(medians) == {'a', 'b'} and min(medians.values()) >= 0


def test_raw_dir(monkeypatch, tmp_path):
    monkeypatch.setenv('PYG_GATV2_RAW_DIR', str(tmp_path / 'env'))
    assert raw_dir(tmp_path / 'flag') == tmp_path / 'flag'
    assert raw_dir() == tmp_path / 'env'
    monkeypatch.delenv('PYG_GATV2_RAW_DIR')
    assert raw_dir() is None


def test_csv_round_trip_drops_empty_cells(tmp_path):
    rows = [dict(case='a', ms=1.5), dict(case='b')]
    write_csv(tmp_path / 'rows.csv', rows, ['case', 'ms'])
    assert read_csv(tmp_path / 'rows.csv') == [dict(case='a', ms='1.5'),
                                               dict(case='b')]


def test_kernels_figure_ratios():
    from kernels import ratios
    rows = [dict(case='c', impl='pyg', step_ms='10'),
            dict(case='c', impl='fused_numba', step_ms='4'),
            dict(case='c', impl='mp', status='MISMATCH')]
    assert ratios(rows, 'step_ms', 'pyg') == {'c': {'fused_numba': 2.5}}
    assert ratios(rows, 'step_ms', 'pyg_compile') == {}


def _kernels_check(reference, run):
    import argparse

    from kernels import check
    entries = {'ours': {}}
    args = argparse.Namespace(warmup=1, dtype='float32')
    alive = check({'ours': run}, reference, None, None, entries, args,
                  'check', torch.device('cpu'))
    return alive, entries['ours']


def test_kernels_check_without_pyg_reference_says_unchecked():
    from kernels import rows_of

    def reference(x, edge_index):
        raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate')

    lin = torch.nn.Linear(4, 4)
    alive, entry = _kernels_check(reference,
                                  lambda train: lin(torch.ones(3, 4)))
    assert alive == ['ours']
    assert entry['status'] == 'ok' and 'error' not in entry
    assert entry['unchecked'] == 'PyG eager out of memory'
    case = dict(name='c', nodes=3, edges=1, heads=1, channels=4)
    row, = rows_of([dict(case=case, impls={'ours': entry})], 1.0)
    assert row['max_rel_error'] == 'unchecked (PyG eager out of memory)'


def test_kernels_check_raises_other_reference_failures():
    def reference(x, edge_index):
        raise ValueError('bad input')

    with pytest.raises(ValueError, match='bad input'):
        _kernels_check(reference, lambda train: None)


def test_kernels_check_reports_a_failed_implementation():
    def run(train):
        raise torch.OutOfMemoryError('CUDA out of memory.')

    alive, entry = _kernels_check(lambda x, e: torch.zeros(3, 4), run)
    assert alive == [] and entry['status'] == 'out of memory'


def test_kernels_bandwidth_share_uses_the_copy_timed_beside_the_kernel():
    from kernels import fused_bytes, rows_of
    case = dict(name='c', nodes=10, edges=40, heads=2, channels=4)
    seconds = fused_bytes(case) / 5e9  # a kernel moving 5 GB/s
    impls = {'fused_cpp': dict(status='ok', kernel_fwd=seconds)}
    paired, = rows_of([dict(case=case, impls=impls, memcpy=20e9)], 10e9)
    assert paired['memcpy_gb_s'] == '20.0'
    assert paired['kernel_vs_memcpy'] == '0.25'
    # Results without a paired copy fall back to the run's.
    alone, = rows_of([dict(case=case, impls=impls)], 10e9)
    assert (alone['memcpy_gb_s'], alone['kernel_vs_memcpy']) == ('10.0',
                                                                 '0.50')
