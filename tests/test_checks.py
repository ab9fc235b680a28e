import pytest
import torch

import pyg_gatv2
from pyg_gatv2.checks import check_index_range, check_no_nan


def test_validation_mode_is_set_and_restored():
    assert pyg_gatv2.get_validation() == 'default'
    with pyg_gatv2.validation('strict'):
        assert pyg_gatv2.get_validation() == 'strict'
    assert pyg_gatv2.get_validation() == 'default'
    pyg_gatv2.set_validation('strict')
    try:
        assert pyg_gatv2.get_validation() == 'strict'
    finally:
        pyg_gatv2.set_validation('default')
    with pytest.raises(ValueError, match="mode='off'; choose one of "
                       "'default', 'strict'"):
        pyg_gatv2.set_validation('off')


@pytest.mark.parametrize('edge_index,match', [
    ([[0, -2], [1, 1]], r'negative node index \(-2\)'),
    ([[0, 4], [1, 1]], r'source node index 4 .* only 4 source nodes'),
    ([[0, 1], [1, 3]], r'target node index 3 .* only 3 target nodes'),
])
def test_index_range(edge_index, match):
    with pytest.raises(ValueError, match=match):
        check_index_range(torch.tensor(edge_index), 4, 3, 'Caller')
    check_index_range(torch.tensor([[0, 3], [2, 0]]), 4, 3, 'Caller')
    check_index_range(torch.empty(2, 0, dtype=torch.long), 0, 0, 'Caller')


@pytest.mark.parametrize('values', [
    [float('nan')],
    [3e38, 3e38, float('nan')],  # the sum overflows before the NaN
    [float('inf'), float('nan')],
])
def test_nan_is_found(values):
    with pytest.raises(ValueError, match="'Caller' got NaN in the input"):
        check_no_nan(torch.tensor(values), 'the input', 'Caller')


@pytest.mark.parametrize('values', [
    [], [1.0, -2.0], [3e38, 3e38], [float('inf'), -float('inf')],
])
def test_finite_and_infinite_values_pass(values):
    check_no_nan(torch.tensor(values), 'the input', 'Caller')
