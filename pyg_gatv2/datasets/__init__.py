"""Datasets: the Planetoid citation graphs and the DictionaryLookup task."""
from pyg_gatv2.datasets.dictionary_lookup import (
    DictionaryLookup,
    dictionary_lookup_graph,
)
from pyg_gatv2.datasets.planetoid import (
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
]
