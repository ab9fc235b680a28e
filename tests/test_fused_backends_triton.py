"""The Triton backend of the fused attention
(pyg_gatv2/fused/backends/triton.py and triton_kernels.py), against the
edge-wise reference and PyG's layer. Without a GPU the kernels run in
Triton's interpreter (TRITON_INTERPRET=1, set in conftest.py), on small
graphs because it is slow; with one, the tests marked ``cuda`` run them on
the device too."""
import itertools

import pytest
import torch
import torch_geometric.nn as pyg_nn
from _fused_cases import (
    DEVICES,
    assert_close_all,
    features,
    lower_precision_runs,
    outputs_and_grads,
    random_graph,
    reference,
)

from pyg_gatv2 import GATv2Conv, use_backends
from pyg_gatv2.fused import backends, edge_layout, fused_gatv2_attention

pytestmark = pytest.mark.skipif(
    'triton' not in backends.available(),
    reason='triton is not installed (it is a test dependency: make setup)')


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
@pytest.mark.parametrize('chunked', [False, True])
def test_half_precision_against_float32(device, dtype, chunked,
                                        monkeypatch):
    # Chunked: the half-precision run cuts the nodes of more than 4 edges
    # into chunks, the float32 run none.
    from pyg_gatv2.fused.backends import triton_kernels
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

    with monkeypatch.context() as patch:
        if chunked:
            patch.setattr(triton_kernels, '_CHUNK_EDGES', 4)
            layout = edge_layout(edge_index, 8, 8, add_self_loops=True)
            assert layout.chunks('dst', 4) is not None
            assert layout.chunks('src', 4) is not None
        half_results = run(half)
    for a, b in zip(half_results, run(full), strict=True):
        assert a.dtype == dtype
        scale = b.abs().max().item()
        tol = HALF_TOLERANCE[dtype] * max(1.0, scale)
        torch.testing.assert_close(a.float(), b, atol=tol,
                                   rtol=HALF_TOLERANCE[dtype])


def assert_rounded(actual, exact):
    """``actual`` is the float32 ``exact`` rounded to ``actual``'s dtype:
    to nearest, as a GPU rounds, or for bfloat16 toward zero, as Triton's
    interpreter does."""
    ok = actual == exact.to(actual.dtype)
    if actual.dtype == torch.bfloat16:
        truncated = (exact.view(torch.int32) & -(1 << 16)).view(torch.float32)
        ok |= actual == truncated.to(torch.bfloat16)
    assert bool(ok.all())


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_lower_precision_features_read_directly(device, dtype, monkeypatch):
    # Autocast's bfloat16 projections beside float32 parameters: the
    # kernels read the features as they are stored, with no float32 copy,
    # and give what float32 copies give.
    from pyg_gatv2.fused.backends import triton_kernels
    read = []

    def spy(real):
        def run(ops, *args):
            read.append((ops.x_l.dtype, ops.x_r.dtype, ops.att.dtype))
            return real(ops, *args)
        return run

    for name in ('run_forward', 'run_backward'):
        monkeypatch.setattr(triton_kernels, name,
                            spy(getattr(triton_kernels, name)))
    lower, full = lower_precision_runs(dtype, 'triton', device)
    assert read[:2] == [(dtype, dtype, torch.float32)] * 2
    for i, (a, b) in enumerate(zip(lower, full, strict=True)):
        if i in (2, 3):  # the gradients of x_l and x_r
            assert a.dtype == dtype
            assert_rounded(a.cpu(), b.cpu())
        else:
            assert a.dtype == torch.float32
            assert torch.equal(a, b), i


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


# The kernels walk each node's edges in blocks of BLOCK_E, carrying the
# online softmax (forward) and the sums (backward) from one block to the
# next: the degrees below sit on either side of one and several blocks.
BLOCK_E = 32


