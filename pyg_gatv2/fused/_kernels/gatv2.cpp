// Multi-threaded CPU kernels of the fused GATv2 attention (C++ and OpenMP),
// loaded through ctypes by pyg_gatv2/fused/backends/cpp.py; the interface
// is gatv2.h.
//
// The kernels (kernels.inc) are compiled once per CPU level into one
// library, each level in a namespace of its own under #pragma GCC target:
// default (the x86-64 baseline, SSE2), avx2 (x86-64-v3: AVX2, FMA, BMI)
// and avx512 (x86-64-v4: AVX-512 F, BW, CD, DQ, VL). At load the best
// level this CPU runs is picked (__builtin_cpu_supports), as PyTorch's
// ATEN_CPU_CAPABILITY does; gatv2_set_capability picks another. The rest
// of the library is compiled for the baseline, so it loads on any x86-64
// CPU. Every level sums in the same order; with FMA the compiler may fuse
// a multiply and an add into one rounding, so levels agree to within
// float rounding, not bit for bit.
//
// Elsewhere than x86-64 with GCC, the one level is the compiler's default.
#include "gatv2.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <omp.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define GATV2_X86_LEVELS 1
#endif

namespace gatv2_default {
#include "kernels.inc"
}  // namespace gatv2_default

#ifdef GATV2_X86_LEVELS
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
namespace gatv2_avx2 {
#include "kernels.inc"
}  // namespace gatv2_avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
namespace gatv2_avx512 {
#include "kernels.inc"
}  // namespace gatv2_avx512
#pragma GCC pop_options
#endif

namespace {

using Pass = void (*)(const Gatv2Args&);
using SparseLinearPass = void (*)(int64_t, const void*, int64_t, int64_t,
                                  const void*, const void*, int64_t, int64_t,
                                  void*);
using SparseWeightGradPass = void (*)(int64_t, const void*, int64_t, int64_t,
                                      const void*, int64_t, int64_t, int64_t,
                                      void*, void*);

// One compiled level: its name, whether this CPU runs it, its passes.
struct Level {
  const char* name;
  bool (*runs_here)();
  Pass forward;
  Pass backward_dst;
  Pass backward_src;
  SparseLinearPass sparse_linear;
  SparseWeightGradPass sparse_linear_weight_grad;
};

#ifdef GATV2_X86_LEVELS
bool runs_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx") && __builtin_cpu_supports("avx2") &&
         __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi") &&
         __builtin_cpu_supports("bmi2");
}

bool runs_avx512() {
  return runs_avx2() && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512cd") &&
         __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vl");
}
#endif

bool runs_default() { return true; }

// Best first.
const Level LEVELS[] = {
#ifdef GATV2_X86_LEVELS
    {"avx512", runs_avx512, gatv2_avx512::forward_pass,
     gatv2_avx512::backward_dst_pass, gatv2_avx512::backward_src_pass,
     gatv2_avx512::sparse_linear_pass,
     gatv2_avx512::sparse_linear_weight_grad_pass},
    {"avx2", runs_avx2, gatv2_avx2::forward_pass,
     gatv2_avx2::backward_dst_pass, gatv2_avx2::backward_src_pass,
     gatv2_avx2::sparse_linear_pass,
     gatv2_avx2::sparse_linear_weight_grad_pass},
#endif
    {"default", runs_default, gatv2_default::forward_pass,
     gatv2_default::backward_dst_pass, gatv2_default::backward_src_pass,
     gatv2_default::sparse_linear_pass,
     gatv2_default::sparse_linear_weight_grad_pass},
};

const Level* best_level() {
  for (const Level& level : LEVELS)
    if (level.runs_here()) return &level;
  return &LEVELS[std::size(LEVELS) - 1];
}

std::atomic<const Level*> current_level{best_level()};

