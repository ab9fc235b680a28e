"""The fused GATv2 attention operator: autograd Function and entry point."""
import contextlib
from collections.abc import Iterator
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .. import backends
from . import chunked, reference
from .csr import EdgeLayout, edge_layout
from .operands import Cotangents, Operands

__all__ = ['fused_gatv2_attention', 'FusedGATv2Attention',
           'available_backends', 'set_backend', 'get_backend', 'use_backend']

_NAME = 'fused_gatv2_attention'


def _cpu_module():
    """The numba kernels, or :obj:`None` where numba cannot be imported."""
    try:
        from . import cpu
    except ImportError:
        return None
    return cpu


def available_backends() -> Tuple[str, ...]:
    """The backends usable on this machine, fastest first (also
    :func:`pyg_gatv2.backends.available_fused_backends`)."""
    return backends.available_fused_backends()


def set_backend(backend: str) -> None:
    """Selects the backend of :func:`fused_gatv2_attention` calls that do
    not name one; the same as :func:`pyg_gatv2.backends.set_fused_backend`.

    Args:
        backend (str): ``'auto'``, ``'numba'``, ``'triton'`` or ``'torch'``.
    """
    backends.set_fused_backend(backend)


def get_backend() -> str:
    """The backend selected (``'auto'`` unless set)."""
    return backends.get_fused_backend()


@contextlib.contextmanager
def use_backend(backend: str) -> Iterator[None]:
    """Context manager that selects a fused-attention backend temporarily;
    the same as ``pyg_gatv2.use_backends(fused=...)``."""
    with backends.use_backends(fused=backend):
        yield


def _gpu_module():
    from . import gpu
    return gpu


def _resolve_backend(backend: Optional[str], x: Tensor) -> str:
    backend = backends.check_backend(
        'fused', backends.get_fused_backend() if backend is None else
        backend, _NAME)
    numba_ok = (x.device.type == 'cpu'
                and x.dtype in (torch.float32, torch.float64))
    triton_ok = (x.device.type == 'cuda'
                 or (x.device.type == 'cpu'
                     and backends.triton_interpreting()))
    if backend == 'auto':
        if numba_ok and _cpu_module() is not None:
            return 'numba'
        if x.device.type == 'cuda' and backends.triton_runs_here():
            return 'triton'
        return 'torch'
    if backend == 'numba' and not numba_ok:
        raise ValueError(
            f"'{_NAME}' backend 'numba' runs on CPU float32/float64 tensors "
            f"(got {x.dtype} on {x.device}); use backend='torch'")
    if backend == 'triton' and not triton_ok:
        raise ValueError(
            f"'{_NAME}' backend 'triton' runs on CUDA tensors, or on CPU "
            f'tensors under TRITON_INTERPRET=1 (got {x.device}); use '
            "backend='numba' or 'torch'")
    return backend


