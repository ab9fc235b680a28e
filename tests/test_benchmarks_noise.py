"""benchmarks/noise.py: a small sweep on Cora end to end, resumed (no
timing asserted)."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'
pytestmark = pytest.mark.slow


def sweep(out: Path, raw_dir: Path, *flags: str,
          check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / 'noise.py'), '--datasets', 'Cora',
         '--ratios', '0', '0.2', '--epochs', '4', '--patience', '4',
         '--threads', '1', '--raw-dir', str(raw_dir), '--out', str(out),
         *flags],
        capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, (proc.stdout[-2000:] +
                                      proc.stderr[-4000:])
    return proc


def test_sweep_resumes_and_reports_each_point(tmp_path, planetoid_raw_dir):
    sweep(tmp_path, planetoid_raw_dir, '--seeds', '1')
    first = json.loads((tmp_path / 'noise.json').read_text())['runs']
    assert [(r['ratio'], r['layer'], r['seed']) for r in first] == [
        (0.0, 'gat', 0), (0.0, 'gatv2', 0), (0.2, 'gat', 0),
        (0.2, 'gatv2', 0)]
    # Cora's 10,556 edges, a fifth as many noise edges, the same for both
    # layers.
    assert [r['noise_edges'] for r in first] == [0, 0, 2111, 2111]
    sweep(tmp_path, planetoid_raw_dir, '--seeds', '2', '--resume')
    saved = json.loads((tmp_path / 'noise.json').read_text())
    assert saved['runs'][:4] == first  # kept, not trained again
    assert [r['seed'] for r in saved['runs'][4:]] == [1] * 4
    assert len(saved['commands']) == 2
    with open(tmp_path / 'noise.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert [(r['noise ratio'], r['seeds']) for r in rows] == [('0', '2'),
                                                              ('0.2', '2')]
    for row in rows:
        for layer in ('GAT', 'GATv2'):
            mean, std = row[layer].split(' ± ')
            assert 0 <= float(mean) <= 100 and float(std) >= 0
    assert (tmp_path / 'noise.png').stat().st_size > 0
    # Another recipe cannot resume this sweep.
    proc = sweep(tmp_path, planetoid_raw_dir, '--seeds', '2', '--resume',
                 '--patience', '9', check=False)
    assert proc.returncode != 0 and 'other settings' in proc.stderr
    (tmp_path / 'noise.md').unlink()
    sweep(tmp_path, planetoid_raw_dir, '--report-only')
    assert '| Cora | 0.2 | 2111 |' in (tmp_path / 'noise.md').read_text()


def test_processes_share_the_seeds_out_and_merge(tmp_path, planetoid_raw_dir):
    main, other = tmp_path / 'main', tmp_path / 'other'
    sweep(main, planetoid_raw_dir, '--seeds', '1', '--ratios', '0')
    sweep(other, planetoid_raw_dir, '--seeds', '2', '--first-seed', '1',
          '--ratios', '0')
    assert [r['seed'] for r in json.loads(
        (other / 'noise.json').read_text())['runs']] == [1, 1, 2, 2]
    sweep(main, planetoid_raw_dir, '--merge', str(other), str(other))
    saved = json.loads((main / 'noise.json').read_text())
    # Each run once, in the order added; both commands.
    assert [(r['layer'], r['seed']) for r in saved['runs']] == [
        ('gat', 0), ('gatv2', 0), ('gat', 1), ('gatv2', 1), ('gat', 2),
        ('gatv2', 2)]
    assert len(saved['commands']) == 2
    assert '| Cora | 0 | 0 |' in (main / 'noise.md').read_text()
    assert '| 3 |' in (main / 'noise.md').read_text()
    # Runs of another recipe do not mix in.
    sweep(other, planetoid_raw_dir, '--seeds', '1', '--first-seed', '3',
          '--ratios', '0', '--patience', '9', '--out', str(tmp_path / 'p9'))
    proc = sweep(main, planetoid_raw_dir, '--merge', str(tmp_path / 'p9'),
                 check=False)
    assert proc.returncode != 0 and 'other settings' in proc.stderr
