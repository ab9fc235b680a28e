"""benchmarks/scale.py: a small sweep end to end on the CPU (no timing
asserted), the sweep's stop for an implementation that ran out of memory,
and the sampled check of our outputs, made to fail."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'
sys.path.insert(0, str(BENCHMARKS))
import scale  # noqa: E402
from _common import WorkerFailed, read_csv  # noqa: E402

SMALL = ['--device', 'cpu', '--degree', '10', '--features', '8', '--heads',
         '2', '--channels', '4', '--repeats', '1', '--check-nodes', '32']


def test_small_sweep_runs_and_checks_ours(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / 'scale.py'), *SMALL, '--edges',
         '3000', '6000', '--dtype', 'float32', '--impls', 'pyg,ours',
         '--out', str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = read_csv(tmp_path / 'scale.csv')
    assert [(int(r['edges']), int(r['nodes']), r['impl']) for r in rows] == [
        (3000, 300, 'pyg'), (3000, 300, 'ours'), (6000, 600, 'pyg'),
        (6000, 600, 'ours')]
    for row in rows:
        assert row['status'] == 'ok', row
        assert float(row['step_ms']) > 0 and float(row['peak_gib']) > 0
    for row in rows[1::2]:
        # float32 against float32: the kernels' rounding only.
        error, sampled = row['check_max_rel_error'].split(' over ')
        assert float(error) <= scale.CHECK_TOLERANCE[torch.float32]
        assert sampled.endswith('edges')
    markdown = (tmp_path / 'scale.md').read_text()
    assert 'Largest size that ran: PyG GATv2Conv (eager) 6,000 edges' in (
        markdown)
    assert 'GiB of RAM.' in markdown


def spec_of(**changes):
    args = scale.parse_args([*SMALL, '--edges', '4000', '--dtype',
                             'bfloat16'])
    spec = dict(impl='ours', edges=4000, nodes=400, device='cpu',
                features=8, heads=2, channels=4, dtype='bfloat16',
                index_dtype='int32', repeats=1, check_nodes=32,
                seed=args.seed)
    spec.update(changes)
    return spec


def test_sampled_check_finds_a_wrong_output():
    spec = spec_of()
    x, edge_index = scale.draw_graph(spec, torch.device('cpu'),
                                     torch.bfloat16, torch.int32)
    layer = scale.build_layer('ours', spec, torch.device('cpu'),
                              torch.bfloat16)
    with torch.no_grad():
        out = layer(x, edge_index)
    check = scale.check_sampled(layer, x, edge_index, out, spec,
                                torch.bfloat16)
    assert check['ok'] and check['max_rel_error'] > 0
    assert check['nodes'] > 16 and check['edges'] > check['nodes']
    # Every output a tenth too large, as a kernel that mis-scales them.
    wrong = out * 1.1
    check = scale.check_sampled(layer, x, edge_index, wrong, spec,
                                torch.bfloat16)
    assert not check['ok']


def test_an_implementation_out_of_memory_is_not_run_at_larger_sizes():
    args = scale.parse_args([*SMALL, '--edges', '1000', '2000', '4000'])
    calls = []

    def run(spec):
        calls.append((spec['impl'], spec['edges']))
        if spec['impl'] == 'pyg' and spec['edges'] >= 2000:
            return dict(status='out of memory', error='CUDA out of memory')
        if spec['impl'] == 'pyg_compile':
            raise WorkerFailed('out of memory (worker killed by SIGKILL)')
        if spec['impl'] == 'ours' and spec['edges'] == 4000:
            return dict(status='ok', first_step_s=1.0, step_s=0.5,
                        peak_bytes=2.0**30, device_bytes=2.0**32,
                        device='GPU X, 4.0 GiB',
                        check=dict(nodes=30, edges=300, max_rel_error=0.5,
                                   ok=False))
        return dict(status='ok', first_step_s=1.0, step_s=0.5,
                    peak_bytes=2.0**30, device_bytes=2.0**32,
                    device='GPU X, 4.0 GiB')
    written = []
    rows = scale.sweep(args, run, on_row=lambda rows: written.append(
        len(rows)))
    # The report is written after every row.
    assert written == [1, 2, 3, 4, 5, 6]
    assert calls == [('pyg', 1000), ('pyg_compile', 1000), ('ours', 1000),
                     ('pyg', 2000), ('ours', 2000), ('ours', 4000)]
    assert [r['status'] for r in rows] == [
        'ok', 'out of memory (worker killed by SIGKILL)', 'ok',
        'out of memory', 'ok', 'MISMATCH']
    assert rows[0]['step_ms'] == '500.0' and rows[0]['peak_share'] == '0.25'
    markdown = scale.report(args, rows)
    assert '; GPU X, 4.0 GiB.' in markdown
    assert ('Largest size that ran: PyG GATv2Conv (eager) 1,000 edges; '
            'PyG GATv2Conv (torch.compile) none; ours, fused 2,000 edges.'
            ) in markdown


def test_a_check_that_did_not_fit_leaves_the_step_standing():
    # The step fitted; the sampled check after it did not: the row says so
    # and the next size still runs.
    args = scale.parse_args([*SMALL, '--edges', '1000', '2000', '--impls',
                             'ours'])
    rows = scale.sweep(args, lambda spec: dict(
        status='ok', first_step_s=1.0, step_s=0.5, peak_bytes=1.0,
        device_bytes=2.0, device='GPU X', check=dict(
            skipped='out of memory')))
    assert [r['status'] for r in rows] == ['ok', 'ok']
    assert rows[0]['check_max_rel_error'] == 'not checked (out of memory)'


def test_pyg_is_skipped_where_its_projected_peak_is_too_large():
    # 2000 edges and 200 loops of 2 x 4 bfloat16 elements: PyG eager's
    # 40 bytes per float32 element, halved, make 352,000 bytes, compiled
    # 140,800, with 16 per edge for its indices.
    args = scale.parse_args([*SMALL, '--edges', '2000', '--max-memory',
                             str(300_000 / 2**30)])
    assert scale.projected_peak('pyg', 2000, 200, args) == 352_000 + 32_000
    assert scale.projected_peak('ours', 2000, 200, args) == 0
    ran = []
    rows = scale.sweep(args, lambda spec: ran.append(spec['impl']) or dict(
        status='ok', first_step_s=1.0, step_s=0.5, peak_bytes=1.0,
        device_bytes=2.0, device='CPU'))
    assert ran == ['pyg_compile', 'ours']
    assert rows[0]['status'] == 'skipped (projected 0.000358 GiB > 0.000279)'


@pytest.mark.parametrize('flags,message', [
    (['--edges', '2000', '1000'], 'ascending'),
    (['--impls', 'pyg,dgl'], 'unknown'),
    (['--repeats', '0'], 'at least 1'),
])
def test_flags_are_checked(flags, message, capsys):
    with pytest.raises(SystemExit):
        scale.parse_args(flags)
    assert message in capsys.readouterr().err