class FusedGATv2Attention(torch.autograd.Function):
    r"""GATv2 attention over destination-sorted edges, memory-efficient.

    Forward keeps only ``out`` and the log-sum-exp of the logits per
    destination node and head; backward recomputes the logits. See
    :func:`fused_gatv2_attention` for the arguments.
    """
    @staticmethod
    def forward(ctx, x_l: Tensor, x_r: Tensor, att: Tensor,
                edge_term: Optional[Tensor], loop_term: Optional[Tensor],
                mask: Optional[Tensor], layout: EdgeLayout, slope: float,
                want_alpha: bool, backend: str, chunk_size: int):
        ctx.set_materialize_grads(False)
        ops = Operands(x_l, x_r, att, edge_term, loop_term, mask, layout,
                       slope)
        # The inputs arrive in the dtype to compute in; autocast must not
        # lower the precision of the sums inside.
        with torch.autocast(x_l.device.type, enabled=False):
            if backend == 'numba':
                out, lse, alpha = _cpu_module().run_forward(ops, want_alpha)
            elif backend == 'triton':
                out, lse, alpha = _gpu_module().run_forward(ops, want_alpha)
            else:
                out, lse, alpha = chunked.forward(ops, want_alpha,
                                                  chunk_size)
        ctx.save_for_backward(x_l, x_r, att, edge_term, loop_term, mask,
                              out, lse, alpha)
        ctx.layout, ctx.slope = layout, slope
        ctx.backend, ctx.chunk_size = backend, chunk_size
        return out, alpha

    @staticmethod
    def backward(ctx, grad_out: Optional[Tensor],
                 grad_alpha: Optional[Tensor]):
        if torch.is_grad_enabled():
            return _differentiable_backward(ctx, grad_out, grad_alpha)
        *inputs, out, lse, alpha = ctx.saved_tensors
        ops = Operands(*inputs, ctx.layout, ctx.slope)
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        grad_out = grad_out.contiguous()
        # D_i = <grad_i, out_i> turns the softmax backward into a local
        # expression per edge, with no extra pass over the edges. (einsum
        # runs it as a batched dot product, without a [N, H, C] product.)
        # It is summed in the dtype of the log-sum-exp: float32 for
        # half-precision features on the Triton backend.
        delta = torch.einsum('nhc,nhc->nh', grad_out.to(lse.dtype),
                             out.to(lse.dtype))
        if grad_alpha is not None:
            grad_alpha = grad_alpha.contiguous()
            weighted = (alpha * grad_alpha)[ctx.layout.dst_eid]
            delta.index_add_(0, ctx.layout.dst_row, weighted.to(lse.dtype))
        cot = Cotangents(grad_out, grad_alpha, lse, delta)
        want_src_grad, _, _, want_edge, want_loop = ctx.needs_input_grad[:5]
        want_edge_grad = ops.edge_term is not None and (want_edge
                                                        or want_loop)
        if ctx.backend == 'numba':
            grads = _cpu_module().run_backward(ops, cot, want_edge_grad,
                                               want_src_grad)
        elif ctx.backend == 'triton':
            grads = _gpu_module().run_backward(ops, cot, want_edge_grad,
                                               want_src_grad)
        else:
            grads = chunked.backward(ops, cot, want_edge_grad,
                                     ctx.chunk_size)
        return tuple(grads) + (None, ) * 6


def _differentiable_backward(ctx, grad_out: Optional[Tensor],
                             grad_alpha: Optional[Tensor]):
    """The backward of :class:`FusedGATv2Attention` when autograd records
    it (``create_graph=True``): the gradients of the edge-wise reference,
    themselves differentiable, so that second derivatives (gradient
    penalties, Hessian-vector products) are exact. It keeps per-edge
    tensors, as the message-passing path does; first-order backward never
    comes here."""
    saved = ctx.saved_tensors
    # A view per input keeps apart inputs that are one tensor (x_l and x_r
    # with shared weights): the gradient of each is then its own share.
    inputs = tuple(None if t is None else t.view_as(t) for t in saved[:5])
    x_l, x_r, att, et, loop_et = inputs
    mask = saved[5]
    wanted = [i for i, needed in enumerate(ctx.needs_input_grad[:5])
              if needed]
    grads = [None] * 11
    with torch.autocast(x_l.device.type, enabled=False):
        out, alpha = reference.attention(x_l, x_r, att, et, loop_et, mask,
                                         ctx.layout, ctx.slope)
    pairs = [(t, g) for t, g in ((out, grad_out), (alpha, grad_alpha))
             if g is not None]
    if wanted and pairs:
        values = torch.autograd.grad(
            [t for t, _ in pairs], [inputs[i] for i in wanted],
            [g for _, g in pairs], create_graph=True, allow_unused=True)
        for i, value in zip(wanted, values, strict=True):
            grads[i] = value
    return tuple(grads)


