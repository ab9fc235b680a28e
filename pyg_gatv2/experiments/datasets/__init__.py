"""Datasets: the Planetoid citation graphs, the OGB graphs ogbn-arxiv and
ogbn-products, and the DictionaryLookup task."""
from pyg_gatv2.experiments.datasets.dictionary_lookup import (
    DictionaryLookup,
    dictionary_lookup_graph,
)
from pyg_gatv2.experiments.datasets.ogb import load_ogb, ogb_accuracy
from pyg_gatv2.experiments.datasets.planetoid import (
    PlanetoidFileError,
    SafePlanetoid,
    load_planetoid,
)

__all__: list[str] = [
    'DictionaryLookup',
    'dictionary_lookup_graph',
    'PlanetoidFileError',
    'SafePlanetoid',
    'load_planetoid',
    'load_ogb',
    'ogb_accuracy',
]
