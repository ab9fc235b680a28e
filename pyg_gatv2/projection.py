"""The layer's linear projections, with a path for mostly-zero inputs.

Bag-of-words node features (Planetoid's, about 1% nonzero, and fewer
after the models' input dropout) make the first layer's projections dense
matrix products over mostly zeros. On the CPU, the C++ library's
``gatv2_sparse_linear`` (``pyg_gatv2/fused/_kernels/gatv2.h``) reads only
the nonzero entries of such an input, forward and for the gradient of the
weight (with that of the bias in the same pass over the output's
gradient): :func:`linear` takes it where it pays and
:func:`torch.nn.functional.linear` elsewhere.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from pyg_gatv2.fused import cpp_library

# Inputs with fewer entries go to F.linear (the count costs more than it
# saves), as do inputs with more than this share of their entries nonzero.
# The first rows, about _SAMPLE_ENTRIES entries, are counted first: with
# more than twice that share nonzero, the input is taken as dense without
# counting the rest.
_MIN_ENTRIES = 1 << 15
_MAX_NONZERO_SHARE = 1 / 8
_SAMPLE_ENTRIES = 1 << 12


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    r"""``x @ weight.T + bias``, as :func:`torch.nn.functional.linear`.

    Where :obj:`x` is a contiguous CPU float32 or float64 matrix of at
    least 32768 entries that needs no gradient, at most an eighth of them
    nonzero (and at most a quarter of those of its first rows, about 4096
    entries, which are counted first so that a dense input is not counted
    through), with :obj:`weight` and :obj:`bias` finite and of its dtype,
    outside autocast, :func:`torch.compile` and tracing, and the C++
    library built: the product from the nonzero entries only
    (``pyg_gatv2::sparse_input_linear``, differentiable to any order).
    It equals :func:`torch.nn.functional.linear` to within float rounding
    (each row sums its products in column order, then adds the bias), but
    for an entry of the output that is exactly zero, which may differ in
    sign.
    """
    if _reads_nonzero_entries(x, weight, bias):
        return sparse_input_linear(x, weight, bias)
    return F.linear(x, weight, bias)


def _reads_nonzero_entries(x: Tensor, weight: Tensor,
                           bias: Optional[Tensor]) -> bool:
    if (torch.compiler.is_compiling() or torch.jit.is_tracing()
            or type(x) is not Tensor or x.requires_grad
            or x.device.type != 'cpu' or x.dim() != 2
            or x.dtype not in cpp_library.DTYPES
            or x.numel() < _MIN_ENTRIES or not x.is_contiguous()
            or weight.dtype != x.dtype or weight.device != x.device
            or weight.dim() != 2
            or torch.is_autocast_enabled('cpu')
            or cpp_library.load() is None):
        return False
    if bias is not None and (bias.dtype != x.dtype
                             or bias.device != x.device):
        return False
    head = x[:math.ceil(_SAMPLE_ENTRIES / x.size(1))]
    if _nonzero(head) > 2 * _MAX_NONZERO_SHARE * head.numel():
        return False
    # Zero times an infinite weight is NaN in the dense product.
    finite = torch.isfinite(weight).all()
    if bias is not None:
        finite &= torch.isfinite(bias).all()
    if not finite:
        return False
    return _nonzero(x) <= _MAX_NONZERO_SHARE * x.numel()


def _nonzero(x: Tensor) -> int:
    return int(cpp_library.count_nonzero(x.reshape(-1))[-1])


@torch.library.custom_op('pyg_gatv2::sparse_input_linear', mutates_args=())
def sparse_input_linear(x: Tensor, weight: Tensor,
                        bias: Optional[Tensor]) -> Tensor:
    """``x @ weight.T + bias`` from the nonzero entries of ``x`` (CPU,
    contiguous, float32 or float64, all three of one dtype)."""
    return cpp_library.sparse_linear(x, weight, bias)


@sparse_input_linear.register_fake
def _(x, weight, bias):
    return x.new_empty(x.size(0), weight.size(0))


@torch.library.custom_op('pyg_gatv2::sparse_input_linear_grads',
                         mutates_args=())
def sparse_input_linear_grads(x: Tensor, grad_out: Tensor,
                              with_bias: bool) -> Tuple[Tensor, Tensor]:
    """The gradients of the weight and the bias of
    :func:`sparse_input_linear` in one pass over ``grad_out``:
    ``grad_out.T @ x`` from the nonzero entries of ``x``, and
    ``grad_out.sum(0)`` where ``with_bias`` (else an empty tensor)."""
    grad_weight, grad_bias = cpp_library.sparse_linear_grads(
        x, grad_out, with_bias)
    return (grad_weight.contiguous(),
            x.new_empty(0) if grad_bias is None else grad_bias)


@sparse_input_linear_grads.register_fake
def _(x, grad_out, with_bias):
    return (x.new_empty(grad_out.size(1), x.size(1)),
            x.new_empty(grad_out.size(1) if with_bias else 0))


def _save_linear_inputs(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _linear_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    want_weight = ctx.needs_input_grad[1]
    want_bias = ctx.has_bias and ctx.needs_input_grad[2]
    grad_x = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_x = grad @ weight
    if want_weight:
        grad_weight, fused_bias = sparse_input_linear_grads(x, grad,
                                                            want_bias)
        if want_bias:
            grad_bias = fused_bias
    elif want_bias:
        grad_bias = grad.sum(0)
    return grad_x, grad_weight, grad_bias


def _save_grads_inputs(ctx, inputs, output):
    x, grad_out, with_bias = inputs
    ctx.save_for_backward(x, grad_out)
    ctx.with_bias = with_bias


def _grads_backward(ctx, grad_weight, grad_bias):
    # d(grad_out.T @ x) is x @ g.T in grad_out and grad_out @ g in x;
    # d(grad_out.sum(0)) is g in every row of grad_out.
    x, grad_out = ctx.saved_tensors
    grad_x = grad_grad_out = None
    if ctx.needs_input_grad[0]:
        grad_x = grad_out @ grad_weight
    if ctx.needs_input_grad[1]:
        grad_grad_out = sparse_input_linear(x, grad_weight, None)
        if ctx.with_bias:
            grad_grad_out = grad_grad_out + grad_bias
    return grad_x, grad_grad_out, None


sparse_input_linear.register_autograd(_linear_backward,
                                      setup_context=_save_linear_inputs)
sparse_input_linear_grads.register_autograd(
    _grads_backward, setup_context=_save_grads_inputs)
