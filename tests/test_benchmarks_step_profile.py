"""benchmarks/step_profile.py: its byte and FLOP model, how it splits the
step into rows, its flags, and a --quick run end to end (no timing
asserted)."""
import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyg_gatv2.fused.backends import registry

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'
sys.path.insert(0, str(BENCHMARKS))
import step_profile  # noqa: E402
from _common import cpp_level, cpp_unavailable, read_csv  # noqa: E402

# The profile times the passes of the C++ kernels.
needs_cpp = pytest.mark.skipif(cpp_unavailable() is not None,
                               reason='the C++ kernels are not built')

# One edge and one node, so E' = 2 with the self-loop; rows of
# 2 x 3 floats (24 bytes), two float32 statistics per node or edge (8).
CASE = dict(name='hand', kind='random', nodes=1, edges=1, features=5,
            heads=2, channels=3)


def test_bytes_and_flops_of_a_hand_sized_case():
    assert step_profile.pass_bytes(CASE) == {
        # 2 x (x_l row + two indices) + x_r, out rows + lse + offset
        'forward': 2 * (24 + 16) + (48 + 8 + 8),
        # ... + per edge two statistics written; per node grad_out,
        # grad_x_r rows and D read
        'backward_dst': 2 * (24 + 16 + 16) + (72 + 16 + 8),
        # per edge x_r, grad_out rows, two statistics, two indices; per
        # node x_l, grad_x_l rows, offset
        'backward_src': 2 * (48 + 16 + 16) + (48 + 8),
    }
    assert step_profile.flops(CASE) == {
        'forward': 6 * 2 * 6, 'backward_dst': 11 * 2 * 6,
        'backward_src': 6 * 2 * 6, 'projections': 8 * 1 * 5 * 6}


def test_bytes_and_flops_of_the_triton_passes():
    # No statistics per edge written by the pass by destination, which
    # writes and sums one att row per node (24 bytes, twice); the pass by
    # source reads the destination's log-sum-exp and D (as many bytes as
    # the two statistics) and the edge id (8 more), and recomputes.
    assert step_profile.pass_bytes(CASE, 'triton') == {
        'forward': 2 * (24 + 16) + (48 + 8 + 8),
        'backward_dst': 2 * (24 + 16) + 2 * 24 + (72 + 16 + 8),
        'backward_src': 2 * (48 + 16 + 24) + (48 + 8),
    }
    many = dict(CASE, nodes=131_072 * 2)
    rows = step_profile.pass_bytes(many, 'triton')['backward_dst']
    edges = many['edges'] + many['nodes']
    # 16 nodes per program: 16,384 att rows.
    assert rows == edges * 40 + 16_384 * 48 + many['nodes'] * 96
    assert step_profile.flops(CASE, 'triton')['backward_src'] == 12 * 2 * 6


def test_rows_split_the_step_into_parts_and_the_rest():
    times = dict(pyg_step=0.030, step=0.010, projections=0.001,
                 layout=0.002, forward=0.002, backward_dst=0.003,
                 backward=0.005)
    result = dict(case=CASE, status='ok', max_rel_error=2e-7,
                  grad_max_rel_error=3e-7, worst_grad='att', times=times)
    rows = step_profile.rows_of(result, bandwidth=1e9)
    by_part = {row['part']: row for row in rows}
    assert [row['part'] for row in rows] == list(step_profile.ROWS)
    expected_ms = dict(pyg_step='30.000', step='10.000', projections='1.000',
                       forward='2.000', backward_dst='3.000',
                       backward_src='2.000', rest='2.000', layout='2.000')
    assert {part: row['ms'] for part, row in by_part.items()} == expected_ms
    assert by_part['pyg_step']['of_step'] == '3.000'
    assert by_part['rest']['of_step'] == '0.200'
    assert [row['part'] for row in rows if row['in_step']] == [
        'projections', 'forward', 'backward_dst', 'backward_src', 'rest']
    assert by_part['step']['max_rel_error'] == '2.0e-07'
    assert by_part['step']['grad_max_rel_error'] == '3.0e-07'
    assert by_part['step']['worst_grad'] == 'att'
    # 144 bytes in 2 ms: 72,000 B/s, of a 1 GB/s memcpy.
    forward = by_part['forward']
    assert (forward['gb_s'], forward['vs_memcpy']) == ('0.00', '0.00')
    assert forward['gflop_s'] == f'{72 / 0.002 / 1e9:.2f}'
    assert 'gb_s' not in by_part['projections']
    assert 'gflop' not in by_part['layout']