def rising_logits(edge_index, x_l, x_r, att, et):
    """The order of the edges that sorts head 0's logits ascending: later
    blocks of a node's in-edges hold its larger logits, so that its online
    softmax must rescale what it summed before (head 1 keeps a random
    order)."""
    src, dst = edge_index
    z = x_l[src, 0] + x_r[dst, 0]
    if et is not None:
        z = z + et[:, 0]
    logit = (torch.nn.functional.leaky_relu(z, 0.2) * att[0]).sum(-1)
    return torch.argsort(logit.detach(), stable=True)


def check_blocks(device, num_src, num_dst, edge_index, add_self_loops,
                 edge_term, want_alpha=True, dropout=False, heads=2,
                 channels=3, seed=0):
    """Forward and every gradient against the reference, in float64."""
    num_edges = edge_index.size(1)
    x_l, x_r, att, et, loop_et = (
        t.detach() for t in features(num_src, num_dst, num_edges, heads,
                                     channels, torch.float64, seed=seed))
    if not edge_term:
        et = loop_et = None
    elif not add_self_loops:
        loop_et = None
    order = rising_logits(edge_index, x_l, x_r, att, et)
    edge_index = edge_index[:, order]
    if et is not None:
        et = et[order]
    num_virtual = num_edges + (min(num_src, num_dst)
                               if add_self_loops else 0)
    mask = None
    if dropout:
        gen = torch.Generator().manual_seed(seed + 1)
        mask = ((torch.rand(num_virtual, heads, generator=gen) > 0.3)
                .double() / 0.7).to(device)
    args = [None if t is None else t.to(device).requires_grad_()
            for t in (x_l, x_r, att, et, loop_et)]
    edge_index = edge_index.to(device)
    if want_alpha:
        actual, expected = run_both(*args[:3], edge_index, *args[3:], mask,
                                    add_self_loops)
    else:
        # No gradient of the attention weights reaches backward.
        inputs = [t for t in args if t is not None]
        no_alpha = torch.zeros(0, heads, dtype=torch.float64, device=device)
        actual = outputs_and_grads(lambda: (fused_gatv2_attention(
            *args[:3], edge_index, args[3], loop_edge_term=args[4],
            add_self_loops=add_self_loops, dropout_mask=mask,
            backend='triton'), no_alpha), inputs)
        expected = outputs_and_grads(lambda: (reference(
            *args[:3], edge_index, args[3], args[4], add_self_loops,
            mask)[0], no_alpha), inputs)
    assert_close_all([t.cpu() if t is not None else None for t in actual],
                     [t.cpu() if t is not None else None for t in expected],
                     torch.float64)


def degrees(edge_index, num_src, num_dst, add_self_loops):
    """The in-degrees and out-degrees that the kernels walk (with the
    implicit loops, without the edges i -> i they replace)."""
    layout = edge_layout(edge_index, num_src, num_dst, add_self_loops)
    return layout.dst_ptr.diff(), layout.csc[0].diff()


@pytest.mark.parametrize('degree', [
    1, BLOCK_E - 1, BLOCK_E, BLOCK_E + 1, 100, 1000])
@pytest.mark.parametrize('add_self_loops,edge_term', [(False, False),
                                                      (False, True),
                                                      (True, False),
                                                      (True, True)])
