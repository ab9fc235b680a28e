"""Randomised parity with PyG's GATv2Conv: graphs and constructor options
drawn by hypothesis, with a fixed, derandomised example budget so that the
run is the same, and as long, every time.

Gradients taken with ``create_graph=True`` run through the operator's
differentiable reference; those taken without it, as in training, run
through the kernels of the backend chosen. Both are compared here."""
import pytest
import torch
import torch_geometric.nn as pyg_nn
from _fused_cases import SLOPES
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pyg_gatv2 import GATv2Conv, use_backends
from pyg_gatv2.fused.cpp_library import compiled_shape

pytestmark = pytest.mark.filterwarnings('ignore::UserWarning')

EXAMPLES = 300


def draw_graph(draw):
    """``(bipartite, num_src, num_dst, edge_index)``."""
    bipartite = draw(st.booleans())
    num_src = draw(st.integers(1, 7))
    num_dst = draw(st.integers(1, 7)) if bipartite else num_src
    # Few nodes and up to 24 edges: duplicate edges, existing self-loops
    # and nodes without in-edges all come up often, and so does no edge.
    num_edges = draw(st.integers(0, 24))
    src = draw(st.lists(st.integers(0, num_src - 1), min_size=num_edges,
                        max_size=num_edges))
    dst = draw(st.lists(st.integers(0, num_dst - 1), min_size=num_edges,
                        max_size=num_edges))
    index_dtype = draw(st.sampled_from([torch.int64, torch.int32]))
    edge_index = torch.tensor([src, dst], dtype=index_dtype).view(2, -1)
    return bipartite, num_src, num_dst, edge_index


@st.composite
def layer_cases(draw):
    bipartite, num_src, num_dst, edge_index = draw_graph(draw)
    share_weights = draw(st.booleans())
    in_src = draw(st.integers(1, 4))
    in_dst = in_src if share_weights else draw(st.integers(1, 4))
    options = dict(
        heads=draw(st.integers(1, 3)),
        concat=draw(st.booleans()),
        negative_slope=draw(st.sampled_from([0.2, 0.0, 1.0, 3.0])),
        add_self_loops=draw(st.booleans()),
        edge_dim=draw(st.sampled_from([None, 1, 3])),
        fill_value=draw(st.sampled_from(['mean', 'add', 'max', 'min',
                                         'mul', 0.5])),
        bias=draw(st.booleans()),
        share_weights=share_weights,
        residual=draw(st.booleans()),
    )
    return dict(
        bipartite=bipartite, num_src=num_src, num_dst=num_dst,
        edge_index=edge_index,
        in_channels=(in_src, in_dst) if bipartite else in_src,
        out_channels=draw(st.integers(1, 3)),
        options=options,
        fused=draw(st.sampled_from([None, True, False])),
        seed=draw(st.integers(0, 2**16)),
    )


def first_and_second_order(conv, x, edge_index, edge_attr):
    """Output, attention, the gradients of a loss over both, and the
    gradients of a penalty on the input gradients (second order)."""
    x = [t.detach().requires_grad_() for t in x]
    inputs = list(x)
    if edge_attr is not None:
        edge_attr = edge_attr.detach().requires_grad_()
        inputs.append(edge_attr)
    params = list(conv.parameters())
    out, (ei, alpha) = conv(x[0] if len(x) == 1 else tuple(x), edge_index,
                            edge_attr, return_attention_weights=True)
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype)
    loss = (out.flatten() * weight).sum() + (alpha * alpha).sum()
    first = torch.autograd.grad(loss, inputs + params, create_graph=True,
                                allow_unused=True)
    penalty = sum((g * g).sum() for g in first[:len(inputs)]
                  if g is not None)
    second = (torch.autograd.grad(penalty, inputs + params,
                                  allow_unused=True)
              if torch.is_tensor(penalty) and penalty.requires_grad else
              [None] * len(first))
    return [out, ei, alpha], list(first), list(second)


