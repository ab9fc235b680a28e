"""benchmarks/accuracy.py: with none of its datasets' raw files it writes
nothing, so that the committed results stay."""
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'


def test_missing_raw_files_leave_the_results_alone(tmp_path, monkeypatch):
    monkeypatch.delenv('PYG_GATV2_RAW_DIR', raising=False)
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'accuracy.md').write_text('committed\n')
    empty = tmp_path / 'empty'
    empty.mkdir()
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / 'accuracy.py'), '--raw-dir',
         str(empty), '--out', str(out), '--datasets', 'Cora', 'CiteSeer'],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f'no raw files of Cora, CiteSeer in {empty}' in proc.stderr
    assert 'Nothing was written' in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ['accuracy.md']
    assert (out / 'accuracy.md').read_text() == 'committed\n'
