"""The fused GATv2 attention operator: torch custom ops and the entry point.

The operator is registered with :mod:`torch.library` in the ``pyg_gatv2``
namespace, so that :func:`torch.compile` and :func:`torch.export.export`
see it as one node, with fake-tensor implementations for tracing and its
own autograd formula:

- ``pyg_gatv2::edge_layout`` sorts (and caches) the edges, once per graph;
- ``pyg_gatv2::gatv2_attention`` runs the forward pass and keeps for
  backward only the log-sum-exp per node and head, and the output where
  the backend's backward reads it (not the C++ backend's);
- ``pyg_gatv2::gatv2_attention_backward`` recomputes the logits.

Each runs the kernels of the backend chosen for the features' device and
dtype when it runs, not when it is traced (:mod:`pyg_gatv2.fused.backends`:
C++ on CPU, Triton on CUDA, chunked PyTorch elsewhere).
"""
from typing import NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from ..checks import check_edge_index
from . import backends, reference
from .layout import EdgeLayout, edge_layout, index_dtype, layout_of
from .operands import Cotangents, Operands, row_dots, stats_dtype

__all__ = ['fused_gatv2_attention', 'kernel_width']

_NAME = 'fused_gatv2_attention'


def _num_loops(num_src: int, num_dst: int, self_loops: bool) -> int:
    return min(num_src, num_dst) if self_loops else 0


def _backend(name: Optional[str], att: Tensor) -> backends.Backend:
    # The attention is computed in the dtype of 'att'; the features may be
    # stored in a lower precision.
    return backends.select(name, att.device, att.dtype, _NAME)


def _as_kernels_read(ops: Operands, kernels: backends.Backend) -> Operands:
    """The operands as ``kernels`` read them: features stored in a lower
    precision than ``att`` stay so for backends that read them directly;
    for the others they become copies in the dtype of ``att``, as edge
    terms of a lower precision do for every backend."""
    dtype = ops.att.dtype
    terms = {name: t.to(dtype) for name, t in (('edge_term', ops.edge_term),
                                                ('loop_term', ops.loop_term))
             if t is not None and t.dtype != dtype}
    if ops.x_l.dtype == dtype or kernels.reads_lower_precision:
        return ops._replace(**terms)
    x_l = ops.x_l.to(dtype)
    x_r = x_l if ops.x_r is ops.x_l else ops.x_r.to(dtype)
    return ops._replace(x_l=x_l, x_r=x_r, **terms)


@torch.compiler.assume_constant_result
def kernel_width(heads: int, channels: int, device: torch.device,
                 dtype: torch.dtype, backend: Optional[str] = None) -> int:
    """The channels per head that the fused operator computes heads x
    channels at, for features on ``device`` in ``dtype``.

    That is ``channels``, except where the backend that runs them pads
    heads with zero channels to a width its kernels run faster: the C++
    backend rounds float32 heads up to whole blocks of 8 channels. The
    operator pads and cuts back itself, at the cost of copying its
    operands and results; a caller can instead project its features
    straight into this width, with zero rows in the weights and zero
    channels in the attention vector, and keep the first ``channels`` of
    each head of the output, as :class:`pyg_gatv2.GATv2Conv` does.

    Args:
        heads (int): Attention heads.
        channels (int): Channels per head.
        device (torch.device): The features' device.
        dtype (torch.dtype): The features' dtype.
        backend (str, optional): As in
            :func:`pyg_gatv2.fused_gatv2_attention`.
            (default: :obj:`None`)

    Example:
        >>> import torch
        >>> from pyg_gatv2.fused import kernel_width
        >>> kernel_width(1, 7, torch.device('cpu'), torch.float32)
        8
        >>> kernel_width(1, 7, torch.device('cpu'), torch.float64)
        7
        >>> kernel_width(1, 7, torch.device('cpu'), torch.float32,
        ...              backend='torch')
        7
    """
    return backends.select(backend, device, dtype, _NAME).width(
        heads, channels, dtype)


def _operands(x_l: Tensor, x_r: Tensor, att: Tensor,
              csr: Tuple[Tensor, Tensor, Tensor], edge_term: Optional[Tensor],
              loop_term: Optional[Tensor], dropout_mask: Optional[Tensor],
              num_edges: int, self_loops: bool, negative_slope: float,
              chunk_size: Optional[int]) -> Operands:
    """What the kernels take, from the arguments of the ops: the operands
    with their layout."""
    layout = layout_of(*csr, x_l.size(0), num_edges, self_loops)
    return Operands(x_l, x_r, att, edge_term, loop_term, dropout_mask,
                    layout, negative_slope, chunk_size)


