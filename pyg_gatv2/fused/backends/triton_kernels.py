"""The Triton kernels of the fused GATv2 attention and their launches (GPUs;
CPU tensors under ``TRITON_INTERPRET=1``). Imported by the triton backend
only when it runs, since it imports triton.

The algorithm of the C++ kernels, one program per node for all its heads:
a block of edges loads whole feature rows (every head's channels, one
contiguous stretch of memory per edge) and shares its index loads among the
heads.

- ``_forward``: per destination node, its in-edges (CSR order) in blocks of
  ``BLOCK_E``; the logits of a block are computed on the fly and folded into
  an online softmax per head; only ``out`` and the log-sum-exp are
  written.
- ``_backward_dst``: per destination node, the logits are recomputed; it
  writes the gradients of ``x_r`` and of the edge terms and the node's share
  of the gradient of ``att`` (one row per program, which on large graphs
  runs several nodes; the rows are summed afterwards, in a fixed order).
- ``_backward_src``: per source node, its out-edges (CSC order): the
  gradient of ``x_l``. The message weights and logit gradients are
  recomputed here from the log-sum-exp and ``D`` of each destination, as
  the pass by destination computed them, so that the backward keeps
  nothing per edge (no ``[edges, heads]`` buffers), at the cost of
  computing the logits once more.

A node of more than ``_CHUNK_EDGES`` edges would keep its program busy long
after the others end (a hub of a power-law graph): each pass leaves such
nodes to a second kernel whose programs take one *chunk* of a node's edges
each (:meth:`~pyg_gatv2.fused.layout.EdgeLayout.chunks`) and store partial
sums, which a third merges per node in chunk order (``_merge_softmax``
rescales the online-softmax sums of the forward, ``_sum_chunks`` adds the
gradients).

Each kernel that walks edges takes ``BLOCK_E`` edges per block and runs
``_NUM_WARPS`` warps, or, with :data:`pyg_gatv2.fused.backends.triton.
autotune` set, the fastest of a few configurations, timed at its first
launch for each shape of rows and dtype (``_tuned``). The channels per
head ``C`` are a compile-time constant, as FlashAttention's head dimension
is: each count of channels compiles its own kernels (most models have one
or two), in which the compiler sees that rows of 4 x 32 or 8 x 8 float32
features are 16-byte aligned and loads them in 128-bit vectors, with
fewer registers for their offsets (``benchmarks/triton_compile.py``
reports both for each kernel).

Every program writes only rows it owns: no atomics, so results are
deterministic. The layout's indices may be int32 or int64; offsets into
the features are computed in int64, so that rows past ``2**31`` entries
are reached. Features are read in their storage dtype (float32, bfloat16,
float16 or float64), which may be lower than that of the attention vector
(bfloat16 projections under autocast beside a float32 ``att``: no float32
copy of them is made); every sum is accumulated in float32 (float64 for a
float64 ``att``), and the output and attention weights are written in the
attention vector's dtype, the gradients of the features in theirs.
"""
import time
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..layout import Chunks
from ..operands import (
    Cotangents,
    Gradients,
    Operands,
    gradient_buffers,
    stats_dtype,
)
from .triton import interpreting

__all__ = ['run_forward', 'run_backward']

# Elements of a block of source rows, [BLOCK_E, heads, channels] with both
# padded to powers of two: BLOCK_E edges, at most 32, fill it.
_TILE = 2048
_MAX_BLOCK_E = 32
_NUM_WARPS = 4
# Destinations per program of the backward pass by destination, on graphs
# of at least _MANY_NODES of them: each program then writes one row of
# partial gradients of 'att' (float32) for all its nodes instead of one per
# node, which took more memory and traffic than bfloat16 features. Such
# graphs still launch 8192 programs or more, dozens per multiprocessor.
_NODES_PER_PROGRAM = 16
_MANY_NODES = _NODES_PER_PROGRAM * 8192
# Nodes of more than _CHUNK_EDGES edges (in the pass by destination, their
# in-edges; by source, their out-edges) are cut into chunks of at most that
# many, one program each, whose partial sums are merged afterwards. One
# program per node walks a hub's edges alone, in series: the power-law
# graph of benchmarks/kernels.py --graph powerlaw has a node of 2.5% of its
# 4M edges, some 6,200 blocks of 16 edges for one program, where the
# others take one or two.
_CHUNK_EDGES = 512
# What autotuning tries (pyg_gatv2.fused.backends.triton.autotune): edges
# per block and warps per program, leaving out blocks of more than
# _MAX_TUNED_TILE elements (twice the default tile).
_TUNED_BLOCK_E = (4, 8, 16, 32)
_TUNED_WARPS = (2, 4, 8)
_MAX_TUNED_TILE = 4096


def _nodes_per_program(num_dst: int) -> int:
    """Destinations per program of :func:`_backward_dst`: one on smaller
    graphs, whose nodes are few enough to leave the device idle in
    larger programs."""
    return _NODES_PER_PROGRAM if num_dst >= _MANY_NODES else 1