std::string names_of(bool only_runnable) {
  std::string names;
  for (const Level& level : LEVELS) {
    if (only_runnable && !level.runs_here()) continue;
    if (!names.empty()) names += ",";
    names += level.name;
  }
  return names;
}

// "name:offset:size," for each field of a record.
#define GATV2_FIELD_LAYOUT(Record, type, name)                         \
  layout += std::string(#name) + ":" +                                 \
            std::to_string(offsetof(Record, name)) + ":" +             \
            std::to_string(sizeof(type)) + ",";
#define GATV2_ARGS_LAYOUT(type, name) GATV2_FIELD_LAYOUT(Gatv2Args, type, name)
#define GATV2_LAYOUT_LAYOUT(type, name) \
  GATV2_FIELD_LAYOUT(Gatv2LayoutArgs, type, name)

std::string layout_of_records() {
  std::string layout;
  GATV2_ARGS_FIELDS(GATV2_ARGS_LAYOUT)
  layout += ";";
  GATV2_LAYOUT_FIELDS(GATV2_LAYOUT_LAYOUT)
  return layout;
}

// Whether every one of the pointers is set.
template <typename... P>
bool all_set(P... pointers) {
  return ((pointers != nullptr) && ...);
}

// Whether dtype names one of the dtypes the kernels run (Gatv2Dtype).
bool known_dtype(int64_t dtype) {
  return dtype == GATV2_FLOAT32 || dtype == GATV2_FLOAT64;
}

// The checks of one pass's chunks: counts not negative, every array there
// where there are chunks.
int check_chunks(int64_t count, int64_t num_nodes, const int64_t* node,
                 const int64_t* start, const int64_t* end,
                 const int64_t* node_ptr) {
  if (count < 0 || num_nodes < 0) return GATV2_BAD_SIZE;
  if (count > 0 && !all_set(node, start, end, node_ptr))
    return GATV2_MISSING_ARRAY;
  return GATV2_OK;
}

// The checks every pass makes of the record: the dtype, the sizes, the
// arrays every pass reads.
int check_common(const Gatv2Args* a) {
  if (a == nullptr) return GATV2_MISSING_ARRAY;
  if (!known_dtype(a->dtype)) return GATV2_BAD_DTYPE;
  if (a->heads <= 0 || a->channels <= 0 || a->num_edges < 0 ||
      a->num_threads <= 0 || a->num_dst_ranges < 0)
    return GATV2_BAD_SIZE;
  if (!all_set(a->x_l, a->x_r, a->att, a->dst_ptr, a->dst_col, a->dst_eid,
               a->dst_bounds))
    return GATV2_MISSING_ARRAY;
  // Edge terms come in pairs: the caller's edges and the self-loops.
  if ((a->edge_term == nullptr) != (a->loop_term == nullptr))
    return GATV2_MISSING_ARRAY;
  if (a->chunk_edges < 0) return GATV2_BAD_SIZE;
  return check_chunks(a->num_dst_chunks, a->num_dst_chunked,
                      a->dst_chunk_node, a->dst_chunk_start,
                      a->dst_chunk_end, a->dst_chunked_ptr);
}

// A stable counting sort, in parallel: items 0 .. n - 1, each with a key in
// [0, k). Each thread takes one contiguous run of the items; it counts its
// keys with count(begin, end, counts), which returns false for an item it
// refuses (an index out of range), and places its items in order with
// place(begin, end, next), each at next[key]++. ptr gets the k + 1 offsets
// of the keys' runs. The per-thread counts take threads * k integers:
// the threads are cut to keep that within twice the items, so that a
// sort of few items over many keys does not spend its time on counts.
template <typename Count, typename Place>
int counting_sort(int64_t n, int64_t k, int64_t num_threads, int64_t* ptr,
                  const Count& count, const Place& place) {
  const int64_t most = std::max<int64_t>(1, 2 * n / std::max<int64_t>(k, 1));
  const int threads = static_cast<int>(std::min(num_threads, most));
  std::unique_ptr<int64_t[]> counts(new int64_t[threads * k]);
  std::atomic<bool> refused{false};
#pragma omp parallel num_threads(threads)
  {
    const int parts = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t begin = n * t / parts, end = n * (t + 1) / parts;
    int64_t* mine = counts.get() + t * k;
    std::fill(mine, mine + k, int64_t{0});
    if (!count(begin, end, mine)) refused = true;
#pragma omp barrier
    if (!refused) {
      // For each key, the offset of each thread's items within the key's
      // run; then the runs' offsets.
#pragma omp for schedule(static)
      for (int64_t key = 0; key < k; ++key) {
        int64_t sum = 0;
        for (int u = 0; u < parts; ++u) {
          const int64_t c = counts[u * k + key];
          counts[u * k + key] = sum;
          sum += c;
        }
        ptr[key + 1] = sum;
      }
#pragma omp single
      {
        ptr[0] = 0;
        for (int64_t key = 0; key < k; ++key) ptr[key + 1] += ptr[key];
      }
#pragma omp for schedule(static)
      for (int64_t key = 0; key < k; ++key) {
        for (int u = 0; u < parts; ++u) counts[u * k + key] += ptr[key];
      }
      place(begin, end, mine);
    }
  }
  return refused ? GATV2_BAD_INDEX : GATV2_OK;
}

// The edge layouts, as counting sorts. By destination, the items are the
// virtual edges v: the edges of the list, then the loops; the key of an
// edge is its destination, or num_dst for an edge i -> i that a loop
// replaces, which sorts after every CSR position. By source, the items are
// the CSR positions, keyed by their source node.

// How many items ahead the placing passes prefetch the positions they will
// write: the writes land at random (an edge goes after the other edges of
// its node), and prefetched they cost a third less time at N=20k,
// E=400k (distances of 16 to 64 did alike).
constexpr int64_t PREFETCH = 32;

// The key of the edge s -> d by destination.
inline int64_t destination_key(const Gatv2LayoutArgs& a, int64_t s,
                               int64_t d) {
  return a.self_loops && s == d ? a.num_dst : d;
}

bool count_by_destination(const Gatv2LayoutArgs& a, int64_t begin,
                          int64_t end, int64_t* __restrict counts) {
  const int64_t* __restrict src = a.src;
  const int64_t* __restrict dst = a.dst;
  const uint64_t num_src = a.num_src, num_dst = a.num_dst;
  const int64_t stop = std::min(end, a.num_edges);
  for (int64_t v = begin; v < stop; ++v) {
    const int64_t s = src[v], d = dst[v];
    // Negative indices wrap to beyond the range.
    if (static_cast<uint64_t>(s) >= num_src ||
        static_cast<uint64_t>(d) >= num_dst)
      return false;
    ++counts[destination_key(a, s, d)];
  }
  for (int64_t v = std::max(begin, a.num_edges); v < end; ++v)
    ++counts[v - a.num_edges];
  if (a.copy != nullptr && begin < stop) {
    std::copy(src + begin, src + stop, a.copy + begin);
    std::copy(dst + begin, dst + stop, a.copy + a.num_edges + begin);
  }
  return true;
}

void place_by_destination(const Gatv2LayoutArgs& a, int64_t begin,
                          int64_t end, int64_t* __restrict next) {
  const int64_t* __restrict src = a.src;
  const int64_t* __restrict dst = a.dst;
  int64_t* __restrict col = a.dst_col;
  int64_t* __restrict eid = a.dst_eid;
  const int64_t stop = std::min(end, a.num_edges);
  for (int64_t v = begin; v < stop; ++v) {
    if (v + PREFETCH < stop) {
      const int64_t k =
          destination_key(a, src[v + PREFETCH], dst[v + PREFETCH]);
      __builtin_prefetch(col + next[k], 1);
      __builtin_prefetch(eid + next[k], 1);
    }
    const int64_t s = src[v], d = dst[v];
    const int64_t pos = next[destination_key(a, s, d)]++;
    col[pos] = s;
    eid[pos] = v;
  }
  for (int64_t v = std::max(begin, a.num_edges); v < end; ++v) {
    const int64_t pos = next[v - a.num_edges]++;
    col[pos] = v - a.num_edges;
    eid[pos] = v;
  }
}

bool count_by_source(const Gatv2LayoutArgs& a, int64_t begin, int64_t end,
                     int64_t* __restrict counts) {
  const int64_t* __restrict col = a.dst_col;
  const uint64_t num_src = a.num_src;
  for (int64_t p = begin; p < end; ++p) {
    if (static_cast<uint64_t>(col[p]) >= num_src) return false;
    ++counts[col[p]];
  }
  return true;
}

void place_by_source(const Gatv2LayoutArgs& a, int64_t begin, int64_t end,
                     int64_t* __restrict next) {
  const int64_t* __restrict ptr = a.dst_ptr;
  const int64_t* __restrict col = a.dst_col;
  int64_t* __restrict pos = a.src_pos;
  int64_t* __restrict row = a.src_row;
  // The destination of each position, followed from that of the first.
  int64_t r = std::upper_bound(ptr, ptr + a.num_dst + 1, begin) - ptr - 1;
  for (int64_t p = begin; p < end; ++p) {
    if (p + PREFETCH < end) {
      __builtin_prefetch(pos + next[col[p + PREFETCH]], 1);
      __builtin_prefetch(row + next[col[p + PREFETCH]], 1);
    }
    while (ptr[r + 1] <= p) ++r;
    const int64_t at = next[col[p]]++;
    pos[at] = p;
    row[at] = r;
  }
}

// The entries of run r of num_runs runs of n entries: [begin, end).
std::pair<int64_t, int64_t> run_of(int64_t n, int64_t num_runs, int64_t r) {
  return {n * r / num_runs, n * (r + 1) / num_runs};
}

// The checks of both passes of the nonzero dropout.
int check_dropout(int64_t dtype, const void* x, int64_t n, int64_t num_runs,
                  int64_t num_threads, const int64_t* offsets) {
  if (!known_dtype(dtype)) return GATV2_BAD_DTYPE;
  if (n < 0 || num_runs <= 0 || num_threads <= 0) return GATV2_BAD_SIZE;
  if (!all_set(x, offsets)) return GATV2_MISSING_ARRAY;
  return GATV2_OK;
}

template <typename T>
void count_nonzero(const T* x, int64_t n, int64_t num_runs,
                   int64_t num_threads, int64_t* offsets) {
  offsets[0] = 0;
#pragma omp parallel for num_threads(static_cast<int>(num_threads)) \
    schedule(static)
  for (int64_t r = 0; r < num_runs; ++r) {
    const auto [begin, end] = run_of(n, num_runs, r);
    int64_t count = 0;
    for (int64_t i = begin; i < end; ++i) count += x[i] != T(0);
    offsets[r + 1] = count;
  }
  for (int64_t r = 0; r < num_runs; ++r) offsets[r + 1] += offsets[r];
}

template <typename T>
void drop_nonzero(const T* x, int64_t n, int64_t num_runs,
                  int64_t num_threads, const int64_t* offsets,
                  const uint8_t* keep, T scale, T* out) {
#pragma omp parallel for num_threads(static_cast<int>(num_threads)) \
    schedule(static)
  for (int64_t r = 0; r < num_runs; ++r) {
    const auto [begin, end] = run_of(n, num_runs, r);
    // Zeros first, by vector stores; then the few nonzero entries, found
    // 64 at a time as the bits of a mask.
    std::fill(out + begin, out + end, T(0));
    int64_t k = offsets[r];
    for (int64_t i = begin; i < end; i += 64) {
      uint64_t bits =
          gatv2_default::nonzero_bits(x + i, std::min<int64_t>(64, end - i));
      for (; bits != 0; bits &= bits - 1) {
        const int64_t at = i + __builtin_ctzll(bits);
        out[at] = x[at] * (keep[k++] ? scale : T(0));
      }
    }
  }
}

}  // namespace

