// Multi-threaded CPU kernels of the fused GATv2 attention (C++ and OpenMP).
//
// The three passes of the numba kernels of cpu.py, with their arguments,
// loaded through ctypes by cpp.py:
//
// - forward: per destination node i (CSR order) the logits of its in-edges
//   are computed into a small per-thread buffer, then their softmax and the
//   weighted sum of the source rows (read again, now from the cache); only
//   out and the log-sum-exp per node and head are written.
// - backward_dst: per destination node, the logits of its in-edges are
//   recomputed into a per-thread buffer, with the gradients of their
//   weights; then their exponentials in one vector pass; then, from the
//   source rows read again from the cache, the gradients of x_r, of the
//   edge terms and per-range partial gradients of att. Writes per CSR
//   position and head the message weight and the logit gradient for the
//   next pass. D_i = <grad_out_i, out_i> (+ sum_k alpha_k grad_alpha_k),
//   when delta is null, is summed over the in-edges as sum_k alpha_k
//   dL/dalpha_k, from what the first pass computed, so that the forward
//   output need not be kept for backward.
// - backward_src: per source node (CSC order), the gradient of x_l.
//
// Each thread owns whole ranges of rows (the bounds, balanced by edge
// count), so no atomics are needed and every result but the gradient of att
// (summed per range) is the same for any number of threads. Rows are
// [heads * channels] contiguous values; the channel loops run over them
// elementwise, which the compiler vectorises.
// Sums over channels run in LANES running partial sums, then a fixed tree,
// then the remainder: one fixed order for every build, as exact as a serial
// sum (no -ffast-math). The feature rows of the edge AHEAD positions on
// are prefetched while the current one is computed: the gathers of random
// rows are what these passes wait for.
//
// The float32 kernels are compiled once more for each common shape of
// heads x channels (FixedHeads x FixedChannels), with the shape as
// template arguments: with the trip counts of the loops over heads and
// channels known, the compiler unrolls them and keeps the partial sums in
// registers. Other shapes, and float64, run the kernels with the shape
// given at run time.
//
// The exponentials of float32 softmaxes run in exp_poly, arithmetic that
// vectorises (a relative error of at most 8.5e-8); float64 uses std::exp.
//
// Absent arrays (edge terms, dropout mask, gradient of alpha) come as null
// pointers.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

constexpr int LANES = 8;
using FixedHeads = std::integer_sequence<int64_t, 1, 2, 4, 8>;
using FixedChannels = std::integer_sequence<int64_t, 8, 16, 32, 64>;
// How many edges ahead the feature rows are prefetched.
constexpr int64_t AHEAD = 2;

