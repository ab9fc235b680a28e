"""benchmarks/gpu_checks.sh, dry: every step's command is one that its
script accepts, so that a lent GPU's minutes go to measuring, not to a
mistyped flag."""
import importlib
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / 'benchmarks'
sys.path.insert(0, str(BENCHMARKS))

STEPS = ('float32 bfloat16 autocast powerlaw tests scale turbo planetoid '
         'compile profile products minibatch').split()
DEFAULT_STEPS = 'float32 bfloat16 autocast powerlaw tests scale'.split()


def dry_run(tmp_path: Path, *steps: str) -> list[list[str]]:
    """The commands that ``gpu_checks.sh OUT steps`` would run, split into
    words, each after its ``timeout`` and limit."""
    proc = subprocess.run(
        ['bash', str(BENCHMARKS / 'gpu_checks.sh'), str(tmp_path), *steps],
        cwd=REPO, env={**os.environ, 'GPU_CHECKS_DRY_RUN': '1'},
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    commands = []
    for line in proc.stdout.splitlines():
        if line.startswith('== '):
            continue
        words = shlex.split(line)
        if words[0] == 'timeout':
            commands.append(words[2:])
        else:
            commands.append(words)
    return commands


def test_the_steps_are_the_ones_listed(tmp_path):
    # A new step joins STEPS, and so the checks below.
    [message] = dry_run(tmp_path, 'no_such_step')
    assert ' '.join(message).endswith('choose from ' + ' '.join(STEPS))
    assert len(dry_run(tmp_path)) == len(dry_run(tmp_path, *DEFAULT_STEPS))


@pytest.mark.parametrize('step', STEPS)
def test_each_step_runs_a_command_its_script_accepts(step, tmp_path,
                                                     monkeypatch):
    # The scripts' own checks of a GPU, as on the lent machine.
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    commands = dry_run(tmp_path, step)
    assert commands
    for words in commands:
        assert words[0] == 'python3' and words[1] != '-c', words
        if words[1:3] == ['-m', 'pytest']:
            files = [word for word in words if word.startswith('tests/')]
            assert files and all((REPO / f).is_file() for f in files)
            marker = words[words.index('-m', 3) + 1]
            assert marker == 'cuda'
            continue
        script = Path(words[1])
        assert script.parent == Path('benchmarks'), words
        module = importlib.import_module(script.stem)
        args = module.parse_args(words[2:])
        assert Path(args.out) == tmp_path
