"""benchmarks/kernels.py: its check of a training step against PyG eager
(in process, with implementations made to fail), its table and figure
rows, and a small run end to end (no timing asserted)."""
import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch_geometric.nn as pyg_nn

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'
sys.path.insert(0, str(BENCHMARKS))
import kernels  # noqa: E402
from _common import cpp_unavailable, read_csv  # noqa: E402

from pyg_gatv2 import GATv2Conv  # noqa: E402
from pyg_gatv2.fused import cpp_library  # noqa: E402
from pyg_gatv2.fused.backends import registry  # noqa: E402

needs_cpp = pytest.mark.skipif(cpp_unavailable() is not None,
                               reason='the C++ kernels are not built')

CASE = dict(name='c', kind='random', nodes=40, edges=160, features=6,
            heads=2, channels=3)


class OutOfMemory(GATv2Conv):
    """A layer that runs out of memory, as PyG's does on a large graph."""
    def forward(self, x, edge_index):
        raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate')


def run_small(tmp_path: Path, *args: str) -> list[dict]:
    """kernels.py with ``args``, one repeat, one thread, no Cora, into
    ``tmp_path``; asserts it succeeded and returns its CSV rows."""
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / 'kernels.py'), *args,
         '--repeats', '1', '--warmup', '1', '--no-cora', '--threads', '1',
         '--timeout', '300', '--out', str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return read_csv(tmp_path / 'kernels.csv')


def _check(ref: torch.nn.Module, impls: dict[str, torch.nn.Module]):
    """kernels.check of :obj:`impls` against :obj:`ref` on CASE."""
    x, edge_index = kernels.build_case(CASE, 0, torch.device('cpu'))
    runs = {name: kernels.Run(conv, None, x, edge_index)
            for name, conv in impls.items()}
    entries = {name: {} for name in impls}
    args = argparse.Namespace(warmup=1, dtype='float32', autocast=False)
    alive = kernels.check(runs, ref, x, edge_index, entries, args, 'check',
                          torch.device('cpu'))
    return alive, entries


def _ours(cls=GATv2Conv, ref=None):
    conv = cls(CASE['features'], CASE['channels'], heads=CASE['heads'],
               fused=True)
    if ref is not None:
        conv.load_state_dict(ref.state_dict())
    return conv


def _pyg():
    torch.manual_seed(0)
    return pyg_nn.GATv2Conv(CASE['features'], CASE['channels'],
                            heads=CASE['heads'])


def test_check_refuses_an_implementation_whose_backward_is_wrong():
    ref = _pyg()
    good, wrong = _ours(ref=ref), _ours(ref=ref)
    # Forward untouched, the gradient of one parameter 1% off.
    wrong.att.register_hook(lambda grad: grad * 1.01)
    alive, entries = _check(ref, {'pyg': ref, 'fused': good,
                                  'wrong': wrong})
    assert alive == ['pyg', 'fused']
    bad = entries['wrong']
    assert bad['status'].startswith('MISMATCH (att: ')
    assert bad['grad_name'] == 'att' and bad['grad_error'] > 1e-3
    assert bad['error'] <= kernels.TOLERANCE  # the output agrees
    assert 'peak' not in bad
    ok = entries['fused']
    assert ok['status'] == 'ok' and ok['grad_error'] <= kernels.TOLERANCE
    assert ok['grad_name'] in dict(ref.named_parameters())
    assert ok['peak'] >= 0 and 'kept' in ok and 'peak_step_only' in ok

    # The table: the check's errors for all, and for the mismatch no time,
    # no speed-up and no memory ratio, even if it had been timed.
    entries['wrong'].update(step=0.001, peak=1.0, kept=0.0,
                            peak_step_only=1.0)
    for entry in entries.values():
        entry.setdefault('step', 0.002)
    rows = {row['impl']: row for row in kernels.rows_of(
        [dict(case=CASE, impls=entries)], 1e9)}
    assert rows['wrong']['status'] == bad['status']
    assert rows['wrong']['worst_grad'] == 'att'
    assert float(rows['wrong']['grad_max_rel_error']) > 1e-3
    assert 'step_speedup_vs_eager' not in rows['wrong']
    assert 'peak_vs_eager' not in rows['wrong']
    assert rows['fused']['step_speedup_vs_eager'] == '1.00'
    assert float(rows['fused']['grad_max_rel_error']) <= kernels.TOLERANCE


def test_no_ratio_against_a_baseline_that_failed_its_check():
    impls = {'pyg': dict(status='MISMATCH (att: 1.0e-02)', step=0.002,
                         peak=2.0, kept=0.0, peak_step_only=2.0),
             'fused_cpp': dict(status='ok', step=0.001, peak=1.0, kept=0.0,
                               peak_step_only=1.0)}
    row = kernels.rows_of([dict(case=CASE, impls=impls)], 1e9)[1]
    assert row['step_ms'] == '1.0' and row['peak_mib'] == '0.0'
    assert 'step_speedup_vs_eager' not in row and 'peak_vs_eager' not in row