// exp(x) of a float, in arithmetic the compiler vectorises: x = n ln2 + r
// with n rounded to nearest, a degree-6 polynomial for exp(r) on
// |r| <= ln2 / 2 (Cephes' expf; largest relative error 8.5e-8 over every
// float in [-87, 88]), times 2^n built in the exponent bits. Inputs below
// -87.3 (-inf too) give exp(-87.3), 1.2e-38, instead of a subnormal or
// zero; NaN stays NaN.
inline float exp_poly(float x) {
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.0f ? 88.0f : x;
  // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}

// w[f] = exp(w[f]) over n values; doubles go through std::exp.
inline void exp_all(float* w, int64_t n) {
  #pragma omp simd
  for (int64_t f = 0; f < n; ++f) w[f] = exp_poly(w[f]);
}

inline void exp_all(double* w, int64_t n) {
  for (int64_t f = 0; f < n; ++f) w[f] = std::exp(w[f]);
}

template <typename T>
inline T lrelu(T z, T slope) { return z > T(0) ? z : z * slope; }

// The largest in-degree of the nodes [begin, end) of the CSR offsets ptr.
inline int64_t max_degree(const int64_t* ptr, int64_t begin, int64_t end) {
  int64_t degree = 0;
  for (int64_t i = begin; i < end; ++i)
    degree = std::max(degree, ptr[i + 1] - ptr[i]);
  return degree;
}

inline void prefetch_row(const void* row, int64_t bytes) {
  const char* p = static_cast<const char*>(row);
  for (int64_t q = 0; q < bytes; q += 64) __builtin_prefetch(p + q);
}

// Folds LANES partial sums into one, in a fixed tree.
template <typename T>
inline T fold(T* part) {
  for (int w = LANES / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) part[l] += part[l + w];
  return part[0];
}

// The edge term row of virtual edge e (or of its gradient): the caller's
// edge or a self-loop.
template <typename Pointer>
inline Pointer term_row(Pointer edge_term, Pointer loop_term, int64_t e,
                        int64_t num_edges, int64_t HC) {
  return e < num_edges ? edge_term + e * HC
                       : loop_term + (e - num_edges) * HC;
}

// What one CSR position k reads: its virtual edge id, its source row and
// its edge term row (null without edge terms). The source row of position
// k + AHEAD, if it is before last, is prefetched.
template <typename T>
struct EdgeRows {
  int64_t e;
  const T* xj;
  const T* t;
};

template <typename T>
inline EdgeRows<T> edge_rows(const T* x_l, const T* edge_term,
                             const T* loop_term, const int64_t* col,
                             const int64_t* eid, int64_t k, int64_t last,
                             int64_t num_edges, int64_t HC) {
  if (k + AHEAD < last)
    prefetch_row(x_l + col[k + AHEAD] * HC, HC * sizeof(T));
  const int64_t e = eid[k];
  const T* t = edge_term ? term_row(edge_term, loop_term, e, num_edges, HC)
                         : nullptr;
  return {e, x_l + col[k] * HC, t};
}

// sum_c a[c] * LeakyReLU(xj[c] + xi[c] (+ t[c])) over C channels.
template <typename T>
inline T score(const T* xj, const T* xi, const T* t, const T* a, int64_t C,
               T slope) {
  T part[LANES];
  for (int l = 0; l < LANES; ++l) part[l] = T(0);
  // The channels in whole lanes, then the remainder.
  const int64_t body = C - C % LANES;
  for (int64_t c0 = 0; c0 < body; c0 += LANES) {
    if (t) {
      #pragma omp simd
      for (int l = 0; l < LANES; ++l)
        part[l] += a[c0 + l] * lrelu(xj[c0 + l] + xi[c0 + l] + t[c0 + l],
                                     slope);
    } else {
      #pragma omp simd
      for (int l = 0; l < LANES; ++l)
        part[l] += a[c0 + l] * lrelu(xj[c0 + l] + xi[c0 + l], slope);
    }
  }
  T s = fold(part);
  for (int64_t c = body; c < C; ++c) {
    T z = xj[c] + xi[c];
    if (t) z += t[c];
    s += a[c] * lrelu(z, slope);
  }
  return s;
}

// sum_c x[c] * y[c] over C channels, in the order of score.
template <typename T>
inline T dot(const T* x, const T* y, int64_t C) {
  T part[LANES];
  for (int l = 0; l < LANES; ++l) part[l] = T(0);
  const int64_t body = C - C % LANES;
  for (int64_t c0 = 0; c0 < body; c0 += LANES)
    #pragma omp simd
    for (int l = 0; l < LANES; ++l) part[l] += x[c0 + l] * y[c0 + l];
  T s = fold(part);
  for (int64_t c = body; c < C; ++c) s += x[c] * y[c];
  return s;
}

template <typename T, int64_t FixedH, int64_t FixedC>
void forward(const T* x_l, const T* x_r, const T* att, const T* edge_term,
             const T* loop_term, const T* mask, const int64_t* ptr,
             const int64_t* col, const int64_t* eid, const int64_t* bounds,
             int64_t num_ranges, int64_t heads, int64_t channels,
             int64_t num_edges, T slope, bool want_alpha, int num_threads,
             T* out, T* lse, T* alpha) {
  // The shape, fixed at compile time where it is one of the common ones.
  const int64_t H = FixedH ? FixedH : heads;
  const int64_t C = FixedC ? FixedC : channels;
  const int64_t HC = H * C;
  const T inf = std::numeric_limits<T>::infinity();
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
  for (int64_t b = 0; b < num_ranges; ++b) {
    const int64_t widest = max_degree(ptr, bounds[b], bounds[b + 1]);
    // The logits, then the softmax numerators, of one node's in-edges.
    std::vector<T> weights(widest * H + 2 * H);
    T* m = weights.data() + widest * H;
    T* total = m + H;
    const int64_t last = ptr[bounds[b + 1]];
    for (int64_t i = bounds[b]; i < bounds[b + 1]; ++i) {
      const T* xi = x_r + i * HC;
      const int64_t start = ptr[i], end = ptr[i + 1];
      for (int64_t h = 0; h < H; ++h) {
        m[h] = -inf;
        total[h] = T(0);
      }
      for (int64_t k = start; k < end; ++k) {
        const EdgeRows<T> rows = edge_rows(x_l, edge_term, loop_term, col,
                                           eid, k, last, num_edges, HC);
        const T* xj = rows.xj;
        const T* t = rows.t;
        T* w = weights.data() + (k - start) * H;
        for (int64_t h = 0; h < H; ++h) {
          w[h] = score(xj + h * C, xi + h * C, t ? t + h * C : nullptr,
                       att + h * C, C, slope);
          m[h] = std::max(m[h], w[h]);
        }
      }
      const int64_t degree = end - start;
      for (int64_t k = 0; k < degree; ++k)
        for (int64_t h = 0; h < H; ++h) weights[k * H + h] -= m[h];
      exp_all(weights.data(), degree * H);
      for (int64_t k = 0; k < degree; ++k)
        for (int64_t h = 0; h < H; ++h) total[h] += weights[k * H + h];
      T* o = out + i * HC;
      #pragma omp simd
      for (int64_t f = 0; f < HC; ++f) o[f] = T(0);
      for (int64_t k = start; k < end; ++k) {
        const T* xj = x_l + col[k] * HC;
        const T* w = weights.data() + (k - start) * H;
        const T* dropout = mask ? mask + eid[k] * H : nullptr;
        for (int64_t h = 0; h < H; ++h) {
          const T p = dropout ? w[h] * dropout[h] : w[h];
          T* oh = o + h * C;
          const T* xjh = xj + h * C;
          #pragma omp simd
          for (int64_t c = 0; c < C; ++c) oh[c] += p * xjh[c];
        }
      }
      for (int64_t h = 0; h < H; ++h) {
        T* oh = o + h * C;
        if (total[h] > T(0)) {
          const T inv = T(1) / total[h];
          #pragma omp simd
          for (int64_t c = 0; c < C; ++c) oh[c] *= inv;
          lse[i * H + h] = m[h] + std::log(total[h]);
        } else {
          lse[i * H + h] = -inf;
        }
      }
      if (want_alpha) {
        for (int64_t k = start; k < end; ++k) {
          const T* w = weights.data() + (k - start) * H;
          const int64_t e = eid[k];
          for (int64_t h = 0; h < H; ++h) alpha[e * H + h] = w[h] / total[h];
        }
      }
    }
  }
}

template <typename T, int64_t FixedH, int64_t FixedC>
void backward_dst(const T* x_l, const T* x_r, const T* att,
                  const T* edge_term, const T* loop_term, const T* mask,
                  const T* grad_alpha, const T* grad_out, const T* lse,
                  const T* delta, const int64_t* ptr, const int64_t* col,
                  const int64_t* eid, const int64_t* bounds,
                  int64_t num_ranges, int64_t heads, int64_t channels,
                  int64_t num_edges, T slope, int num_threads, T* grad_xr,
                  T* grad_edge, T* grad_loop, T* grad_att, T* msg_weight,
                  T* grad_logit) {
  // The shape, fixed at compile time where it is one of the common ones.
  const int64_t H = FixedH ? FixedH : heads;
  const int64_t C = FixedC ? FixedC : channels;
  const int64_t HC = H * C;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
  for (int64_t b = 0; b < num_ranges; ++b) {
    T* grad_att_b = grad_att + b * HC;
    #pragma omp simd
    for (int64_t f = 0; f < HC; ++f) grad_att_b[f] = T(0);
    const int64_t widest = max_degree(ptr, bounds[b], bounds[b + 1]);
    // Per in-edge and head of one node: the logit less the log-sum-exp,
    // then its exponential; the gradient of the message weight. Per head:
    // D_i.
    std::vector<T> buffer(2 * widest * H + H);
    T* prob = buffer.data();
    T* grad_weight = prob + widest * H;
    T* node_delta = grad_weight + widest * H;
    const int64_t last = ptr[bounds[b + 1]];
    for (int64_t i = bounds[b]; i < bounds[b + 1]; ++i) {
      const T* xi = x_r + i * HC;
      const T* gi = grad_out + i * HC;
      T* gxi = grad_xr + i * HC;
      const int64_t start = ptr[i], end = ptr[i + 1];
      // The logits and the gradients of the weights of all in-edges, then
      // the weights in one vector pass, then the gradients of the logits.
      for (int64_t k = start; k < end; ++k) {
        const EdgeRows<T> rows = edge_rows(x_l, edge_term, loop_term, col,
                                           eid, k, last, num_edges, HC);
        T* p = prob + (k - start) * H;
        T* gw = grad_weight + (k - start) * H;
        for (int64_t h = 0; h < H; ++h) {
          p[h] = score(rows.xj + h * C, xi + h * C,
                       rows.t ? rows.t + h * C : nullptr, att + h * C, C,
                       slope) - lse[i * H + h];
          gw[h] = dot(gi + h * C, rows.xj + h * C, C);
        }
      }
      exp_all(prob, (end - start) * H);
      for (int64_t h = 0; h < H; ++h)
        node_delta[h] = delta ? delta[i * H + h] : T(0);
      for (int64_t k = start; k < end; ++k) {
        const int64_t e = eid[k];
        for (int64_t h = 0; h < H; ++h) {
          const T p = prob[(k - start) * H + h];
          T& gd = grad_weight[(k - start) * H + h];
          T w = p;
          if (mask) {
            w *= mask[e * H + h];
            gd *= mask[e * H + h];
          }
          if (grad_alpha) gd += grad_alpha[e * H + h];
          msg_weight[k * H + h] = w;
          if (!delta) node_delta[h] += p * gd;
        }
      }
      for (int64_t k = start; k < end; ++k)
        for (int64_t h = 0; h < H; ++h)
          grad_logit[k * H + h] = prob[(k - start) * H + h] *
                                  (grad_weight[(k - start) * H + h] -
                                   node_delta[h]);
      // The gradients of x_r, of att and of the edge terms, with the
      // LeakyReLU recomputed from the source rows, now in the cache.
      #pragma omp simd
      for (int64_t f = 0; f < HC; ++f) gxi[f] = T(0);
      for (int64_t k = start; k < end; ++k) {
        const int64_t e = eid[k];
        const T* xj = x_l + col[k] * HC;
        const T* t = edge_term
                         ? term_row(edge_term, loop_term, e, num_edges, HC)
                         : nullptr;
        T* gt = grad_edge
                    ? term_row(grad_edge, grad_loop, e, num_edges, HC)
                    : nullptr;
        for (int64_t h = 0; h < H; ++h) {
          const T ds = grad_logit[k * H + h];
          const T* xjh = xj + h * C;
          const T* xih = xi + h * C;
          const T* ah = att + h * C;
          const T* th = t ? t + h * C : nullptr;
          T* gxih = gxi + h * C;
          T* gah = grad_att_b + h * C;
          T* gth = gt ? gt + h * C : nullptr;
          #pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            T z = xjh[c] + xih[c];
            if (th) z += th[c];
            const bool pos = z > T(0);
            const T act = pos ? z : z * slope;
            const T dact = pos ? ah[c] : ah[c] * slope;
            gxih[c] += ds * dact;
            gah[c] += ds * act;
            if (gth) gth[c] = ds * dact;
          }
        }
      }
    }
  }
}