def assert_same(actual, expected, what, tolerance=None):
    """Equal to float64 rounding or, with ``tolerance``, within it relative
    to the largest entry of each expected tensor (``actual`` in float32)."""
    for i, (a, b) in enumerate(zip(actual, expected, strict=True)):
        # A gradient that does not depend on the loss is None on one side
        # and zeros on the other, depending on how each layer computes it.
        if a is None or b is None:
            other = b if a is None else a
            assert other is None or bool((other == 0).all()), (what, i)
            continue
        atol, rtol = 1e-9, 1e-7
        if tolerance is not None:
            scale = b.abs().max().item() if b.numel() else 1.0
            atol, rtol = tolerance * max(1.0, scale), tolerance
        torch.testing.assert_close(a.to(b.dtype), b, atol=atol, rtol=rtol,
                                   msg=lambda m, i=i: f'{what} #{i}: {m}')


def layers_and_inputs(case):
    """PyG's layer and ours in float64 with the same random parameters, the
    node features, the edges and the edge features of ``case``."""
    gen = torch.Generator().manual_seed(case['seed'])
    options = case['options']
    ref = pyg_nn.GATv2Conv(case['in_channels'], case['out_channels'],
                           **options).double()
    ours = GATv2Conv(case['in_channels'], case['out_channels'],
                     fused=case['fused'], **options).double()
    ours.load_state_dict(ref.state_dict(), strict=True)
    for param in ref.parameters():
        # Random biases and attention vectors, not PyG's zeros.
        param.data.copy_(torch.randn(param.shape, generator=gen,
                                     dtype=torch.float64))
    ours.load_state_dict(ref.state_dict(), strict=True)

    in_src, in_dst = ((case['in_channels'], ) * 2
                      if not case['bipartite'] else case['in_channels'])
    x_src = torch.randn(case['num_src'], in_src, generator=gen,
                        dtype=torch.float64)
    x = [x_src]
    if case['bipartite']:
        x.append(torch.randn(case['num_dst'], in_dst, generator=gen,
                             dtype=torch.float64))
    edge_index = case['edge_index']
    # PyG's layer fails (an index error) to reduce the self-loop features
    # of a bipartite graph whose targets outnumber the loops; ours is
    # checked on such graphs by test_self_loop_features_of_a_bipartite_graph.
    assume(not (options['add_self_loops'] and options['edge_dim']
                and isinstance(options['fill_value'], str)
                and edge_index.size(1) > 0 and int(edge_index[1].max()) >=
                min(case['num_src'], case['num_dst'])))
    edge_attr = None
    if options['edge_dim'] is not None:
        edge_attr = torch.randn(edge_index.size(1), options['edge_dim'],
                                generator=gen, dtype=torch.float64)
    return ref, ours, x, edge_index, edge_attr


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=layer_cases())
def test_random_graphs_and_options_match_pyg(case):
    ref, ours, x, edge_index, edge_attr = layers_and_inputs(case)
    ours_values, ours_first, ours_second = first_and_second_order(
        ours, x, edge_index, edge_attr)
    # PyG's layer is given int64 indices: with int32 ones (PyG 2.8, torch
    # 2.13) its input gradients disagree with finite differences, while
    # ours agree (test_gradcheck_with_int32_indices).
    ref_values, ref_first, ref_second = first_and_second_order(
        ref, x, edge_index.long(), edge_attr)
    assert torch.equal(ours_values[1].long(), ref_values[1].long())
    assert_same([ours_values[0], ours_values[2]],
                [ref_values[0], ref_values[2]], 'output and attention')
    assert_same(ours_first, ref_first, 'first derivatives')
    assert_same(ours_second, ref_second, 'second derivatives')


# Heads x channels. The float32 C++ kernels are compiled for the first
# shapes (compiled_shape); the others take the heads, and the width of the
# last block of 8 channels, or the whole shape, at run time, as float64
# does.
FIXED_SHAPES = [(1, 8), (2, 16), (4, 32), (8, 8), (8, 64)]
RUN_TIME_SHAPES = [(3, 5), (1, 7), (2, 9), (1, 1), (3, 2), (3, 24), (2, 70)]
KERNEL_EXAMPLES = 150
# float32 against float64, relative to the largest entry of each tensor:
# gradients are sums of terms that cancel, and they keep the rounding of
# those terms (up to 1.4e-4 of the largest entry in these examples).
FLOAT32_TOLERANCE = 5e-4


