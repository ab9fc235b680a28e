import pytest

import pyg_gatv2
import pyg_gatv2.experiments as experiments

# Each name pyg_gatv2.experiments re-exports, and the module that holds it.
HOMES = {
    'load_planetoid': 'datasets.planetoid',
    'DictionaryLookup': 'datasets.dictionary_lookup',
    'DictionaryLookupNet': 'lookup_model',
    'fit': 'training.node_classification',
    'train_node_classifier': 'training.node_classification',
    'TrainResult': 'training.results',
    'TrainingDivergedError': 'training.results',
    'train_lookup': 'lookup',
    'evaluate_lookup': 'lookup',
    'LookupResult': 'lookup',
}


def test_every_public_name_is_listed():
    assert sorted(experiments.__all__) == sorted(HOMES)


@pytest.mark.parametrize('name', sorted(HOMES))
def test_names_come_from_their_modules_and_not_from_the_core(name):
    obj = getattr(experiments, name)
    assert obj.__module__ == f'pyg_gatv2.experiments.{HOMES[name]}'
    # The core names the layer only, even with the experiments imported.
    assert not hasattr(pyg_gatv2, name)
