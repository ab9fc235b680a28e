"""Datasets: the Planetoid citation graphs and the DictionaryLookup task."""
from pyg_gatv2.datasets.planetoid import (
    PlanetoidFileError,
    SafePlanetoid,
    load_planetoid,
)

__all__: list[str] = [
    'PlanetoidFileError',
    'SafePlanetoid',
    'load_planetoid',
]