@pytest.mark.parametrize('device', DEVICES)
def test_in_degrees_across_blocks(device, degree, add_self_loops, edge_term):
    from pyg_gatv2.fused.backends import triton_kernels
    # The blocks of the rows of check_blocks' 2 heads x 3 channels.
    assert triton_kernels._block_e(2, 3) == BLOCK_E
    # Destination 0 takes its in-edges (and its implicit loop) from one
    # source each up to BLOCK_E + 1 edges, so that its logits differ even
    # without an edge term, and from repeated sources past that. Source 0
    # sends nothing but its loop; the last destination receives nothing;
    # 1 -> 1 is an existing self-loop and 2 -> 1 a duplicate edge.
    num_real = degree - int(add_self_loops)
    num_src = max(min(num_real, BLOCK_E + 1), 2) + 1
    num_dst = num_src + 2
    hub = torch.stack([torch.arange(num_real) % (num_src - 1) + 1,
                       torch.zeros(num_real, dtype=torch.long)])
    others = torch.tensor([[1, 1, 2, 2, 1], [1, 2, 1, 1, num_src]])
    edge_index = torch.cat([hub, others], 1)
    gen = torch.Generator().manual_seed(degree)
    edge_index = edge_index[:, torch.randperm(edge_index.size(1),
                                              generator=gen)]
    in_deg, out_deg = degrees(edge_index, num_src, num_dst, add_self_loops)
    assert in_deg[0] == degree and in_deg[-1] == 0
    assert out_deg[0] == int(add_self_loops)
    check_blocks(device, num_src, num_dst, edge_index, add_self_loops,
                 edge_term)


@pytest.mark.parametrize('degree', [BLOCK_E - 1, BLOCK_E, BLOCK_E + 1, 100])
@pytest.mark.parametrize('add_self_loops,edge_term', [(False, False),
                                                      (False, True),
                                                      (True, False),
                                                      (True, True)])
@pytest.mark.parametrize('device', DEVICES)
def test_out_degrees_across_blocks(device, degree, add_self_loops,
                                   edge_term):
    # Source 0 sends to destinations 1-4, with duplicates (and to itself
    # through its implicit loop); source 6 sends nothing, and destination
    # 0 receives nothing but that loop.
    num_src, num_dst = 7, 5
    gen = torch.Generator().manual_seed(degree)
    hub = torch.stack([
        torch.zeros(degree - int(add_self_loops), dtype=torch.long),
        torch.randint(1, num_dst, (degree - int(add_self_loops), ),
                      generator=gen)])
    others = torch.tensor([[1, 2, 3, 3, 5, 5], [2, 2, 4, 3, 1, 1]])
    edge_index = torch.cat([hub, others], 1)
    edge_index = edge_index[:, torch.randperm(edge_index.size(1),
                                              generator=gen)]
    in_deg, out_deg = degrees(edge_index, num_src, num_dst, add_self_loops)
    assert out_deg[0] == degree and out_deg[6] == 0
    assert in_deg[0] == int(add_self_loops)
    check_blocks(device, num_src, num_dst, edge_index, add_self_loops,
                 edge_term)


@pytest.mark.parametrize(
    'add_self_loops,edge_term,want_alpha,dropout',
    [(False, False, True, False), (True, True, True, False),
     (True, True, False, True), (False, True, False, False)])
@pytest.mark.parametrize('nodes_per_program,chunk_edges', [(1, None),
                                                           (16, None),
                                                           (1, 40),
                                                           (16, 64)])