def _check_shapes(x_l: Tensor, x_r: Tensor, att: Tensor,
                  edge_term: Optional[Tensor], loop_term: Optional[Tensor],
                  mask: Optional[Tensor], layout: EdgeLayout) -> None:
    if x_l.dim() != 3 or x_r.dim() != 3 or x_l.shape[1:] != x_r.shape[1:]:
        raise ValueError(f"'{_NAME}' expects 'x_l' [num_src, heads, "
                         f"channels] and 'x_r' [num_dst, heads, channels] "
                         f"(got {list(x_l.shape)} and {list(x_r.shape)})")
    H, C = x_l.shape[1:]
    if att.shape != (H, C):
        raise ValueError(f"'{_NAME}' expects 'att' of shape [{H}, {C}] or "
                         f"[1, {H}, {C}] (got {list(att.shape)})")
    expected = {
        'edge_term': (edge_term, (layout.num_edges, H, C)),
        'loop_edge_term': (loop_term, (layout.num_loops, H, C)),
        'dropout_mask': (mask, (layout.num_virtual, H)),
    }
    for name, (t, shape) in expected.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"'{_NAME}' expects '{name}' of shape "
                             f"{list(shape)} (got {list(t.shape)})")
    for name, t in (('x_r', x_r), ('att', att), ('edge_term', edge_term),
                    ('loop_edge_term', loop_term), ('dropout_mask', mask)):
        if t is not None and (t.dtype != x_l.dtype
                              or t.device != x_l.device):
            raise TypeError(f"'{_NAME}' expects '{name}' with the dtype and "
                            f"device of 'x_l' ({x_l.dtype}, {x_l.device}); "
                            f"got {t.dtype}, {t.device}")