def _absent(like: Tensor) -> Tensor:
    # Custom ops return tensors, not None: an empty one stands for "none".
    return like.new_empty(0)


@torch.library.custom_op('pyg_gatv2::edge_layout', mutates_args=())
def _edge_layout_op(edge_index: Tensor, num_src: int, num_dst: int,
                    add_self_loops: bool, caller: str
                    ) -> Tuple[Tensor, Tensor, Tensor]:
    """The :attr:`~pyg_gatv2.fused.EdgeLayout.csr_tensors` of the cached
    layout of ``edge_index`` (:func:`pyg_gatv2.fused.edge_layout`): the
    layout as compiled graphs and exported programs see it, with sizes that
    do not depend on the data. Its indices are checked when it is built."""
    layout = edge_layout(edge_index, num_src, num_dst, add_self_loops,
                         caller=caller)
    return layout.csr_tensors


@_edge_layout_op.register_fake
def _(edge_index, num_src, num_dst, add_self_loops, caller):
    num_virtual = edge_index.size(1) + _num_loops(num_src, num_dst,
                                                  add_self_loops)
    index = dict(dtype=index_dtype(edge_index, num_src, num_dst,
                                   add_self_loops), device=edge_index.device)
    return (torch.empty(num_dst + 1, **index),
            torch.empty(num_virtual, **index),
            torch.empty(num_virtual, **index))


@torch.library.custom_op('pyg_gatv2::gatv2_attention', mutates_args=())
def _attention_op(
    x_l: Tensor, x_r: Tensor, att: Tensor, dst_ptr: Tensor, dst_col: Tensor,
    dst_eid: Tensor, edge_term: Optional[Tensor], loop_term: Optional[Tensor],
    dropout_mask: Optional[Tensor], num_edges: int, self_loops: bool,
    negative_slope: float, want_alpha: bool, backend: Optional[str],
    chunk_size: Optional[int]
) -> Tuple[Tensor, Tensor, Tensor]:
    """``out`` [N_dst, H, C] and the softmax weights [virtual edges, H]
    (empty unless ``want_alpha``) in the dtype of ``att``, and the
    log-sum-exp [N_dst, H] (float32, or float64 for a float64 ``att``) of
    :func:`fused_gatv2_attention`, on the backend chosen for the device
    and the dtype of ``att``."""
    kernels = _backend(backend, att)
    ops = _as_kernels_read(
        _operands(x_l, x_r, att, (dst_ptr, dst_col, dst_eid), edge_term,
                  loop_term, dropout_mask, num_edges, self_loops,
                  negative_slope, chunk_size), kernels)
    # The inputs arrive in the dtypes to compute in; autocast must not
    # lower the precision of the sums inside.
    with torch.autocast(x_l.device.type, enabled=False):
        out, lse, alpha = kernels.forward(ops, want_alpha)
    return (out, lse.to(stats_dtype(att.dtype)),
            _absent(att).view(0, att.size(0)) if alpha is None else alpha)


@_attention_op.register_fake
def _(x_l, x_r, att, dst_ptr, dst_col, dst_eid, edge_term, loop_term,
      dropout_mask, num_edges, self_loops, negative_slope, want_alpha,
      backend, chunk_size):
    num_virtual = num_edges + _num_loops(x_l.size(0), x_r.size(0),
                                         self_loops)
    return (att.new_empty(x_r.shape),
            att.new_empty(x_r.shape[:2], dtype=stats_dtype(att.dtype)),
            att.new_empty(num_virtual if want_alpha else 0, att.size(0)))


@torch.library.custom_op('pyg_gatv2::gatv2_attention_backward',
                         mutates_args=())
