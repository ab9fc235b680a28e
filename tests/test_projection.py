import pytest
import torch
import torch.nn.functional as F
from _fused_cases import needs_cpp
from torch.autograd import gradcheck, gradgradcheck
from torch_geometric.nn import GATv2Conv as PyGGATv2Conv

from pyg_gatv2 import GATv2Conv, projection
from pyg_gatv2.fused import cpp_library

pytestmark = needs_cpp


def bag_of_words(rows=600, columns=80, density=0.03, dtype=torch.float64,
                 seed=0):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(rows, columns, generator=gen) < density
    return torch.randn(rows, columns, generator=gen, dtype=dtype) * mask


@pytest.fixture
def sparse_calls(monkeypatch):
    """The inputs that went through the sparse-input product."""
    calls = []
    op = projection.sparse_input_linear

    def spy(x, weight, bias):
        calls.append(x)
        return op(x, weight, bias)
    monkeypatch.setattr(projection, 'sparse_input_linear', spy)
    return calls


def weights(out=7, columns=80, dtype=torch.float64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(out, columns, dtype=dtype, generator=gen),
            torch.randn(out, dtype=dtype, generator=gen))


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_a_mostly_zero_input_goes_through_its_nonzero_entries(
        dtype, sparse_calls):
    x = bag_of_words(dtype=dtype)
    weight, bias = weights(dtype=dtype)
    out = projection.linear(x, weight, bias)
    assert len(sparse_calls) == 1
    torch.testing.assert_close(out, F.linear(x, weight, bias))


CASES = {
    'dense': lambda x: (x + 1, ),
    'small': lambda x: (x[:100], ),
    'needs_grad': lambda x: (x.clone().requires_grad_(), ),
    'not_contiguous': lambda x: (x.t().contiguous().t(), ),
    'float16': lambda x: (x.half(), ),
    'three_dims': lambda x: (x.view(6, 100, 80), ),
}


@pytest.mark.parametrize('case', list(CASES))
def test_other_inputs_go_to_torch(case, sparse_calls):
    x, = CASES[case](bag_of_words())
    weight, bias = weights(dtype=torch.float64 if case != 'float16'
                           else torch.float16)
    out = projection.linear(x, weight, bias)
    assert sparse_calls == []
    torch.testing.assert_close(out, F.linear(x, weight, bias))


def test_a_dense_input_is_not_counted_through(monkeypatch):
    counted = []
    count = cpp_library.count_nonzero

    def spy(x):
        counted.append(x.numel())
        return count(x)
    monkeypatch.setattr(cpp_library, 'count_nonzero', spy)
    weight, bias = weights()
    x = bag_of_words(rows=3000, density=0.5)
    projection.linear(x, weight, bias)
    assert 0 < sum(counted) < x.numel() / 10
    # A mostly-zero input is counted through.
    counted.clear()
    x = bag_of_words(rows=3000)
    projection.linear(x, weight, bias)
    assert x.numel() in counted


def test_a_weight_of_another_dtype_gets_torchs_error(sparse_calls):
    weight, bias = weights()
    with pytest.raises(RuntimeError, match='same dtype'):
        projection.linear(bag_of_words(dtype=torch.float32), weight, bias)
    assert sparse_calls == []


@pytest.mark.parametrize('bad', [float('inf'), float('nan')])
@pytest.mark.parametrize('where', ['weight', 'bias'])
def test_a_weight_not_finite_goes_to_torch(bad, where, sparse_calls):
    # Zero times an infinite weight is NaN in the dense product; skipping
    # the zeros would hide it.
    x = bag_of_words()
    weight, bias = weights()
    (weight if where == 'weight' else bias)[3] = bad
    out = projection.linear(x, weight, bias)
    assert sparse_calls == []
    torch.testing.assert_close(out, F.linear(x, weight, bias),
                               equal_nan=True)


