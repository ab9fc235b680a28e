"""The benchmark harness, benchmarks/_common.py: isolation and its time
limit, the checks of outputs and of training steps, timing order, memory,
failures, data paths and the CSV round trip (no timings asserted)."""
import argparse
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import pyg_gatv2
from pyg_gatv2.fused import cpp_library
from pyg_gatv2.fused.backends import registry

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
import _common  # noqa: E402
from _common import (  # noqa: E402
    StepResult,
    WorkerFailed,
    compare,
    compare_steps,
    failure,
    interleaved_medians,
    loss_weights,
    raw_dir,
    read_csv,
    run_isolated,
    training_step,
    write_csv,
)


def echo_worker(spec: dict) -> dict:
    return dict(doubled=2 * spec['value'], pid=os.getpid(),
                threads=torch.get_num_threads())


def killed_worker(spec: dict) -> dict:
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


def capability_worker(spec: dict) -> dict:
    return dict(level=pyg_gatv2.cpu_capability())


def raising_worker(spec: dict) -> dict:
    raise ValueError(spec['message'])


def hanging_worker(spec: dict) -> dict:
    """Starts a child process, says so, and sleeps past any time limit."""
    child = subprocess.Popen(['sleep', '600'])
    Path(spec['pids']).write_text(f'{os.getpid()} {child.pid}')
    time.sleep(600)
    return {}


def memory_worker(spec: dict) -> dict:
    """The memory of a call that allocates 64 MiB for a while and keeps
    16 MiB, allocator pinned as the benchmarks measure; with
    ``spec['churn']`` after 256 MiB were allocated and freed in small and
    large pieces, which an allocator that keeps freed memory holds."""
    if spec.get('churn'):
        pieces = [torch.ones(2**n) for n in range(10, 27)]
        pieces += [torch.ones(2**12) for _ in range(4096)]
        del pieces
    _common.pin_malloc()
    kept = []

    def fn() -> None:
        temporary = torch.ones(16 * 2**20)  # 64 MiB of float32
        kept.append(torch.ones(4 * 2**20) + temporary[0])

    fn()  # warm-up: the first call also pages in torch's code
    kept.clear()
    memory = _common.step_memory(fn, torch.device('cpu'))
    return dict(peak=memory.peak, kept=memory.kept)


