import pytest
import torch

import pyg_gatv2
from pyg_gatv2 import GATv2Conv, backends, softmax
from pyg_gatv2.fused import op


def test_both_choices_are_made_in_one_place():
    assert pyg_gatv2.current_backends() == {'fused': 'auto',
                                            'softmax': 'auto'}
    with pyg_gatv2.use_backends(fused='torch', softmax='native'):
        assert pyg_gatv2.current_backends() == {'fused': 'torch',
                                                'softmax': 'native'}
        # The older per-module names read the same selection.
        assert op.get_backend() == 'torch'
        assert softmax.get_backend() == 'native'
        with pyg_gatv2.use_backends(softmax='auto'):
            assert pyg_gatv2.current_backends()['fused'] == 'torch'
    assert pyg_gatv2.current_backends() == {'fused': 'auto',
                                            'softmax': 'auto'}


def test_setters_persist_until_reset():
    pyg_gatv2.set_fused_backend('torch')
    pyg_gatv2.set_softmax_backend('native')
    try:
        assert backends.get_fused_backend() == 'torch'
        assert backends.get_softmax_backend() == 'native'
    finally:
        pyg_gatv2.set_fused_backend('auto')
        pyg_gatv2.set_softmax_backend(None)
    assert pyg_gatv2.current_backends() == {'fused': 'auto',
                                            'softmax': 'auto'}


@pytest.mark.parametrize('kind,name', [('fused', 'cutlass'),
                                       ('softmax', 'numba')])
def test_unknown_names_are_reported(kind, name):
    with pytest.raises(ValueError, match=f"got {kind} backend '{name}'; "
                       'choose one of'):
        pyg_gatv2.use_backends(**{kind: name}).__enter__()
    assert pyg_gatv2.current_backends()[kind] == 'auto'


def test_the_selected_fused_backend_runs(monkeypatch):
    calls = []
    real = op.chunked.forward

    def spy(*args, **kwargs):
        calls.append('torch')
        return real(*args, **kwargs)

    monkeypatch.setattr(op.chunked, 'forward', spy)
    conv = GATv2Conv(4, 2, heads=2)
    x = torch.randn(6, 4)
    edge_index = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
    expected = conv(x, edge_index)
    with pyg_gatv2.use_backends(fused='torch'):
        out = conv(x, edge_index)
    assert calls == ['torch']
    torch.testing.assert_close(out, expected)
