"""Randomised parity of each backend's kernels with the edge-wise reference:
graphs, shapes, slopes and options drawn by hypothesis, with a fixed,
derandomised example budget. Gradients are taken without
``create_graph``, as in training, so that backward runs the kernels, not
the differentiable reference."""
import pytest
import torch
from _fused_cases import (
    DEVICES,
    SLOPES,
    assert_close_all,
    cpp_chunk_edges,
    features,
    needs_cpp,
    outputs_and_grads,
    reference,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyg_gatv2.fused import backends, fused_gatv2_attention

# Heads x channels: the C++ kernels' float64 path takes every shape at run
# time; lanes of 8 channels with and without a remainder.
SHAPES = st.one_of(st.sampled_from([(1, 8), (2, 16), (3, 5), (1, 7), (2, 9)]),
                   st.tuples(st.integers(1, 3), st.integers(1, 4)))
# Triton's interpreter pays per program and per operation, not per lane.
TRITON_SHAPES = st.tuples(st.integers(1, 2), st.integers(1, 5))


@st.composite
def operator_cases(draw, shapes, max_nodes):
    bipartite = draw(st.booleans())
    num_src = draw(st.integers(1, max_nodes))
    num_dst = draw(st.integers(1, max_nodes)) if bipartite else num_src
    # Few nodes for up to 40 edges: duplicate edges, existing self-loops
    # and nodes without in- or out-edges all come up often.
    num_edges = draw(st.integers(0, 40))
    src = draw(st.lists(st.integers(0, num_src - 1), min_size=num_edges,
                        max_size=num_edges))
    dst = draw(st.lists(st.integers(0, num_dst - 1), min_size=num_edges,
                        max_size=num_edges))
    heads, channels = draw(shapes)
    return dict(
        num_src=num_src, num_dst=num_dst,
        edge_index=torch.tensor([src, dst], dtype=draw(st.sampled_from(
            [torch.int64, torch.int32]))).view(2, -1),
        heads=heads, channels=channels, slope=draw(SLOPES),
        add_self_loops=draw(st.booleans()),
        # The loops' edge term is zero where the caller leaves it out.
        edge_term=draw(st.sampled_from([None, 'edges', 'edges and loops'])),
        dropout=draw(st.booleans()),
        # Without the attention weights no gradient of them reaches
        # backward.
        want_alpha=draw(st.booleans()),
        # Chunks of a few edges (torch backend) cut most nodes' in-edges.
        chunk_size=draw(st.integers(1, 8)),
        seed=draw(st.integers(0, 2**16)),
    )


def check_against_reference(case, backend, device='cpu'):
    num_src, num_dst = case['num_src'], case['num_dst']
    loops = case['add_self_loops']
    edge_index = case['edge_index'].to(device)
    x_l, x_r, att, et, loop_et = (
        t.detach().to(device).requires_grad_() for t in features(
            num_src, num_dst, edge_index.size(1), case['heads'],
            case['channels'], torch.float64, seed=case['seed']))
    if case['edge_term'] is None:
        et = loop_et = None
    inputs = [t for t in (x_l, x_r, att, et) if t is not None]
    given_loop_et = None
    if loops and case['edge_term'] == 'edges and loops':
        given_loop_et = loop_et
        inputs.append(loop_et)
    elif et is not None:
        loop_et = torch.zeros_like(loop_et)
    mask = None
    if case['dropout']:
        num_virtual = edge_index.size(1) + (min(num_src, num_dst)
                                            if loops else 0)
        gen = torch.Generator().manual_seed(case['seed'])
        keep = torch.rand(num_virtual, case['heads'], generator=gen) > 0.3
        mask = (keep.double() / 0.7).to(device)
    no_alpha = x_l.new_zeros(0, case['heads'])

    def ours():
        result = fused_gatv2_attention(
            x_l, x_r, att, edge_index, et, loop_edge_term=given_loop_et,
            add_self_loops=loops, negative_slope=case['slope'],
            dropout_mask=mask, return_attention_weights=case['want_alpha'],
            backend=backend, chunk_size=case['chunk_size'])
        return result if case['want_alpha'] else (result, no_alpha)

    def theirs():
        out, alpha = reference(x_l, x_r, att, edge_index.long(), et,
                               loop_et, loops, mask, slope=case['slope'])
        return out, alpha if case['want_alpha'] else no_alpha

    assert_close_all(outputs_and_grads(ours, inputs),
                     outputs_and_grads(theirs, inputs), torch.float64)


@pytest.mark.parametrize('backend', ['cpp', 'torch'])
@settings(max_examples=200, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=operator_cases(SHAPES, max_nodes=8))
def test_cpu_kernels_match_the_reference(backend, case):
    check_against_reference(case, backend)


@needs_cpp
@settings(max_examples=100, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=operator_cases(SHAPES, max_nodes=8))
def test_cpp_kernels_with_nodes_cut_into_chunks_match_the_reference(case):
    # Chunks of one to eight edges: most nodes of these small graphs have
    # more by destination or by source, each chunk a work item of its own
    # whose partial sums the kernels merge.
    with cpp_chunk_edges(case['chunk_size']):
        check_against_reference(case, 'cpp')


@pytest.mark.skipif('triton' not in backends.available(),
                    reason='triton is not installed (a test dependency)')
@pytest.mark.parametrize('device', DEVICES)
@settings(max_examples=50, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=operator_cases(TRITON_SHAPES, max_nodes=5))
def test_triton_kernels_match_the_reference(device, case):
    check_against_reference(case, 'triton', device)
