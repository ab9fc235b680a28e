"""Multi-threaded CPU kernels of the fused GATv2 attention (numba).

Three passes, each a parallel loop over balanced ranges of nodes, so that
every thread writes only rows it owns and no atomics are needed:

- ``forward``: per destination node ``i`` (CSR order) and head, the logits of
  the in-edges are computed on the fly and folded into an online softmax;
  only ``out`` and the log-sum-exp per node and head are written.
- ``backward_dst``: per destination node, logits are recomputed; it writes
  the gradients of ``x_r``, of the edge term and per-range partial sums of
  the gradient of ``att``, and two per-edge-and-head scalars (the message
  weight and the logit gradient) for the next pass.
- ``backward_src``: per source node (CSC order), the gradient of ``x_l``.

The CSR and CSC layouts themselves are sorted here too, by
:func:`bucket_order`: a counting sort, linear in the edges, in place of a
comparison sort.

Arrays absent in a call (edge term, dropout mask, gradient of alpha) are
passed as empty arrays with their ``has_*`` flag off, so that each dtype
compiles once.
"""
import contextlib
import math
import threading
from collections.abc import Iterator
from typing import Optional, Tuple

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from .operands import Cotangents, Gradients, Operands, gradient_buffers

__all__ = ['run_forward', 'run_backward', 'bucket_order']

_JIT = dict(parallel=True, fastmath=False, cache=True, nogil=True)


@njit(cache=True, nogil=True)
def _counting_sort(keys, ptr, order):
    for k in keys:
        ptr[k + 1] += 1
    for i in range(ptr.size - 1):
        ptr[i + 1] += ptr[i]
    fill = ptr[:-1].copy()
    for i in range(keys.size):
        k = keys[i]
        order[fill[k]] = i
        fill[k] += 1


def bucket_order(keys: Tensor, num_keys: int) -> Tuple[Tensor, Tensor]:
    """Sorts CPU int64 ``keys`` in ``0 .. num_keys - 1`` (checked by the
    caller) by counting: returns the offsets of each key's run
    ``[num_keys + 1]`` and the stable order, ``torch.argsort(keys,
    stable=True)``, in time linear in ``keys.numel() + num_keys``."""
    ptr = torch.zeros(num_keys + 1, dtype=torch.long)
    order = torch.empty_like(keys)
    _counting_sort(keys.numpy(), ptr.numpy(), order.numpy())
    return ptr, order


@njit(inline='always')
def _term_row(edge_term, loop_term, e, h, num_edges):
    if e < num_edges:
        return edge_term[e, h]
    return loop_term[e - num_edges, h]


@njit(inline='always')
def _lrelu(z, slope):
    return z if z > 0 else z * slope


# Per edge and head, the channel loops write elementwise into small
# per-thread buffers (loops that vectorise) and only the final sums run
# serially, in a fixed order: no fastmath is needed for speed.

@njit(inline='always')
def _score(xj, xi, t, has_edge_term, a, slope, buf):
    """``sum_c a[c] * LeakyReLU(xj[c] + xi[c] (+ t[c]))``."""
    C = a.size
    for c in range(C):
        z = xj[c] + xi[c]
        if has_edge_term:
            z += t[c]
        buf[c] = a[c] * _lrelu(z, slope)
    s = buf.dtype.type(0)
    for c in range(C):
        s += buf[c]
    return s


@njit(**_JIT)
def forward(x_l, x_r, att, edge_term, loop_term, mask, ptr, col, eid, bounds,
            num_edges, slope, has_edge_term, has_mask, want_alpha, out, lse,
            alpha):
    """Writes ``out`` [N_dst, H, C], ``lse`` [N_dst, H] and, if
    ``want_alpha``, the softmax weights into ``alpha`` [virtual edges, H]."""
    H, C = att.shape
    for b in prange(bounds.size - 1):
        m = np.empty(H, dtype=x_l.dtype)
        total = np.empty(H, dtype=x_l.dtype)
        buf = np.empty(C, dtype=x_l.dtype)
        for i in range(bounds[b], bounds[b + 1]):
            out[i] = 0
            m[:] = -np.inf
            total[:] = 0
            for k in range(ptr[i], ptr[i + 1]):
                j = col[k]
                e = eid[k]
                for h in range(H):
                    xi = x_r[i, h]
                    xj = x_l[j, h]
                    t = xi
                    if has_edge_term:
                        t = _term_row(edge_term, loop_term, e, h, num_edges)
                    s = _score(xj, xi, t, has_edge_term, att[h], slope, buf)
                    if want_alpha:
                        alpha[e, h] = s
                    o = out[i, h]
                    if s > m[h]:
                        scale = math.exp(m[h] - s)
                        total[h] *= scale
                        for c in range(C):
                            o[c] *= scale
                        m[h] = s
                    p = math.exp(s - m[h])
                    total[h] += p
                    if has_mask:
                        p *= mask[e, h]
                    for c in range(C):
                        o[c] += p * xj[c]
            for h in range(H):
                if total[h] > 0:
                    inv = 1 / total[h]
                    for c in range(C):
                        out[i, h, c] *= inv
                    lse[i, h] = m[h] + math.log(total[h])
                else:
                    lse[i, h] = -np.inf
            if want_alpha:
                for k in range(ptr[i], ptr[i + 1]):
                    e = eid[k]
                    for h in range(H):
                        alpha[e, h] = math.exp(alpha[e, h] - lse[i, h])