template <typename T, int64_t FixedH, int64_t FixedC>
void backward_src(const T* x_l, const T* x_r, const T* att,
                  const T* edge_term, const T* loop_term, const T* grad_out,
                  const int64_t* ptr, const int64_t* pos, const int64_t* row,
                  const int64_t* eid, const int64_t* bounds,
                  int64_t num_ranges, int64_t heads, int64_t channels,
                  int64_t num_edges, T slope, const T* msg_weight,
                  const T* grad_logit, int num_threads, T* grad_xl) {
  // The shape, fixed at compile time where it is one of the common ones.
  const int64_t H = FixedH ? FixedH : heads;
  const int64_t C = FixedC ? FixedC : channels;
  const int64_t HC = H * C;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
  for (int64_t b = 0; b < num_ranges; ++b) {
    const int64_t last = ptr[bounds[b + 1]];
    for (int64_t j = bounds[b]; j < bounds[b + 1]; ++j) {
      const T* xj = x_l + j * HC;
      T* gxj = grad_xl + j * HC;
      #pragma omp simd
      for (int64_t f = 0; f < HC; ++f) gxj[f] = T(0);
      const int64_t end = ptr[j + 1];
      for (int64_t q = ptr[j]; q < end; ++q) {
        const int64_t k = pos[q];
        const int64_t i = row[q];
        if (q + AHEAD < last) {
          prefetch_row(x_r + row[q + AHEAD] * HC, HC * sizeof(T));
          prefetch_row(grad_out + row[q + AHEAD] * HC, HC * sizeof(T));
        }
        const int64_t e = eid[k];
        const T* xi = x_r + i * HC;
        const T* gi = grad_out + i * HC;
        const T* t = edge_term
                         ? term_row(edge_term, loop_term, e, num_edges, HC)
                         : nullptr;
        for (int64_t h = 0; h < H; ++h) {
          const T w = msg_weight[k * H + h];
          const T ds = grad_logit[k * H + h];
          const T* xjh = xj + h * C;
          const T* xih = xi + h * C;
          const T* gih = gi + h * C;
          const T* ah = att + h * C;
          const T* th = t ? t + h * C : nullptr;
          T* gxjh = gxj + h * C;
          #pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            T z = xjh[c] + xih[c];
            if (th) z += th[c];
            T d = ds * ah[c];
            if (z <= T(0)) d *= slope;
            gxjh[c] += w * gih[c] + d;
          }
        }
      }
    }
  }
}