extern "C" {

int64_t gatv2_abi_version(void) { return GATV2_ABI_VERSION; }

const char* gatv2_args_layout(void) {
  static const std::string layout = layout_of_records();
  return layout.c_str();
}

const char* gatv2_capabilities(void) {
  static const std::string names = names_of(false);
  return names.c_str();
}

const char* gatv2_supported_capabilities(void) {
  static const std::string names = names_of(true);
  return names.c_str();
}

const char* gatv2_capability(void) { return current_level.load()->name; }

int gatv2_set_capability(const char* name) {
  if (name == nullptr) return -1;
  for (const Level& level : LEVELS) {
    if (std::strcmp(level.name, name) != 0) continue;
    if (!level.runs_here()) return -2;
    current_level.store(&level);
    return 0;
  }
  return -1;
}

int gatv2_compiled_shape(int64_t heads, int64_t channels, int64_t* fixed) {
  if (fixed == nullptr) return GATV2_MISSING_ARRAY;
  const int64_t lanes = gatv2_default::LANES;
  const int64_t width = (channels + lanes - 1) / lanes * lanes;
  gatv2_default::with_shape<float>(heads, width, [&](auto h, auto c) {
    fixed[0] = decltype(h)::value;
    fixed[1] = decltype(c)::value;
  });
  fixed[2] = width;
  return GATV2_OK;
}

int gatv2_forward(const Gatv2Args* a) {
  if (int status = check_common(a)) return status;
  if (!all_set(a->out, a->lse)) return GATV2_MISSING_ARRAY;
  current_level.load()->forward(*a);
  return GATV2_OK;
}

int gatv2_backward_dst(const Gatv2Args* a) {
  if (int status = check_common(a)) return status;
  if (!all_set(a->grad_out, a->lse, a->grad_x_r, a->grad_att, a->msg_weight,
               a->grad_logit))
    return GATV2_MISSING_ARRAY;
  if (a->edge_term == nullptr && a->grad_edge != nullptr)
    return GATV2_MISSING_ARRAY;
  if ((a->grad_edge == nullptr) != (a->grad_loop == nullptr))
    return GATV2_MISSING_ARRAY;
  current_level.load()->backward_dst(*a);
  return GATV2_OK;
}

int gatv2_backward_src(const Gatv2Args* a) {
  if (int status = check_common(a)) return status;
  if (a->num_src_ranges < 0) return GATV2_BAD_SIZE;
  if (int status = check_chunks(a->num_src_chunks, a->num_src_chunked,
                                a->src_chunk_node, a->src_chunk_start,
                                a->src_chunk_end, a->src_chunked_ptr))
    return status;
  if (!all_set(a->grad_out, a->src_ptr, a->src_pos, a->src_row,
               a->src_bounds, a->msg_weight, a->grad_logit, a->grad_x_l))
    return GATV2_MISSING_ARRAY;
  current_level.load()->backward_src(*a);
  return GATV2_OK;
}

int gatv2_layout_by_destination(const Gatv2LayoutArgs* a) {
  if (a == nullptr || !all_set(a->dst_ptr, a->dst_col, a->dst_eid) ||
      (a->num_edges > 0 && !all_set(a->src, a->dst)))
    return GATV2_MISSING_ARRAY;
  if (a->num_edges < 0 || a->num_src < 0 || a->num_dst < 0 ||
      a->num_threads <= 0)
    return GATV2_BAD_SIZE;
  const int64_t loops = a->self_loops ? std::min(a->num_src, a->num_dst) : 0;
  return counting_sort(
      a->num_edges + loops, a->num_dst + 1, a->num_threads, a->dst_ptr,
      [a](int64_t begin, int64_t end, int64_t* counts) {
        return count_by_destination(*a, begin, end, counts);
      },
      [a](int64_t begin, int64_t end, int64_t* next) {
        place_by_destination(*a, begin, end, next);
      });
}

int gatv2_layout_by_source(const Gatv2LayoutArgs* a) {
  if (a == nullptr ||
      !all_set(a->dst_ptr, a->dst_col, a->src_ptr, a->src_pos, a->src_row))
    return GATV2_MISSING_ARRAY;
  if (a->num_src < 0 || a->num_dst < 0 || a->num_threads <= 0)
    return GATV2_BAD_SIZE;
  return counting_sort(
      a->dst_ptr[a->num_dst], a->num_src, a->num_threads, a->src_ptr,
      [a](int64_t begin, int64_t end, int64_t* counts) {
        return count_by_source(*a, begin, end, counts);
      },
      [a](int64_t begin, int64_t end, int64_t* next) {
        place_by_source(*a, begin, end, next);
      });
}

int gatv2_count_nonzero(int64_t dtype, const void* x, int64_t n,
                        int64_t num_runs, int64_t num_threads,
                        int64_t* offsets) {
  if (int status = check_dropout(dtype, x, n, num_runs, num_threads, offsets))
    return status;
  if (dtype == GATV2_FLOAT32)
    count_nonzero(static_cast<const float*>(x), n, num_runs, num_threads,
                  offsets);
  else
    count_nonzero(static_cast<const double*>(x), n, num_runs, num_threads,
                  offsets);
  return GATV2_OK;
}

int gatv2_drop_nonzero(int64_t dtype, const void* x, int64_t n,
                       int64_t num_runs, int64_t num_threads,
                       const int64_t* offsets, const uint8_t* keep,
                       double scale, void* out) {
  if (int status = check_dropout(dtype, x, n, num_runs, num_threads, offsets))
    return status;
  if (!all_set(keep, out)) return GATV2_MISSING_ARRAY;
  if (dtype == GATV2_FLOAT32)
    drop_nonzero(static_cast<const float*>(x), n, num_runs, num_threads,
                 offsets, keep, static_cast<float>(scale),
                 static_cast<float*>(out));
  else
    drop_nonzero(static_cast<const double*>(x), n, num_runs, num_threads,
                 offsets, keep, scale, static_cast<double*>(out));
  return GATV2_OK;
}

int gatv2_sparse_linear(int64_t dtype, const void* x, int64_t rows,
                        int64_t in, const void* weight_t, const void* bias,
                        int64_t out_features, int64_t num_threads, void* out) {
  if (!known_dtype(dtype)) return GATV2_BAD_DTYPE;
  if (rows < 0 || in < 0 || out_features < 0 || num_threads <= 0)
    return GATV2_BAD_SIZE;
  if (!all_set(x, weight_t, out)) return GATV2_MISSING_ARRAY;
  current_level.load()->sparse_linear(dtype, x, rows, in, weight_t, bias,
                                      out_features, num_threads, out);
  return GATV2_OK;
}

int gatv2_sparse_linear_weight_grad(int64_t dtype, const void* x,
                                    int64_t rows, int64_t in,
                                    const void* grad_out,
                                    int64_t out_features, int64_t num_runs,
                                    int64_t num_threads, void* grad_weight_t,
                                    void* grad_bias) {
  if (!known_dtype(dtype)) return GATV2_BAD_DTYPE;
  if (rows < 0 || in < 0 || out_features < 0 || num_runs <= 0 ||
      num_threads <= 0)
    return GATV2_BAD_SIZE;
  if (!all_set(x, grad_out, grad_weight_t)) return GATV2_MISSING_ARRAY;
  current_level.load()->sparse_linear_weight_grad(
      dtype, x, rows, in, grad_out, out_features, num_runs, num_threads,
      grad_weight_t, grad_bias);
  return GATV2_OK;
}

}  // extern "C"
