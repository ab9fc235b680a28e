"""The torch backend of the fused attention
(pyg_gatv2/fused/backends/torch.py): PyTorch operations over chunks of
edges, on any device and dtype."""
import pytest
import torch
from _fused_cases import compare, features, random_graph, reference

from pyg_gatv2.fused import fused_gatv2_attention
from pyg_gatv2.fused.backends import torch as torch_backend


@pytest.mark.parametrize('chunk_size', [1, 7, 89, 1000])
def test_chunks_cut_across_the_in_edges_of_nodes(chunk_size):
    # Chunks of 7 edges cut the in-edges of most nodes across chunks; 89 is
    # one edge short of all of them, 1000 takes them at once.
    edge_index = random_graph(20, 20, 90)
    x_l, x_r, att, et, loop_et = features(20, 20, 90, 2, 4, torch.float64)
    compare(x_l, x_r, att, edge_index, et, loop_et, add_self_loops=True,
            backend='torch', chunk_size=chunk_size)


def test_default_chunk_size():
    # About 2^20 elements (edges x heads x channels) per chunk, and at
    # least one edge.
    assert torch_backend.default_chunk_size(4, 16) == 2**14
    assert torch_backend.default_chunk_size(3, 5) == 2**20 // 15
    assert torch_backend.default_chunk_size(2**11, 2**10) == 1


@pytest.mark.parametrize('chunk_size', [None, 5])
def test_the_chunk_size_reaches_the_kernels(chunk_size, monkeypatch):
    used = []

    def spy(real):
        def run(*args):
            used.append(args[-1])  # the chunk size
            return real(*args)
        return run

    for name in ('forward', 'backward'):
        monkeypatch.setattr(torch_backend, name,
                            spy(getattr(torch_backend, name)))
    edge_index = random_graph(10, 10, 30)
    x_l, x_r, att, _, _ = features(10, 10, 30, 3, 4, torch.float64)
    out = fused_gatv2_attention(x_l, x_r, att, edge_index,
                                backend='torch', chunk_size=chunk_size)
    out.sum().backward()
    expected = chunk_size or torch_backend.default_chunk_size(3, 4)
    assert used == [expected, expected]


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_runs_on_the_torch_backend(dtype):
    edge_index = random_graph(12, 12, 40)
    x_l, x_r, att, _, _ = features(12, 12, 0, 2, 4, torch.float32)
    half = [t.detach().to(dtype).requires_grad_() for t in (x_l, x_r, att)]
    out = fused_gatv2_attention(*half, edge_index, add_self_loops=True)
    out.float().sum().backward()
    assert out.dtype == dtype and half[0].grad.dtype == dtype
    expected = reference(*(t.detach().float() for t in half), edge_index,
                         add_self_loops=True)[0]
    torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=5e-2)
