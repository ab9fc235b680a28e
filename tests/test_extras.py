"""The line between the layer and the experiments: what ``import
pyg_gatv2`` loads, what the command line says without the ``train`` extra,
and the extras of setup.cfg that :mod:`pyg_gatv2.extras` names."""
import configparser
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pyg_gatv2
from pyg_gatv2 import extras
from pyg_gatv2.extras import EXTRAS, MissingExtraError

REPO = Path(__file__).resolve().parents[1]
# The subprocesses import the package this process tests.
PACKAGE_ROOT = Path(pyg_gatv2.__file__).resolve().parents[1]
# Each subprocess imports torch and PyG once: seconds, or a minute on a
# loaded machine; reaching the bound means it hung.
TIMEOUT = 300
# Packages of the extras (or the dependencies of those) that the layer
# must not import, unless torch_geometric does (2.8 imports tqdm and scipy).
NOT_FOR_THE_LAYER = ('numba', 'matplotlib', 'tqdm', 'ogb', 'scipy')

LOADED_BY_IMPORT = '''
import json, sys
import torch_geometric
before = set(sys.modules)
import pyg_gatv2
print(json.dumps(sorted(set(sys.modules) - before)))
'''

# Runs `python -m pyg_gatv2 ARGS` as if the package named in argv[1] were
# not installed: every finder on sys.meta_path is wrapped so that it finds
# nothing of it, which is what find_spec and import see when a package is
# absent.
WITHOUT_PACKAGE = '''
import runpy, sys
hidden = sys.argv[1]


class Hiding:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition('.')[0] == hidden:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, name):
        return getattr(self.finder, name)


sys.meta_path[:] = [Hiding(finder) for finder in sys.meta_path]
sys.argv = ['pyg_gatv2', *sys.argv[2:]]
runpy.run_module('pyg_gatv2', run_name='__main__', alter_sys=True)
'''


def run_python(code: str, *args: str, cwd: Path):
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(
        [str(PACKAGE_ROOT), *filter(None, [os.environ.get('PYTHONPATH')])])}
    return subprocess.run([sys.executable, '-c', code, *args], cwd=cwd,
                          env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)


def test_import_loads_the_layer_only(tmp_path):
    proc = run_python(LOADED_BY_IMPORT, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    # What the measurement must see, so that an empty list means something.
    assert {'pyg_gatv2', 'pyg_gatv2.conv', 'pyg_gatv2.fused'} <= set(loaded)
    wrong = [name for name in loaded
             if name.startswith('pyg_gatv2.experiments')
             or name.partition('.')[0] in NOT_FOR_THE_LAYER]
    assert wrong == []


def requirement_names(lines: list[str]) -> list[str]:
    """The distribution names of requirements (``'ogb>=1.3.6'``: ogb)."""
    return [re.match(r'[A-Za-z0-9._-]+', line.strip()).group(0).lower()
            for line in lines if line.strip()]


# What the layer's own requirement torch-geometric requires (tqdm) is there
# wherever the layer imports, so only the others can be missing.
PYG_NEEDS = set(requirement_names(
    [line for line in importlib.metadata.requires('torch_geometric')
     if 'extra ==' not in line]))


@pytest.mark.parametrize('package', [
    name for name in EXTRAS['train'] if name not in PYG_NEEDS])
def test_command_line_without_the_train_extra_says_what_to_install(
        package, tmp_path):
    proc = run_python(WITHOUT_PACKAGE, package, 'train', '--epochs', '1',
                      '--out', str(tmp_path / 'out'), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ''
    assert proc.stderr == (
        'pyg-gatv2: error: pyg_gatv2.experiments needs the '
        f"'train' extra of pyg-gatv2 (missing: {package}): "
        "pip install 'pyg-gatv2[train]'\n")
    assert not (tmp_path / 'out').exists()


def test_require_names_every_missing_module(monkeypatch):
    assert extras.missing('train') == ()
    extras.require('train', 'nothing')  # all there: no error
    monkeypatch.setitem(EXTRAS, 'train',
                        ('matplotlib', 'no_such_module_a', 'no_such_module_b'))
    assert extras.missing('train') == ('no_such_module_a', 'no_such_module_b')
    with pytest.raises(MissingExtraError, match=re.escape(
            "plotting needs the 'train' extra of pyg-gatv2 (missing: "
            'no_such_module_a, no_such_module_b): pip install '
            "'pyg-gatv2[train]'")):
        extras.require('train', 'plotting')
    assert issubclass(MissingExtraError, ImportError)


# The extras that install tools for working on the package (the tests, the
# documentation), which no code of the package asks for.
TOOL_EXTRAS = {'test', 'docs'}


@pytest.fixture(scope='module')
def setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    assert config.read(REPO / 'setup.cfg')
    return config


def test_extras_name_the_modules_of_setup_cfg(setup_cfg):
    declared = setup_cfg['options.extras_require']
    assert set(declared) - TOOL_EXTRAS == set(EXTRAS)
    for extra, modules in EXTRAS.items():
        # Every distribution here imports under its name with '-' as '_'
        # (torch-sparse as torch_sparse).
        names = [name.replace('-', '_')
                 for name in requirement_names(declared[extra].splitlines())]
        assert sorted(names) == sorted(modules), extra


def test_install_requires_only_torch_pyg_and_numpy(setup_cfg):
    assert sorted(requirement_names(
        setup_cfg['options']['install_requires'].splitlines())) == [
            'numpy', 'torch', 'torch-geometric']


def test_the_test_extra_holds_what_training_needs(setup_cfg):
    # `make test` installs the test extra only and then counts training's
    # set-up as done (Makefile): the train extra's requirements must be in it.
    declared = setup_cfg['options.extras_require']
    assert set(declared['train'].split()) <= set(declared['test'].split())