// Calls f(Fixed<H>, Fixed<C>) with the shape as template arguments where
// T is float and the shape is one of FixedHeads x FixedChannels, else
// f(Fixed<0>, Fixed<0>): the shape given at run time.
template <int64_t V>
using Fixed = std::integral_constant<int64_t, V>;

template <int64_t FixedH, typename F, int64_t... Cs>
bool with_channels(int64_t C, F& f, std::integer_sequence<int64_t, Cs...>) {
  return ((C == Cs ? (f(Fixed<FixedH>{}, Fixed<Cs>{}), true) : false) || ...);
}

template <typename F, int64_t... Hs>
bool with_heads(int64_t H, int64_t C, F& f,
                std::integer_sequence<int64_t, Hs...>) {
  return ((H == Hs && with_channels<Hs>(C, f, FixedChannels{})) || ...);
}

template <typename T, typename F>
void with_shape(int64_t H, int64_t C, F f) {
  if constexpr (std::is_same_v<T, float>) {
    if (with_heads(H, C, f, FixedHeads{})) return;
  }
  f(Fixed<0>{}, Fixed<0>{});
}

}  // namespace

// Whether the float32 kernels run with the shape H x C fixed at compile
// time (one of FixedHeads x FixedChannels).
extern "C" int gatv2_fixed_shape(int64_t H, int64_t C) {
  bool fixed = false;
  with_shape<float>(H, C, [&](auto h, auto) { fixed = decltype(h)::value; });
  return fixed;
}

