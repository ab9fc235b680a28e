"""benchmarks/accuracy.py: with none of its datasets' raw files it writes
nothing, so that the committed results stay; a short run on another device
and under another name leaves the committed results alone too."""
import json
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


def test_a_run_under_another_name_says_where_it_trained(tmp_path,
                                                       planetoid_raw_dir):
    raw = planetoid_raw_dir
    out = tmp_path / 'out'
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / 'accuracy.py'), '--raw-dir',
         str(raw), '--out', str(out), '--datasets', 'Cora', '--seeds', '1',
         '--epochs', '2', '--device', 'cpu', '--name', 'accuracy_here'],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [
        'accuracy_here.csv', 'accuracy_here.json', 'accuracy_here.md',
        'accuracy_here_cora.png']
    assert 'trained on cpu;' in (out / 'accuracy_here.md').read_text()
    record = json.loads((out / 'accuracy_here.json').read_text())
    runs = record['datasets']['Cora']['pyg_gatv2']['runs']
    assert [run['epochs'] for run in runs] == [2]