def _attention_backward_op(
    grad_out: Tensor, grad_alpha: Optional[Tensor], x_l: Tensor,
    x_r: Tensor, att: Tensor, dst_ptr: Tensor, dst_col: Tensor,
    dst_eid: Tensor, edge_term: Optional[Tensor], loop_term: Optional[Tensor],
    dropout_mask: Optional[Tensor], out: Optional[Tensor], lse: Tensor,
    alpha: Tensor, num_edges: int, self_loops: bool, negative_slope: float,
    backend: Optional[str], chunk_size: Optional[int], want_src_grad: bool,
    want_edge_grad: bool
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The gradients of ``x_l`` (empty unless ``want_src_grad``), ``x_r``,
    ``att`` and the edge terms (empty unless ``want_edge_grad``), each in
    its input's dtype: a pass by destination and, for ``x_l``, one by
    source, recomputing the logits."""
    kernels = _backend(backend, att)
    ops = _as_kernels_read(
        _operands(x_l, x_r, att, (dst_ptr, dst_col, dst_eid), edge_term,
                  loop_term, dropout_mask, num_edges, self_loops,
                  negative_slope, chunk_size), kernels)
    grad_out = grad_out.contiguous()
    if grad_alpha is not None:
        grad_alpha = grad_alpha.contiguous()
    if out is None:
        # Forward did not keep its output: these kernels sum D_i over the
        # in-edges of each node themselves.
        if kernels.needs_output:
            raise RuntimeError(
                f"'{_NAME}': backward on backend {kernels.name!r} needs "
                'the forward output, which forward did not keep')
        delta = None
    else:
        # D_i = <grad_i, out_i> turns the softmax backward into a local
        # expression per edge, with no extra pass over the edges. (einsum
        # runs it as a batched dot product, without a [N, H, C] product.)
        # It is summed in the dtype of the log-sum-exp.
        delta = row_dots(grad_out, out, lse.dtype)
        if grad_alpha is not None:
            weighted = (alpha * grad_alpha)[ops.layout.dst_eid]
            delta.index_add_(0, ops.layout.dst_row, weighted.to(lse.dtype))
    cot = Cotangents(grad_out, grad_alpha, lse, delta)
    with torch.autocast(x_l.device.type, enabled=False):
        grads = kernels.backward(ops, cot, want_edge_grad, want_src_grad)
    return (grads.x_l.to(x_l.dtype) if want_src_grad else _absent(x_l),
            grads.x_r.to(x_r.dtype), grads.att,
            grads.edge_term.to(edge_term.dtype) if want_edge_grad
            else _absent(x_l),
            grads.loop_term.to(loop_term.dtype) if want_edge_grad
            else _absent(x_l))


@_attention_backward_op.register_fake
def _(grad_out, grad_alpha, x_l, x_r, att, dst_ptr, dst_col, dst_eid,
      edge_term, loop_term, dropout_mask, out, lse, alpha, num_edges,
      self_loops, negative_slope, backend, chunk_size, want_src_grad,
      want_edge_grad):
    return (torch.empty_like(x_l) if want_src_grad else _absent(x_l),
            torch.empty_like(x_r), torch.empty_like(att),
            torch.empty_like(edge_term) if want_edge_grad else _absent(x_l),
            torch.empty_like(loop_term) if want_edge_grad else _absent(x_l))


class _Inputs(NamedTuple):
    """The inputs of ``pyg_gatv2::gatv2_attention``, by name: a custom
    op's schema takes its tensors one by one."""
    x_l: Tensor
    x_r: Tensor
    att: Tensor
    dst_ptr: Tensor
    dst_col: Tensor
    dst_eid: Tensor
    edge_term: Optional[Tensor]
    loop_term: Optional[Tensor]
    dropout_mask: Optional[Tensor]
    num_edges: int
    self_loops: bool
    negative_slope: float
    want_alpha: bool
    backend: Optional[str]
    chunk_size: Optional[int]


_NUM_TENSORS = 9
# The inputs that have gradients.
_DIFFERENTIABLE = ('x_l', 'x_r', 'att', 'edge_term', 'loop_term')


def _setup_context(ctx, inputs, output) -> None:
    ctx.set_materialize_grads(False)
    args = _Inputs(*inputs)
    out, lse, alpha = output
    ctx.num_edges, ctx.self_loops = args.num_edges, args.self_loops
    ctx.negative_slope, ctx.chunk_size = args.negative_slope, args.chunk_size
    # Backward runs on the backend that forward ran on. Backends whose
    # backward sums D_i over the edges need not keep the output.
    kernels = _backend(args.backend, args.att)
    ctx.backend = kernels.name
    ctx.save_for_backward(*args[:_NUM_TENSORS],
                          out if kernels.needs_output else None, lse, alpha)


def _needs(ctx) -> dict[str, bool]:
    """Which differentiable inputs want a gradient, by name."""
    return {name: ctx.needs_input_grad[_Inputs._fields.index(name)]
            for name in _DIFFERENTIABLE}


def _gradients(values: dict[str, Optional[Tensor]]) -> tuple:
    """The gradients of every input of the op, in order: ``values`` by
    name, :obj:`None` for the rest."""
    return tuple(values.get(name) for name in _Inputs._fields)


def _backward(ctx, grad_out: Optional[Tensor], grad_lse: Optional[Tensor],
              grad_alpha: Optional[Tensor]):
    if grad_alpha is not None and grad_alpha.numel() == 0:
        grad_alpha = None
    if torch.is_grad_enabled():
        return _differentiable_backward(ctx, grad_out, grad_alpha)
    if grad_out is None and grad_alpha is None:
        return _gradients({})
    saved = ctx.saved_tensors
    tensors, (out, lse, alpha) = saved[:_NUM_TENSORS], saved[_NUM_TENSORS:]
    args = _Inputs(*tensors, *(None, ) * 6)
    needs = _needs(ctx)
    if grad_out is None:
        grad_out = torch.zeros_like(args.x_r)
    want = {'x_l': needs['x_l'], 'x_r': needs['x_r'], 'att': needs['att']}
    want['edge_term'] = want['loop_term'] = (
        args.edge_term is not None
        and (needs['edge_term'] or needs['loop_term']))
    values = torch.ops.pyg_gatv2.gatv2_attention_backward(
        grad_out, grad_alpha, *tensors, out, lse, alpha, ctx.num_edges,
        ctx.self_loops, ctx.negative_slope, ctx.backend, ctx.chunk_size,
        want['x_l'], want['edge_term'])
    return _gradients({name: value for name, value in zip(
        _DIFFERENTIABLE, values, strict=True) if want[name]})


def _differentiable_backward(ctx, grad_out: Optional[Tensor],
                             grad_alpha: Optional[Tensor]):
    """The backward of ``pyg_gatv2::gatv2_attention`` when autograd records
    it (``create_graph=True``): the gradients of the edge-wise reference,
    themselves differentiable, so that second derivatives (gradient
    penalties, Hessian-vector products) are exact. It keeps per-edge
    tensors, as the message-passing path does; first-order backward never
    comes here."""
    args = _Inputs(*ctx.saved_tensors[:_NUM_TENSORS], *(None, ) * 6)
    layout = layout_of(args.dst_ptr, args.dst_col, args.dst_eid,
                       args.x_l.size(0), ctx.num_edges, ctx.self_loops)
    # A view per input keeps apart inputs that are one tensor (x_l and x_r
    # with shared weights): the gradient of each is then its own share.
    inputs = {name: None if getattr(args, name) is None else
              getattr(args, name).view_as(getattr(args, name))
              for name in _DIFFERENTIABLE}
    wanted = [name for name, need in _needs(ctx).items() if need]
    # Features and edge terms stored in a lower precision are read in that
    # of 'att'.
    dtype = args.att.dtype

    def read(name: str) -> Optional[Tensor]:
        return None if inputs[name] is None else inputs[name].to(dtype)

    with torch.autocast(args.x_l.device.type, enabled=False):
        out, alpha = reference.attention(
            read('x_l'), read('x_r'), inputs['att'], read('edge_term'),
            read('loop_term'), args.dropout_mask, layout,
            ctx.negative_slope)
    pairs = [(t, g) for t, g in ((out, grad_out), (alpha, grad_alpha))
             if g is not None]
    if not (wanted and pairs):
        return _gradients({})
    values = torch.autograd.grad(
        [t for t, _ in pairs], [inputs[name] for name in wanted],
        [g for _, g in pairs], create_graph=True, allow_unused=True)
    return _gradients(dict(zip(wanted, values, strict=True)))


_attention_op.register_autograd(_backward, setup_context=_setup_context)


def _computes_in(t: Tensor, att: Tensor) -> bool:
    """Whether ``t`` is floating, in the dtype of ``att`` or a lower
    precision: read exactly in the dtype the attention computes in."""
    return (t.is_floating_point()
            and torch.promote_types(t.dtype, att.dtype) == att.dtype)


def _check_shapes(x_l: Tensor, x_r: Tensor, att: Tensor,
                  edge_term: Optional[Tensor], loop_term: Optional[Tensor],
                  mask: Optional[Tensor], num_edges: int,
                  num_loops: int) -> None:
    if x_l.dim() != 3 or x_r.dim() != 3 or x_l.shape[1:] != x_r.shape[1:]:
        raise ValueError(f"'{_NAME}' expects 'x_l' [num_src, heads, "
                         f"channels] and 'x_r' [num_dst, heads, channels] "
                         f"(got {list(x_l.shape)} and {list(x_r.shape)})")
    H, C = x_l.shape[1:]
    if H < 1 or C < 1:
        raise ValueError(f"'{_NAME}' expects at least one head and one "
                         f"channel (got 'x_l' {list(x_l.shape)})")
    if att.shape != (H, C):
        raise ValueError(f"'{_NAME}' expects 'att' of shape [{H}, {C}] or "
                         f"[1, {H}, {C}] (got {list(att.shape)})")
    expected = {
        'edge_term': (edge_term, (num_edges, H, C)),
        'loop_edge_term': (loop_term, (num_loops, H, C)),
        'dropout_mask': (mask, (num_edges + num_loops, H)),
    }
    for name, (t, shape) in expected.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"'{_NAME}' expects '{name}' of shape "
                             f"{list(shape)} (got {list(t.shape)})")
    for name, t in (('x_r', x_r), ('att', att)):
        if t.device != x_l.device or (name == 'x_r' and t.dtype != x_l.dtype):
            raise TypeError(f"'{_NAME}' expects '{name}' with the "
                            f"{'dtype and ' if name == 'x_r' else ''}device "
                            f"of 'x_l' ({x_l.dtype}, {x_l.device}); got "
                            f"{t.dtype}, {t.device}")
    if not (att.is_floating_point() and _computes_in(x_l, att)):
        raise TypeError(f"'{_NAME}' computes in the dtype of 'att' and "
                        f"expects floating features in that dtype or a "
                        f"lower precision; got 'att' {att.dtype} and 'x_l' "
                        f"{x_l.dtype} (cast 'att' to the features' dtype)")
    for name, t in (('edge_term', edge_term), ('loop_edge_term', loop_term)):
        if t is not None and (t.device != att.device
                              or not _computes_in(t, att)):
            raise TypeError(f"'{_NAME}' expects '{name}' on the device of "
                            f"'att' ({att.device}), floating, in its dtype "
                            f"({att.dtype}) or a lower precision; got "
                            f"{t.dtype}, {t.device}")
    if mask is not None and (mask.dtype != att.dtype
                             or mask.device != att.device):
        raise TypeError(f"'{_NAME}' expects 'dropout_mask' with the dtype "
                        f"and device of 'att' ({att.dtype}, {att.device}); "
                        f"got {mask.dtype}, {mask.device}")


