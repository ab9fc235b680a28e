import re

import pytest
import torch
from _training_cases import (
    Interrupt,
    assert_same_state,
    build,
    same_runs,
    toy_graph,
)

from pyg_gatv2.experiments.datasets import DictionaryLookup
from pyg_gatv2.experiments.lookup import LookupRecipe, train_lookup
from pyg_gatv2.experiments.lookup_model import DictionaryLookupNet
from pyg_gatv2.experiments.training import (
    CheckpointError,
    CheckpointFiles,
    Checkpointing,
    Checkpoints,
    EarlyStopping,
    Recipe,
    RunState,
    evaluate,
    fit,
    train_node_classifier,
)

# What a training-state file holds: the run's state, and the settings and
# random number generators of the run. Changing it breaks the resumption
# of older checkpoints.
STATE_KEYS = {'settings', 'rng', 'model', 'optimizer', 'helpers', 'history',
              'best_state', 'best', 'epoch', 'steps', 'seconds', 'stop'}
CPU = torch.device('cpu')


def linear_run(**helpers) -> RunState:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    return RunState(model, torch.optim.Adam(model.parameters(), lr=0.1),
                    ('epoch', 'score'), helpers=helpers)


def step(run: RunState) -> None:
    """One optimizer step, so that the weights and Adam's moments move."""
    run.optimizer.zero_grad()
    run.model(torch.rand(4, 3)).square().sum().backward()
    run.optimizer.step()


def test_run_state_keeps_the_history_and_the_best_evaluation():
    run = linear_run()
    assert not run.finished and run.best is None
    assert_same_state(run.best_state, run.model.state_dict())
    step(run)
    run.record({'epoch': 1, 'score': 0.5, 'note': 'a'}, is_best=True)
    best_weights = {k: v.clone() for k, v in run.model.state_dict().items()}
    step(run)
    run.record({'epoch': 2, 'score': 0.4, 'note': 'b'}, is_best=False)
    # The history keeps its keys only; the best entry is kept whole.
    assert run.history == {'epoch': [1, 2], 'score': [0.5, 0.4]}
    assert run.best == {'epoch': 1, 'score': 0.5, 'note': 'a'}
    assert_same_state(run.best_state, best_weights)
    assert not torch.equal(run.model.weight, best_weights['weight'])
    run.stop = 'patience'
    assert run.finished


def test_run_state_round_trip_carries_its_helpers():
    def helpers():
        return {'early_stopping': EarlyStopping(patience=3),
                'order': torch.Generator().manual_seed(5)}

    run = linear_run(**helpers())
    step(run)
    run.helpers['early_stopping'].step(1, 0.9, 0.5)
    run.helpers['order'].manual_seed(11)
    run.record({'epoch': 1, 'score': 0.5}, is_best=True)
    run.epoch, run.steps, run.seconds, run.stop = 1, 4, 2.5, 'max_epochs'

    again = linear_run(**helpers())
    again.load_state_dict(run.state_dict())
    for key in ('history', 'best', 'epoch', 'steps', 'seconds', 'stop'):
        assert getattr(again, key) == getattr(run, key), key
    assert_same_state(again.model.state_dict(), run.model.state_dict())
    assert_same_state(again.best_state, run.best_state)
    assert again.optimizer.state_dict()['state'][0]['step'] == 1
    assert (again.helpers['early_stopping'].state_dict()
            == run.helpers['early_stopping'].state_dict())
    assert torch.equal(torch.rand(3, generator=again.helpers['order']),
                       torch.rand(3, generator=run.helpers['order']))


def test_checkpoints_resume_where_they_were_saved(tmp_path):
    keep = Checkpoints(tmp_path / 'best.pt', tmp_path / 'state.pt',
                       {'lr': 0.1, 'metadata': {'data': 'toy'}}, seed=3)
    run = linear_run()
    # Nothing to resume from yet: the run starts afresh.
    assert not keep.restore(run, CPU)
    assert not Checkpoints(None, None, {}, None).restore(run, CPU)
    step(run)
    run.record({'epoch': 1, 'score': 0.5}, is_best=True)
    run.epoch = 1
    keep.save(run, CPU)
    expected = torch.rand(5)  # what the run draws next

    torch.manual_seed(1234)  # restoring brings back the generator
    again = linear_run()
    assert keep.restore(again, CPU)
    assert torch.equal(torch.rand(5), expected)
    assert again.epoch == 1 and again.best == run.best
    assert_same_state(again.model.state_dict(), run.model.state_dict())
    best = torch.load(tmp_path / 'best.pt', weights_only=True)
    assert best.keys() == {'model', 'epoch', 'score', 'seed', 'metadata'}
    assert (best['epoch'], best['seed'], best['metadata']) == (
        1, 3, {'data': 'toy'})
    assert_same_state(best['model'], run.best_state)


