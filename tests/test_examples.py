"""The scripts in examples/ run as plain scripts, with no arguments or the
ones their docstrings show, and print what they promise."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / 'examples'


def run_example(name, *args, env=None):
    # One thread: the C++ kernels sum the gradient of att over work ranges
    # whose number follows the thread count, and torch's own kernels block
    # their sums by it, so a training run repeats bit for bit on a machine
    # only at a fixed count. One thread is also the count the recorded
    # results were made with (--threads 1).
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True,
        text=True, env={**os.environ, 'OMP_NUM_THREADS': '1', **(env or {})},
        timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.slow
def test_node_classification(planetoid_raw_dir, tmp_path):
    out = run_example('node_classification.py', env={
        'PYG_GATV2_RAW_DIR': str(planetoid_raw_dir),
        'PYG_GATV2_ROOT': str(tmp_path / 'data')})
    assert re.search(r'^Epoch: 001, Loss: \d\.\d{4}, Train: ', out, re.M)
    accuracy = float(re.findall(r'^Test accuracy: (\d\.\d{4})$', out,
                                re.M)[-1])
    # Seed 0 of the GAT recipe. On one thread it gives the same bits on
    # every run here (0.837, as recorded), but other CPUs (other vector
    # units and -march=native kernels) round differently, and after a few
    # hundred epochs that is as good as another seed. So the floor comes
    # from the recipe's spread over seeds: 50 seeds in
    # benchmarks/results/cora_50_seeds.json gave 0.8324 +- 0.0054, lowest
    # 0.816; 0.81 is four standard deviations below the mean (under a
    # normal fit, missed once in 30,000 runs).
    assert accuracy >= 0.81
    assert list((tmp_path / 'data').iterdir()) == [tmp_path / 'data' /
                                                    'Cora']


@pytest.mark.slow
def test_dictionary_lookup():
    out = run_example('dictionary_lookup.py', '--k', '5')
    accuracy = dict(re.findall(
        r'^(gat|gatv2): train .* test (\d\.\d{4}) per node', out, re.M))
    assert set(accuracy) == {'gat', 'gatv2'}
    # Static attention gives every query of a graph the same key ranking;
    # with k = 5 that caps GAT far below GATv2, which fits the task.
    assert float(accuracy['gatv2']) >= 0.95
    assert float(accuracy['gat']) <= 0.4
