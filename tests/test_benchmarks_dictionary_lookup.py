"""benchmarks/dictionary_lookup.py: a small sweep of each task end to end,
and its reports rewritten from the JSON (no timing asserted)."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'
pytestmark = pytest.mark.slow


def sweep(out: Path, *flags: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / 'dictionary_lookup.py'), '--ks',
         '3', '--heads', '1', '--seeds', '1', '--max-epochs', '2',
         '--threads', '1', '--out', str(out), *flags],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize('values, stem', [
    ('permutation', 'dictionary_lookup'),
    ('with_replacement', 'dictionary_lookup_with_replacement'),
])
def test_sweep_reports_where_the_attention_lands(tmp_path, values, stem):
    sweep(tmp_path, '--values', values)
    rows = read_csv(tmp_path / f'{stem}.csv')
    saved = json.loads((tmp_path / f'{stem}.json').read_text())
    assert [row['layer'].split()[0] for row in rows] == ['GAT', 'GATv2']
    for row, result in zip(rows, saved['results'], strict=True):
        (top, ), (weight, ) = (result['own_key']['test_top'],
                               result['own_key']['test_weight'])
        assert row['own key on top'] == row['best head'] == f'{top:.3f}'
        assert row['weight on own key'] == f'{weight:.3f}'
    markdown = (tmp_path / f'{stem}.md').read_text()
    assert ('independent draws' in markdown) == (values != 'permutation')
    assert (tmp_path / f'{stem}.png').stat().st_size > 0


def test_reports_of_runs_without_the_attention_say_so(tmp_path):
    # A report written before the attention was measured: its runs show
    # '-', not a number.
    sweep(tmp_path)
    json_path = tmp_path / 'dictionary_lookup.json'
    saved = json.loads(json_path.read_text())
    for result in saved['results']:
        del result['own_key']
    json_path.write_text(json.dumps(saved))
    sweep(tmp_path, '--report-only')
    for row in read_csv(tmp_path / 'dictionary_lookup.csv'):
        assert (row['own key on top'], row['best head'],
                row['weight on own key']) == ('-', '-', '-')
    markdown = (tmp_path / 'dictionary_lookup.md').read_text()
    assert '| - | - |' in markdown