def test_a_case_not_timed_is_one_row_that_says_why():
    rows = step_profile.rows_of(
        dict(case=CASE, status='MISMATCH (lin_l.weight: 1.0e-03)',
             max_rel_error=2e-7, grad_max_rel_error=1e-3,
             worst_grad='lin_l.weight'), bandwidth=1e9)
    assert len(rows) == 1
    assert rows[0]['status'] == 'MISMATCH (lin_l.weight: 1.0e-03)'
    assert rows[0]['grad_max_rel_error'] == '1.0e-03' and 'ms' not in rows[0]


@needs_cpp
def test_quick_defaults_give_way_to_explicit_flags(capsys):
    args = step_profile.parse_args(['--quick'])
    assert (args.repeats, args.warmup, args.cora) == (5, 1, False)
    assert args.name == 'step_profile_quick' and args.threads == 2
    args = step_profile.parse_args(['--quick', '--repeats', '9', '--cora'])
    assert (args.repeats, args.cora) == (9, True)
    args = step_profile.parse_args([])
    assert (args.repeats, args.cora, args.name) == (7, True, 'step_profile')
    assert args.kernels == 'cpp'
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            step_profile.parse_args(['--device', 'cuda'])
        assert 'no CUDA GPU is present' in capsys.readouterr().err
    # The C++ kernels on the CPU, the Triton kernels on CUDA; no torch
    # backend, whose passes do not run apart.
    for flags in (['--device', 'cuda', '--kernels', 'cpp'],
                  ['--backend', 'torch'], ['--kernels', 'torch']):
        with pytest.raises(SystemExit):
            step_profile.parse_args(flags)


def test_without_the_cpp_kernels_it_says_why(monkeypatch, capsys):
    monkeypatch.setattr(registry()['cpp'], 'unavailable_reason',
                        lambda: 'the C++ kernels were not built')
    with pytest.raises(SystemExit):
        step_profile.parse_args(['--quick'])
    assert ('this profile times the passes of the C++ kernels, which '
            'cannot run here: the C++ kernels were not built') in (
                capsys.readouterr().err)


SPEC = dict(case=dict(CASE, nodes=50, edges=200, features=6),
            seed=0, repeats=1, warmup=1)


def wrong_att_gradient(monkeypatch, impl: str) -> None:
    """Makes the profile build :obj:`impl` with its forward untouched and
    the gradient of one parameter, ``att``, 1% off."""
    make_impls = step_profile.make_impls

    def with_wrong_att_gradient(*args, **kwargs):
        ref, impls = make_impls(*args, **kwargs)
        impls[impl][0].att.register_hook(lambda g: g * 1.01)
        return ref, impls

    monkeypatch.setattr(step_profile, 'make_impls', with_wrong_att_gradient)


@needs_cpp
def test_a_wrong_gradient_is_refused_before_timing(monkeypatch):
    wrong_att_gradient(monkeypatch, 'fused_cpp')
    result = step_profile.run_worker(SPEC)
    assert result['status'].startswith('MISMATCH (att: ')
    assert result['worst_grad'] == 'att'
    assert result['grad_max_rel_error'] > 1e-3
    assert result['max_rel_error'] <= step_profile.TOLERANCE
    assert 'times' not in result
    row, = step_profile.rows_of(result, bandwidth=1e9)
    assert row['worst_grad'] == 'att' and 'ms' not in row