def test_check_without_pyg_reference_says_unchecked():
    alive, entries = _check(_ours(OutOfMemory), {'fused': _ours()})
    entry = entries['fused']
    assert alive == ['fused']
    assert entry['status'] == 'ok' and 'error' not in entry
    assert entry['unchecked'] == 'PyG eager out of memory'
    row, = kernels.rows_of([dict(case=CASE, impls=entries)], 1.0)
    assert row['max_rel_error'] == 'unchecked (PyG eager out of memory)'
    assert row['grad_max_rel_error'] == row['max_rel_error']


def test_check_raises_other_reference_failures():
    class Broken(GATv2Conv):
        def forward(self, x, edge_index):
            raise ValueError('bad input')

    with pytest.raises(ValueError, match='bad input'):
        _check(_ours(Broken), {'fused': _ours()})


def test_check_reports_a_failed_implementation():
    alive, entries = _check(_pyg(), {'fused': _ours(OutOfMemory)})
    assert alive == [] and entries['fused']['status'] == 'out of memory'


def test_layer_of_finds_the_layer_under_wrappers():
    conv = _ours()
    for module in (conv, kernels.ExplicitLoops(conv),
                   kernels.FreshEdgeIndex(conv), torch.compile(conv)):
        assert kernels.layer_of(module) is conv


def test_figure_ratios():
    rows = [dict(case='c', impl='pyg', step_ms='10'),
            dict(case='c', impl='fused_torch', step_ms='4'),
            dict(case='c', impl='mp', status='MISMATCH')]
    assert kernels.ratios(rows, 'step_ms', 'pyg') == {
        'c': {'fused_torch': 2.5}}
    assert kernels.ratios(rows, 'step_ms', 'pyg_compile') == {}


@pytest.mark.parametrize('device, dtype, built, status', [
    ('cpu', 'float32', True, None),
    ('cuda', 'float32', True, 'n/a (CPU only)'),
    ('cpu', 'bfloat16', True, 'n/a (bfloat16)'),
    ('cpu', 'float32', False, 'n/a (C++ kernels not built)'),
])
def test_fused_cpp_runs_only_where_it_can(monkeypatch, device, dtype, built,
                                          status):
    if not built:
        monkeypatch.setattr(registry()['cpp'], 'unavailable_reason',
                            lambda: 'the C++ kernels were not built')
    elif cpp_unavailable():
        pytest.skip('the C++ kernels are not built')
    args = argparse.Namespace(impls=['fused_cpp', 'fused_torch'],
                              dtype=dtype, max_memory=8.0)
    entries = kernels.runnable(CASE, args, torch.device(device))
    assert entries['fused_cpp'].get('status') == status
    assert entries['fused_torch'] == {}


@needs_cpp
def test_header_names_the_cpu_level_of_fused_cpp():
    level = cpp_library.capability()
    note = ' '.join(kernels.cpp_note(['pyg', 'fused_cpp'],
                                     torch.device('cpu')))
    assert note.startswith(f'fused_cpp: the C++ kernels at CPU level {level} '
                           '(this CPU runs ')
    assert kernels.cpp_note(['pyg', 'fused_torch'], torch.device('cpu')) == []
    assert kernels.cpp_note(['fused_cpp'], torch.device('cuda')) == []


def test_bandwidth_share_uses_the_copy_timed_beside_the_kernel():
    case = dict(name='c', nodes=10, edges=40, heads=2, channels=4)
    seconds = kernels.fused_bytes(case) / 5e9  # a kernel moving 5 GB/s
    impls = {'fused_cpp': dict(status='ok', kernel_fwd=seconds)}
    paired, = kernels.rows_of([dict(case=case, impls=impls, memcpy=20e9)],
                              10e9)
    assert paired['memcpy_gb_s'] == '20.0'
    assert paired['kernel_vs_memcpy'] == '0.25'
    # Results without a paired copy fall back to the run's.
    alone, = kernels.rows_of([dict(case=case, impls=impls)], 10e9)
    assert (alone['memcpy_gb_s'], alone['kernel_vs_memcpy']) == ('10.0',
                                                                 '0.50')


@pytest.mark.slow
def test_small_run_checks_gradients_and_counts_the_kept_layout(tmp_path):
    impls = 'pyg,fused_torch,fused_fresh'
    rows = {row['impl']: row for row in run_small(
        tmp_path, '--nodes', '10000', '--degrees', '10', '--heads-channels',
        '2x8', '--features', '16', '--impls', impls)}
    assert list(rows) == impls.split(',')
    for row in rows.values():
        assert row['status'] == 'ok', row
        assert float(row['max_rel_error']) <= kernels.TOLERANCE
        assert float(row['grad_max_rel_error']) <= kernels.TOLERANCE
        assert row['worst_grad'] in ('att', 'bias', 'lin_l.weight',
                                     'lin_l.bias', 'lin_r.weight',
                                     'lin_r.bias')
        assert float(row['peak_mib']) >= float(row['kept_mib'])
    # Ours keeps its layout of edge_index (CSR, CSC) and the copy of
    # edge_index, 4 MiB measured for 100,000 edges and 10,000 loops; PyG
    # keeps nothing, nor do we for a new edge_index every step. The resident
    # set is counted in pages with a slack of some hundred KiB, so the graph
    # is large enough for the difference to stand well above it.
    assert float(rows['fused_torch']['kept_mib']) >= 2.5
    for name in ('pyg', 'fused_fresh'):
        assert float(rows[name]['kept_mib']) <= 0.5, rows[name]
    assert float(rows['fused_torch']['step_speedup_vs_eager']) > 0
    markdown = (tmp_path / 'kernels.md').read_text()
    assert 'grad_max_rel_error' in markdown
    assert 'with our layout cache emptied first' in markdown