@pytest.mark.parametrize('device', DEVICES)
def test_a_skewed_graph(device, add_self_loops, edge_term, want_alpha,
                        dropout, nodes_per_program, chunk_edges,
                        monkeypatch):
    # Node 0 receives 300 edges and node 1 sends 150; the other nodes have
    # 0 to 3 in-edges each, so that some have none, and only nodes below
    # 40 send any. With 16 destinations per program of the backward by
    # destination (as on graphs of 131,072 nodes or more), the last
    # program has 12. With chunks of 40 or 64 edges (512 by default),
    # nodes 0 and 1 are cut into chunks, the last one short, and chunks of
    # 40 start inside a block of BLOCK_E edges.
    from pyg_gatv2.fused.backends import triton_kernels
    num_nodes, senders = 60, 40
    if nodes_per_program > 1:
        monkeypatch.setattr(triton_kernels, '_MANY_NODES', num_nodes)
    assert triton_kernels._nodes_per_program(num_nodes) == nodes_per_program
    if chunk_edges is not None:
        monkeypatch.setattr(triton_kernels, '_CHUNK_EDGES', chunk_edges)
    gen = torch.Generator().manual_seed(9)
    into_hub = torch.stack([torch.randint(0, senders, (300, ),
                                          generator=gen),
                            torch.zeros(300, dtype=torch.long)])
    from_hub = torch.stack([torch.ones(150, dtype=torch.long),
                            torch.randint(0, num_nodes, (150, ),
                                          generator=gen)])
    low = torch.randint(0, 4, (num_nodes - 2, ), generator=gen)
    dst = torch.repeat_interleave(torch.arange(2, num_nodes), low)
    rest = torch.stack([torch.randint(0, senders, (dst.numel(), ),
                                      generator=gen), dst])
    edge_index = torch.cat([into_hub, from_hub, rest], 1)
    edge_index = edge_index[:, torch.randperm(edge_index.size(1),
                                              generator=gen)]
    in_deg, out_deg = degrees(edge_index, num_nodes, num_nodes,
                              add_self_loops)
    assert in_deg[0] > 8 * BLOCK_E and out_deg[1] > 4 * BLOCK_E
    if not add_self_loops:
        assert (in_deg == 0).any() and (out_deg == 0).any()
    layout = edge_layout(edge_index, num_nodes, num_nodes, add_self_loops)
    size = triton_kernels._CHUNK_EDGES
    by_dst, by_src = layout.chunks('dst', size), layout.chunks('src', size)
    if chunk_edges is None:
        assert by_dst is None and by_src is None
    else:
        assert 0 in by_dst.nodes.tolist() and 1 in by_src.nodes.tolist()
    check_blocks(device, num_nodes, num_nodes, edge_index, add_self_loops,
                 edge_term, want_alpha, dropout, heads=2, channels=4)


@pytest.mark.parametrize('device', DEVICES)
def test_int32_layouts_cut_into_chunks(device, monkeypatch):
    # Where torch sorts (a GPU, or no C++ library), int32 indices give an
    # int32 layout and int32 chunks: the same results as int64 ones, the
    # hubs (destination 0, source 1) cut into chunks of 8 edges.
    from pyg_gatv2.fused import cpp_library
    from pyg_gatv2.fused.backends import triton_kernels
    monkeypatch.setattr(cpp_library, 'load', lambda: None)
    monkeypatch.setattr(triton_kernels, '_CHUNK_EDGES', 8)
    gen = torch.Generator().manual_seed(10)
    edge_index = torch.cat([
        torch.stack([torch.randint(0, 12, (40, ), generator=gen),
                     torch.zeros(40, dtype=torch.long)]),
        torch.stack([torch.ones(30, dtype=torch.long),
                     torch.randint(0, 12, (30, ), generator=gen)]),
        random_graph(12, 12, 20, seed=10)], 1)
    x_l, x_r, att, et, loop_et = features(12, 12, edge_index.size(1), 2, 3,
                                          torch.float64, seed=10)
    inputs = [t.detach().to(device).requires_grad_()
              for t in (x_l, x_r, att, et, loop_et)]
    results = []
    for dtype in (torch.int32, torch.int64):
        indices = edge_index.to(device, dtype)
        layout = edge_layout(indices, 12, 12, add_self_loops=True)
        assert layout.dst_ptr.dtype == dtype
        assert layout.chunks('dst', 8).nodes.tolist()[0] == 0
        assert 1 in layout.chunks('src', 8).nodes.tolist()
        results.append(outputs_and_grads(
            lambda indices=indices: fused_gatv2_attention(
                *inputs[:3], indices, inputs[3], loop_edge_term=inputs[4],
                add_self_loops=True, return_attention_weights=True,
                backend='triton'), inputs))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def hubs_and_leaves(seed=11):
    """A 12-node graph whose destination 0 receives 40 edges and source 1
    sends 30, the others 0 to 4 each."""
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([
        torch.stack([torch.randint(0, 12, (40, ), generator=gen),
                     torch.zeros(40, dtype=torch.long)]),
        torch.stack([torch.ones(30, dtype=torch.long),
                     torch.randint(0, 12, (30, ), generator=gen)]),
        random_graph(12, 12, 20, seed=seed)], 1)


