"""Sphinx configuration of the pyg-gatv2 documentation.

Built by ``make docs`` with warnings as errors (``-W``) and every
cross-reference checked (``-n``), with no network access: no intersphinx
inventory is fetched, so references to torch, PyG and the other libraries
this package builds on are left unresolved on purpose (``nitpick_ignore_regex``
below), and every reference into ``pyg_gatv2`` must resolve. Two checks run
at build time: every public name (each module's ``__all__`` in
:data:`API_MODULES`) is documented on some page, and every object autodoc
renders has a docstring.
"""
import doctest
import importlib
import os
import sys

from sphinx.util import logging

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
sys.path.insert(0, ROOT)

import pyg_gatv2  # noqa: E402

project = 'pyg-gatv2'
author = 'pyg-gatv2 contributors'
copyright = 'pyg-gatv2 contributors'
version = release = pyg_gatv2.__version__

extensions = [
    'myst_parser',
    'sphinx.ext.autodoc',
    'sphinx.ext.autosummary',
    'sphinx.ext.doctest',
    'sphinx.ext.mathjax',
    'sphinx.ext.napoleon',
]
source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
exclude_patterns = ['_build']
myst_enable_extensions = ['dollarmath']
myst_heading_anchors = 3

html_theme = 'furo'
html_title = f'pyg-gatv2 {release}'
html_static_path = []

# The public modules whose ``__all__`` the reference must cover.
API_MODULES = (
    'pyg_gatv2',
    'pyg_gatv2.fused',
    'pyg_gatv2.fused.backends',
    'pyg_gatv2.experiments',
    'pyg_gatv2.experiments.datasets',
    'pyg_gatv2.experiments.training',
    'pyg_gatv2.experiments.lookup',
    'pyg_gatv2.experiments.plots',
)

autodoc_member_order = 'bysource'
autodoc_typehints = 'none'
autodoc_default_options = {'exclude-members': '__init__, __new__'}
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = [('Shapes', 'params_style')]

nitpicky = True
# References the build cannot resolve without the other projects'
# inventories, which would need the network: the libraries this package
# builds on, and PyG's idiom ``:obj:`name``` for an argument or a literal
# (a target without a dot). Every other reference, into pyg_gatv2 above all,
# must resolve.
_EXTERNAL = (r'(torch|torch_geometric|torch_sparse|torch_scatter|triton|'
             r'numpy|np|ogb|matplotlib|tqdm|ctypes|scipy|typing|'
             r'collections|pathlib|os|contextlib|enum|dataclasses)'
             r'(\..*)?')
nitpick_ignore_regex = [
    (r'py:.*', _EXTERNAL),
    # :obj:`edge_dim`, :obj:`None`, :obj:`0.2`, :obj:`'mean'`.
    (r'py:obj', r'[^.]*|-?[0-9.]+(e-?[0-9]+)?'),
    # Types in napoleon's Args: the external ones by their short names, and
    # words such as 'sequence' or 'callable'.
    (r'py:class', r'(Tensor|EdgeIndex|SparseTensor|Data|Adj|OptTensor|'
                  r'PairTensor|Path|PathLike|Callable|Iterator|Iterable|'
                  r'Sequence|Module)|[a-z][a-z_ -]*'),
]

# Sphinx's default also ignores the message of an expected exception; the
# examples show messages, so they are compared (with '...' matching any
# text).
doctest_default_flags = (doctest.ELLIPSIS | doctest.DONT_ACCEPT_TRUE_FOR_1)
doctest_global_setup = '''
import torch
import pyg_gatv2
torch.manual_seed(0)
'''
doctest_global_cleanup = '''
pyg_gatv2.set_backends(fused='auto', softmax='auto')
pyg_gatv2.set_validation('default')
'''

_logger = logging.getLogger('pyg_gatv2.docs')


def _no_docstring(app, what, name, obj, options, lines):
    """Warns (an error under -W) when a rendered object has no docstring."""
    if what != 'module' and not any(line.strip() for line in lines):
        _logger.warning(f'{name} has no docstring', type='pyg_gatv2',
                        subtype='docstring')


def _documented(env) -> set:
    """The ids of the objects the pages document, under any name."""
    found = set()
    for fullname, entry in env.domains['py'].objects.items():
        if entry.aliased or entry.objtype == 'module':
            continue
        module, _, rest = fullname.partition('.')
        obj = None
        parts = fullname.split('.')
        for split in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module('.'.join(parts[:split]))
            except ImportError:
                continue
            for attr in parts[split:]:
                obj = getattr(obj, attr, None)
            break
        if obj is not None:
            found.add(id(obj))
    return found


def _check_public_names(app, env):
    """Warns about every public name of :data:`API_MODULES` that no page
    documents."""
    documented = _documented(env)
    for module_name in API_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            if name == '__version__':
                continue
            if id(getattr(module, name)) not in documented:
                _logger.warning(f'{module_name}.{name} is public but not '
                                'documented on any page', type='pyg_gatv2',
                                subtype='api')


def setup(app):
    app.connect('autodoc-process-docstring', _no_docstring)
    app.connect('env-check-consistency', _check_public_names)
