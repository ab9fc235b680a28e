"""The public choice of kernels and softmax (pyg_gatv2/backends.py)."""
import re

import pytest
import torch
from _fused_cases import BACKENDS, spy_on_backends

import pyg_gatv2
from pyg_gatv2 import GATv2Conv, softmax
from pyg_gatv2.fused import backends as fused_backends

DEFAULT = {'fused': 'auto', 'softmax': 'auto'}


def test_both_choices_are_made_in_one_place():
    assert pyg_gatv2.current_backends() == DEFAULT
    with pyg_gatv2.use_backends(fused='torch', softmax='native'):
        assert pyg_gatv2.current_backends() == {'fused': 'torch',
                                                'softmax': 'native'}
        # Each module keeps the choice that its calls read.
        assert fused_backends.chosen() == 'torch'
        assert softmax.chosen() == 'native'
        with pyg_gatv2.use_backends(softmax='auto'):
            assert pyg_gatv2.current_backends() == {'fused': 'torch',
                                                    'softmax': 'auto'}
        assert pyg_gatv2.current_backends()['softmax'] == 'native'
    assert pyg_gatv2.current_backends() == DEFAULT


def test_use_backends_restores_the_choice_after_an_error():
    with pytest.raises(KeyError):
        with pyg_gatv2.use_backends(fused='torch', softmax='native'):
            raise KeyError('in the block')
    assert pyg_gatv2.current_backends() == DEFAULT


def test_set_backends_persists_until_reset():
    pyg_gatv2.set_backends(fused='torch', softmax='native')
    try:
        assert pyg_gatv2.current_backends() == {'fused': 'torch',
                                                'softmax': 'native'}
        # An argument left out keeps its choice.
        pyg_gatv2.set_backends(fused='auto')
        assert pyg_gatv2.current_backends() == {'fused': 'auto',
                                                'softmax': 'native'}
    finally:
        pyg_gatv2.set_backends(fused='auto', softmax='auto')
    assert pyg_gatv2.current_backends() == DEFAULT


@pytest.mark.parametrize('kind,name,choices', [
    ('fused', 'cutlass', "'auto', 'cpp', 'triton', 'torch'"),
    ('fused', 'numba', "'auto', 'cpp', 'triton', 'torch'"),
    ('softmax', 'numba', "'auto', 'torch_scatter', 'native'"),
])
def test_unknown_names_are_reported(kind, name, choices):
    def message(caller):
        return re.escape(f"'{caller}' got {kind} backend '{name}'; choose "
                         f'one of {choices}')

    with pytest.raises(ValueError, match=message('set_backends')):
        pyg_gatv2.set_backends(**{kind: name})
    with pytest.raises(ValueError, match=message('use_backends')):
        with pyg_gatv2.use_backends(**{kind: name}):
            pass
    assert pyg_gatv2.current_backends() == DEFAULT


def test_choosing_an_unavailable_backend_leaves_the_choice_unchanged(
        without_cpp_library, monkeypatch):
    monkeypatch.setattr(softmax, '_has_torch_scatter', lambda: False)
    pyg_gatv2.set_backends(fused='torch', softmax='native')
    try:
        with pytest.raises(ValueError, match=r"'set_backends': the fused "
                           r"backend 'cpp' cannot run here: the C\+\+ "
                           r'kernels were not built'):
            pyg_gatv2.set_backends(fused='cpp')
        with pytest.raises(ValueError, match=r"'use_backends': the softmax "
                           r"backend 'torch_scatter' cannot run here: the "
                           r'torch-scatter package is not installed'):
            with pyg_gatv2.use_backends(softmax='torch_scatter'):
                pass
        # Neither choice of a call changes when one of them fails.
        with pytest.raises(ValueError, match="softmax backend 'numba'"):
            pyg_gatv2.set_backends(fused='auto', softmax='numba')
        assert pyg_gatv2.current_backends() == {'fused': 'torch',
                                                'softmax': 'native'}
    finally:
        pyg_gatv2.set_backends(fused='auto', softmax='auto')


def test_available_backends():
    available = pyg_gatv2.available_backends()
    assert set(available) == {'fused', 'softmax'}
    assert available['fused'] == fused_backends.available()
    assert available['softmax'] == softmax.available()
    # Fastest first; the torch backend and native softmax run anywhere.
    assert available['fused'][-1] == 'torch'
    assert available['softmax'][-1] == 'native'
    assert 'cpp' in available['fused']


def test_available_backends_without_the_cpp_library(without_cpp_library):
    assert 'cpp' not in pyg_gatv2.available_backends()['fused']


def test_describe_backends_says_what_runs_and_why_not(monkeypatch):
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    lines = pyg_gatv2.describe_backends().splitlines()
    assert lines[0] == ("fused 'cpp': multi-threaded C++ CPU kernels "
                        '(OpenMP); cpu, float32, float64; available')
    assert re.fullmatch(r"fused 'triton': Triton GPU kernels .*; cuda, "
                        r'float32, float64, bfloat16, float16; '
                        r'(available|unavailable: .+)', lines[1])
    if not torch.cuda.is_available():
        assert lines[1].endswith('unavailable: no CUDA GPU is present '
                                 '(TRITON_INTERPRET=1 runs the kernels on '
                                 'CPU tensors, slowly)') or (
            'the triton package is not installed' in lines[1])
    assert lines[2].startswith("fused 'torch': ")
    assert lines[2].endswith('; available')
    capability = pyg_gatv2.cpu_capability()
    assert lines[3].startswith(f'C++ kernels: CPU level {capability!r} '
                               '(this CPU runs ')
    assert lines[4] == 'softmax: ' + ', '.join(softmax.available())
    assert len(lines) == 5


def test_describe_backends_without_the_cpp_library(without_cpp_library):
    lines = pyg_gatv2.describe_backends().splitlines()
    assert lines[0].startswith("fused 'cpp': ")
    assert lines[0].endswith("unavailable: the C++ kernels were not built "
                             '(no C++ compiler with OpenMP when the package '
                             "was installed): reinstall with one ('pip "
                             "install .')")
    assert not any(line.startswith('C++ kernels') for line in lines)


def test_the_selected_fused_backend_runs(monkeypatch):
    calls = spy_on_backends(monkeypatch)
    conv = GATv2Conv(4, 2, heads=2)
    x = torch.randn(6, 4)
    edge_index = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
    expected = conv(x, edge_index)
    with pyg_gatv2.use_backends(fused='torch'):
        out = conv(x, edge_index)
    assert calls == [(BACKENDS[0], 'forward'), ('torch', 'forward')]
    torch.testing.assert_close(out, expected)