def _layout_tensors(edge_index: Union[Tensor, EdgeLayout], num_src: int,
                    num_dst: int, add_self_loops: bool
                    ) -> Tuple[int, Tuple[Tensor, Tensor, Tensor]]:
    """The number of caller's edges and the CSR tensors of the layout of
    ``edge_index`` (an :class:`EdgeLayout` itself, checked to fit)."""
    if isinstance(edge_index, EdgeLayout):
        layout = edge_index
        built_for = (layout.num_src, layout.num_dst, layout.self_loops)
        called_with = (num_src, num_dst, add_self_loops)
        if built_for != called_with:
            raise ValueError(
                f"'{_NAME}' got a layout built for (num_src, num_dst, "
                f"add_self_loops) = {built_for} but was called with "
                f"{called_with}; build it with 'edge_layout' for these "
                'inputs')
        return layout.num_edges, layout.csr_tensors
    if torch.compiler.is_compiling():
        check_edge_index(edge_index, _NAME)
        return edge_index.size(1), torch.ops.pyg_gatv2.edge_layout(
            edge_index, num_src, num_dst, add_self_loops, _NAME)
    layout = edge_layout(edge_index, num_src, num_dst, add_self_loops,
                         caller=_NAME)
    return layout.num_edges, layout.csr_tensors


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
    optional dropout mask. The logits are computed from the features while
    the edges of each destination node are walked (the C++ kernels into a
    small buffer per node, the Triton kernels with an online softmax, the
    torch backend chunk by chunk); only the log-sum-exp per node and head
    is kept for backward, which recomputes them. No tensor of shape
    ``[num_edges, heads, channels]`` is allocated or kept beyond the edge
    term and its gradient.

    The attention is computed in the dtype of ``att``. The features may be
    stored in a lower precision (bfloat16 projections beside a float32
    attention vector, as :func:`torch.autocast` gives): the Triton kernels
    read them as they are, the other backends from copies in the dtype of
    ``att``; either way, each feature is read exactly and every sum runs in
    float32 or higher. Edge terms of a lower precision are read from copies
    in the dtype of ``att``. The gradients of the features and of the edge
    terms come in their own dtypes.

    Args:
        x_l (torch.Tensor): Source features ``[num_src, heads, channels]``,
            in the dtype of ``att`` or a lower precision.
        x_r (torch.Tensor): Destination features
            ``[num_dst, heads, channels]``, in the dtype of ``x_l``.
        att (torch.Tensor): Attention vector ``[heads, channels]`` or
            ``[1, heads, channels]``; the dtype to compute in, which the
            dropout mask shares.
        edge_index (torch.Tensor or EdgeLayout): Edges ``[2, num_edges]``,
            whose sorted layout is cached while the tensor is unchanged, or
            that layout itself (:func:`pyg_gatv2.fused.edge_layout`).
        edge_term (torch.Tensor, optional): Projected edge features
            ``[num_edges, heads, channels]``, in the dtype of ``att`` or a
            lower precision. (default: :obj:`None`)
        loop_edge_term (torch.Tensor, optional): Edge term of the implicit
            self-loops ``[min(num_src, num_dst), heads, channels]``, as
            ``edge_term``; zero if not given. Used only with
            ``add_self_loops``, and only with ``edge_term``.
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
        backend (str, optional): ``'cpp'`` (multi-threaded C++ CPU
            kernels), ``'triton'`` (CUDA tensors; CPU tensors in Triton's
            interpreter), ``'torch'`` (chunked PyTorch, any device) or
            ``'auto'`` (the first of these that runs the features' device
            and dtype; see :mod:`pyg_gatv2.fused.backends`); :obj:`None`
            takes the one chosen with :func:`pyg_gatv2.set_backends`.
            (default: :obj:`None`)
        chunk_size (int, optional): Edges per chunk of the torch backend.
            (default: about :math:`2^{20}` / (heads * channels))

    Returns:
        The aggregated features ``[num_dst, heads, channels]`` and, with
        ``return_attention_weights``, the attention weights, in the dtype
        of ``att``.
    """
    if att.dim() == 3 and att.size(0) == 1:
        att = att.squeeze(0)
    num_src, num_dst = x_l.size(0), x_r.size(0)
    num_edges, csr = _layout_tensors(edge_index, num_src, num_dst,
                                     bool(add_self_loops))
    num_loops = _num_loops(num_src, num_dst, bool(add_self_loops))
    if edge_term is None and loop_edge_term is not None:
        raise ValueError(f"'{_NAME}' got 'loop_edge_term' without "
                         "'edge_term'; pass the edges' terms too (zeros "
                         'where the edges have none)')
    if edge_term is not None and loop_edge_term is None:
        loop_edge_term = edge_term.new_zeros(
            (num_loops, ) + tuple(edge_term.shape[1:]))
    _check_shapes(x_l, x_r, att, edge_term, loop_edge_term, dropout_mask,
                  num_edges, num_loops)
    if csr[0].device != x_l.device:
        raise TypeError(f"'{_NAME}' expects 'edge_index' on the device of "
                        f"'x_l' ({x_l.device}); got {csr[0].device}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"'{_NAME}' expects a positive 'chunk_size' "
                         f"(got {chunk_size})")

    def dense(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else t.contiguous()

    out, _, alpha = torch.ops.pyg_gatv2.gatv2_attention(
        dense(x_l), dense(x_r), dense(att), *csr, dense(edge_term),
        dense(loop_edge_term), dense(dropout_mask), num_edges,
        bool(add_self_loops), float(negative_slope),
        bool(return_attention_weights), backend, chunk_size)
    if return_attention_weights:
        return out, alpha
    return out
