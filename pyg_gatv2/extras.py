"""The optional extras of the package and what each brings, so that code
behind an extra can say which one to install when it is missing."""
import importlib.util
from typing import Dict, Tuple

__all__ = ['EXTRAS', 'MissingExtraError', 'missing', 'require']

EXTRAS: Dict[str, Tuple[str, ...]] = {
    'train': ('matplotlib', 'scipy', 'tqdm'),
    'ogb': ('ogb', ),
    'sampling': ('torch_sparse', ),
    'scatter': ('torch_scatter', ),
    'gpu': ('triton', ),
}
"""Each extra and the modules it installs, by import name (setup.cfg's
``extras_require``)."""


class MissingExtraError(ImportError):
    """A part of the package was used without the extra it needs."""


def missing(extra: str) -> Tuple[str, ...]:
    """The modules of ``extra`` that cannot be imported here."""
    return tuple(name for name in EXTRAS[extra]
                 if importlib.util.find_spec(name) is None)


def require(extra: str, what: str) -> None:
    """Raises :class:`MissingExtraError` when a module of ``extra`` is
    missing, naming ``what`` needs it and the command that installs it."""
    absent = missing(extra)
    if absent:
        raise MissingExtraError(
            f"{what} needs the '{extra}' extra of pyg-gatv2 (missing: "
            f"{', '.join(absent)}): pip install 'pyg-gatv2[{extra}]'")
