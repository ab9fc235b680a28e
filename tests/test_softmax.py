import pytest
import torch
from torch_geometric.utils import softmax as pyg_softmax

import pyg_gatv2
from pyg_gatv2 import softmax
from pyg_gatv2.softmax import scatter_softmax

BACKENDS = softmax.available()
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def test_torch_scatter_backend_is_available_in_ci():
    # CI must exercise the fast backend rather than skip it.
    import os
    if os.environ.get('CI'):
        assert 'torch_scatter' in BACKENDS
    assert BACKENDS[-1] == 'native'
    assert set(BACKENDS) <= set(softmax.BACKENDS)


def test_torch_scatter_is_available_where_it_is_installed(monkeypatch):
    monkeypatch.setattr(softmax, '_has_torch_scatter', lambda: False)
    assert softmax.available() == ('native', )
    monkeypatch.setattr(softmax, '_has_torch_scatter', lambda: True)
    assert softmax.available() == ('torch_scatter', 'native')


@pytest.fixture
def softmax_run(monkeypatch):
    """Runs a small softmax with a ``backend`` argument; returns the
    backends whose reductions ran."""
    ran = []

    def spy(real, name):
        def run(*args):
            ran.append(name)
            return real(*args)
        return run

    monkeypatch.setattr(softmax, '_scatter_max',
                        spy(softmax._scatter_max, 'torch_scatter'))
    monkeypatch.setattr(softmax, '_native_max',
                        spy(softmax._native_max, 'native'))

    def run(backend):
        ran.clear()
        scatter_softmax(torch.randn(4, 2), torch.tensor([0, 0, 1, 1]), 2,
                        backend=backend)
        return list(ran)

    return run


def test_default_backend_prefers_torch_scatter(softmax_run):
    expected = 'torch_scatter' if 'torch_scatter' in BACKENDS else 'native'
    assert softmax.chosen() == 'auto'
    assert softmax_run(None) == [expected]
    assert softmax_run('auto') == [expected]
    with pyg_gatv2.use_backends(softmax='native'):
        assert softmax.chosen() == 'native'
        assert softmax_run(None) == ['native']
    assert softmax.chosen() == 'auto'
    assert softmax_run('native') == ['native']


def test_unknown_backend_is_reported():
    with pytest.raises(ValueError,
                       match="'scatter_softmax' got softmax backend 'cuda'; "
                       "choose one of 'auto', 'torch_scatter', 'native'"):
        scatter_softmax(torch.ones(2), torch.tensor([0, 1]), 2,
                        backend='cuda')


@pytest.mark.parametrize('backend', BACKENDS)
def test_hand_made_groups(backend):
    src = torch.tensor([0., 0., 1., 5.])
    index = torch.tensor([0, 0, 2, 2])
    out = scatter_softmax(src, index, 4, backend=backend)
    e = torch.exp(torch.tensor(-4.))
    expected = torch.tensor([0.5, 0.5, e / (1 + e), 1 / (1 + e)])
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('use_ptr', [False, True])
def test_matches_pyg_softmax(backend, use_ptr):
    gen = torch.Generator().manual_seed(0)
    index = torch.sort(torch.randint(0, 30, (200, ), generator=gen))[0]
    src = torch.randn(200, 4, dtype=torch.float64, generator=gen)
    ptr = None
    if use_ptr:
        ptr = torch.zeros(31, dtype=torch.long)
        ptr[1:] = torch.bincount(index, minlength=30).cumsum(0)
    out = scatter_softmax(src, index, 30, ptr=ptr, backend=backend)
    torch.testing.assert_close(out, pyg_softmax(src, index, num_nodes=30),
                               atol=1e-12, rtol=1e-12)
    sums = torch.zeros(30, 4, dtype=torch.float64).index_add(0, index, out)
    present = torch.bincount(index, minlength=30) > 0
    torch.testing.assert_close(sums[present],
                               torch.ones_like(sums[present]))


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('dtype', DTYPES)
def test_large_logits_do_not_overflow(backend, dtype):
    src = torch.tensor([[1e4], [1e4 - 1], [-1e4], [3.0]], dtype=dtype)
    index = torch.tensor([0, 0, 1, 1])
    out = scatter_softmax(src, index, 3, backend=backend)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    reference = scatter_softmax(src.double(), index, 3, backend='native')
    tol = 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-6
    torch.testing.assert_close(out.double(), reference, atol=tol, rtol=tol)
    assert out[3].item() == pytest.approx(1.0, abs=tol)


