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

from .csr import EdgeLayout

__all__ = ['run_forward', 'run_backward']

_JIT = dict(parallel=True, fastmath=False, cache=True, nogil=True)


@njit(inline='always')
def _edge_row(et, loop_et, e, h, num_edges):
    if e < num_edges:
        return et[e, h]
    return loop_et[e - num_edges, h]


@njit(inline='always')
def _lrelu(z, slope):
    return z if z > 0 else z * slope


# Per edge and head, the channel loops write elementwise into small
# per-thread buffers (loops that vectorise) and only the final sums run
# serially, in a fixed order: no fastmath is needed for speed.

@njit(inline='always')
def _score(xj, xi, ev, has_et, a, slope, buf):
    """``sum_c a[c] * LeakyReLU(xj[c] + xi[c] (+ ev[c]))``."""
    C = a.size
    for c in range(C):
        z = xj[c] + xi[c]
        if has_et:
            z += ev[c]
        buf[c] = a[c] * _lrelu(z, slope)
    s = buf.dtype.type(0)
    for c in range(C):
        s += buf[c]
    return s


@njit(**_JIT)
def forward(xl, xr, att, et, loop_et, mask, ptr, col, eid, bounds,
            num_edges, slope, has_et, has_mask, want_alpha, out, lse,
            alpha):
    """Writes ``out`` [N_dst, H, C], ``lse`` [N_dst, H] and, if
    ``want_alpha``, the softmax weights into ``alpha`` [virtual edges, H]."""
    H, C = att.shape
    for b in prange(bounds.size - 1):
        m = np.empty(H, dtype=xl.dtype)
        total = np.empty(H, dtype=xl.dtype)
        buf = np.empty(C, dtype=xl.dtype)
        for i in range(bounds[b], bounds[b + 1]):
            out[i] = 0
            m[:] = -np.inf
            total[:] = 0
            for k in range(ptr[i], ptr[i + 1]):
                j = col[k]
                e = eid[k]
                for h in range(H):
                    xi = xr[i, h]
                    xj = xl[j, h]
                    ev = _edge_row(et, loop_et, e, h, num_edges) if has_et \
                        else xi
                    s = _score(xj, xi, ev, has_et, att[h], slope, buf)
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
def backward_dst(xl, xr, att, et, loop_et, mask, galpha, grad, lse, delta,
                 ptr, col, eid, bounds, num_edges, slope, has_et, has_mask,
                 has_galpha, want_det, gxr, get, gloop, gatt, wbuf, dsbuf):
    """Writes the gradients of ``x_r`` (``gxr``), of the edge terms
    (``get``, ``gloop``, if ``want_det``) and per-range partial gradients of
    ``att`` (``gatt`` [ranges, H, C]); fills ``wbuf`` (message weight) and
    ``dsbuf`` (logit gradient) [CSR position, H] for ``backward_src``.
    ``delta`` [N_dst, H] holds ``<grad_i, out_i>`` plus, with ``has_galpha``,
    ``sum_k alpha_k grad_alpha_k``."""
    H, C = att.shape
    for b in prange(bounds.size - 1):
        ga = gatt[b]
        ga[:] = 0
        act = np.empty(C, dtype=xl.dtype)  # LeakyReLU(z)
        dact = np.empty(C, dtype=xl.dtype)  # att * LeakyReLU'(z)
        prod = np.empty(C, dtype=xl.dtype)  # grad_i * x_j
        for i in range(bounds[b], bounds[b + 1]):
            gxr[i] = 0
            for k in range(ptr[i], ptr[i + 1]):
                j = col[k]
                e = eid[k]
                for h in range(H):
                    xi = xr[i, h]
                    xj = xl[j, h]
                    gi = grad[i, h]
                    ah = att[h]
                    ev = _edge_row(et, loop_et, e, h, num_edges) if has_et \
                        else xi
                    for c in range(C):
                        z = xj[c] + xi[c]
                        if has_et:
                            z += ev[c]
                        if z > 0:
                            act[c] = z
                            dact[c] = ah[c]
                        else:
                            act[c] = z * slope
                            dact[c] = ah[c] * slope
                        prod[c] = gi[c] * xj[c]
                    s = xl.dtype.type(0)
                    gd = xl.dtype.type(0)
                    for c in range(C):
                        s += ah[c] * act[c]
                        gd += prod[c]
                    p = math.exp(s - lse[i, h])
                    w = p
                    if has_mask:
                        w *= mask[e, h]
                        gd *= mask[e, h]
                    if has_galpha:
                        gd += galpha[e, h]
                    ds = p * (gd - delta[i, h])
                    wbuf[k, h] = w
                    dsbuf[k, h] = ds
                    gxi = gxr[i, h]
                    gah = ga[h]
                    for c in range(C):
                        gxi[c] += ds * dact[c]
                        gah[c] += ds * act[c]
                    if want_det:
                        gev = _edge_row(get, gloop, e, h, num_edges)
                        for c in range(C):
                            gev[c] = ds * dact[c]


