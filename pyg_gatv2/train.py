"""The names of :mod:`pyg_gatv2.training` (and of the DictionaryLookup
experiment in :mod:`pyg_gatv2.lookup`) under their former module name."""
from typing import Any

from pyg_gatv2.training import *  # noqa: F401,F403
from pyg_gatv2.training import __all__ as _training_names

__all__ = list(_training_names)

# pyg_gatv2.lookup imports the training package, so its names are loaded
# from here on first use.
_LOOKUP_NAMES = ('LookupResult', 'evaluate_lookup', 'train_lookup')


def __getattr__(name: str) -> Any:
    if name in _LOOKUP_NAMES:
        from pyg_gatv2 import lookup
        return getattr(lookup, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