def test_checkpoints_refuse_other_settings(tmp_path):
    path = tmp_path / 'state.pt'
    Checkpoints(None, path, {'lr': 0.1}, seed=0).save(linear_run(), CPU)
    other = Checkpoints(None, path, {'lr': 0.2, 'layers': 2}, seed=0)
    with pytest.raises(ValueError, match=(
            r'^Cannot resume from .*state\.pt: it was written with other '
            r'settings \(lr: 0\.1 there, 0\.2 now; layers: None there, 2 '
            r'now\)')):
        other.restore(linear_run(), CPU)


def truncate_to_half(path):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def empty(path):
    path.write_bytes(b'')


def garbage(path):
    path.write_bytes(b'not a checkpoint at all\n' * 100)


def not_a_state(path):
    torch.save({'model': {}, 'epoch': 3}, path)  # a best model, say


def code_pickle(path):
    torch.save(Interrupt(), path)  # a global that weights_only refuses


@pytest.mark.parametrize('damage, problem', [
    (truncate_to_half, 'cannot be read as a training-state checkpoint'),
    (empty, 'cannot be read as a training-state checkpoint'),
    (garbage, 'cannot be read as a training-state checkpoint'),
    (code_pickle, 'cannot be read as a training-state checkpoint'),
    (not_a_state, "holds a dictionary without 'rng', 'optimizer'"),
])
def test_checkpoints_name_an_unreadable_training_state(tmp_path, damage,
                                                       problem):
    path = tmp_path / 'state.pt'
    keep = Checkpoints(None, path, {'lr': 0.1}, seed=0)
    keep.save(linear_run(), CPU)
    damage(path)
    with pytest.raises(CheckpointError) as err:
        keep.restore(linear_run(), CPU)
    message = str(err.value)
    assert message.startswith(f'{path}: {problem}')
    assert 'delete it' in message and 'another output folder' in message
    # torch's advice for a file it refuses would run the code it holds.
    assert 'weights_only' not in message
    assert isinstance(err.value, OSError)  # a file problem, to the CLI
    path.unlink()  # the remedy: the run starts afresh
    assert not keep.restore(linear_run(), CPU)


def test_a_run_without_resume_never_overwrites_checkpoints(tmp_path):
    data = toy_graph()
    recipe = Recipe(epochs=2)
    train_node_classifier(build, data, [0], recipe,
                          checkpoints=Checkpointing(tmp_path))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {'best_seed0.pt', 'state_seed0.pt'}
    # Refused before seed 1, which has no checkpoint, trains.
    with pytest.raises(FileExistsError, match=re.escape(
            f"{tmp_path / 'state_seed0.pt'} holds a checkpoint of an "
            'earlier run') + '.*pass resume=True'):
        train_node_classifier(build, data, [1, 0], recipe,
                              checkpoints=Checkpointing(tmp_path))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # fit alone refuses too, for either file.
    (tmp_path / 'state_seed0.pt').unlink()
    with pytest.raises(FileExistsError, match='best_seed0.pt'):
        fit(build(), data, recipe, checkpoints=CheckpointFiles(
            tmp_path / 'best_seed0.pt', tmp_path / 'state_seed0.pt'))
    # Resuming is what reuses a folder.
    result = train_node_classifier(
        build, data, [0], recipe,
        checkpoints=Checkpointing(tmp_path, resume=True))
    assert result.runs[0].epochs == 2