def _block_e(heads: int, channels: int) -> int:
    """Edges per block for rows of ``heads x channels``."""
    row = triton.next_power_of_2(heads) * triton.next_power_of_2(channels)
    return max(1, min(_MAX_BLOCK_E, _TILE // row))


@triton.jit
def _row(h, c, H, C):
    """Offsets of the entries of one row of ``H x C`` features,
    [BLOCK_H, BLOCK_C], and which of them exist."""
    return h[:, None] * C + c[None, :], (h[:, None] < H) & (c[None, :] < C)


@triton.jit
def _heads(att, H, C, BLOCK_H: tl.constexpr, BLOCK_C: tl.constexpr,
           ACC: tl.constexpr):
    """The heads ``h`` [BLOCK_H] and which exist, the offsets of a row's
    entries and which exist (:func:`_row`), and the attention vector in
    the accumulation dtype, [BLOCK_H, BLOCK_C]."""
    h = tl.arange(0, BLOCK_H)
    hc, hcm = _row(h, tl.arange(0, BLOCK_C), H, C)
    return h, h < H, hc, hcm, tl.load(att + hc, mask=hcm,
                                      other=0.0).to(ACC)


@triton.jit
def _node_cotangents(grad_out, lse, delta, i, h, hmask, hc, hcm, H, C,
                     ACC: tl.constexpr):
    """The output gradient [BLOCK_H, BLOCK_C], log-sum-exp and ``D``
    [BLOCK_H] of destination ``i``, in the accumulation dtype."""
    g = tl.load(grad_out + i * (H * C) + hc, mask=hcm, other=0.0).to(ACC)
    node_lse = tl.load(lse + i * H + h, mask=hmask, other=0.0).to(ACC)
    node_delta = tl.load(delta + i * H + h, mask=hmask, other=0.0).to(ACC)
    return g, node_lse, node_delta


@triton.jit
def _pre_activation(x_l, x_r, edge_term, loop_term, src, e, i, hc, hcm,
                    valid, H, C, num_edges, HAS_EDGE: tl.constexpr, acc):
    """Whole source rows ``x_j`` and ``z = x_j + x_i (+ t)`` of a block of
    edges, [BLOCK_E, BLOCK_H, BLOCK_C], in the accumulation dtype."""
    vm = valid[:, None, None] & hcm[None, :, :]
    xj = tl.load(x_l + src[:, None, None] * (H * C) + hc[None, :, :],
                 mask=vm, other=0.0).to(acc)
    xi = tl.load(x_r + i * (H * C) + hc, mask=hcm, other=0.0).to(acc)
    z = xj + xi[None, :, :]
    if HAS_EDGE:
        z += _edge_term_rows(edge_term, loop_term, e, hc, vm, H, C,
                             num_edges, acc)
    return xj, z


@triton.jit
def _edge_term_rows(edge_term, loop_term, e, hc, vm, H, C, num_edges, acc):
    """The edge term rows of virtual edges ``e`` (the caller's edges, then
    the implicit loops), [BLOCK_E, BLOCK_H, BLOCK_C]; zero where ``vm`` is
    off."""
    is_edge = (e < num_edges)[:, None, None]
    t_edge = tl.load(edge_term + e[:, None, None] * (H * C) + hc[None, :, :],
                     mask=vm & is_edge, other=0.0)
    t_loop = tl.load(
        loop_term + (e[:, None, None] - num_edges) * (H * C)
        + hc[None, :, :], mask=vm & ~is_edge, other=0.0)
    return t_edge.to(acc) + t_loop.to(acc)


@triton.jit
def _in_edges(x_l, x_r, edge_term, loop_term, col, eid, lo, end, i, hc, hcm,
              a, H, C, num_edges, slope, HAS_EDGE: tl.constexpr,
              BLOCK_E: tl.constexpr, ACC: tl.constexpr):
    """The block of in-edges of destination ``i`` from CSR position ``lo``:
    positions ``k``, which are real (``valid``), virtual edge ids ``e``,
    source rows ``x_j``, pre-activations ``z``, activations, and the logits
    of every head, [BLOCK_E, BLOCK_H]."""
    k = lo + tl.arange(0, BLOCK_E)
    valid = k < end
    src = tl.load(col + k, mask=valid, other=0).to(tl.int64)
    e = tl.load(eid + k, mask=valid, other=0).to(tl.int64)
    xj, z = _pre_activation(x_l, x_r, edge_term, loop_term, src, e, i, hc,
                            hcm, valid, H, C, num_edges, HAS_EDGE, ACC)
    act = tl.where(z > 0, z, z * slope)
    s = tl.sum(act * a[None, :, :], axis=2)
    return k, valid, e, xj, z, act, s


@triton.jit
def _softmax_sums(x_l, x_r, edge_term, loop_term, mask, col, eid, i, start,
                  end, a, h, hmask, hc, hcm, H, C, num_edges, slope,
                  HAS_EDGE: tl.constexpr, HAS_MASK: tl.constexpr,
                  BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr,
                  BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """The online softmax of destination ``i`` over its CSR positions
    ``start .. end - 1``: per head, the largest logit ``m``, the sum of
    ``exp(s - m)`` and the sum of the messages weighted by it (and by the
    dropout mask), [BLOCK_H, BLOCK_C]."""
    m = tl.full((BLOCK_H, ), float('-inf'), ACC)
    total = tl.zeros((BLOCK_H, ), ACC)
    acc = tl.zeros((BLOCK_H, BLOCK_C), ACC)
    for lo in range(start, end, BLOCK_E):
        k, valid, e, xj, z, act, s = _in_edges(
            x_l, x_r, edge_term, loop_term, col, eid, lo, end, i, hc, hcm, a,
            H, C, num_edges, slope, HAS_EDGE, BLOCK_E, ACC)
        s = tl.where(valid[:, None], s, float('-inf'))
        new_m = tl.maximum(m, tl.max(s, axis=0))
        # exp(-inf - -inf) would be NaN: a node's first block rescales
        # nothing.
        scale = tl.where(new_m == float('-inf'), 0.0, tl.exp(m - new_m))
        p = tl.where(valid[:, None], tl.exp(s - new_m[None, :]), 0.0)
        total = total * scale + tl.sum(p, axis=0)
        if HAS_MASK:
            p = p * tl.load(mask + e[:, None] * H + h[None, :],
                            mask=valid[:, None] & hmask[None, :],
                            other=0.0).to(ACC)
        acc = acc * scale[:, None] + tl.sum(p[:, :, None] * xj, axis=0)
        m = new_m
    return m, total, acc


@triton.jit
def _finish(out, lse, i, m, total, acc, h, hmask, hc, hcm, H, C):
    """Stores the output row and the log-sum-exp of destination ``i`` from
    its softmax sums; returns the log-sum-exp."""
    has_edges = total > 0
    # A node without in-edges gets zeros and a log-sum-exp of -inf; the
    # where() keeps 1/0 and log(0) out of the arithmetic.
    safe_total = tl.where(has_edges, total, 1.0)
    inv = tl.where(has_edges, 1.0 / safe_total, 0.0)
    tl.store(out + i * (H * C) + hc,
             (acc * inv[:, None]).to(out.dtype.element_ty), mask=hcm)
    node_lse = tl.where(has_edges, m + tl.log(safe_total), float('-inf'))
    tl.store(lse + i * H + h, node_lse, mask=hmask)
    return node_lse


@triton.jit
def _store_alpha(x_l, x_r, edge_term, loop_term, col, eid, alpha, i, start,
                 end, node_lse, a, h, hmask, hc, hcm, H, C, num_edges, slope,
                 HAS_EDGE: tl.constexpr, BLOCK_E: tl.constexpr,
                 ACC: tl.constexpr):
    """Stores the softmax weights of the CSR positions ``start .. end - 1``
    of destination ``i``, whose log-sum-exp is ``node_lse``."""
    for lo in range(start, end, BLOCK_E):
        k, valid, e, xj, z, act, s = _in_edges(
            x_l, x_r, edge_term, loop_term, col, eid, lo, end, i, hc, hcm, a,
            H, C, num_edges, slope, HAS_EDGE, BLOCK_E, ACC)
        tl.store(alpha + e[:, None] * H + h[None, :],
                 tl.exp(s - node_lse[None, :]).to(alpha.dtype.element_ty),
                 mask=valid[:, None] & hmask[None, :])


@triton.jit
def _forward(x_l, x_r, att, edge_term, loop_term, mask, ptr, col, eid, out,
             lse, alpha, H, C: tl.constexpr, num_edges, slope,
             HAS_EDGE: tl.constexpr, HAS_MASK: tl.constexpr,
             WANT_ALPHA: tl.constexpr, CHUNK: tl.constexpr,
             BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr,
             BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """One destination per program. A node of more than ``CHUNK``
    in-edges is left to :func:`_forward_chunks` and :func:`_merge_softmax`,
    which overwrite the empty row written for it here."""
    i = tl.program_id(0).to(tl.int64)
    h, hmask, hc, hcm, a = _heads(att, H, C, BLOCK_H, BLOCK_C, ACC)
    start = tl.load(ptr + i)
    end = tl.load(ptr + i + 1)
    end = tl.where(end - start > CHUNK, start, end)
    m, total, acc = _softmax_sums(
        x_l, x_r, edge_term, loop_term, mask, col, eid, i, start, end, a, h,
        hmask, hc, hcm, H, C, num_edges, slope, HAS_EDGE, HAS_MASK, BLOCK_E,
        BLOCK_H, BLOCK_C, ACC)
    node_lse = _finish(out, lse, i, m, total, acc, h, hmask, hc, hcm, H, C)
    if WANT_ALPHA:
        _store_alpha(x_l, x_r, edge_term, loop_term, col, eid, alpha, i,
                     start, end, node_lse, a, h, hmask, hc, hcm, H, C,
                     num_edges, slope, HAS_EDGE, BLOCK_E, ACC)


@triton.jit
def _forward_chunks(x_l, x_r, att, edge_term, loop_term, mask, col, eid,
                    chunk_node, chunk_start, chunk_end, part_m, part_total,
                    part_acc, H, C: tl.constexpr, num_edges, slope,
                    HAS_EDGE: tl.constexpr, HAS_MASK: tl.constexpr,
                    BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr,
                    BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """One chunk of a destination's in-edges per program: the softmax sums
    of the chunk, stored in row ``chunk`` of the partial sums."""
    chunk = tl.program_id(0).to(tl.int64)
    h, hmask, hc, hcm, a = _heads(att, H, C, BLOCK_H, BLOCK_C, ACC)
    i = tl.load(chunk_node + chunk).to(tl.int64)
    start = tl.load(chunk_start + chunk)
    end = tl.load(chunk_end + chunk)
    m, total, acc = _softmax_sums(
        x_l, x_r, edge_term, loop_term, mask, col, eid, i, start, end, a, h,
        hmask, hc, hcm, H, C, num_edges, slope, HAS_EDGE, HAS_MASK, BLOCK_E,
        BLOCK_H, BLOCK_C, ACC)
    tl.store(part_m + chunk * H + h, m, mask=hmask)
    tl.store(part_total + chunk * H + h, total, mask=hmask)
    tl.store(part_acc + chunk * (H * C) + hc, acc, mask=hcm)


@triton.jit
def _merge_softmax(nodes, node_ptr, part_m, part_total, part_acc, out, lse,
                   H, C: tl.constexpr, BLOCK_H: tl.constexpr,
                   BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """One chunked destination per program: merges the softmax sums of its
    chunks, in their order, as the online softmax merges blocks, and
    stores its output row and log-sum-exp."""
    n = tl.program_id(0).to(tl.int64)
    h = tl.arange(0, BLOCK_H)
    hmask = h < H
    hc, hcm = _row(h, tl.arange(0, BLOCK_C), H, C)
    i = tl.load(nodes + n).to(tl.int64)
    m = tl.full((BLOCK_H, ), float('-inf'), ACC)
    total = tl.zeros((BLOCK_H, ), ACC)
    acc = tl.zeros((BLOCK_H, BLOCK_C), ACC)
    for chunk in range(tl.load(node_ptr + n), tl.load(node_ptr + n + 1)):
        chunk_m = tl.load(part_m + chunk * H + h, mask=hmask,
                          other=float('-inf'))
        new_m = tl.maximum(m, chunk_m)
        # Both sums are rescaled to the new maximum (none where every
        # maximum is still -inf, as in _softmax_sums).
        none = new_m == float('-inf')
        old_scale = tl.where(none, 0.0, tl.exp(m - new_m))
        chunk_scale = tl.where(none, 0.0, tl.exp(chunk_m - new_m))
        total = total * old_scale + chunk_scale * tl.load(
            part_total + chunk * H + h, mask=hmask, other=0.0)
        acc = acc * old_scale[:, None] + chunk_scale[:, None] * tl.load(
            part_acc + chunk * (H * C) + hc, mask=hcm, other=0.0)
        m = new_m
    _finish(out, lse, i, m, total, acc, h, hmask, hc, hcm, H, C)


@triton.jit
def _alpha_chunks(x_l, x_r, att, edge_term, loop_term, col, eid, chunk_node,
                  chunk_start, chunk_end, lse, alpha, H,
                  C: tl.constexpr, num_edges, slope, HAS_EDGE: tl.constexpr,
                  BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr,
                  BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """One chunk per program: the softmax weights of its edges, from the
    log-sum-exp that :func:`_merge_softmax` stored."""
    chunk = tl.program_id(0).to(tl.int64)
    h, hmask, hc, hcm, a = _heads(att, H, C, BLOCK_H, BLOCK_C, ACC)
    i = tl.load(chunk_node + chunk).to(tl.int64)
    node_lse = tl.load(lse + i * H + h, mask=hmask, other=0.0).to(ACC)
    _store_alpha(x_l, x_r, edge_term, loop_term, col, eid, alpha, i,
                 tl.load(chunk_start + chunk), tl.load(chunk_end + chunk),
                 node_lse, a, h, hmask, hc, hcm, H, C, num_edges, slope,
                 HAS_EDGE, BLOCK_E, ACC)


@triton.jit
def _weight_and_logit_grad(s, xj, g, lse, delta, mask, grad_alpha, e, h, vh,
                           H, HAS_MASK: tl.constexpr,
                           HAS_GRAD_ALPHA: tl.constexpr, ACC: tl.constexpr):
    """For logits ``s`` [BLOCK_E, BLOCK_H] of edges ``e`` from source rows
    ``xj`` to destinations with output gradients ``g``, log-sum-exps ``lse``
    and ``D`` = ``delta``: the weight of each message in the output (the
    softmax weight, times the dropout mask) and the gradient of each
    logit; zero where ``vh`` is off."""
    p = tl.where(vh, tl.exp(s - lse), 0.0)
    gd = tl.sum(g * xj, axis=2)
    w = p
    if HAS_MASK:
        drop = tl.load(mask + e[:, None] * H + h[None, :], mask=vh,
                       other=0.0).to(ACC)
        w = w * drop
        gd = gd * drop
    if HAS_GRAD_ALPHA:
        gd += tl.load(grad_alpha + e[:, None] * H + h[None, :], mask=vh,
                      other=0.0).to(ACC)
    return w, p * (gd - delta)


@triton.jit
def _dst_grads(x_l, x_r, edge_term, loop_term, mask, grad_alpha, col, eid,
               grad_edge, grad_loop, i, start, end, g, node_lse, node_delta,
               a, h, hmask, hc, hcm, H, C, num_edges, slope,
               HAS_EDGE: tl.constexpr, HAS_MASK: tl.constexpr,
               HAS_GRAD_ALPHA: tl.constexpr, WANT_EDGE_GRAD: tl.constexpr,
               BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr,
               BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """Over the CSR positions ``start .. end - 1`` of destination ``i``
    (output gradient ``g``, log-sum-exp ``node_lse``, ``D`` =
    ``node_delta``): stores the gradients of their edge terms, and returns
    their sums into the gradients of ``x_r`` and of ``att``."""
    g_xr = tl.zeros((BLOCK_H, BLOCK_C), ACC)
    g_att = tl.zeros((BLOCK_H, BLOCK_C), ACC)
    for lo in range(start, end, BLOCK_E):
        k, valid, e, xj, z, act, s = _in_edges(
            x_l, x_r, edge_term, loop_term, col, eid, lo, end, i, hc, hcm,
            a, H, C, num_edges, slope, HAS_EDGE, BLOCK_E, ACC)
        vh = valid[:, None] & hmask[None, :]
        dact = tl.where(z > 0, a[None, :, :], a[None, :, :] * slope)
        _, ds = _weight_and_logit_grad(
            s, xj, g[None, :, :], node_lse[None, :], node_delta[None, :],
            mask, grad_alpha, e, h, vh, H, HAS_MASK, HAS_GRAD_ALPHA, ACC)
        dz = ds[:, :, None] * dact
        g_xr += tl.sum(dz, axis=0)
        g_att += tl.sum(ds[:, :, None] * act, axis=0)
        if WANT_EDGE_GRAD:
            vm = valid[:, None, None] & hcm[None, :, :]
            is_edge = (e < num_edges)[:, None, None]
            tl.store(
                grad_edge + e[:, None, None] * (H * C) + hc[None, :, :],
                dz.to(grad_edge.dtype.element_ty), mask=vm & is_edge)
            tl.store(
                grad_loop + (e[:, None, None] - num_edges) * (H * C)
                + hc[None, :, :], dz.to(grad_loop.dtype.element_ty),
                mask=vm & ~is_edge)
    return g_xr, g_att


@triton.jit
def _backward_dst(x_l, x_r, att, edge_term, loop_term, mask, grad_alpha,
                  grad_out, lse, delta, ptr, col, eid, grad_xr, grad_edge,
                  grad_loop, grad_att_rows, num_dst, H, C: tl.constexpr,
                  num_edges, slope,
                  HAS_EDGE: tl.constexpr, HAS_MASK: tl.constexpr,
                  HAS_GRAD_ALPHA: tl.constexpr, WANT_EDGE_GRAD: tl.constexpr,
                  NODES: tl.constexpr, CHUNK: tl.constexpr,
                  BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr,
                  BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """``NODES`` destinations per program, one after the other; their shares
    of the gradient of ``att`` are summed into one row per program. A node
    of more than ``CHUNK`` in-edges is left to :func:`_backward_dst_chunks`
    and :func:`_sum_chunks`, which overwrite the zero row written for it
    here."""
    program = tl.program_id(0).to(tl.int64)
    h, hmask, hc, hcm, a = _heads(att, H, C, BLOCK_H, BLOCK_C, ACC)
    g_att = tl.zeros((BLOCK_H, BLOCK_C), ACC)
    for n in range(NODES):
        # A program's nodes past the last one read the last node's rows,
        # run over no edges and write nothing.
        node = program * NODES + n
        i = tl.minimum(node, num_dst - 1)
        here = node < num_dst
        g, node_lse, node_delta = _node_cotangents(
            grad_out, lse, delta, i, h, hmask, hc, hcm, H, C, ACC)
        start = tl.load(ptr + i)
        end = tl.where(here, tl.load(ptr + i + 1), start)
        end = tl.where(end - start > CHUNK, start, end)
        g_xr, node_g_att = _dst_grads(
            x_l, x_r, edge_term, loop_term, mask, grad_alpha, col, eid,
            grad_edge, grad_loop, i, start, end, g, node_lse, node_delta, a,
            h, hmask, hc, hcm, H, C, num_edges, slope, HAS_EDGE, HAS_MASK,
            HAS_GRAD_ALPHA, WANT_EDGE_GRAD, BLOCK_E, BLOCK_H, BLOCK_C, ACC)
        g_att += node_g_att
        tl.store(grad_xr + i * (H * C) + hc,
                 g_xr.to(grad_xr.dtype.element_ty),
                 mask=hcm & (hc * 0 + node < num_dst))
    tl.store(grad_att_rows + program * (H * C) + hc, g_att, mask=hcm)


@triton.jit
def _backward_dst_chunks(x_l, x_r, att, edge_term, loop_term, mask,
                         grad_alpha, grad_out, lse, delta, col, eid,
                         chunk_node, chunk_start, chunk_end, part_xr,
                         grad_edge, grad_loop, part_att, H,
                         C: tl.constexpr, num_edges, slope,
                         HAS_EDGE: tl.constexpr,
                         HAS_MASK: tl.constexpr,
                         HAS_GRAD_ALPHA: tl.constexpr,
                         WANT_EDGE_GRAD: tl.constexpr,
                         BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr,
                         BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """One chunk of a destination's in-edges per program: the gradients of
    their edge terms, and their sums into the gradients of ``x_r`` and of
    ``att``, stored in row ``chunk`` of the partial sums."""
    chunk = tl.program_id(0).to(tl.int64)
    h, hmask, hc, hcm, a = _heads(att, H, C, BLOCK_H, BLOCK_C, ACC)
    i = tl.load(chunk_node + chunk).to(tl.int64)
    g, node_lse, node_delta = _node_cotangents(grad_out, lse, delta, i, h,
                                               hmask, hc, hcm, H, C, ACC)
    g_xr, g_att = _dst_grads(
        x_l, x_r, edge_term, loop_term, mask, grad_alpha, col, eid,
        grad_edge, grad_loop, i, tl.load(chunk_start + chunk),
        tl.load(chunk_end + chunk), g, node_lse, node_delta, a, h, hmask, hc,
        hcm, H, C, num_edges, slope, HAS_EDGE, HAS_MASK, HAS_GRAD_ALPHA,
        WANT_EDGE_GRAD, BLOCK_E, BLOCK_H, BLOCK_C, ACC)
    tl.store(part_xr + chunk * (H * C) + hc, g_xr, mask=hcm)
    tl.store(part_att + chunk * (H * C) + hc, g_att, mask=hcm)


@triton.jit
def _src_grads(x_l, x_r, edge_term, loop_term, mask, grad_alpha, grad_out,
               lse, delta, pos, row, eid, start, end, xj, a, h, hmask, hc,
               hcm, H, C, num_edges, slope, HAS_EDGE: tl.constexpr,
               HAS_MASK: tl.constexpr, HAS_GRAD_ALPHA: tl.constexpr,
               BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr,
               BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """The sum into the gradient of ``x_l`` of the CSC positions ``start ..
    end - 1`` of the source whose row is ``xj``."""
    g_xl = tl.zeros((BLOCK_H, BLOCK_C), ACC)
    for lo in range(start, end, BLOCK_E):
        q = lo + tl.arange(0, BLOCK_E)
        valid = q < end
        k = tl.load(pos + q, mask=valid, other=0)
        i = tl.load(row + q, mask=valid, other=0).to(tl.int64)
        e = tl.load(eid + k, mask=valid, other=0).to(tl.int64)
        vm = valid[:, None, None] & hcm[None, :, :]
        vh = valid[:, None] & hmask[None, :]
        xi = tl.load(x_r + i[:, None, None] * (H * C) + hc[None, :, :],
                     mask=vm, other=0.0).to(ACC)
        z = xj[None, :, :] + xi
        if HAS_EDGE:
            z += _edge_term_rows(edge_term, loop_term, e, hc, vm, H, C,
                                 num_edges, ACC)
        act = tl.where(z > 0, z, z * slope)
        s = tl.sum(act * a[None, :, :], axis=2)
        g = tl.load(grad_out + i[:, None, None] * (H * C) + hc[None, :, :],
                    mask=vm, other=0.0).to(ACC)
        node_lse = tl.load(lse + i[:, None] * H + h[None, :], mask=vh,
                           other=0.0).to(ACC)
        node_delta = tl.load(delta + i[:, None] * H + h[None, :], mask=vh,
                             other=0.0).to(ACC)
        w, ds = _weight_and_logit_grad(
            s, xj[None, :, :], g, node_lse, node_delta, mask, grad_alpha, e,
            h, vh, H, HAS_MASK, HAS_GRAD_ALPHA, ACC)
        d = ds[:, :, None] * tl.where(z > 0, a[None, :, :],
                                      a[None, :, :] * slope)
        g_xl += tl.sum(w[:, :, None] * g + d, axis=0)
    return g_xl


@triton.jit
def _backward_src(x_l, x_r, att, edge_term, loop_term, mask, grad_alpha,
                  grad_out, lse, delta, ptr, pos, row, eid, grad_xl, H,
                  C: tl.constexpr,
                  num_edges, slope, HAS_EDGE: tl.constexpr,
                  HAS_MASK: tl.constexpr, HAS_GRAD_ALPHA: tl.constexpr,
                  CHUNK: tl.constexpr, BLOCK_E: tl.constexpr,
                  BLOCK_H: tl.constexpr, BLOCK_C: tl.constexpr,
                  ACC: tl.constexpr):
    """One source per program. A node of more than ``CHUNK`` out-edges is
    left to :func:`_backward_src_chunks` and :func:`_sum_chunks`, which
    overwrite the zero row written for it here."""
    j = tl.program_id(0).to(tl.int64)
    h, hmask, hc, hcm, a = _heads(att, H, C, BLOCK_H, BLOCK_C, ACC)
    xj = tl.load(x_l + j * (H * C) + hc, mask=hcm, other=0.0).to(ACC)
    start = tl.load(ptr + j)
    end = tl.load(ptr + j + 1)
    end = tl.where(end - start > CHUNK, start, end)
    g_xl = _src_grads(x_l, x_r, edge_term, loop_term, mask, grad_alpha,
                      grad_out, lse, delta, pos, row, eid, start, end, xj, a,
                      h, hmask, hc, hcm, H, C, num_edges, slope, HAS_EDGE,
                      HAS_MASK, HAS_GRAD_ALPHA, BLOCK_E, BLOCK_H, BLOCK_C,
                      ACC)
    tl.store(grad_xl + j * (H * C) + hc,
             g_xl.to(grad_xl.dtype.element_ty), mask=hcm)


@triton.jit
def _backward_src_chunks(x_l, x_r, att, edge_term, loop_term, mask,
                         grad_alpha, grad_out, lse, delta, pos, row, eid,
                         chunk_node, chunk_start, chunk_end, part_xl, H,
                         C: tl.constexpr,
                         num_edges, slope, HAS_EDGE: tl.constexpr,
                         HAS_MASK: tl.constexpr,
                         HAS_GRAD_ALPHA: tl.constexpr,
                         BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr,
                         BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """One chunk of a source's out-edges per program: their sum into the
    gradient of ``x_l``, stored in row ``chunk`` of the partial sums."""
    chunk = tl.program_id(0).to(tl.int64)
    h, hmask, hc, hcm, a = _heads(att, H, C, BLOCK_H, BLOCK_C, ACC)
    j = tl.load(chunk_node + chunk).to(tl.int64)
    xj = tl.load(x_l + j * (H * C) + hc, mask=hcm, other=0.0).to(ACC)
    g_xl = _src_grads(x_l, x_r, edge_term, loop_term, mask, grad_alpha,
                      grad_out, lse, delta, pos, row, eid,
                      tl.load(chunk_start + chunk),
                      tl.load(chunk_end + chunk), xj, a, h, hmask, hc, hcm,
                      H, C, num_edges, slope, HAS_EDGE, HAS_MASK,
                      HAS_GRAD_ALPHA, BLOCK_E, BLOCK_H, BLOCK_C, ACC)
    tl.store(part_xl + chunk * (H * C) + hc, g_xl, mask=hcm)


@triton.jit
def _sum_chunks(nodes, node_ptr, parts, grad, H, C: tl.constexpr,
                BLOCK_H: tl.constexpr, BLOCK_C: tl.constexpr,
                ACC: tl.constexpr):
    """One chunked node per program: the sum of its chunks' rows of
    ``parts``, in their order, stored as its row of ``grad``."""
    n = tl.program_id(0).to(tl.int64)
    hc, hcm = _row(tl.arange(0, BLOCK_H), tl.arange(0, BLOCK_C), H, C)
    total = tl.zeros((BLOCK_H, BLOCK_C), ACC)
    for chunk in range(tl.load(node_ptr + n), tl.load(node_ptr + n + 1)):
        total += tl.load(parts + chunk * (H * C) + hc, mask=hcm, other=0.0)
    i = tl.load(nodes + n).to(tl.int64)
    tl.store(grad + i * (H * C) + hc, total.to(grad.dtype.element_ty),
             mask=hcm)


def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _edge_terms(ops: Operands) -> Tuple[Tensor, Tensor]:
    # Absent terms are passed as the features (never read: HAS_EDGE off).
    if ops.edge_term is None:
        return ops.x_l, ops.x_l
    return ops.edge_term, ops.loop_term


def _meta(ops: Operands) -> dict:
    H, C = ops.att.shape
    return dict(BLOCK_E=_block_e(H, C), BLOCK_H=triton.next_power_of_2(H),
                BLOCK_C=triton.next_power_of_2(C),
                ACC=_acc_dtype(ops.att.dtype), num_warps=_NUM_WARPS)


def _fitting(configs: List[triton.Config], named_args: dict,
             **kwargs) -> List[triton.Config]:
    """The configurations whose block of rows fits :data:`_MAX_TUNED_TILE`
    (at least the one of the smallest block)."""
    row = kwargs['BLOCK_H'] * kwargs['BLOCK_C']
    fit = [c for c in configs
           if c.kwargs['BLOCK_E'] * row <= _MAX_TUNED_TILE]
    return fit or [min(configs, key=lambda c: c.kwargs['BLOCK_E'])]


def _host_time(kernel_call: Callable[[], object],
               quantiles: Sequence[float]) -> List[float]:
    """Milliseconds of one call, timed on the host: in Triton's
    interpreter, which has no device to time, so that the tuned launches
    run there too (the choice means nothing for a GPU)."""
    start = time.perf_counter()
    kernel_call()
    return [(time.perf_counter() - start) * 1e3] * len(quantiles)


def _tuned(kernel: triton.JITFunction):
    """``kernel`` autotuned over :data:`_TUNED_BLOCK_E` and
    :data:`_TUNED_WARPS` for each shape of rows and dtype of the features:
    the fastest configuration of the first launch is kept for the later
    ones. Every launch writes the same outputs, so a launch may run
    several times while it is tuned."""
    configs = [triton.Config({'BLOCK_E': b}, num_warps=w)
               for b in _TUNED_BLOCK_E for w in _TUNED_WARPS]
    return triton.autotune(
        configs, key=['H', 'C'],
        prune_configs_by={'early_config_prune': _fitting},
        do_bench=_host_time if interpreting() else None)(kernel)


_TUNED = {kernel: _tuned(kernel) for kernel in (
    _forward, _forward_chunks, _alpha_chunks, _backward_dst,
    _backward_dst_chunks, _backward_src, _backward_src_chunks)}


def _launch(kernel: triton.JITFunction, programs: int, meta: dict,
            autotune: bool, *args, **flags) -> None:
    """Launches ``programs`` programs of ``kernel`` with the block size
    and warps of ``meta``, or of its autotuned variant."""
    if autotune:
        meta = {k: v for k, v in meta.items()
                if k not in ('BLOCK_E', 'num_warps')}
        kernel = _TUNED[kernel]
    kernel[(programs, )](*args, **flags, **meta)


def _merge_meta(meta: dict) -> dict:
    """The parameters of a kernel that merges chunks (no block of edges)
    from those of the kernels that walk them."""
    return {k: meta[k] for k in ('BLOCK_H', 'BLOCK_C', 'ACC', 'num_warps')}


def _partial_sums(ops: Operands, chunks: Chunks, *shape: int) -> Tensor:
    """Rows of partial sums, one per chunk, in the accumulation dtype."""
    return ops.x_l.new_empty(chunks.node.numel(), *shape,
                             dtype=stats_dtype(ops.att.dtype))


def run_forward(ops: Operands, want_alpha: bool, autotune: bool = False
                ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """Runs :func:`_forward` and, for the nodes of more than
    :data:`_CHUNK_EDGES` in-edges, :func:`_forward_chunks`,
    :func:`_merge_softmax` and :func:`_alpha_chunks` (autotuned where
    ``autotune`` is set); returns ``out``, ``lse`` and the softmax weights
    [virtual edges, H] (or :obj:`None`)."""
    layout = ops.layout
    H, C = ops.att.shape
    x = ops.x_l
    dtype = ops.att.dtype
    out = x.new_empty(layout.num_dst, H, C, dtype=dtype)
    lse = x.new_empty(layout.num_dst, H, dtype=stats_dtype(dtype))
    alpha = x.new_zeros(layout.num_virtual if want_alpha else 1, H,
                        dtype=dtype)
    if layout.num_dst == 0:
        return out, lse, alpha if want_alpha else None
    # Before the launches: finding the chunks waits for the device.
    chunks = layout.chunks('dst', _CHUNK_EDGES)
    edge_term, loop_term = _edge_terms(ops)
    mask = ops.dropout_mask if ops.dropout_mask is not None else x
    meta = _meta(ops)
    features = (ops.x_l, ops.x_r, ops.att, edge_term, loop_term)
    constants = (H, C, layout.num_edges, ops.negative_slope)
    flags = dict(HAS_EDGE=ops.edge_term is not None)
    _launch(_forward, layout.num_dst, meta, autotune, *features, mask,
            layout.dst_ptr, layout.dst_col, layout.dst_eid, out, lse, alpha,
            *constants, HAS_MASK=ops.dropout_mask is not None,
            WANT_ALPHA=want_alpha, CHUNK=_CHUNK_EDGES, **flags)
    if chunks is not None:
        part_m = _partial_sums(ops, chunks, H)
        part_total = _partial_sums(ops, chunks, H)
        part_acc = _partial_sums(ops, chunks, H, C)
        in_chunks = (layout.dst_col, layout.dst_eid, chunks.node,
                     chunks.start, chunks.end)
        _launch(_forward_chunks, chunks.node.numel(), meta, autotune,
                *features, mask, *in_chunks, part_m, part_total, part_acc,
                *constants, HAS_MASK=ops.dropout_mask is not None, **flags)
        _merge_softmax[(chunks.nodes.numel(), )](
            chunks.nodes, chunks.node_ptr, part_m, part_total, part_acc,
            out, lse, H, C, **_merge_meta(meta))
        if want_alpha:
            _launch(_alpha_chunks, chunks.node.numel(), meta, autotune,
                    *features, *in_chunks, lse, alpha, *constants, **flags)
    return out, lse, alpha if want_alpha else None


def _sum_chunks_into(grad: Tensor, chunks: Chunks, parts: Tensor,
                     meta: dict) -> None:
    """Runs :func:`_sum_chunks`: each chunked node's row of ``grad``."""
    H, C = parts.shape[1:]
    _sum_chunks[(chunks.nodes.numel(), )](
        chunks.nodes, chunks.node_ptr, parts, grad, H, C,
        **_merge_meta(meta))


def run_backward(ops: Operands, cot: Cotangents, want_edge_grad: bool,
                 want_src_grad: bool, autotune: bool = False) -> Gradients:
    """Runs :func:`_backward_dst` and, for the gradient of ``x_l``,
    :func:`_backward_src`; for the nodes of more than :data:`_CHUNK_EDGES`
    edges, their ``_chunks`` kernels and :func:`_sum_chunks` (autotuned
    where ``autotune`` is set)."""
    layout = ops.layout
    H, C = ops.att.shape
    x = ops.x_l
    stats = stats_dtype(ops.att.dtype)
    edge_term, loop_term = _edge_terms(ops)
    grad_xl, grad_xr, grad_edge, grad_loop = gradient_buffers(
        ops, want_edge_grad, want_src_grad)
    nodes = _nodes_per_program(layout.num_dst)
    programs = triton.cdiv(layout.num_dst, nodes)
    grad_att_rows = x.new_zeros(programs, H, C, dtype=stats)
    mask = ops.dropout_mask if ops.dropout_mask is not None else x
    grad_alpha = cot.grad_alpha if cot.grad_alpha is not None else x
    meta = _meta(ops)
    # The inputs every pass reads, and the constants.
    inputs = (ops.x_l, ops.x_r, ops.att, edge_term, loop_term, mask,
              grad_alpha, cot.grad_out, cot.lse, cot.delta)
    constants = (H, C, layout.num_edges, ops.negative_slope)
    flags = dict(HAS_EDGE=ops.edge_term is not None,
                 HAS_MASK=ops.dropout_mask is not None,
                 HAS_GRAD_ALPHA=cot.grad_alpha is not None)
    # Before the launches: finding the chunks waits for the device.
    dst_chunks = (layout.chunks('dst', _CHUNK_EDGES) if layout.num_dst > 0
                  else None)
    src_chunks = (layout.chunks('src', _CHUNK_EDGES)
                  if want_src_grad and layout.num_src > 0 else None)
    if layout.num_dst > 0:
        edge_grads = ((grad_edge, grad_loop) if want_edge_grad else (x, x))
        _launch(_backward_dst, programs, meta, autotune, *inputs,
                layout.dst_ptr, layout.dst_col, layout.dst_eid, grad_xr,
                *edge_grads, grad_att_rows, layout.num_dst, *constants,
                WANT_EDGE_GRAD=want_edge_grad, NODES=nodes,
                CHUNK=_CHUNK_EDGES, **flags)
        if dst_chunks is not None:
            part_xr = _partial_sums(ops, dst_chunks, H, C)
            part_att = _partial_sums(ops, dst_chunks, H, C)
            _launch(_backward_dst_chunks, dst_chunks.node.numel(), meta,
                    autotune, *inputs, layout.dst_col, layout.dst_eid,
                    dst_chunks.node, dst_chunks.start, dst_chunks.end,
                    part_xr, *edge_grads, part_att, *constants,
                    WANT_EDGE_GRAD=want_edge_grad, **flags)
            _sum_chunks_into(grad_xr, dst_chunks, part_xr, meta)
    if want_src_grad and layout.num_src > 0:
        ptr, pos, row = layout.csc
        _launch(_backward_src, layout.num_src, meta, autotune, *inputs,
                ptr, pos, row, layout.dst_eid, grad_xl, *constants,
                CHUNK=_CHUNK_EDGES, **flags)
        if src_chunks is not None:
            part_xl = _partial_sums(ops, src_chunks, H, C)
            _launch(_backward_src_chunks, src_chunks.node.numel(), meta,
                    autotune, *inputs, pos, row, layout.dst_eid,
                    src_chunks.node, src_chunks.start, src_chunks.end,
                    part_xl, *constants, **flags)
            _sum_chunks_into(grad_xl, src_chunks, part_xl, meta)
    grad_att = grad_att_rows.sum(dim=0)
    if dst_chunks is not None:
        grad_att += part_att.sum(dim=0)
    return Gradients(grad_xl, grad_xr, grad_att.to(ops.att.dtype),
                     grad_edge, grad_loop)
