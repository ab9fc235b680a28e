import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import pytest
import torch
from _ogb_data import write_ogb

from pyg_gatv2.experiments.cli import build_parser, main
from pyg_gatv2.models import GATv2

REPO = Path(__file__).resolve().parents[1]
FINAL_LINE = re.compile(r'Test accuracy: (\d\.\d{3}) \+- (\d\.\d{3}) over '
                        r'(\d+) seeds?')


@pytest.fixture(scope='module')
def cora_flags(planetoid_raw_dir, tmp_path_factory):
    """Flags that read Cora from the shared raw files into a fresh root."""
    root = tmp_path_factory.mktemp('planetoid')
    return ['--dataset', 'cora', '--raw-dir', str(planetoid_raw_dir),
            '--root', str(root), '--device', 'cpu', '--no-progress']


def train(flags, out):
    return main(['train', *flags, '--out', str(out)])


def without_seconds(report):
    for run in report['runs']:
        run.pop('seconds')
    report['summary'].pop('seconds_total')
    report.pop('command')
    return report


def test_train_writes_results_curves_and_checkpoints(cora_flags, tmp_path,
                                                     capsys):
    out = tmp_path / 'out'
    flags = [*cora_flags, '--seeds', '2', '--seed', '5', '--epochs', '6',
             '--checkpoint-every', '2', '--hidden', '4', '--heads', '2']
    assert train(flags, out) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r'Seed 5: test 0\.\d{4}, val 0\.\d{4} at epoch \d+ '
                        r'\(6 epochs, [\d.]+ s\)', lines[0])
    assert lines[1].startswith('Seed 6: ')
    final = FINAL_LINE.fullmatch(lines[-1])
    assert final and final.group(3) == '2' and lines[-1].endswith('seeds')

    report = json.loads((out / 'results.json').read_text())
    assert report['command'].startswith('pyg-gatv2 train --dataset cora ')
    summary = report['summary']
    assert summary['seeds'] == [5, 6]
    assert final.group(1) == f"{summary['test_acc_mean']:.3f}"
    assert final.group(2) == f"{summary['test_acc_std']:.3f}"
    assert report['settings']['lr'] == 0.005
    assert report['settings']['weight_decay'] == 0.0005
    assert report['model']['heads'] == 2
    for run in report['runs']:
        assert run['history']['epoch'] == [1, 2, 3, 4, 5, 6]
        assert 0.0 <= run['test_acc'] <= 1.0

    image = matplotlib.image.imread(out / 'curves.png')
    assert image.shape[0] >= 400 and image.shape[1] >= 1000
    assert image[..., :3].std() > 0.05  # drawn on, not a blank canvas

    best = torch.load(out / 'checkpoints' / 'best_seed6.pt',
                      weights_only=True)
    model = GATv2(**report['model'])
    model.load_state_dict(best['model'])
    assert best['test_acc'] == report['runs'][1]['test_acc']


def test_resume_reproduces_a_finished_run(cora_flags, tmp_path, capsys):
    out = tmp_path / 'out'
    flags = [*cora_flags, '--epochs', '4', '--checkpoint-every', '2']
    assert train(flags, out) == 0
    first = json.loads((out / 'results.json').read_text())
    assert train([*flags, '--resume'], out) == 0
    again = json.loads((out / 'results.json').read_text())
    assert without_seconds(again) == without_seconds(first)

    capsys.readouterr()
    assert train([*flags, '--resume', '--lr', '0.01'], out) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1
    assert err.startswith('pyg-gatv2: error: Cannot resume from ')


def snapshot(folder):
    return {path: path.read_bytes() for path in folder.rglob('*')
            if path.is_file()}


def test_an_earlier_run_is_not_overwritten(cora_flags, tmp_path, capsys):
    out = tmp_path / 'out'
    flags = [*cora_flags, '--epochs', '2', '--hidden', '4', '--heads', '2']
    assert train(flags, out) == 0
    capsys.readouterr()
    # Each file of the earlier run on its own is enough to refuse.
    for name in ('checkpoints/state_seed0.pt', 'checkpoints/best_seed0.pt',
                 'results.json'):
        before = snapshot(out)
        assert train([*flags, '--epochs', '1'], out) == 1
        err = capsys.readouterr().err
        assert err.count('\n') == 1
        assert err.startswith(f'pyg-gatv2: error: {out} holds an earlier '
                              f'run ({out / name}), which this one would '
                              'overwrite; pass --resume to continue it')
        assert 'another --out' in err
        assert snapshot(out) == before
        (out / name).unlink()
    # The curves alone are no run to keep.
    assert train([*flags, '--epochs', '1'], out) == 0
    report = json.loads((out / 'results.json').read_text())
    assert report['runs'][0]['epochs'] == 1