def fused_gatv2_attention(
    x_l: Tensor,
    x_r: Tensor,
    att: Tensor,
    edge_index: Union[Tensor, EdgeLayout],
    edge_term: Optional[Tensor] = None,
    *,
    loop_edge_term: Optional[Tensor] = None,
    add_self_loops: bool = False,
    negative_slope: float = 0.2,
    dropout_mask: Optional[Tensor] = None,
    return_attention_weights: bool = False,
    backend: Optional[str] = None,
    chunk_size: Optional[int] = None,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    r"""GATv2 attention and aggregation in one memory-efficient operator.

    For each edge :math:`j \to i` (``edge_index[0] = j``,
    ``edge_index[1] = i``) and head :math:`h`,

    .. math::
        e_{i,j} = \mathbf{a}_h^{\top} \mathrm{LeakyReLU}\left(
        \mathbf{x}^{l}_j + \mathbf{x}^{r}_i + \mathbf{t}_{j \to i}\right),
        \qquad
        \alpha_{i,j} = \mathrm{softmax}_{j \in \mathcal{N}(i)}(e_{i,j}),
        \qquad
        \mathbf{o}_i = \sum_{j \in \mathcal{N}(i)} m_{i,j}\,\alpha_{i,j}\,
        \mathbf{x}^{l}_j,

    with :math:`\mathbf{t}` the optional edge term and :math:`m` the
    optional dropout mask. Logits are computed on the fly with an online
    softmax; backward recomputes them, so no tensor of shape
    ``[num_edges, heads, channels]`` is allocated or kept beyond the edge
    term and its gradient.

    Args:
        x_l (torch.Tensor): Source features ``[num_src, heads, channels]``.
        x_r (torch.Tensor): Destination features
            ``[num_dst, heads, channels]``.
        att (torch.Tensor): Attention vector ``[heads, channels]`` or
            ``[1, heads, channels]``.
        edge_index (torch.Tensor or EdgeLayout): Edges ``[2, num_edges]``,
            whose sorted layout is cached while the tensor is unchanged, or
            that layout itself (:func:`pyg_gatv2.fused.edge_layout`).
        edge_term (torch.Tensor, optional): Projected edge features
            ``[num_edges, heads, channels]``. (default: :obj:`None`)
        loop_edge_term (torch.Tensor, optional): Edge term of the implicit
            self-loops ``[min(num_src, num_dst), heads, channels]``; zero if
            not given. Used only with ``add_self_loops``.
            (default: :obj:`None`)
        add_self_loops (bool, optional): If set to :obj:`True`, ignores the
            edges ``i -> i`` of ``edge_index`` and adds one self-loop to every
            node ``i < min(num_src, num_dst)``, as
            ``remove_self_loops`` + ``add_self_loops`` would.
            (default: :obj:`False`)
        negative_slope (float, optional): LeakyReLU angle of the negative
            slope. (default: :obj:`0.2`)
        dropout_mask (torch.Tensor, optional): Multiplier of the attention
            weights in the messages (``0`` or ``1 / (1 - p)``),
            ``[num_edges + num_loops, heads]``: the edges in the order of
            ``edge_index``, then the self-loops. (default: :obj:`None`)
        return_attention_weights (bool, optional): If set to :obj:`True`,
            also returns the softmax weights (before dropout) of shape
            ``[num_edges + num_loops, heads]``, ordered as ``dropout_mask``;
            the rows of ignored edges ``i -> i`` are zero.
            (default: :obj:`False`)
        backend (str, optional): ``'numba'`` (multi-threaded CPU kernels),
            ``'triton'`` (CUDA tensors; CPU tensors in Triton's
            interpreter), ``'torch'`` (chunked PyTorch, any device) or
            ``'auto'`` (numba for CPU float32/float64 tensors, Triton for
            CUDA tensors, else torch); :obj:`None` takes the one chosen with
            :func:`pyg_gatv2.set_fused_backend`. (default: :obj:`None`)
        chunk_size (int, optional): Edges per chunk of the torch backend.
            (default: about :math:`2^{20}` / (heads * channels))

    Returns:
        The aggregated features ``[num_dst, heads, channels]`` and, with
        ``return_attention_weights``, the attention weights.
    """
    if att.dim() == 3 and att.size(0) == 1:
        att = att.squeeze(0)
    if isinstance(edge_index, EdgeLayout):
        layout = edge_index
        built_for = (layout.num_src, layout.num_dst, layout.self_loops)
        called_with = (x_l.size(0), x_r.size(0), bool(add_self_loops))
        if built_for != called_with:
            raise ValueError(
                f"'{_NAME}' got a layout built for (num_src, num_dst, "
                f"add_self_loops) = {built_for} but was called with "
                f"{called_with}; build it with 'edge_layout' for these "
                "inputs")
    else:
        layout = edge_layout(edge_index, x_l.size(0), x_r.size(0),
                             add_self_loops, caller=_NAME)
    if edge_term is not None and loop_edge_term is None:
        loop_edge_term = edge_term.new_zeros(
            (layout.num_loops, ) + tuple(edge_term.shape[1:]))
    _check_shapes(x_l, x_r, att, edge_term, loop_edge_term, dropout_mask,
                  layout)
    if edge_term is None:
        loop_edge_term = None
    if layout.dst_ptr.device != x_l.device:
        raise TypeError(f"'{_NAME}' expects 'edge_index' on the device of "
                        f"'x_l' ({x_l.device}); got {layout.dst_ptr.device}")
    backend = _resolve_backend(backend, x_l)
    if chunk_size is None:
        chunk_size = chunked.default_chunk_size(*x_l.shape[1:])
    if chunk_size < 1:
        raise ValueError(f"'{_NAME}' expects a positive 'chunk_size' "
                         f"(got {chunk_size})")

    def dense(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else t.contiguous()

    out, alpha = FusedGATv2Attention.apply(
        dense(x_l), dense(x_r), dense(att), dense(edge_term),
        dense(loop_edge_term), dense(dropout_mask), layout,
        float(negative_slope), bool(return_attention_weights), backend,
        chunk_size)
    if return_attention_weights:
        return out, alpha
    return out