@njit(**_JIT)
def backward_dst(x_l, x_r, att, edge_term, loop_term, mask, grad_alpha,
                 grad_out, lse, delta, ptr, col, eid, bounds, num_edges, slope,
                 has_edge_term, has_mask, has_grad_alpha, want_edge_grad,
                 grad_xr, grad_edge, grad_loop, grad_att, msg_weight,
                 grad_logit):
    """Writes the gradients of ``x_r`` (``grad_xr``), of the edge terms
    (``grad_edge``, ``grad_loop``, if ``want_edge_grad``) and per-range
    partial gradients of ``att`` (``grad_att`` [ranges, H, C]); fills
    ``msg_weight`` (the weight of each message) and ``grad_logit`` (the
    gradient of each logit), [CSR position, H], for ``backward_src``.
    ``delta`` [N_dst, H] holds ``<grad_out_i, out_i>`` plus, with
    ``has_grad_alpha``, ``sum_k alpha_k grad_alpha_k``."""
    H, C = att.shape
    for b in prange(bounds.size - 1):
        grad_att_b = grad_att[b]
        grad_att_b[:] = 0
        act = np.empty(C, dtype=x_l.dtype)  # LeakyReLU(z)
        dact = np.empty(C, dtype=x_l.dtype)  # att * LeakyReLU'(z)
        prod = np.empty(C, dtype=x_l.dtype)  # grad_out_i * x_j
        for i in range(bounds[b], bounds[b + 1]):
            grad_xr[i] = 0
            for k in range(ptr[i], ptr[i + 1]):
                j = col[k]
                e = eid[k]
                for h in range(H):
                    xi = x_r[i, h]
                    xj = x_l[j, h]
                    grad_i = grad_out[i, h]
                    ah = att[h]
                    t = xi
                    if has_edge_term:
                        t = _term_row(edge_term, loop_term, e, h, num_edges)
                    for c in range(C):
                        z = xj[c] + xi[c]
                        if has_edge_term:
                            z += t[c]
                        if z > 0:
                            act[c] = z
                            dact[c] = ah[c]
                        else:
                            act[c] = z * slope
                            dact[c] = ah[c] * slope
                        prod[c] = grad_i[c] * xj[c]
                    s = x_l.dtype.type(0)
                    gd = x_l.dtype.type(0)
                    for c in range(C):
                        s += ah[c] * act[c]
                        gd += prod[c]
                    p = math.exp(s - lse[i, h])
                    w = p
                    if has_mask:
                        w *= mask[e, h]
                        gd *= mask[e, h]
                    if has_grad_alpha:
                        gd += grad_alpha[e, h]
                    ds = p * (gd - delta[i, h])
                    msg_weight[k, h] = w
                    grad_logit[k, h] = ds
                    grad_xr_i = grad_xr[i, h]
                    grad_att_h = grad_att_b[h]
                    for c in range(C):
                        grad_xr_i[c] += ds * dact[c]
                        grad_att_h[c] += ds * act[c]
                    if want_edge_grad:
                        grad_t = _term_row(grad_edge, grad_loop, e, h,
                                           num_edges)
                        for c in range(C):
                            grad_t[c] = ds * dact[c]


@njit(**_JIT)
def backward_src(x_l, x_r, att, edge_term, loop_term, grad_out, ptr, pos, row,
                 eid, bounds, num_edges, slope, has_edge_term, msg_weight,
                 grad_logit, grad_xl):
    """Writes the gradient of ``x_l`` (``grad_xl``), one source node per
    row: the message term ``w * grad_out_i`` plus the logit term through
    the LeakyReLU, recomputed from the features."""
    H, C = att.shape
    for b in prange(bounds.size - 1):
        for j in range(bounds[b], bounds[b + 1]):
            grad_xl[j] = 0
            for q in range(ptr[j], ptr[j + 1]):
                k = pos[q]
                i = row[q]
                e = eid[k]
                for h in range(H):
                    w = msg_weight[k, h]
                    ds = grad_logit[k, h]
                    xi = x_r[i, h]
                    xj = x_l[j, h]
                    grad_i = grad_out[i, h]
                    grad_xl_j = grad_xl[j, h]
                    ah = att[h]
                    t = xi
                    if has_edge_term:
                        t = _term_row(edge_term, loop_term, e, h, num_edges)
                    for c in range(C):
                        z = xj[c] + xi[c]
                        if has_edge_term:
                            z += t[c]
                        d = ds * ah[c]
                        if z <= 0:
                            d *= slope
                        grad_xl_j[c] += w * grad_i[c] + d