def test_overwrite_trains_afresh_over_an_earlier_run(cora_flags, tmp_path,
                                                     capsys):
    out = tmp_path / 'out'
    flags = [*cora_flags, '--epochs', '2', '--hidden', '4', '--heads', '2']
    assert train([*flags, '--seeds', '2'], out) == 0
    # Every file of the earlier run goes, the second seed's too.
    assert train([*flags, '--epochs', '1', '--overwrite'], out) == 0
    report = json.loads((out / 'results.json').read_text())
    assert [run['epochs'] for run in report['runs']] == [1]
    assert sorted(p.name for p in (out / 'checkpoints').iterdir()) == [
        'best_seed0.pt', 'state_seed0.pt']
    capsys.readouterr()
    assert train([*flags, '--resume', '--overwrite'], out) == 1
    assert '--resume continues the run in --out and --overwrite deletes ' \
        'it' in capsys.readouterr().err


@pytest.fixture(scope='module')
def finished_run(cora_flags, tmp_path_factory):
    """A finished two-seed run and its flags."""
    out = tmp_path_factory.mktemp('finished') / 'out'
    flags = [*cora_flags, '--seeds', '2', '--epochs', '2', '--hidden', '4',
             '--heads', '2']
    assert train(flags, out) == 0
    return flags, out


def truncate_to(size):
    def damage(path):
        assert path.stat().st_size > size
        path.write_bytes(path.read_bytes()[:size])
    return damage


@pytest.mark.parametrize('damage', [
    truncate_to(50000), truncate_to(1000), truncate_to(0),
    lambda path: path.write_bytes(b'garbage\n' * 1000),
], ids=['truncated-50000', 'truncated-1000', 'empty', 'garbage'])
def test_a_corrupt_checkpoint_is_one_line_on_resume(finished_run, damage,
                                                    tmp_path, capsys):
    flags, finished = finished_run
    out = tmp_path / 'out'
    shutil.copytree(finished, out)
    state = out / 'checkpoints' / 'state_seed1.pt'
    damage(state)
    capsys.readouterr()
    assert train([*flags, '--resume'], out) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1
    assert err.startswith(f'pyg-gatv2: error: {state}: cannot be read as a '
                          'training-state checkpoint (')
    assert 'the file is truncated or corrupt; delete it' in err
    assert 'weights_only' not in err
    # As the message says: without the file, that seed trains again.
    state.unlink()
    assert train([*flags, '--resume'], out) == 0
    again = json.loads((out / 'results.json').read_text())
    first = json.loads((finished / 'results.json').read_text())
    assert without_seconds(again) == without_seconds(first)


def test_divergence_is_one_line(cora_flags, tmp_path, capsys):
    assert train([*cora_flags, '--lr', '1e20'], tmp_path) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1
    assert re.match(r'pyg-gatv2: error: Training diverged at epoch \d+ '
                    r'\(seed 0\)', err)


def test_missing_data_is_one_line(tmp_path, capsys):
    empty = tmp_path / 'empty'
    empty.mkdir()
    code = main(['train', '--raw-dir', str(empty), '--root',
                 str(tmp_path / 'root'), '--out', str(tmp_path / 'out')])
    assert code == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1
    assert err.startswith('pyg-gatv2: error: ') and 'missing' in err