def test_inputs_go_to_torch_under_autocast_and_without_the_library(
        sparse_calls, monkeypatch):
    x = bag_of_words(dtype=torch.float32)
    weight, bias = weights(dtype=torch.float32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert projection.linear(x, weight, bias).dtype == torch.bfloat16
    monkeypatch.setattr(cpp_library, 'load', lambda: None)
    projection.linear(x, weight, bias)
    assert sparse_calls == []


def test_the_share_of_nonzero_entries_picks_the_path(sparse_calls):
    weight, bias = weights()
    for density, sparse in ((0.1, True), (0.2, False)):
        x = bag_of_words(density=density)
        projection.linear(x, weight, bias)
        assert len(sparse_calls) == int(sparse)
        sparse_calls.clear()


def test_the_sparse_product_has_gradients_of_any_order():
    x = bag_of_words(rows=40, columns=12, density=0.2)
    weight, bias = (t.requires_grad_() for t in weights(5, 12))
    op = projection.sparse_input_linear
    assert gradcheck(op, (x, weight, bias))
    assert gradgradcheck(op, (x, weight, bias))
    # With the input too (the dense gradient of x).
    x = x[:6].clone().requires_grad_()
    assert gradcheck(op, (x, weight, bias))
    assert gradgradcheck(op, (x, weight, None))
    # A frozen weight: the bias's gradient alone.
    frozen = weight.detach()
    assert gradcheck(op, (x.detach(), frozen, bias))
    assert gradgradcheck(op, (x.detach(), frozen, bias))


def test_one_pass_gives_the_gradients_of_weight_and_bias():
    x = bag_of_words(rows=300, columns=40, density=0.1)
    weight, bias = (t.requires_grad_() for t in weights(7, 40))
    grad_out = torch.randn(300, 7, dtype=torch.float64)
    projection.sparse_input_linear(x, weight, bias).backward(grad_out)
    torch.testing.assert_close(weight.grad, grad_out.t() @ x)
    torch.testing.assert_close(bias.grad, grad_out.sum(0))


def test_the_sparse_operators_pass_opcheck():
    x = bag_of_words(rows=50, columns=20, density=0.2)
    weight, bias = (t.requires_grad_() for t in weights(6, 20))
    torch.library.opcheck(projection.sparse_input_linear,
                          (x, weight, bias))
    torch.library.opcheck(projection.sparse_input_linear, (x, weight, None))
    for with_bias in (True, False):
        torch.library.opcheck(projection.sparse_input_linear_grads,
                              (x, torch.randn(50, 6, dtype=torch.float64,
                                              requires_grad=True),
                               with_bias))


@pytest.mark.parametrize('heads,channels', [(4, 8), (1, 7), (3, 5)])
def test_the_layer_on_bag_of_words_matches_pyg(heads, channels,
                                               sparse_calls):
    # Source and target features apart, so that both projections read a
    # mostly-zero input; (1, 7) and (3, 5) project into padded heads.
    torch.manual_seed(0)
    x_src, x_dst = bag_of_words(900), bag_of_words(500, seed=1)
    edge_index = torch.stack([torch.randint(0, 900, (3000, )),
                              torch.randint(0, 500, (3000, ))])
    ours = GATv2Conv(80, channels, heads=heads).double()
    pyg = PyGGATv2Conv(80, channels, heads=heads).double()
    pyg.load_state_dict(ours.state_dict())
    out = ours((x_src, x_dst), edge_index)
    expected = pyg((x_src, x_dst), edge_index)
    assert len(sparse_calls) == 2
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    pyg_params = dict(pyg.named_parameters())
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, pyg_params[name].grad,
                                   msg=name)


def test_the_layer_compiles_on_bag_of_words():
    x = bag_of_words(dtype=torch.float32)
    edge_index = torch.randint(0, 600, (2, 2000))
    conv = GATv2Conv(80, 8, heads=2)
    compiled = torch.compile(conv, backend='eager')
    torch.testing.assert_close(compiled(x, edge_index), conv(x, edge_index))