def _match_torch_threads() -> None:
    # numba keeps its own count of threads; without this, torch.set_num_threads
    # (and the --threads flags) would not bound the kernels. With the OpenMP
    # layer numba shares torch's runtime, and starting its pool (on the first
    # call) resets the count torch reads, hence the restore.
    threads = torch.get_num_threads()
    numba.set_num_threads(
        max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


_launch_lock = threading.Lock()


@contextlib.contextmanager
def _launch() -> Iterator[None]:
    # numba's 'workqueue' threading layer (the one left where neither OpenMP
    # nor TBB loads) aborts the process when two threads run parallel
    # kernels at once; 'omp' and 'tbb' take concurrent calls.
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        layer = None
    if layer in ('omp', 'tbb'):
        yield
    else:
        with _launch_lock:
            yield


def _num_chunks() -> int:
    # Several ranges per thread even out the work left after the balancing
    # by edge count (the cost per edge varies with cache behaviour).
    return 8 * numba.get_num_threads()


def _np(t: Tensor) -> np.ndarray:
    return t.detach().numpy()


def _np_or_empty(t: Optional[Tensor], shape: Tuple[int, ...],
                 dtype: np.dtype) -> np.ndarray:
    # Absent arrays go to the kernels empty, with their flag off, so that
    # each dtype compiles once.
    return np.empty(shape, dtype) if t is None else _np(t)


def _edge_arrays(edge_term: Optional[Tensor], loop_term: Optional[Tensor],
                 like: Tensor) -> Tuple[np.ndarray, np.ndarray]:
    shape = (0, ) + tuple(like.shape[1:])
    dtype = _np(like).dtype
    return (_np_or_empty(edge_term, shape, dtype),
            _np_or_empty(loop_term, shape, dtype))


def run_forward(ops: Operands, want_alpha: bool
                ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Runs :func:`forward`; returns ``out``, ``lse`` and the softmax
    weights [virtual edges, H] (or :obj:`None`)."""
    _match_torch_threads()
    layout = ops.layout
    H, C = ops.att.shape
    out = ops.x_l.new_empty(layout.num_dst, H, C)
    lse = ops.x_l.new_empty(layout.num_dst, H)
    alpha = ops.x_l.new_zeros(layout.num_virtual if want_alpha else 0, H)
    edge_np, loop_np = _edge_arrays(ops.edge_term, ops.loop_term, ops.x_l)
    dtype = edge_np.dtype
    with _launch():
        forward(_np(ops.x_l), _np(ops.x_r), _np(ops.att), edge_np, loop_np,
                _np_or_empty(ops.dropout_mask, (0, H), dtype),
                layout.dst_ptr.numpy(), layout.dst_col.numpy(),
                layout.dst_eid.numpy(), layout.bounds('dst', _num_chunks()),
                layout.num_edges, dtype.type(ops.negative_slope),
                ops.edge_term is not None, ops.dropout_mask is not None,
                want_alpha, _np(out), _np(lse), _np(alpha))
    return out, lse, alpha if want_alpha else None


def run_backward(ops: Operands, cot: Cotangents, want_edge_grad: bool,
                 want_src_grad: bool) -> Gradients:
    """Runs :func:`backward_dst` and, for the gradient of ``x_l``,
    :func:`backward_src`."""
    _match_torch_threads()
    layout = ops.layout
    H, C = ops.att.shape
    edge_np, loop_np = _edge_arrays(ops.edge_term, ops.loop_term, ops.x_l)
    dtype = edge_np.dtype
    slope = dtype.type(ops.negative_slope)
    grad_xl, grad_xr, grad_edge, grad_loop = gradient_buffers(
        ops, want_edge_grad, want_src_grad)
    grad_edge_np, grad_loop_np = _edge_arrays(grad_edge, grad_loop, ops.x_l)
    bounds = layout.bounds('dst', _num_chunks())
    grad_att = np.empty((max(bounds.size - 1, 0), H, C), dtype)
    msg_weight = np.empty((layout.num_kept, H), dtype)
    grad_logit = np.empty((layout.num_kept, H), dtype)
    eid = layout.dst_eid.numpy()
    with _launch():
        backward_dst(
            _np(ops.x_l), _np(ops.x_r), _np(ops.att), edge_np, loop_np,
            _np_or_empty(ops.dropout_mask, (0, H), dtype),
            _np_or_empty(cot.grad_alpha, (0, H), dtype), _np(cot.grad_out),
            _np(cot.lse), _np(cot.delta), layout.dst_ptr.numpy(),
            layout.dst_col.numpy(), eid, bounds, layout.num_edges, slope,
            ops.edge_term is not None, ops.dropout_mask is not None,
            cot.grad_alpha is not None, want_edge_grad, _np(grad_xr),
            grad_edge_np, grad_loop_np, grad_att, msg_weight, grad_logit)
        if want_src_grad:
            ptr, pos, row = layout.csc
            backward_src(
                _np(ops.x_l), _np(ops.x_r), _np(ops.att), edge_np, loop_np,
                _np(cot.grad_out), ptr.numpy(), pos.numpy(), row.numpy(),
                eid, layout.bounds('src', _num_chunks()), layout.num_edges,
                slope, ops.edge_term is not None, msg_weight, grad_logit,
                _np(grad_xl))
    return Gradients(grad_xl, grad_xr, torch.from_numpy(grad_att.sum(axis=0)),
                     grad_edge, grad_loop)