def buffer_cache_worker(spec: dict) -> dict:
    """The memory of a call that fills one 8 MiB buffer of our kernels and
    frees it, allocator pinned as the benchmarks measure."""
    from pyg_gatv2.fused import buffers
    _common.pin_malloc()

    def fn() -> None:
        buffers.empty((8 * 2**20, ), torch.uint8).fill_(1)

    fn()  # warm-up: the buffer is mapped and then cached
    memory = _common.step_memory(fn, torch.device('cpu'))
    return dict(peak=memory.peak, kept=memory.kept)


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


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie, killed but not yet reaped, does
    not)."""
    try:
        state = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1]
    except FileNotFoundError:
        return False
    return state.split()[0] != 'Z'


@pytest.mark.slow
def test_run_isolated_kills_a_worker_past_its_time_limit(tmp_path):
    pids = tmp_path / 'pids'
    with pytest.raises(WorkerFailed) as info:
        # Long enough for the worker to import torch and start its child
        # on a loaded machine.
        run_isolated(hanging_worker, {'pids': str(pids)}, timeout=20)
    assert str(info.value) == 'timed out after 20 s'
    worker, child = map(int, pids.read_text().split())
    # The worker and what it started, killed at once; reaping the orphan
    # may take its new parent a moment.
    deadline = time.monotonic() + 30
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker) and not _alive(child)


@pytest.mark.parametrize('churn', [False, True])
def test_step_memory_counts_what_a_call_keeps(churn):
    memory = run_isolated(memory_worker, {'churn': churn})
    mib = 2.0**20
    # 16 MiB kept, give or take a page table.
    assert 15.5 * mib <= memory['kept'] <= 17 * mib
    # The 64 MiB temporary, the 16 MiB of ones and their sum at once.
    assert memory['peak'] >= 95 * mib


@pytest.mark.skipif(not _common.cpu_memory_supported(),
                    reason='no /proc/self/clear_refs')
def test_step_memory_counts_the_buffer_cache():
    # A buffer the cache held from the warm-up counts again, and the cache
    # holding it after the call counts as kept.
    memory = run_isolated(buffer_cache_worker, {})
    mib = 2.0**20
    assert 8 * mib <= memory['peak'] <= 9 * mib
    assert 8 * mib <= memory['kept'] <= 9 * mib


@pytest.mark.parametrize('level, named', [
    ('avx2', 'C++ kernels at CPU level avx2'),
    (None, 'C++ kernels not built'),
])
def test_machine_names_the_cpu_level_of_the_cpp_kernels(monkeypatch, level,
                                                         named):
    monkeypatch.setattr(pyg_gatv2, 'cpu_capability', lambda: level)
    assert _common.cpp_level() == named
    text = _common.machine(2, 'cpu')
    assert f'torch {torch.__version__}, 2 threads, device cpu, {named}, ' \
        'memory allocator: ' in text
    assert 'numba' not in text


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='glibc only')
def test_allocator_says_whether_freed_memory_is_kept(monkeypatch):
    for name in ('LD_PRELOAD', *_common.KEEP_FREED_MEMORY,
                 *_common.BUFFER_SETTINGS):
        monkeypatch.delenv(name, raising=False)
    assert 'fresh pages' in _common.allocator()
    assert _common.allocator() in _common.machine(2, 'cpu')
    for name, value in _common.KEEP_FREED_MEMORY.items():
        monkeypatch.setenv(name, value)
    assert _common.allocator() == (
        'glibc malloc keeping freed memory (MALLOC_MMAP_MAX_=0 '
        f'MALLOC_TRIM_THRESHOLD_={2**40})')
    monkeypatch.setattr(sys, 'argv', ['benchmarks/kernels.py', '--quick'])
    assert _common.command_line().endswith(
        f'MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_={2**40} python '
        'benchmarks/kernels.py --quick')
    monkeypatch.setenv('MALLOC_MMAP_MAX_', '1')
    assert 'fresh pages' in _common.allocator()
    monkeypatch.setenv('LD_PRELOAD', '/usr/lib/libjemalloc.so.2')
    assert _common.allocator() == 'LD_PRELOAD=/usr/lib/libjemalloc.so.2'


def test_reports_say_which_tensors_get_huge_pages_and_reuse(monkeypatch):
    from pyg_gatv2.fused import buffers
    for name in (*_common.KEEP_FREED_MEMORY, *_common.BUFFER_SETTINGS):
        monkeypatch.delenv(name, raising=False)
    ours = "our C++ kernels' buffers of 1 MiB and more"
    assert _common.huge_pages() == (ours if buffers.enabled() else 'none')
    assert f'huge pages: {_common.huge_pages()}' in _common.machine(2, 'cpu')
    assert _common.buffer_cache() == f'{ours} reused once freed'
    assert f'buffer cache: {ours}' in _common.machine(2, 'cpu')
    monkeypatch.setenv('PYG_GATV2_BUFFER_CACHE', '0')
    assert _common.buffer_cache() == 'off (PYG_GATV2_BUFFER_CACHE=0)'
    monkeypatch.setenv('PYG_GATV2_HUGE_PAGES', '0')
    assert _common.huge_pages() == 'none'
    monkeypatch.setenv('THP_MEM_ALLOC_ENABLE', '1')
    assert _common.huge_pages() == "PyTorch's (THP_MEM_ALLOC_ENABLE=1)"
    monkeypatch.setattr(sys, 'argv', ['benchmarks/minibatch.py'])
    assert _common.command_line() == (
        'PYG_GATV2_BUFFER_CACHE=0 PYG_GATV2_HUGE_PAGES=0 '
        'THP_MEM_ALLOC_ENABLE=1 python benchmarks/minibatch.py')


@pytest.mark.skipif(not _common.cpu_memory_supported(),
                    reason='no /proc/self/clear_refs')
def test_step_memory_counts_under_an_allocator_that_keeps_freed_memory(
        monkeypatch):
    # Without mappings of their own, freed tensors stay in the heap: the
    # pinned allocator must map large ones again to see a step's peak.
    for name, value in _common.KEEP_FREED_MEMORY.items():
        monkeypatch.setenv(name, value)
    memory = run_isolated(memory_worker, {'churn': True})
    mib = 2.0**20
    assert memory['peak'] >= 95 * mib
    assert 15.5 * mib <= memory['kept'] <= 17 * mib


@pytest.mark.skipif(cpp_library.capability() is None,
                    reason='the C++ kernels are not built')
@pytest.mark.slow
def test_workers_inherit_the_cpu_level_of_the_environment(monkeypatch):
    # 'default' runs on every CPU; the best level another, where there is
    # one (this process loaded the kernels at the best above).
    monkeypatch.setenv(cpp_library.CAPABILITY_ENV, 'default')
    assert run_isolated(capability_worker, {}) == dict(level='default')
    monkeypatch.delenv(cpp_library.CAPABILITY_ENV)
    best = cpp_library.capabilities()[0]
    assert run_isolated(capability_worker, {}) == dict(level=best)


@pytest.mark.parametrize('built, flag, chosen', [
    (True, None, 'cpp'),
    (False, None, 'torch'),
    (True, 'torch', 'torch'),
    (False, 'torch', 'torch'),
    (True, 'cpp', 'cpp'),
])
def test_cpu_backend_defaults_to_cpp_where_it_can_run(monkeypatch, built,
                                                      flag, chosen):
    if not built:
        monkeypatch.setattr(registry()['cpp'], 'unavailable_reason',
                            lambda: 'the C++ kernels were not built')
    elif _common.cpp_unavailable():
        pytest.skip('the C++ kernels are not built')
    parser = argparse.ArgumentParser()
    assert _common.cpu_backend(parser, flag) == chosen


def test_cpu_backend_says_why_cpp_cannot_run(monkeypatch, capsys):
    monkeypatch.setattr(registry()['cpp'], 'unavailable_reason',
                        lambda: 'the C++ kernels were not built')
    parser = argparse.ArgumentParser()
    _common.add_cpu_backend_flag(parser, 'the backend')
    with pytest.raises(SystemExit):
        _common.cpu_backend(parser, parser.parse_args(['--backend',
                                                       'cpp']).backend)
    assert ('--backend cpp: the C++ kernels were not built; or use '
            '--backend torch') in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(['--backend', 'numba'])


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


class TinyLayer(torch.nn.Module):
    """A linear map, named like a layer's parameters, whose gradient of
    the input rows can be routed to the wrong rows (``swap_grad_rows``), a
    backward that ``out.sum()`` cannot tell from the right one."""
    def __init__(self, swap_grad_rows: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(3, 2)
        self.swap_grad_rows = swap_grad_rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(SwapGradRows.apply(x) if self.swap_grad_rows else x)


class SwapGradRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad.flip(0)


def _step(layer: torch.nn.Module, x: torch.Tensor) -> StepResult:
    return training_step(lambda: layer(x),
                         dict(layer.named_parameters(), x=x))


def test_training_step_weights_each_output_entry():
    layer = TinyLayer()
    x = torch.randn(4, 3, requires_grad=True)
    for leaf in (x, *layer.parameters()):  # stale, to be left out
        leaf.grad = torch.full_like(leaf, 100.0)
    result = _step(layer, x)
    weights = loss_weights((4, 2), 'cpu')
    assert torch.equal(weights, loss_weights((4, 2), 'cpu'))  # seeded
    assert weights.unique().numel() == weights.numel()
    assert torch.equal(result.output, layer(x).detach())
    assert sorted(result.grads) == ['lin.bias', 'lin.weight', 'x']
    torch.testing.assert_close(result.grads['lin.bias'], weights.sum(0))
    torch.testing.assert_close(result.grads['x'],
                               weights @ layer.lin.weight.detach())
    assert all(p.grad is None for p in layer.parameters()) and x.grad is None
    # An input that requires no gradient gets none.
    assert 'x' not in _step(layer, x.detach()).grads


def test_compare_steps_agrees_with_itself():
    x = torch.randn(4, 3, requires_grad=True)
    checked = compare_steps(_step(TinyLayer(), x), _step(TinyLayer(), x),
                            1e-5)
    assert checked.ok and checked.status == 'ok'
    assert checked.errors == {'output': 0.0, 'lin.weight': 0.0,
                              'lin.bias': 0.0, 'x': 0.0}


@pytest.mark.parametrize('name', ['lin.weight', 'lin.bias', 'x'])
def test_compare_steps_names_a_gradient_off_by_one_percent(name):
    x = torch.randn(4, 3, requires_grad=True)
    expected = _step(TinyLayer(), x)
    got = _step(TinyLayer(), x)
    got.grads[name] = got.grads[name] * 1.01
    checked = compare_steps(got, expected, 1e-5)
    assert not checked.ok and checked.failed == [name]
    assert checked.output_error == 0.0
    assert checked.worst_grad[0] == name and checked.worst_grad[1] > 1e-3
    assert checked.status.startswith(f'MISMATCH ({name}: ')


def test_compare_steps_sees_gradients_sent_to_the_wrong_rows():
    x = torch.randn(4, 3, requires_grad=True)
    checked = compare_steps(_step(TinyLayer(swap_grad_rows=True), x),
                            _step(TinyLayer(), x), 1e-5)
    assert checked.failed == ['x'] and checked.worst_grad[0] == 'x'


def test_compare_steps_output_nan_and_tolerances():
    x = torch.randn(4, 3, requires_grad=True)
    expected = _step(TinyLayer(), x)
    got = _step(TinyLayer(), x)
    got.output = got.output + 1e-3
    got.grads['lin.bias'] = got.grads['lin.bias'] * 1e-5 + float('nan')
    checked = compare_steps(got, expected, 1e-5)
    assert checked.failed == ['output', 'lin.bias']
    # NaN counts as the largest error.
    assert checked.worst_grad[0] == 'lin.bias'
    assert math.isnan(checked.worst_grad[1])
    assert checked.status == 'MISMATCH (lin.bias: nan)'
    # A looser tolerance for gradients only.
    got = _step(TinyLayer(), x)
    got.grads['lin.weight'] = got.grads['lin.weight'] * 1.001
    assert compare_steps(got, expected, 1e-5, grad_tolerance=1e-2).ok
    assert not compare_steps(got, expected, 1e-2, grad_tolerance=1e-5).ok
    got.grads.pop('x')
    with pytest.raises(ValueError, match='same tensors'):
        compare_steps(got, expected, 1e-5)


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