@pytest.mark.parametrize('flags,message', [
    (['--dataset', 'ogbn-mag'], "unknown dataset 'ogbn-mag'"),
    (['--batch-size', '0'], "--batch-size: expected a positive integer"),
    (['--num-neighbors', '0'], 'expected a positive number of neighbours '
     "(or -1 for all), got '0'"),
    (['--num-workers', '-1'], "expected a non-negative integer, got '-1'"),
    (['--dist-timeout', '0'], "--dist-timeout: expected a positive number"),
    (['--seeds', '0'], "--seeds: expected a positive integer, got '0'"),
    (['--epochs', '1.5'], "expected a positive integer, got '1.5'"),
    (['--lr', '-1'], "--lr: expected a positive number, got '-1'"),
    (['--lr', 'fast'], "expected a positive number, got 'fast'"),
    (['--weight-decay', 'nan'], 'expected a non-negative number'),
    (['--dropout', '1.5'], "expected a probability in [0, 1), got '1.5'"),
    (['--split', 'geom-gcn'], "invalid choice: 'geom-gcn'"),
    (['--device', 'tpu'], "--device: device='tpu'"),
    (['--unknown-flag'], 'unrecognized arguments: --unknown-flag'),
])
def test_bad_flags_are_one_line(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(['train', *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1
    assert re.match(r'pyg-gatv2( train)?: error: ', err)
    assert message in err


def test_a_command_is_required(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert 'required: COMMAND' in capsys.readouterr().err


def test_help_documents_every_flag():
    parser = build_parser()
    train_parser = next(
        action.choices['train'] for action in parser._actions
        if hasattr(action, 'choices') and isinstance(action.choices, dict))
    text = train_parser.format_help()
    for flag in ('--dataset', '--root', '--raw-dir', '--split', '--seeds',
                 '--seed', '--epochs', '--patience', '--stop-on', '--lr',
                 '--weight-decay', '--layers', '--hidden', '--heads',
                 '--output-heads', '--dropout', '--attention-dropout',
                 '--device', '--threads', '--compile', '--out',
                 '--checkpoint-every', '--resume', '--no-progress',
                 '--batch-size', '--num-neighbors', '--num-workers',
                 '--eval-batch-size', '--dist-timeout'):
        assert flag in text
    for action in train_parser._actions:
        assert action.help, action.option_strings


@pytest.mark.slow
def test_python_m_runs_the_command_line(cora_flags, tmp_path):
    env = {**os.environ, 'PYTHONPATH': str(REPO)}
    proc = subprocess.run(
        [sys.executable, '-m', 'pyg_gatv2', 'train', *cora_flags,
         '--epochs', '2', '--out', str(tmp_path / 'out')],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert FINAL_LINE.fullmatch(proc.stdout.splitlines()[-1])
    assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize('flags,message', [
    (['--num-neighbors', '5', '5'], '--num-neighbors samples mini-batches '
     'and needs --batch-size'),
    (['--num-workers', '2'], '--num-workers samples mini-batches'),
    (['--eval-batch-size', '64'], '--eval-batch-size samples mini-batches'),
    (['--batch-size', '8', '--num-neighbors', '5'], '--num-neighbors has 1 '
     'hops for 2 layers; give one fan-out per layer'),
    (['--dataset', 'ogbn-arxiv', '--split', 'random'], '--split applies to '
     'the Planetoid graphs; ogbn-arxiv has its official split'),
])
def test_inconsistent_flags_are_one_line(flags, message, tmp_path, capsys):
    assert main(['train', *flags, '--out', str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1
    assert err.startswith(f'pyg-gatv2: error: {message}')


def test_mini_batches_from_the_command_line(cora_flags, tmp_path, capsys):
    out = tmp_path / 'out'
    flags = [*cora_flags, '--epochs', '3', '--batch-size', '64',
             '--num-neighbors', '5', '5', '--hidden', '4', '--heads', '2']
    assert train(flags, out) == 0
    assert FINAL_LINE.fullmatch(capsys.readouterr().out.splitlines()[-1])
    report = json.loads((out / 'results.json').read_text())
    assert report['settings']['batch_size'] == 64
    assert report['settings']['num_neighbors'] == [5, 5]
    assert report['settings']['processes'] == 1
    state = torch.load(out / 'checkpoints' / 'state_seed0.pt',
                       weights_only=True)
    assert state['settings']['batch_size'] == 64
    assert train([*flags, '--resume'], out) == 0
    again = json.loads((out / 'results.json').read_text())
    assert without_seconds(again) == without_seconds(report)


@pytest.mark.slow
@pytest.mark.parametrize('workers', ['0', '1'])
def test_a_killed_mini_batch_run_resumes_to_the_uninterrupted_result(
        cora_flags, tmp_path, workers):
    # Two seeds in mini-batches, checkpoints every 5 epochs: the run is
    # killed (SIGKILL) a moment after its second seed's first checkpoint,
    # then resumed.
    flags = [*cora_flags, '--seeds', '2', '--epochs', '40',
             '--checkpoint-every', '5', '--batch-size', '128',
             '--num-neighbors', '5', '5', '--hidden', '4', '--heads', '2',
             '--threads', '1', '--num-workers', workers]
    assert train(flags, tmp_path / 'reference') == 0
    reference = json.loads(
        (tmp_path / 'reference' / 'results.json').read_text())

    run = tmp_path / 'run'
    env = {**os.environ, 'PYTHONPATH': str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, '-m', 'pyg_gatv2', 'train', *flags, '--out',
         str(run)], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        second = run / 'checkpoints' / 'state_seed1.pt'
        while not second.exists() and proc.poll() is None:
            assert time.monotonic() < deadline, 'no checkpoint of seed 1'
            time.sleep(0.01)
        time.sleep(0.2)
        assert proc.poll() is None, 'the run ended before it was killed'
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert not (run / 'results.json').exists()

    assert train([*flags, '--resume'], run) == 0
    resumed = json.loads((run / 'results.json').read_text())
    assert without_seconds(resumed) == without_seconds(reference)


def test_loader_workers_leave_training_the_other_cores(cora_flags, tmp_path,
                                                     monkeypatch):
    from pyg_gatv2.experiments.training.sampling import training_threads
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0, 1, 2},
                        raising=False)
    threads = torch.get_num_threads()
    try:
        flags = [*cora_flags, '--epochs', '1', '--batch-size', '256',
                 '--num-neighbors', '3', '3', '--hidden', '4', '--heads',
                 '2', '--num-workers', '1']
        assert train(flags, tmp_path / 'auto') == 0
        report = json.loads((tmp_path / 'auto' / 'results.json').read_text())
        assert report['settings']['threads'] == training_threads(1) == 2
        # --threads wins.
        assert train([*flags, '--threads', '3'], tmp_path / 'given') == 0
        report = json.loads(
            (tmp_path / 'given' / 'results.json').read_text())
        assert report['settings']['threads'] == 3
    finally:
        torch.set_num_threads(threads)


def test_ogb_graph_from_the_command_line(tmp_path, capsys):
    write_ogb(tmp_path / 'ogb' / 'ogbn_arxiv', 'ogbn-arxiv')
    out = tmp_path / 'out'
    assert main(['train', '--dataset', 'ogbn-arxiv', '--root',
                 str(tmp_path / 'ogb'), '--epochs', '3', '--hidden', '4',
                 '--heads', '2', '--device', 'cpu', '--no-progress',
                 '--out', str(out)]) == 0
    assert FINAL_LINE.fullmatch(capsys.readouterr().out.splitlines()[-1])
    report = json.loads((out / 'results.json').read_text())
    assert report['dataset'] == 'ogbn-arxiv'
    assert report['settings']['split'] == 'official'
    assert report['model']['out_channels'] == 40
    # OGB's evaluator agrees with the trainer's accuracy.
    assert report['ogb_test_acc'] == [report['runs'][0]['test_acc']]


def test_missing_ogb_is_one_line(tmp_path, capsys, monkeypatch):
    write_ogb(tmp_path / 'ogb' / 'ogbn_arxiv', 'ogbn-arxiv')
    monkeypatch.setitem(sys.modules, 'ogb', None)  # as if not installed
    assert main(['train', '--dataset', 'ogbn-arxiv', '--root',
                 str(tmp_path / 'ogb'), '--epochs', '1', '--device', 'cpu',
                 '--out', str(tmp_path / 'out')]) == 1
    assert capsys.readouterr().err == (
        'pyg-gatv2: error: pyg_gatv2.experiments.datasets.ogb needs the '
        "'ogb' extra of pyg-gatv2 (missing: ogb): pip install "
        "'pyg-gatv2[ogb]'\n")
    assert not (tmp_path / 'out').exists()


@pytest.fixture
def one_thread():
    # DictionaryLookup training is many small steps, which a second thread
    # slows down on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures('one_thread')
def test_dictionary_lookup_writes_table_json_and_figure(tmp_path, capsys):
    out = tmp_path / 'out'
    status = main(['dictionary-lookup', '--ks', '3', '4', '--heads', '1',
                   '--max-epochs', '3', '--eval-every', '1', '--hidden', '8',
                   '--no-progress', '--device', 'cpu', '--out', str(out)])
    assert status == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ['k', 'layer', 'heads', 'seed']
    rows = [line.split() for line in lines[1:5]]
    assert [(row[0], row[1], row[2]) for row in rows] == [
        ('3', 'gat', '1'), ('3', 'gatv2', '1'), ('4', 'gat', '1'),
        ('4', 'gatv2', '1')]
    report = json.loads((out / 'dictionary_lookup.json').read_text())
    assert report['command'].startswith('pyg-gatv2 dictionary-lookup --ks 3')
    assert report['max_epochs'] == 3
    assert report['settings']['readout'] == 'linear'
    results = report['results']
    assert [(r['k'], r['conv']) for r in results] == [
        (3, 'gat'), (3, 'gatv2'), (4, 'gat'), (4, 'gatv2')]
    for row, result in zip(rows, results, strict=True):
        assert row[4:8] == [f"{result[key]:.4f}" for key in (
            'train_node_acc', 'train_graph_acc', 'test_node_acc',
            'test_graph_acc')]
        assert len(result['history']['epoch']) == result['epochs'] <= 3
    image = matplotlib.image.imread(out / 'dictionary_lookup.png')
    assert image.shape[0] > 100 and image.shape[1] > 300


@pytest.mark.usefixtures('one_thread')
def test_dictionary_lookup_with_replacement(tmp_path):
    out = tmp_path / 'out'
    flags = ['dictionary-lookup', '--ks', '3', '--heads', '1', '--convs',
             'gatv2', '--max-epochs', '2', '--eval-every', '1', '--hidden',
             '8', '--no-progress', '--out', str(out)]
    assert main([*flags, '--values', 'with_replacement']) == 0
    report = json.loads((out / 'dictionary_lookup.json').read_text())
    assert report['settings']['values'] == 'with_replacement'
    (result, ) = report['results']
    assert len(result['own_key']['test_top']) == 1
    # The paper's task cannot resume the variant's report.
    assert main([*flags, '--resume']) == 1


def test_dictionary_lookup_refuses_an_earlier_sweep(tmp_path, capsys):
    out = tmp_path / 'out'
    flags = ['dictionary-lookup', '--ks', '3', '--heads', '1', '--convs',
             'gatv2', '--max-epochs', '2', '--eval-every', '1', '--hidden',
             '8', '--no-progress', '--out', str(out)]
    assert main(flags) == 0
    before = (out / 'dictionary_lookup.json').read_bytes()
    capsys.readouterr()
    assert main([*flags, '--seed', '1']) == 1
    err = capsys.readouterr().err
    assert err.startswith(f'pyg-gatv2: error: {out} holds an earlier run '
                          f"({out / 'dictionary_lookup.json'})")
    assert (out / 'dictionary_lookup.json').read_bytes() == before
    assert main([*flags, '--seed', '1', '--overwrite']) == 0
    report = json.loads((out / 'dictionary_lookup.json').read_text())
    assert [run['seed'] for run in report['results']] == [1]


@pytest.mark.parametrize('flags, message', [
    (['--ks', '1'], 'k >= 2'),
    (['--values', 'random'], 'invalid choice'),
    (['--convs', 'gcn'], 'invalid choice'),
    (['--max-epochs', '0'], 'positive integer'),
    (['--heads', '0'], 'positive integer'),
    (['--readout', 'mlp'], 'invalid choice'),
])
def test_dictionary_lookup_usage_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(['dictionary-lookup', *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.usefixtures('one_thread')
def test_dictionary_lookup_one_line_errors(tmp_path, capsys):
    assert main(['dictionary-lookup', '--ks', '3', '--hidden', '10',
                 '--heads', '1', '3', '--out', str(tmp_path)]) == 1
    assert main(['dictionary-lookup', '--ks', '2', '--train-fraction', '0.1',
                 '--out', str(tmp_path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert 'multiple of every --heads' in err[0]
    assert 'training set empty' in err[1]
    assert not (tmp_path / 'dictionary_lookup.json').exists()
