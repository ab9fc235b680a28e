"""The C++ backend: multi-threaded CPU kernels for float32 and float64.

The passes of the library that :mod:`pyg_gatv2.fused.cpp_library` loads,
on the tensors' memory. The CPU level it runs is
:func:`pyg_gatv2.fused.cpp_library.capability`.

The float32 kernels run whole blocks of 8 channels per head: heads of
another width are padded with zero channels up to the width that
:func:`pyg_gatv2.fused.cpp_library.compiled_shape` gives, which add
exactly nothing to the logits and the sums, and the results are cut back
to the caller's width. A step on kernels with a remainder of channels
took 1.07 to 1.52 times the padded one's, copies included
(``benchmarks/results/history.md``, the shape sweep). Callers that project
straight into that width (:func:`pyg_gatv2.fused.kernel_width`, as
:class:`pyg_gatv2.GATv2Conv` does) save the copies.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import buffers, cpp_library
from ..cpp_library import call, pointer
from ..operands import Cotangents, Gradients, Operands, gradient_buffers
from . import Backend

__all__ = ['BACKEND', 'CHUNK_EDGES', 'work_ranges']


# Nodes of more than CHUNK_EDGES edges (in the passes by destination, their
# in-edges; by source, their out-edges) leave their range of nodes: their
# edges are cut into chunks of at most CHUNK_EDGES, each a work item of its
# own, whose partial sums are merged afterwards, so that a hub's edges are
# spread over the threads instead of one thread walking them all. Fixed, not
# drawn from the number of threads, so that results do not depend on it.
CHUNK_EDGES = 2048


def work_ranges() -> int:
    """How many ranges of nodes, of about equal edge counts, each pass
    cuts the nodes into (:meth:`~pyg_gatv2.fused.layout.EdgeLayout.bounds`):
    several per thread even out the work left after the balancing by edge
    count, and OpenMP hands them out dynamically."""
    return 8 * torch.get_num_threads()


def _record(ops: Operands) -> cpp_library.Args:
    """The fields every pass reads: the problem, the inputs and the edges
    by destination."""
    layout = ops.layout
    H, C = ops.att.shape
    bounds = layout.bounds('dst', work_ranges())
    record = cpp_library.Args(
        dtype=cpp_library.DTYPES[ops.x_l.dtype], heads=H, channels=C,
        num_edges=layout.num_edges, negative_slope=ops.negative_slope,
        num_threads=torch.get_num_threads(), x_l=pointer(ops.x_l),
        x_r=pointer(ops.x_r), att=pointer(ops.att),
        edge_term=pointer(ops.edge_term), loop_term=pointer(ops.loop_term),
        dropout_mask=pointer(ops.dropout_mask),
        dst_ptr=pointer(layout.dst_ptr), dst_col=pointer(layout.dst_col),
        dst_eid=pointer(layout.dst_eid), dst_bounds=pointer(bounds),
        num_dst_ranges=max(bounds.size - 1, 0), chunk_edges=CHUNK_EDGES)
    _set_chunks(record, 'dst', layout)
    return record


def _set_chunks(record: cpp_library.Args, by: str, layout) -> None:
    """Sets the fields of ``record`` that hold the chunks of the nodes of
    more than :data:`CHUNK_EDGES` edges by destination (``by='dst'``) or by
    source (``'src'``), where there are any."""
    chunks = layout.chunks(by, CHUNK_EDGES)
    if chunks is None:
        return
    setattr(record, f'{by}_chunk_node', pointer(chunks.node))
    setattr(record, f'{by}_chunk_start', pointer(chunks.start))
    setattr(record, f'{by}_chunk_end', pointer(chunks.end))
    setattr(record, f'num_{by}_chunks', chunks.node.numel())
    setattr(record, f'{by}_chunked_ptr', pointer(chunks.node_ptr))
    setattr(record, f'num_{by}_chunked', chunks.nodes.numel())


def _pad(t: Optional[Tensor], width: int) -> Optional[Tensor]:
    """``t`` [..., C] with zero channels up to ``width``."""
    if t is None or t.size(-1) == width:
        return t
    return F.pad(t, (0, width - t.size(-1)))


def _cut(t: Optional[Tensor], channels: int) -> Optional[Tensor]:
    """The first ``channels`` channels of ``t`` [..., width], contiguous."""
    if t is None or t.size(-1) == channels:
        return t
    return t[..., :channels].contiguous()


def _padded(ops: Operands, width: int) -> Operands:
    """``ops`` with every head padded with zero channels to ``width``."""
    return ops._replace(x_l=_pad(ops.x_l, width), x_r=_pad(ops.x_r, width),
                        att=_pad(ops.att, width),
                        edge_term=_pad(ops.edge_term, width),
                        loop_term=_pad(ops.loop_term, width))


def _forward(ops: Operands, want_alpha: bool
             ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """The forward pass, on operands of a width the kernels run."""
    layout = ops.layout
    H, C = ops.att.shape
    out = buffers.empty((layout.num_dst, H, C), ops.x_l.dtype)
    lse = ops.x_l.new_empty(layout.num_dst, H)
    alpha = (ops.x_l.new_zeros(layout.num_virtual, H) if want_alpha
             else None)
    record = _record(ops)
    record.out, record.lse, record.alpha = (pointer(out), pointer(lse),
                                            pointer(alpha))
    call('gatv2_forward', record)
    return out, lse, alpha


def _backward(ops: Operands, cot: Cotangents, want_edge_grad: bool,
              want_src_grad: bool) -> Gradients:
    """Both backward passes, on operands of a width the kernels run."""
    layout = ops.layout
    H, C = ops.att.shape
    dtype = ops.x_l.dtype
    grad_xl, grad_xr, grad_edge, grad_loop = gradient_buffers(
        ops, want_edge_grad, want_src_grad)
    record = _record(ops)
    # One row of sums per range of nodes and per chunk.
    grad_att = ops.x_l.new_empty(
        record.num_dst_ranges + record.num_dst_chunks, H, C)
    msg_weight = buffers.empty((layout.num_kept, H), dtype)
    grad_logit = buffers.empty((layout.num_kept, H), dtype)
    # Kept alive until the kernels return: the record holds only their
    # addresses.
    grad_out, lse = (t.to(dtype).contiguous()
                     for t in (cot.grad_out, cot.lse))
    # Without delta the kernel sums D_i over each node's in-edges.
    delta = (None if cot.delta is None else
             cot.delta.to(dtype).contiguous())
    grad_alpha = (None if cot.grad_alpha is None else
                  cot.grad_alpha.to(dtype).contiguous())
    record.grad_out, record.lse = pointer(grad_out), pointer(lse)
    record.delta, record.grad_alpha = pointer(delta), pointer(grad_alpha)
    record.grad_x_r, record.grad_att = pointer(grad_xr), pointer(grad_att)
    record.grad_edge, record.grad_loop = (pointer(grad_edge),
                                          pointer(grad_loop))
    record.msg_weight = pointer(msg_weight)
    record.grad_logit = pointer(grad_logit)
    call('gatv2_backward_dst', record)
    if want_src_grad:
        src_ptr, src_pos, src_row = layout.csc
        bounds = layout.bounds('src', work_ranges())
        record.src_ptr = pointer(src_ptr)
        record.src_pos = pointer(src_pos)
        record.src_row = pointer(src_row)
        record.src_bounds = pointer(bounds)
        record.num_src_ranges = max(bounds.size - 1, 0)
        _set_chunks(record, 'src', layout)
        record.grad_x_l = pointer(grad_xl)
        call('gatv2_backward_src', record)
    return Gradients(grad_xl, grad_xr, grad_att.sum(0), grad_edge,
                     grad_loop)


class CppBackend(Backend):
    name = 'cpp'
    summary = 'multi-threaded C++ CPU kernels (OpenMP)'
    devices = ('cpu', )
    dtypes = (torch.float32, torch.float64)
    needs_output = False

    def unavailable_reason(self) -> Optional[str]:
        if cpp_library.load() is None:
            return ('the C++ kernels were not built (no C++ compiler with '
                    "OpenMP when the package was installed): reinstall "
                    "with one ('pip install .')")
        return None

    def width(self, heads: int, channels: int, dtype: torch.dtype) -> int:
        if dtype != torch.float32:
            return channels
        return cpp_library.compiled_shape(heads, channels).width

    def forward(self, ops: Operands, want_alpha: bool
                ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        C = ops.att.size(1)
        width = self.width(ops.att.size(0), C, ops.x_l.dtype)
        if width == C:
            return _forward(ops, want_alpha)
        out, lse, alpha = _forward(_padded(ops, width), want_alpha)
        return _cut(out, C), lse, alpha

    def backward(self, ops: Operands, cot: Cotangents, want_edge_grad: bool,
                 want_src_grad: bool) -> Gradients:
        C = ops.att.size(1)
        width = self.width(ops.att.size(0), C, ops.x_l.dtype)
        if width == C:
            return _backward(ops, cot, want_edge_grad, want_src_grad)
        cot = cot._replace(grad_out=_pad(cot.grad_out, width))
        grads = _backward(_padded(ops, width), cot, want_edge_grad,
                          want_src_grad)
        return Gradients(*(_cut(g, C) for g in grads))


BACKEND = CppBackend()