@njit(**_JIT)
def backward_src(xl, xr, att, et, loop_et, grad, ptr, pos, row, eid, bounds,
                 num_edges, slope, has_et, wbuf, dsbuf, gxl):
    """Writes the gradient of ``x_l`` (``gxl``), one source node per row:
    the message term ``w * grad_i`` plus the logit term through the
    LeakyReLU, recomputed from the features."""
    H, C = att.shape
    for b in prange(bounds.size - 1):
        for j in range(bounds[b], bounds[b + 1]):
            gxl[j] = 0
            for q in range(ptr[j], ptr[j + 1]):
                k = pos[q]
                i = row[q]
                e = eid[k]
                for h in range(H):
                    w = wbuf[k, h]
                    ds = dsbuf[k, h]
                    xi = xr[i, h]
                    xj = xl[j, h]
                    gi = grad[i, h]
                    gj = gxl[j, h]
                    ah = att[h]
                    ev = _edge_row(et, loop_et, e, h, num_edges) if has_et \
                        else xi
                    for c in range(C):
                        z = xj[c] + xi[c]
                        if has_et:
                            z += ev[c]
                        d = ds * ah[c]
                        if z <= 0:
                            d *= slope
                        gj[c] += w * gi[c] + d


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


def _edge_arrays(et: Optional[Tensor], loop_et: Optional[Tensor],
                 like: Tensor) -> Tuple[np.ndarray, np.ndarray]:
    if et is None:
        empty = np.empty((0, ) + tuple(like.shape[1:]), _np(like).dtype)
        return empty, empty
    return _np(et), _np(loop_et)


def run_forward(xl: Tensor, xr: Tensor, att: Tensor, et: Optional[Tensor],
                loop_et: Optional[Tensor], mask: Optional[Tensor],
                layout: EdgeLayout, slope: float, want_alpha: bool
                ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Runs :func:`forward` on tensors; returns ``out``, ``lse`` and the
    softmax weights [virtual edges, H] (or :obj:`None`)."""
    _match_torch_threads()
    H, C = att.shape
    n = layout.num_dst
    out = xl.new_empty(n, H, C)
    lse = xl.new_empty(n, H)
    alpha = xl.new_zeros(layout.num_virtual if want_alpha else 0, H)
    et_np, loop_np = _edge_arrays(et, loop_et, xl)
    mask_np = _np(mask) if mask is not None else np.empty((0, H), et_np.dtype)
    with _launch():
        forward(_np(xl), _np(xr), _np(att), et_np, loop_np, mask_np,
                layout.dst_ptr.numpy(), layout.dst_col.numpy(),
                layout.dst_eid.numpy(), layout.bounds('dst', _num_chunks()),
                layout.num_edges, et_np.dtype.type(slope), et is not None,
                mask is not None, want_alpha, _np(out), _np(lse), _np(alpha))
    return out, lse, alpha if want_alpha else None


def run_backward(xl: Tensor, xr: Tensor, att: Tensor, et: Optional[Tensor],
                 loop_et: Optional[Tensor], mask: Optional[Tensor],
                 galpha: Optional[Tensor], grad: Tensor, lse: Tensor,
                 delta: Tensor, layout: EdgeLayout, slope: float,
                 want_det: bool, want_dxl: bool):
    """Runs :func:`backward_dst` and :func:`backward_src` on tensors;
    returns the gradients of ``xl`` (or :obj:`None`), ``xr``, ``att`` and,
    if ``want_det``, of the edge term and of the loop edge term."""
    _match_torch_threads()
    H, C = att.shape
    et_np, loop_np = _edge_arrays(et, loop_et, xl)
    dtype = et_np.dtype
    empty2 = np.empty((0, H), dtype)
    slope = dtype.type(slope)
    gxr = torch.empty_like(xr)
    get = gloop = None
    if want_det:
        get, gloop = torch.zeros_like(et), torch.zeros_like(loop_et)
    get_np, gloop_np = _edge_arrays(get, gloop, xl)
    bounds = layout.bounds('dst', _num_chunks())
    gatt = np.empty((max(bounds.size - 1, 0), H, C), dtype)
    wbuf = np.empty((layout.num_kept, H), dtype)
    dsbuf = np.empty((layout.num_kept, H), dtype)
    eid = layout.dst_eid.numpy()
    gxl = torch.empty_like(xl) if want_dxl else None
    with _launch():
        backward_dst(
            _np(xl), _np(xr), _np(att), et_np, loop_np,
            _np(mask) if mask is not None else empty2,
            _np(galpha) if galpha is not None else empty2, _np(grad),
            _np(lse), _np(delta), layout.dst_ptr.numpy(),
            layout.dst_col.numpy(), eid, bounds, layout.num_edges, slope,
            et is not None, mask is not None, galpha is not None, want_det,
            _np(gxr), get_np, gloop_np, gatt, wbuf, dsbuf)
        if want_dxl:
            ptr, pos, row = layout.csc
            backward_src(_np(xl), _np(xr), _np(att), et_np, loop_np,
                         _np(grad), ptr.numpy(), pos.numpy(), row.numpy(),
                         eid, layout.bounds('src', _num_chunks()),
                         layout.num_edges, slope, et is not None, wbuf,
                         dsbuf, _np(gxl))
    return gxl, gxr, torch.from_numpy(gatt.sum(axis=0)), get, gloop