def test_checkpoints_load_with_weights_only(tmp_path):
    data = toy_graph()
    result = train_node_classifier(
        build, data, [3], Recipe(epochs=25, patience=10),
        checkpoints=Checkpointing(tmp_path), metadata={'dataset': 'toy'})
    best = torch.load(tmp_path / 'best_seed3.pt', weights_only=True)
    run = result.runs[0]
    assert best.keys() == {'model', 'epoch', 'loss', 'train_acc', 'val_loss',
                           'val_acc', 'test_acc', 'seed', 'metadata'}
    assert best['seed'] == 3 and best['metadata'] == {'dataset': 'toy'}
    assert (best['epoch'], best['test_acc']) == (run.best_epoch, run.test_acc)
    model = build()
    model.load_state_dict(best['model'])
    metrics = evaluate(model, data)
    assert metrics['val_acc'] == run.val_acc
    assert metrics['test_acc'] == run.test_acc
    state = torch.load(tmp_path / 'state_seed3.pt', weights_only=True)
    assert state['epoch'] == run.epochs
    assert state['stop'] == ('max_epochs' if run.epochs == 25 else
                             'patience')
    assert state['best']['epoch'] == run.best_epoch
    assert state['helpers'].keys() == {'early_stopping'}


def test_resume_gives_the_uninterrupted_result(tmp_path):
    data = toy_graph()
    recipe = Recipe(epochs=40, patience=15)

    def train(folder, resume=False, on_epoch=None):
        return train_node_classifier(
            build, data, [0, 1], recipe, on_epoch=on_epoch,
            checkpoints=Checkpointing(tmp_path / folder, 5, resume))

    reference = train('ref')
    assert reference.runs[1].epochs > 23  # so the interruption is mid-run

    def interrupt(seed, metrics):
        if seed == 1 and metrics.epoch == 23:
            raise Interrupt

    with pytest.raises(Interrupt):
        train('run', on_epoch=interrupt)
    state = torch.load(tmp_path / 'run' / 'state_seed1.pt', weights_only=True)
    assert state['epoch'] == 20 and state['stop'] is None

    torch.manual_seed(1234)  # resuming must restore the generator itself
    seen = []
    resumed = train('run', resume=True,
                    on_epoch=lambda seed, m: seen.append((seed, m.epoch)))
    # Seed 0 had finished and is not retrained; seed 1 goes on from 21.
    assert seen[0] == (1, 21) and {seed for seed, _ in seen} == {1}
    same_runs(resumed, reference)
    for name in ('best_seed1.pt', 'state_seed1.pt'):
        ref = torch.load(tmp_path / 'ref' / name, weights_only=True)
        new = torch.load(tmp_path / 'run' / name, weights_only=True)
        assert_same_state(ref['model'], new['model'])


def test_resume_refuses_other_settings(tmp_path):
    data = toy_graph()
    train_node_classifier(build, data, recipe=Recipe(epochs=5),
                          checkpoints=Checkpointing(tmp_path))
    with pytest.raises(ValueError, match=r'other settings \(lr: 0.005 '):
        train_node_classifier(build, data, recipe=Recipe(epochs=5, lr=0.01),
                              checkpoints=Checkpointing(tmp_path,
                                                        resume=True))


def test_both_experiments_keep_the_same_training_state(tmp_path):
    torch.manual_seed(0)
    fit(build(), toy_graph(), Recipe(epochs=2),
        checkpoints=CheckpointFiles(state_path=tmp_path / 'node.pt'))
    dataset = DictionaryLookup(3)
    torch.manual_seed(0)
    train_lookup(DictionaryLookupNet(3, hidden_channels=8), dataset,
                 LookupRecipe(max_epochs=2, eval_every=1),
                 checkpoint_path=tmp_path / 'lookup.pt', progress=False)
    node = torch.load(tmp_path / 'node.pt', weights_only=True)
    lookup = torch.load(tmp_path / 'lookup.pt', weights_only=True)
    assert node.keys() == lookup.keys() == STATE_KEYS
    assert STATE_KEYS == set(linear_run().state_dict()) | {'settings', 'rng'}
    assert node['stop'] == lookup['stop'] == 'max_epochs'
    assert node['epoch'] == lookup['epoch'] == 2
    # Each experiment carries its own helpers in the same record.
    assert node['helpers'].keys() == {'early_stopping'}
    assert lookup['helpers'].keys() == {'scheduler', 'plateau', 'order'}