@st.composite
def kernel_cases(draw, shapes):
    """Cases of :func:`layer_cases` on the fused path without dropout,
    with heads x channels drawn from ``shapes`` and any negative slope."""
    bipartite, num_src, num_dst, edge_index = draw_graph(draw)
    share_weights = draw(st.booleans())
    in_src = draw(st.integers(1, 4))
    in_dst = in_src if share_weights else draw(st.integers(1, 4))
    heads, out_channels = draw(shapes)
    options = dict(
        heads=heads,
        concat=draw(st.booleans()),
        negative_slope=draw(SLOPES),
        add_self_loops=draw(st.booleans()),
        edge_dim=draw(st.sampled_from([None, 1, 3])),
        fill_value=draw(st.sampled_from(['mean', 'add', 'max', 'min',
                                         'mul', 0.5])),
        bias=draw(st.booleans()),
        share_weights=share_weights,
        residual=draw(st.booleans()),
    )
    return dict(
        bipartite=bipartite, num_src=num_src, num_dst=num_dst,
        edge_index=edge_index,
        in_channels=(in_src, in_dst) if bipartite else in_src,
        out_channels=out_channels, options=options, fused=True,
        seed=draw(st.integers(0, 2**16)),
    )


def first_order(conv, x, edge_index, edge_attr):
    """Output, edges, attention and the gradients of every input and
    parameter of a loss that weighs each output and attention entry
    differently, taken without ``create_graph``, as in training: backward
    runs the backend's kernels, not the differentiable reference."""
    x = [t.detach().requires_grad_() for t in x]
    inputs = list(x)
    if edge_attr is not None:
        edge_attr = edge_attr.detach().requires_grad_()
        inputs.append(edge_attr)
    out, (ei, alpha) = conv(x[0] if len(x) == 1 else tuple(x), edge_index,
                            edge_attr, return_attention_weights=True)
    # Drawn in float64, so that a float32 run weighs its outputs as the
    # float64 one does, to rounding.
    gen = torch.Generator().manual_seed(1)
    w_out = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    w_alpha = torch.randn(alpha.shape, generator=gen, dtype=torch.float64)
    loss = ((out * w_out.to(out.dtype)).sum()
            + (alpha * w_alpha.to(alpha.dtype)).sum())
    grads = torch.autograd.grad(loss, inputs + list(conv.parameters()),
                                allow_unused=True)
    return [out, ei, alpha] + list(grads)


# Triton runs here only in its interpreter, slowly: test_fused_op_random.py
# draws cases for it at the level of the operator.
BACKENDS = ['cpp', 'torch']


@pytest.mark.parametrize('backend', BACKENDS)
@settings(max_examples=KERNEL_EXAMPLES, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=kernel_cases(st.one_of(
    st.sampled_from(FIXED_SHAPES + RUN_TIME_SHAPES),
    st.tuples(st.integers(1, 3), st.integers(1, 3)))))
def test_first_order_gradients_on_each_backend_match_pyg(backend, case):
    ref, ours, x, edge_index, edge_attr = layers_and_inputs(case)
    with use_backends(fused=backend):
        actual = first_order(ours, x, edge_index, edge_attr)
    expected = first_order(ref, x, edge_index.long(), edge_attr)
    assert torch.equal(actual.pop(1).long(), expected.pop(1))
    assert_same(actual, expected, f'{backend}: output, attention, gradients')


@settings(max_examples=KERNEL_EXAMPLES, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=kernel_cases(st.sampled_from(FIXED_SHAPES + RUN_TIME_SHAPES)))
def test_cpp_float32_kernels_match_pyg_in_float64(case):
    heads, channels = case['options']['heads'], case['out_channels']
    assert (compiled_shape(heads, channels)[:2] == (heads, channels)) == (
        (heads, channels) in FIXED_SHAPES)
    ref, ours, x, edge_index, edge_attr = layers_and_inputs(case)
    # Logits of order one, as with trained weights: over 64 channels, an
    # attention vector of N(0, 1) entries saturates the softmax, and the
    # gradients cancel to far below float32's rounding of their terms.
    with torch.no_grad():
        ref.att /= channels**0.5
    ours.load_state_dict(ref.state_dict(), strict=True)
    with use_backends(fused='cpp'):
        actual = first_order(ours.float(), [t.float() for t in x],
                             edge_index, None if edge_attr is None else
                             edge_attr.float())
    expected = first_order(ref, x, edge_index.long(), edge_attr)
    assert torch.equal(actual.pop(1).long(), expected.pop(1))
    assert_same(actual, expected, 'float32 output, attention, gradients',
                tolerance=FLOAT32_TOLERANCE)