@needs_cpp
def test_parts_that_do_not_reproduce_the_step_are_refused():
    from kernels import Run, build_case, make_impls
    case = SPEC['case']
    x, edge_index = build_case(case, 0, torch.device('cpu'))
    _, impls = make_impls(case, ['fused_cpp'], torch.device('cpu'))
    run = Run(*impls['fused_cpp'], x, edge_index)
    step = run.step()
    parts = step_profile.StepParts(run.conv, x, edge_index)
    checked = step_profile.parts_check(parts, step)
    assert checked.ok, checked.errors
    assert sorted(checked.errors) == ['att', 'lin_l.bias', 'lin_l.weight',
                                      'lin_r.bias', 'lin_r.weight',
                                      'output']
    parts.grads.att.mul_(1.01)
    checked = step_profile.parts_check(parts, step)
    assert checked.failed == ['att']


@pytest.mark.skipif('triton' not in registry() or registry()[
    'triton'].unavailable_reason() is not None,
    reason='triton cannot run here (its interpreter is set in conftest.py)')
def test_the_triton_kernels_parts_reproduce_their_step(monkeypatch):
    # In Triton's interpreter on the CPU, as the profile runs them on a
    # GPU: the step checked against PyG, the parts against the step, and
    # every row timed; then a wrong gradient refused.
    spec = dict(SPEC, kernels='triton')
    result = step_profile.run_worker(spec)
    assert result['status'] == 'ok', result
    assert result['parts_error'] <= step_profile.TOLERANCE
    assert sorted(result['times']) == sorted(
        ['pyg_step', 'step', 'projections', 'layout', 'forward',
         'backward_dst', 'backward'])
    rows = step_profile.rows_of(result, bandwidth=1e9, kernels='triton')
    assert [row['part'] for row in rows] == list(step_profile.ROWS)
    wrong_att_gradient(monkeypatch, 'fused_triton')
    assert step_profile.run_worker(spec)['status'].startswith(
        'MISMATCH (att: ')


@pytest.mark.slow
@needs_cpp
def test_quick_run_reports_parts_that_add_up_to_the_step(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / 'step_profile.py'), '--quick',
         '--threads', '1', '--out', str(tmp_path)], capture_output=True,
        text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    csv_path = tmp_path / 'step_profile_quick.csv'
    with open(csv_path, newline='') as f:
        assert set(step_profile.COLUMNS) <= set(next(csv.reader(f)))
    rows = read_csv(csv_path)
    assert [row['part'] for row in rows] == list(step_profile.ROWS)
    assert {row['status'] for row in rows} == {'ok'}
    by_part = {row['part']: row for row in rows}
    step = float(by_part['step']['ms'])
    parts = sum(float(row['ms']) for row in rows if row.get('in_step'))
    assert parts == pytest.approx(step, rel=1e-3, abs=0.01)
    # The parts timed on their own take time; backward_src and rest are
    # differences of medians, which noise can take below zero on a case
    # this small: only their sum with the others is checked (above).
    for part in ('projections', 'forward', 'backward_dst', 'layout'):
        assert float(by_part[part]['ms']) > 0, by_part[part]
    for part in ('backward_src', 'rest'):
        assert math.isfinite(float(by_part[part]['ms'])), by_part[part]
    assert float(by_part['step']['max_rel_error']) <= step_profile.TOLERANCE
    assert float(by_part['step']['grad_max_rel_error']) <= (
        step_profile.TOLERANCE)
    assert by_part['step']['worst_grad'] in ('att', 'bias', 'lin_l.weight',
                                             'lin_l.bias', 'lin_r.weight',
                                             'lin_r.bias')
    for part in ('forward', 'backward_dst', 'backward_src'):
        row = by_part[part]
        assert float(row['model_mb']) > 0 and float(row['gflop']) > 0
    markdown = (tmp_path / 'step_profile_quick.md').read_text()
    assert 'benchmarks/step_profile.py --quick --threads 1' in markdown
    assert 'memcpy bandwidth' in markdown
    assert 'grad_max_rel_error' in markdown
    # The script's process inherits this one's CPU level.
    assert f'{cpp_level()}, memory allocator: ' in markdown
    assert markdown in proc.stdout
