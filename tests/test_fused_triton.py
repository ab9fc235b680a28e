"""The Triton kernels of the fused attention, against the edge-wise
reference and PyG's layer. Without a GPU they run in Triton's interpreter
(TRITON_INTERPRET=1, set in conftest.py), on small graphs because it is
slow; with one, the tests marked ``cuda`` run them on the device too."""
import itertools
import os

import pytest
import torch
import torch_geometric.nn as pyg_nn
from test_fused import (
    assert_close_all,
    features,
    outputs_and_grads,
    random_graph,
    reference,
)

from pyg_gatv2 import GATv2Conv, use_backends
from pyg_gatv2.backends import triton_runs_here
from pyg_gatv2.fused import fused_gatv2_attention

pytestmark = pytest.mark.skipif(
    not triton_runs_here(),
    reason='triton is not installed (it is a test dependency: make setup)')

DEVICES = ['cpu'] if os.environ.get('TRITON_INTERPRET') == '1' else []
if torch.cuda.is_available():
    DEVICES.append(pytest.param('cuda', marks=pytest.mark.cuda))


def run_both(x_l, x_r, att, edge_index, et, loop_et, mask, add_self_loops):
    inputs = [t for t in (x_l, x_r, att, et, loop_et) if t is not None]

    def ours():
        return fused_gatv2_attention(
            x_l, x_r, att, edge_index, et, loop_edge_term=loop_et,
            add_self_loops=add_self_loops, dropout_mask=mask,
            return_attention_weights=True, backend='triton')

    def theirs():
        return reference(x_l, x_r, att, edge_index, et, loop_et,
                         add_self_loops, mask)

    return outputs_and_grads(ours, inputs), outputs_and_grads(theirs, inputs)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('bipartite,add_self_loops,edge_term,dropout',
                         list(itertools.product([False, True], repeat=4)))
def test_matches_reference(device, dtype, bipartite, add_self_loops,
                           edge_term, dropout):
    num_src, num_dst, num_edges = (7, 5, 20) if bipartite else (6, 6, 20)
    edge_index = random_graph(num_src, num_dst, num_edges, seed=3)
    edge_index[:, 0] = 1  # an existing self-loop
    x_l, x_r, att, et, loop_et = features(num_src, num_dst, num_edges, 2, 3,
                                          dtype, seed=3)
    num_virtual = num_edges + (min(num_src, num_dst)
                               if add_self_loops else 0)
    gen = torch.Generator().manual_seed(4)
    mask = None
    if dropout:
        mask = ((torch.rand(num_virtual, 2, generator=gen) > 0.3).to(dtype)
                / 0.7)
    if not edge_term:
        et = loop_et = None
    elif not add_self_loops:
        loop_et = None
    to = dict(device=device)
    args = [None if t is None else t.detach().to(**to).requires_grad_()
            for t in (x_l, x_r, att, et, loop_et)]
    actual, expected = run_both(*args[:3], edge_index.to(**to), *args[3:],
                                None if mask is None else mask.to(**to),
                                add_self_loops)
    assert_close_all([t.cpu() if t is not None else None for t in actual],
                     [t.cpu() if t is not None else None for t in expected],
                     dtype)


@pytest.mark.parametrize('device', DEVICES)
def test_isolated_nodes_and_an_empty_graph(device):
    x_l, x_r, att, _, _ = features(5, 4, 1, 2, 3, torch.float64)
    x_l, x_r, att = (t.detach().to(device) for t in (x_l, x_r, att))
    edge_index = torch.tensor([[0, 1], [2, 2]], device=device)
    out = fused_gatv2_attention(x_l, x_r, att, edge_index, backend='triton')
    assert torch.equal(out[[0, 1, 3]].cpu(), torch.zeros(3, 2, 3,
                                                          dtype=torch.float64))
    assert out[2].abs().sum() > 0
    empty = torch.empty(2, 0, dtype=torch.long, device=device)
    out = fused_gatv2_attention(x_l, x_r, att, empty, backend='triton')
    assert torch.equal(out.cpu(), torch.zeros(4, 2, 3, dtype=torch.float64))


@pytest.mark.parametrize('device', DEVICES)
def test_int32_edge_index(device):
    edge_index = random_graph(6, 6, 20, seed=5)
    x_l, x_r, att, _, _ = features(6, 6, 20, 2, 3, torch.float64, seed=5)
    x_l, x_r, att = (t.detach().to(device) for t in (x_l, x_r, att))
    out = fused_gatv2_attention(x_l, x_r, att, edge_index.int().to(device),
                                backend='triton')
    expected = reference(x_l.cpu(), x_r.cpu(), att.cpu(), edge_index)[0]
    torch.testing.assert_close(out.cpu(), expected)


