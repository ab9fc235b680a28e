"""Datasets: the Planetoid citation graphs and the DictionaryLookup task."""

__all__: list[str] = []
