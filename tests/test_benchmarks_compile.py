"""benchmarks/compile.py: its check of a training step against PyG eager
(in process, with a model made to fail), its rows, and a small run end to
end (no timing asserted)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'
sys.path.insert(0, str(BENCHMARKS))
import compile as compile_benchmark  # noqa: E402
from _common import read_csv  # noqa: E402

SPEC = dict(seed=0, nodes=60, degree=4, features=8, heads=2, channels=4,
            classes=3, impls=['pyg', 'fused'])


def test_check_refuses_a_model_whose_backward_is_wrong():
    device = torch.device('cpu')
    x, edge_index, models, eager = compile_benchmark.build(SPEC, device)
    # Forward untouched, the gradient of one parameter 1% off.
    eager['fused'].convs[1].att.register_hook(lambda grad: grad * 1.01)
    results = compile_benchmark.check_models(models, eager, x, edge_index,
                                             device)
    pyg, fused = results['pyg'], results['fused']
    assert pyg['status'] == 'ok' and pyg['grad_max_rel_error'] == 0.0
    assert pyg['peak'] >= 0 and 'kept' in pyg
    assert fused['status'].startswith('MISMATCH (convs.1.att: ')
    assert fused['worst_grad'] == 'convs.1.att'
    assert fused['grad_max_rel_error'] > 1e-3
    assert fused['max_rel_error'] <= compile_benchmark.TOLERANCE
    assert 'peak' not in fused


def test_rows_give_no_time_or_ratio_to_a_model_that_failed():
    check = {
        'pyg': dict(status='ok', graph_breaks=0, max_rel_error=0.0,
                    grad_max_rel_error=0.0, worst_grad='convs.0.att',
                    peak=2.0**21, kept=0.0),
        'fused': dict(status='MISMATCH (convs.1.att: 1.0e-02)',
                      graph_breaks=0, max_rel_error=0.0,
                      grad_max_rel_error=1e-2, worst_grad='convs.1.att'),
        'fused_compile': dict(status='ok', graph_breaks=0,
                              max_rel_error=1e-7, grad_max_rel_error=2e-7,
                              worst_grad='convs.0.att', peak=2.0**20,
                              kept=2.0**19),
    }
    # Only what passed is timed.
    timed = {'pyg': dict(status='ok', step=0.004),
             'fused_compile': dict(status='ok', step=0.001)}
    pyg, fused, compiled = compile_benchmark.rows_of(check, timed)
    assert fused['status'] == 'MISMATCH (convs.1.att: 1.0e-02)'
    assert fused['grad_max_rel_error'] == '1.0e-02'
    assert not {'step_ms', 'speedup_vs_pyg', 'peak_mib'} & set(fused)
    assert (compiled['step_ms'], compiled['speedup_vs_pyg']) == ('1',
                                                                 '4.00x')
    # No ratio against our eager model, which failed.
    assert compiled['vs_fused_eager'] == ''
    assert (compiled['peak_mib'], compiled['kept_mib']) == ('1.0', '0.5')
    assert pyg['speedup_vs_pyg'] == '1.00x'


@pytest.mark.slow
def test_small_run_checks_gradients_and_counts_the_kept_layout(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / 'compile.py'), '--nodes', '2000',
         '--degree', '50', '--features', '8', '--heads', '2', '--channels',
         '4', '--classes', '3', '--repeats', '1', '--threads', '1',
         '--impls', 'pyg,fused', '--timeout', '300', '--out',
         str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    pyg, fused = read_csv(tmp_path / 'compile.csv')
    for row in (pyg, fused):
        assert row['status'] == 'ok', row
        assert float(row['max_rel_error']) <= compile_benchmark.TOLERANCE
        assert float(row['grad_max_rel_error']) <= (
            compile_benchmark.TOLERANCE)
        assert row['worst_grad'].startswith('convs.')
        assert float(row['peak_mib']) >= float(row['kept_mib'])
    assert float(fused['speedup_vs_pyg'].rstrip('x')) > 0
    # Our layer keeps the layout of edge_index (102,000 edges with the
    # self-loops: CSR, CSC) and its copy between steps, about 4.7 MiB;
    # PyG's keeps nothing. The resident set moves by up to about 1 MiB with
    # the allocator's state (what the PyG model freed before), so the
    # graph is large enough for the layout to stand out.
    assert float(fused['kept_mib']) >= 3.5
    assert float(pyg['kept_mib']) <= 0.5
    markdown = (tmp_path / 'compile.md').read_text()
    assert 'grad_max_rel_error' in markdown and 'kept_mib' in markdown