@pytest.mark.parametrize('backend', BACKENDS)
def test_gradcheck(backend):
    gen = torch.Generator().manual_seed(0)
    src = torch.randn(20, 3, dtype=torch.float64, generator=gen,
                      requires_grad=True)
    index = torch.randint(0, 6, (20, ), generator=gen)
    assert torch.autograd.gradcheck(
        lambda s: scatter_softmax(s, index, 7, backend=backend), (src, ))


@pytest.mark.parametrize('backend', BACKENDS)
def test_empty_input(backend):
    out = scatter_softmax(torch.empty(0, 2), torch.empty(0, dtype=torch.long),
                          3, backend=backend)
    assert out.shape == (0, 2)


SRC = torch.tensor([[1.], [2.], [3.], [4.], [5.]])
INDEX = torch.tensor([0, 0, 1, 1, 2])
BAD_INPUTS = [
    # (src, index, ptr, error, message), for num_nodes=3
    (SRC.long(), INDEX, None, TypeError, r"floating-point scores 'src'"),
    (SRC[0, 0], INDEX[:1], None, ValueError, r"'src' of shape \[E, \*\]"),
    (SRC, INDEX.tolist(), None, TypeError, "'index' to be a tensor"),
    (SRC, torch.tensor([0., 0.9, 1., 1., 2.]), None, TypeError,
     r"int64 or int32 .*'index\.long\(\)'"),
    (SRC, INDEX[:4], None, ValueError, r'shape \[E\] = \[5\]'),
    (SRC, INDEX.view(5, 1), None, ValueError, r'shape \[E\] = \[5\]'),
    (SRC, torch.tensor([0, 0, 1, 1, 7]), None, ValueError,
     r"group 7 in 'index' but num_nodes=3"),
    (SRC, torch.tensor([0, -1, 1, 1, 2]), None, ValueError,
     r'negative group \(-1\)'),
    (SRC, INDEX, torch.tensor([0, 2, 5]), ValueError,
     r'\[num_nodes \+ 1\] = \[4\]'),
    (SRC, INDEX, torch.tensor([0., 2., 4., 5.]), TypeError, r'ptr\.long\(\)'),
    # Counts of two, two and one, but another split or another order.
    (SRC, INDEX, torch.tensor([0, 1, 3, 5]), ValueError,
     "does not describe the groups of 'index'"),
    (SRC, torch.tensor([1, 0, 1, 0, 2]), torch.tensor([0, 2, 4, 5]),
     ValueError, "does not describe the groups of 'index'"),
]


@pytest.mark.parametrize('src,index,ptr,error,message', BAD_INPUTS)
@pytest.mark.parametrize('backend', BACKENDS)
def test_bad_input(src, index, ptr, error, message, backend):
    with pytest.raises(error, match=message) as info:
        scatter_softmax(src, index, 3, ptr=ptr, backend=backend)
    assert "'scatter_softmax'" in str(info.value)


def test_values_are_read_as_the_layers_read_edge_index(monkeypatch):
    # Compiled (or on a GPU), the index values are read in 'strict'
    # validation only; the native backend reads 'index', not 'ptr'.
    ptr = torch.tensor([0, 1, 3, 5])
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    out = scatter_softmax(SRC, INDEX, 3, ptr=ptr, backend='native')
    torch.testing.assert_close(out, scatter_softmax(SRC, INDEX, 3,
                                                    backend='native'))
    with pyg_gatv2.validation('strict'):
        with pytest.raises(ValueError, match='does not describe'):
            scatter_softmax(SRC, INDEX, 3, ptr=ptr, backend='native')


def test_int32_index_and_pointer():
    index, ptr = INDEX.int(), torch.tensor([0, 2, 4, 5], dtype=torch.int32)
    for backend in BACKENDS:
        out = scatter_softmax(SRC, index, 3, ptr=ptr, backend=backend)
        torch.testing.assert_close(out, pyg_softmax(SRC, INDEX))
