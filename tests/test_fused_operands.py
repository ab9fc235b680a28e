"""The operands of the fused attention (pyg_gatv2/fused/operands.py)."""
import pytest
import torch

from pyg_gatv2.fused import operands


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float32])
def test_row_dots_of_lower_precision_rows_go_by_chunks(dtype, monkeypatch):
    # D = <grad_out, out> per node and head, in float32: rows stored in
    # bfloat16 are converted a few at a time (here 3 rows of 2 x 5 per
    # chunk, the last one short), with the result of converting them all.
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(10, 2, 5, generator=gen).to(dtype) for _ in 'ab')
    expected = torch.einsum('nhc,nhc->nh', a.float(), b.float())
    monkeypatch.setattr(operands, '_DOT_CHUNK', 30)
    got = operands.row_dots(a, b, torch.float32)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert operands.row_dots(a[:0], b[:0], torch.float32).shape == (0, 2)