def tuned_kernels():
    from pyg_gatv2.fused.backends import triton_kernels
    return triton_kernels._TUNED.values()


@pytest.mark.parametrize('block_e', [4, 8, 16, 32])
def test_each_tuned_block_size_matches_the_reference(block_e, monkeypatch):
    # Autotuning may keep any of its configurations: each block size, the
    # only one left to the tuner, against the reference, on hubs cut into
    # chunks of 16 edges, so that every tuned kernel runs.
    import triton

    from pyg_gatv2.fused.backends import triton as triton_backend
    from pyg_gatv2.fused.backends import triton_kernels
    assert block_e in triton_kernels._TUNED_BLOCK_E
    monkeypatch.setattr(triton_backend, 'autotune', True)
    monkeypatch.setattr(triton_kernels, '_CHUNK_EDGES', 16)
    for tuned in tuned_kernels():
        monkeypatch.setattr(tuned, 'configs', [
            triton.Config({'BLOCK_E': block_e}, num_warps=4)])
        monkeypatch.setattr(tuned, 'best_config', None, raising=False)
    check_blocks('cpu', 12, 12, hubs_and_leaves(), add_self_loops=True,
                 edge_term=True, dropout=True)
    for tuned in tuned_kernels():
        assert tuned.best_config.kwargs['BLOCK_E'] == block_e


@pytest.mark.parametrize('device', DEVICES)
def test_autotuning_times_its_configurations_and_keeps_the_fastest(
        device, monkeypatch):
    # One launch of each kernel times the configurations whose rows fit
    # (on the CPU in the interpreter, by the host's clock) and keeps one
    # for its shape of rows and dtypes; the results are the reference's.
    from pyg_gatv2.fused.backends import triton as triton_backend
    from pyg_gatv2.fused.backends import triton_kernels
    monkeypatch.setattr(triton_backend, 'autotune', True)
    monkeypatch.setattr(triton_kernels, '_CHUNK_EDGES', 16)
    timed = []
    for tuned in tuned_kernels():
        monkeypatch.setattr(tuned, 'cache', {})
        real = tuned._bench

        def bench(*args, config, real=real, **meta):
            timed.append(config)
            return real(*args, config=config, **meta)

        monkeypatch.setattr(tuned, '_bench', bench)
    check_blocks(device, 12, 12, hubs_and_leaves(), add_self_loops=True,
                 edge_term=True, heads=2, channels=3)
    configs = {(c.kwargs['BLOCK_E'], c.num_warps)
               for c in triton_kernels._TUNED[triton_kernels._forward].configs}
    assert len(configs) == len(triton_kernels._TUNED_BLOCK_E) * len(
        triton_kernels._TUNED_WARPS)
    # Rows of 2 x 4 (padded) fit every block size: all are timed, by each
    # of the 7 kernels.
    assert len(timed) == 7 * len(configs)
    for tuned in tuned_kernels():
        (kept, ) = tuned.cache.values()
        assert (kept.kwargs['BLOCK_E'], kept.num_warps) in configs


def test_autotuning_leaves_out_blocks_of_rows_that_do_not_fit():
    import triton

    from pyg_gatv2.fused.backends import triton_kernels
    configs = [triton.Config({'BLOCK_E': b}, num_warps=4)
               for b in triton_kernels._TUNED_BLOCK_E]

    def fitting(heads, channels):
        return [c.kwargs['BLOCK_E'] for c in triton_kernels._fitting(
            configs, {}, BLOCK_H=heads, BLOCK_C=channels)]

    assert fitting(2, 4) == [4, 8, 16, 32]
    assert fitting(4, 32) == [4, 8, 16, 32]  # 4096 elements at most
    assert fitting(8, 64) == [4, 8]
    assert fitting(16, 512) == [4]  # the smallest, though it does not fit