@pytest.mark.slow
@needs_cpp
def test_cpu_capability_flag_picks_the_level_the_header_names(tmp_path):
    # 'default' runs on every CPU, and is not the best where there is a
    # better one. That the workers inherit it is
    # test_benchmarks_common.py's test of run_isolated.
    rows = {row['impl']: row for row in run_small(
        tmp_path, '--nodes', '300', '--degrees', '4', '--heads-channels',
        '2x8', '--features', '8', '--impls', 'pyg,fused_cpp',
        '--cpu-capability', 'default')}
    assert rows['fused_cpp']['status'] == 'ok', rows['fused_cpp']
    markdown = (tmp_path / 'kernels.md').read_text()
    assert '--cpu-capability default' in markdown
    assert 'device cpu, C++ kernels at CPU level default, memory allocator: ' \
        in markdown
    assert 'fused_cpp: the C++ kernels at CPU level default' in markdown


@pytest.mark.parametrize('kind', kernels.ADJACENCIES)
def test_every_adjacency_holds_the_edges(kind):
    edge_index = torch.tensor([[0, 1, 2, 2], [1, 2, 0, 1]])
    adj = kernels.as_adjacency(edge_index, kind, 3)
    if kind == 'edge_index':
        assert adj is edge_index
        return
    expected = torch.zeros(3, 3)
    expected[edge_index[1], edge_index[0]] = 1
    assert torch.equal(adj.to_dense(), expected)


@pytest.mark.slow
def test_sparse_adjacency_given_to_every_implementation(tmp_path):
    rows = {row['impl']: row for row in run_small(
        tmp_path, '--nodes', '10000', '--degrees', '10', '--heads-channels',
        '2x8', '--features', '16', '--impls', 'pyg,fused_torch',
        '--adjacency', 'csr')}
    for row in rows.values():
        assert row['status'] == 'ok', row
        assert float(row['grad_max_rel_error']) <= kernels.TOLERANCE
    # Ours keeps the edges read from the adjacency besides the layout.
    assert float(rows['fused_torch']['kept_mib']) >= 2.5
    assert float(rows['pyg']['kept_mib']) <= 0.5
    assert 'a torch.sparse CSR adjacency' in (tmp_path /
                                              'kernels.md').read_text()


def test_power_law_graph_is_skewed_and_seeded():
    edges = kernels.power_law_edges(5000, 50000,
                                    torch.Generator().manual_seed(0))
    assert edges.shape == (2, 50000) and edges.dtype == torch.long
    assert edges.min() >= 0 and edges.max() < 5000
    for ends in edges:
        degree = torch.bincount(ends, minlength=5000)
        # The busiest node holds a hundredth of the ends, 500 against a
        # mean of 10; a uniform graph's busiest holds about 25.
        assert degree.max() > 200
    assert torch.equal(edges, kernels.power_law_edges(
        5000, 50000, torch.Generator().manual_seed(0)))


def test_hub_graph_sends_most_edges_to_node_0():
    gen = torch.Generator().manual_seed(0)
    edges = kernels.graph_edges('hub', 5000, 50000, gen)
    assert edges.shape == (2, 50000)
    in_degree = torch.bincount(edges[1], minlength=5000)
    assert in_degree[0] >= kernels.HUB_SHARE * 50000
    assert in_degree[1:].max() < 50
    # The sources stay uniform.
    assert torch.bincount(edges[0], minlength=5000).max() < 50


@pytest.mark.slow
def test_power_law_graph_under_autocast(tmp_path):
    rows = run_small(
        tmp_path, '--nodes', '2000', '--degrees', '5', '--heads-channels',
        '2x8', '--features', '16', '--impls', 'pyg,fused_torch', '--graph',
        'powerlaw', '--autocast')
    assert [row['case'] for row in rows] == [
        'power-law N=2000 deg=5 2x8'] * 2
    # Under autocast the outputs differ from float32 ones by more than
    # float32's tolerance, and the check holds them to bfloat16's.
    errors = [float(row['max_rel_error']) for row in rows]
    assert all(row['status'] == 'ok' for row in rows)
    assert errors[0] == 0 and kernels.TOLERANCE < errors[1] <= (
        kernels.DTYPES['bfloat16'][1])
    assert 'torch.autocast in bfloat16' in (tmp_path /
                                            'kernels.md').read_text()
    refused = subprocess.run(
        [sys.executable, str(BENCHMARKS / 'kernels.py'), '--autocast',
         '--dtype', 'bfloat16', '--out', str(tmp_path)],
        capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and 'leave --dtype' in refused.stderr