# Half-precision storage with float32 sums, against float32: the inputs
# and outputs are rounded to 8 (bfloat16) or 11 (float16) bits of mantissa.
HALF_TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 1e-2}


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_half_precision_against_float32(device, dtype):
    edge_index = random_graph(8, 8, 30, seed=6).to(device)
    x_l, x_r, att, et, loop_et = features(8, 8, 30, 2, 4, torch.float32,
                                          seed=6)
    full = [t.detach().to(device).requires_grad_()
            for t in (x_l, x_r, att, et, loop_et)]
    half = [t.detach().to(device, dtype).requires_grad_()
            for t in (x_l, x_r, att, et, loop_et)]

    def run(t):
        out, alpha = fused_gatv2_attention(
            t[0], t[1], t[2], edge_index, t[3], loop_edge_term=t[4],
            add_self_loops=True, return_attention_weights=True,
            backend='triton')
        (out.float().square().sum() + alpha.float().sum()).backward()
        return [out, alpha] + [p.grad for p in t]

    for a, b in zip(run(half), run(full), strict=True):
        assert a.dtype == dtype
        scale = b.abs().max().item()
        tol = HALF_TOLERANCE[dtype] * max(1.0, scale)
        torch.testing.assert_close(a.float(), b, atol=tol,
                                   rtol=HALF_TOLERANCE[dtype])


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize(
    'heads,concat,bipartite,self_loops,edge_dim,share_weights',
    [(1, True, False, True, None, False), (3, False, False, True, 2, False),
     (2, True, True, True, 2, False), (2, True, False, False, 1, True),
     (3, True, True, False, None, False)])
def test_layer_matches_pyg(device, heads, concat, bipartite, self_loops,
                           edge_dim, share_weights):
    in_channels = (5, 5) if bipartite and share_weights else (
        (5, 3) if bipartite else 5)
    ref = pyg_nn.GATv2Conv(in_channels, 4, heads=heads, concat=concat,
                           add_self_loops=self_loops, edge_dim=edge_dim,
                           share_weights=share_weights).double().to(device)
    ours = GATv2Conv(in_channels, 4, heads=heads, concat=concat,
                     add_self_loops=self_loops, edge_dim=edge_dim,
                     share_weights=share_weights,
                     fused=True).double().to(device)
    ours.load_state_dict(ref.state_dict())
    gen = torch.Generator().manual_seed(7)
    num_src, num_dst = (7, 5) if bipartite else (7, 7)
    x_src = torch.randn(num_src, 5, generator=gen, dtype=torch.float64)
    x_dst = torch.randn(num_dst, in_channels[1] if bipartite else 5,
                        generator=gen, dtype=torch.float64)
    x = (x_src.to(device), x_dst.to(device)) if bipartite else x_src.to(
        device)
    edge_index = random_graph(num_src, num_dst, 24, seed=8).to(device)
    edge_attr = (None if edge_dim is None else torch.randn(
        24, edge_dim, generator=gen, dtype=torch.float64).to(device))
    results = []
    for conv in (ours, ref):
        conv.zero_grad()
        out, (_, alpha) = conv(x, edge_index, edge_attr,
                               return_attention_weights=True)
        (out.square().sum() + alpha.sum()).backward()
        results.append([out, alpha] + [p.grad for p in conv.parameters()])
    with use_backends(fused='triton'):
        ours.zero_grad()
        out, (_, alpha) = ours(x, edge_index, edge_attr,
                               return_attention_weights=True)
        (out.square().sum() + alpha.sum()).backward()
        triton = [out, alpha] + [p.grad for p in ours.parameters()]
    for a, b in zip(triton, results[1], strict=True):
        torch.testing.assert_close(a, b)


def test_auto_picks_triton_only_for_cuda_tensors(monkeypatch):
    from pyg_gatv2.fused import op
    x = torch.randn(3, 1, 2)
    assert op._resolve_backend(None, x) in ('cpp', 'numba')
    if not torch.cuda.is_available():
        monkeypatch.delenv('TRITON_INTERPRET')
        with pytest.raises(ValueError, match='a CUDA GPU, or '
                           'TRITON_INTERPRET=1 for CPU tensors'):
            op._resolve_backend('triton', x)
    else:
        assert op._resolve_backend(None, x.cuda()) == 'triton'
        with pytest.raises(ValueError, match="'triton' runs on CUDA"):
            op._resolve_backend('triton', x)
