"""benchmarks/validation_cost.py: a small run on each fused backend it
takes, end to end (no timing asserted)."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'
sys.path.insert(0, str(BENCHMARKS))
from _common import cpp_level, cpp_unavailable  # noqa: E402


@pytest.mark.parametrize('backend', [
    pytest.param('cpp', marks=pytest.mark.skipif(
        cpp_unavailable() is not None,
        reason='the C++ kernels are not built')),
    'torch',
])
def test_small_run_reports_each_measure_against_the_step(tmp_path, backend):
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / 'validation_cost.py'), '--nodes',
         '300', '--edges', '3000', '--rounds', '2', '--threads', '1',
         '--backend', backend, '--out', str(tmp_path)],
        capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    with open(tmp_path / 'validation_cost.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert [row['measure'] for row in rows] == [
        'training step, validation default',
        'training step, validation strict',
        'layout-cache proof (index comparison), every call',
        'strict value checks (index range, NaN)']
    assert rows[0]['share'] == '1.000'
    for row in rows:
        assert float(row['ms']) > 0 and float(row['share']) > 0, row
    markdown = (tmp_path / 'validation_cost.md').read_text()
    # The script's process inherits this one's CPU level.
    named = f'fused cpp ({cpp_level()})' if backend == 'cpp' else (
        'fused torch,')
    assert f'N=300, E=3000, 64 in, 4x32, self-loops, {named}' in markdown