// The C entry points, one per pass and dtype (f32: float, f64: double).
#define GATV2_ENTRY_POINTS(T, SUFFIX)                                        \
  extern "C" void gatv2_forward_##SUFFIX(                                    \
      const T* x_l, const T* x_r, const T* att, const T* edge_term,          \
      const T* loop_term, const T* mask, const int64_t* ptr,                 \
      const int64_t* col, const int64_t* eid, const int64_t* bounds,         \
      int64_t num_ranges, int64_t H, int64_t C, int64_t num_edges,           \
      T slope, int want_alpha, int num_threads, T* out, T* lse, T* alpha) {  \
    with_shape<T>(H, C, [&](auto h, auto c) {                                \
      forward<T, decltype(h)::value, decltype(c)::value>(                    \
          x_l, x_r, att, edge_term, loop_term, mask, ptr, col, eid, bounds,  \
          num_ranges, H, C, num_edges, slope, want_alpha != 0, num_threads,  \
          out, lse, alpha);                                                  \
    });                                                                      \
  }                                                                          \
  extern "C" void gatv2_backward_dst_##SUFFIX(                               \
      const T* x_l, const T* x_r, const T* att, const T* edge_term,          \
      const T* loop_term, const T* mask, const T* grad_alpha,                \
      const T* grad_out, const T* lse, const T* delta, const int64_t* ptr,   \
      const int64_t* col, const int64_t* eid, const int64_t* bounds,         \
      int64_t num_ranges, int64_t H, int64_t C, int64_t num_edges, T slope,  \
      int num_threads, T* grad_xr, T* grad_edge, T* grad_loop, T* grad_att,  \
      T* msg_weight, T* grad_logit) {                                        \
    with_shape<T>(H, C, [&](auto h, auto c) {                                \
      backward_dst<T, decltype(h)::value, decltype(c)::value>(               \
          x_l, x_r, att, edge_term, loop_term, mask, grad_alpha, grad_out,   \
          lse, delta, ptr, col, eid, bounds, num_ranges, H, C, num_edges,    \
          slope, num_threads, grad_xr, grad_edge, grad_loop, grad_att,       \
          msg_weight, grad_logit);                                           \
    });                                                                      \
  }                                                                          \
  extern "C" void gatv2_backward_src_##SUFFIX(                               \
      const T* x_l, const T* x_r, const T* att, const T* edge_term,          \
      const T* loop_term, const T* grad_out, const int64_t* ptr,             \
      const int64_t* pos, const int64_t* row, const int64_t* eid,            \
      const int64_t* bounds, int64_t num_ranges, int64_t H, int64_t C,       \
      int64_t num_edges, T slope, const T* msg_weight, const T* grad_logit,  \
      int num_threads, T* grad_xl) {                                         \
    with_shape<T>(H, C, [&](auto h, auto c) {                                \
      backward_src<T, decltype(h)::value, decltype(c)::value>(               \
          x_l, x_r, att, edge_term, loop_term, grad_out, ptr, pos, row, eid, \
          bounds, num_ranges, H, C, num_edges, slope, msg_weight,            \
          grad_logit, num_threads, grad_xl);                                 \
    });                                                                      \
  }

GATV2_ENTRY_POINTS(float, f32)
GATV2_ENTRY_POINTS(double, f64)
