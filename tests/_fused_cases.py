"""What the tests of the fused attention share: random graphs and operands,
the edge-wise reference, and the comparison of outputs and gradients."""
import contextlib
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch_geometric.utils import softmax

from pyg_gatv2.fused import backends, fused_gatv2_attention

# The backends the CPU sweeps run on. Triton's kernels run here only in its
# interpreter, too slow for them; tests/test_fused_backends_triton.py
# covers them on small graphs.
BACKENDS = [b for b in backends.available() if b != 'triton']
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
# The devices the Triton kernels run on here: the CPU in Triton's
# interpreter (conftest.py sets TRITON_INTERPRET=1 without a GPU), the GPU
# where there is one.
DEVICES = ['cpu'] if os.environ.get('TRITON_INTERPRET') == '1' else []
if torch.cuda.is_available():
    DEVICES.append(pytest.param('cuda', marks=pytest.mark.cuda))
# LeakyReLU slopes: a ReLU, the identity, steeper on the negative side than
# on the positive one, and any in between.
SLOPES = st.one_of(st.sampled_from([0.2, 0.0, 1.0, 3.0]),
                   st.floats(-1.0, 4.0))

needs_cpp = pytest.mark.skipif('cpp' not in BACKENDS,
                               reason='the C++ kernels are not built')


@contextlib.contextmanager
def torch_threads(threads):
    """Runs the block on ``threads`` of torch's (and the kernels') threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def cpp_chunk_edges(edges):
    """Runs the block with the C++ kernels cutting the edges of every node
    of more than ``edges`` edges into chunks of that many."""
    from pyg_gatv2.fused.backends import cpp
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpp, 'CHUNK_EDGES', edges)
        yield


def random_graph(num_src, num_dst, num_edges, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([
        torch.randint(0, num_src, (num_edges, ), generator=gen),
        torch.randint(0, num_dst, (num_edges, ), generator=gen),
    ])


def graph(num_src=9, num_dst=7, num_edges=40, seed=0):
    """A random graph whose first four edges are ``i -> i``, for the
    implicit self-loops to replace."""
    edge_index = random_graph(num_src, num_dst, num_edges, seed)
    edge_index[:, :4] = torch.arange(4).repeat(2, 1)
    return edge_index


def features(num_src, num_dst, num_edges, heads, channels, dtype, seed=0,
             scale=1.0):
    """``x_l``, ``x_r``, ``att``, the edge term and the loops' edge term,
    random and requiring gradients."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        t = torch.randn(*shape, generator=gen, dtype=dtype) * scale
        return t.requires_grad_()

    return (randn(num_src, heads, channels), randn(num_dst, heads, channels),
            randn(heads, channels), randn(num_edges, heads, channels),
            randn(min(num_src, num_dst), heads, channels))


def dropout_mask(num_virtual, heads, dtype, seed=2, p=0.3):
    """A dropout mask of the attention weights, ``0`` or ``1 / (1 - p)``."""
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(num_virtual, heads, generator=gen) > p
    return keep.to(dtype) / (1 - p)


def reference(x_l, x_r, att, edge_index, edge_term=None, loop_term=None,
              add_self_loops=False, mask=None, slope=0.2):
    """Edge-wise PyTorch with PyG's softmax, explicit self-loop edges; the
    attention weights in the operator's order (edges, then loops)."""
    num_edges = edge_index.size(1)
    vid = torch.arange(num_edges, device=edge_index.device)
    if add_self_loops:
        num_loops = min(x_l.size(0), x_r.size(0))
        loops = torch.arange(num_loops, device=edge_index.device)
        keep = (edge_index[0] != edge_index[1]).nonzero().view(-1)
        edge_index = torch.cat([edge_index[:, keep], loops.repeat(2, 1)], 1)
        vid = torch.cat([keep, loops + num_edges])
        if edge_term is not None:
            edge_term = torch.cat([edge_term[keep], loop_term])
    src, dst = edge_index
    z = x_l[src] + x_r[dst]
    if edge_term is not None:
        z = z + edge_term
    logit = (F.leaky_relu(z, slope) * att).sum(dim=-1)
    alpha = softmax(logit, dst, num_nodes=x_r.size(0))
    weight = alpha if mask is None else alpha * mask[vid]
    out = torch.zeros_like(x_r).index_add(0, dst,
                                          x_l[src] * weight.unsqueeze(-1))
    num_virtual = num_edges + (num_loops if add_self_loops else 0)
    alpha_all = alpha.new_zeros(num_virtual, alpha.size(1))
    return out, alpha_all.index_copy(0, vid, alpha)


