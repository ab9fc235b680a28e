"""The README and the documentation sources against the repository.

``make docs`` builds the site with warnings as errors and runs its doctests
(part of ``make test``); these checks are what that build cannot see: the
README's length and first screen, its map of the package, the extras it
lists, and a page for every committed result file."""
import configparser
import re
from pathlib import Path

import pytest

import pyg_gatv2

REPO = Path(__file__).resolve().parent.parent
README = (REPO / 'README.md').read_text()
DOCS = REPO / 'docs'
RESULTS = REPO / 'benchmarks' / 'results'


def _section(text: str, title: str) -> str:
    """The body of the Markdown section ``## title``."""
    match = re.search(rf'^## {re.escape(title)}\n(.*?)(?=^## |\Z)', text,
                      flags=re.M | re.S)
    assert match, f'no section {title!r}'
    return match.group(1)


def test_readme_is_short_and_its_first_screen_has_what_a_user_needs():
    lines = README.splitlines()
    assert len(lines) <= 200
    first_screen = '\n'.join(lines[:80])
    assert 'from pyg_gatv2 import GATv2Conv' in first_screen
    assert '<!-- headline-table-start -->' in first_screen
    assert '<!-- headline-table-end -->' in first_screen
    assert 'pip install .' in first_screen


def test_readme_headline_names_command_and_result_of_each_machine():
    table_end = README.index('<!-- headline-table-end -->')
    notes = README[table_end:README.index('## Install')]
    for result in ('kernels_headline.md', 'kernels_cuda.md'):
        assert f'(benchmarks/results/{result})' in notes
        assert (RESULTS / result).is_file()
    assert notes.count('`python benchmarks/kernels.py') == 2


def _package_paths() -> list[str]:
    core = REPO / 'pyg_gatv2'
    paths = [p.name for p in core.glob('*.py')]
    paths += [p.name + '/' for p in core.iterdir()
              if p.is_dir() and not p.name.startswith('__')]
    fused = core / 'fused'
    paths += [p.name for p in fused.glob('*.py') if p.name != '__init__.py']
    paths += [p.name + '/' for p in fused.iterdir()
              if p.is_dir() and not p.name.startswith('__')]
    return sorted(paths)


@pytest.mark.parametrize('path', _package_paths())
def test_readme_map_names_every_module_of_the_core(path):
    repository = _section(README, 'Repository')
    assert re.search(rf'^\s+{re.escape(path)}\s', repository, flags=re.M)


def _extras() -> list[str]:
    config = configparser.ConfigParser()
    assert config.read(REPO / 'setup.cfg')
    return sorted(config['options.extras_require'])


@pytest.mark.parametrize('page', ['README.md', 'docs/installation.md'])
@pytest.mark.parametrize('extra', _extras())
def test_every_extra_is_in_the_extras_table(extra, page):
    assert f'| `{extra}` |' in (REPO / page).read_text()


@pytest.mark.parametrize('result', sorted(
    p.name for p in RESULTS.glob('*.md')))
def test_every_result_file_has_a_page(result):
    page = DOCS / 'results' / result
    assert page.is_file()
    assert f'../../benchmarks/results/{result}' in page.read_text()


@pytest.mark.parametrize('name', [n for n in pyg_gatv2.__all__
                                  if n != '__version__'])
def test_api_page_lists_every_public_name(name):
    api = (DOCS / 'api.rst').read_text()
    assert re.search(rf'^   {name}$', api, flags=re.M), 'autosummary'
    assert re.search(rf'^\.\. auto(class|function):: {name}$', api,
                     flags=re.M)
