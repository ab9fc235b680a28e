"""benchmarks/inference.py: its flags and a --quick run end to end, whose
layer-wise passes must predict what the full batch predicts (no timing or
memory figure asserted beyond being measured)."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'
sys.path.insert(0, str(BENCHMARKS))
import inference  # noqa: E402
from _common import read_csv  # noqa: E402


@pytest.mark.parametrize('argv', [['--nodes', '0'], ['--batch-sizes', '0'],
                                  ['--threads', '0']])
def test_bad_flags_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        inference.parse_args(argv)
    assert 'error:' in capsys.readouterr().err


def test_quick_defaults_and_flags_that_win():
    args = inference.parse_args(['--quick', '--batch-sizes', '100'])
    assert args.nodes == inference.QUICK['nodes']
    assert args.batch_sizes == [100]
    assert args.name == 'inference_quick'


@pytest.mark.slow  # three Python processes: about 20 s
def test_quick_run_predicts_what_the_full_batch_predicts(tmp_path):
    pytest.importorskip(
        'torch_sparse', reason='NeighborLoader needs torch-sparse; install '
        "it with pip install 'pyg-gatv2[sampling]'")
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / 'inference.py'), '--quick',
         '--out', str(tmp_path)], capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = read_csv(tmp_path / 'inference_quick.csv')
    assert [(row['pass_'], row.get('batch_size')) for row in rows] == [
        ('full batch', None), ('layer-wise', '256'), ('layer-wise', '1024')]
    for row in rows:
        assert float(row['peak_mib']) >= 0
        assert float(row['seconds']) > 0
    for row in rows[1:]:
        assert row['same_prediction'] == '3000/3000'
        assert float(row['peak_vs_full_batch']) >= 0
    markdown = (tmp_path / 'inference_quick.md').read_text()
    assert 'benchmarks/inference.py --quick' in markdown