def outputs_and_grads(fn, inputs, seed=1):
    """Runs ``fn``; returns its outputs and the gradients of a loss that
    weighs every output and attention entry differently."""
    out, alpha = fn()
    gen = torch.Generator().manual_seed(seed)
    # Drawn on the CPU, so that every device gets the same weights.
    w_out = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(
        out.device)
    w_alpha = torch.randn(alpha.shape, generator=gen, dtype=out.dtype).to(
        out.device)
    loss = (out * w_out).sum() + (alpha * w_alpha).sum()
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [out, alpha] + list(grads)


def assert_close_all(actual, expected, dtype, what=''):
    """Equal within ``TOLERANCE`` relative to the largest entry of each
    tensor: gradients are sums over many edges, with rounding to match.
    Failures name ``what`` and the tensor's position."""
    for i, (a, b) in enumerate(zip(actual, expected, strict=True)):
        if b is None:
            assert a is None or bool((a == 0).all()), (what, i)
            continue
        scale = b.abs().max().item() if b.numel() else 1.0
        tol = TOLERANCE[dtype] * max(1.0, scale)
        torch.testing.assert_close(a, b, atol=tol, rtol=TOLERANCE[dtype],
                                   msg=lambda m, i=i: f'{what} #{i}: {m}')


def compare(x_l, x_r, att, edge_index, et=None, loop_et=None, mask=None,
            add_self_loops=False, backend='auto', dtype=torch.float64,
            **kwargs):
    """The operator on ``backend`` against :func:`reference`: outputs,
    attention weights and gradients; returns the operator's."""
    inputs = [t for t in (x_l, x_r, att, et, loop_et) if t is not None]

    def ours():
        return fused_gatv2_attention(
            x_l, x_r, att, edge_index, et, loop_edge_term=loop_et,
            add_self_loops=add_self_loops, dropout_mask=mask,
            return_attention_weights=True, backend=backend, **kwargs)

    def theirs():
        return reference(x_l, x_r, att, edge_index, et, loop_et,
                         add_self_loops, mask)

    actual = outputs_and_grads(ours, inputs)
    expected = outputs_and_grads(theirs, inputs)
    assert_close_all(actual, expected, dtype)
    return actual


def lower_precision_runs(dtype, backend, device='cpu', seed=7,
                         edge_terms=False):
    """The operator with ``x_l`` and ``x_r`` (and with ``edge_terms`` the
    edge terms too) stored in ``dtype`` beside a float32 ``att``, edge
    terms and dropout mask (the projections that autocast gives), and with
    float32 copies of the same tensors: the outputs and gradients
    (:func:`outputs_and_grads`) of each run, in the order x_l, x_r, att,
    edge term, loops' edge term."""
    edge_index = random_graph(9, 7, 40, seed=seed).to(device)
    names = ('x_l', 'x_r', 'att', 'et', 'loop_et')
    full = dict(zip(names, features(9, 7, 40, 2, 4, torch.float32,
                                    seed=seed), strict=True))
    lowered = ('x_l', 'x_r') + (('et', 'loop_et') if edge_terms else ())
    lower = {**full, **{name: full[name].detach().to(dtype)
                        for name in lowered}}
    mask = dropout_mask(40 + 7, 2, torch.float32).to(device)

    def run(tensors):
        inputs = [tensors[name].detach().to(device).requires_grad_()
                  for name in names]

        def fn():
            return fused_gatv2_attention(
                inputs[0], inputs[1], inputs[2], edge_index, inputs[3],
                loop_edge_term=inputs[4], add_self_loops=True,
                dropout_mask=mask, return_attention_weights=True,
                backend=backend)
        return outputs_and_grads(fn, inputs)

    return run(lower), run({name: t.float() for name, t in lower.items()})


def spy_on_backends(monkeypatch):
    """Records the passes that the fused backends run, in order, as
    ``(backend, 'forward' or 'backward')``."""
    calls = []

    def spy(real, name, method):
        def run(*args):
            calls.append((name, method))
            return real(*args)
        return run

    for backend in backends.registry().values():
        for method in ('forward', 'backward'):
            monkeypatch.setattr(backend, method, spy(
                getattr(backend, method), backend.name, method))
    return calls
