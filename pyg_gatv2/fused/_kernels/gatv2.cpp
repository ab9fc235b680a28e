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
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

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

// One compiled level: its name, whether this CPU runs it, its passes.
struct Level {
  const char* name;
  bool (*runs_here)();
  Pass forward;
  Pass backward_dst;
  Pass backward_src;
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
     gatv2_avx512::backward_dst_pass, gatv2_avx512::backward_src_pass},
    {"avx2", runs_avx2, gatv2_avx2::forward_pass,
     gatv2_avx2::backward_dst_pass, gatv2_avx2::backward_src_pass},
#endif
    {"default", runs_default, gatv2_default::forward_pass,
     gatv2_default::backward_dst_pass, gatv2_default::backward_src_pass},
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
#define GATV2_SORT_LAYOUT(type, name) \
  GATV2_FIELD_LAYOUT(Gatv2SortArgs, type, name)

std::string layout_of_records() {
  std::string layout;
  GATV2_ARGS_FIELDS(GATV2_ARGS_LAYOUT)
  layout += ";";
  GATV2_SORT_FIELDS(GATV2_SORT_LAYOUT)
  return layout;
}

// Whether every one of the pointers is set.
template <typename... P>
bool all_set(P... pointers) {
  return ((pointers != nullptr) && ...);
}

// The checks every pass makes of the record: the dtype, the sizes, the
// arrays every pass reads.
int check_common(const Gatv2Args* a) {
  if (a == nullptr) return GATV2_MISSING_ARRAY;
  if (a->dtype != GATV2_FLOAT32 && a->dtype != GATV2_FLOAT64)
    return GATV2_BAD_DTYPE;
  if (a->heads <= 0 || a->channels <= 0 || a->num_edges < 0 ||
      a->num_threads <= 0 || a->num_dst_ranges < 0)
    return GATV2_BAD_SIZE;
  if (!all_set(a->x_l, a->x_r, a->att, a->dst_ptr, a->dst_col, a->dst_eid,
               a->dst_bounds))
    return GATV2_MISSING_ARRAY;
  // Edge terms come in pairs: the caller's edges and the self-loops.
  if ((a->edge_term == nullptr) != (a->loop_term == nullptr))
    return GATV2_MISSING_ARRAY;
  return GATV2_OK;
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
  if (!all_set(a->grad_out, a->src_ptr, a->src_pos, a->src_row,
               a->src_bounds, a->msg_weight, a->grad_logit, a->grad_x_l))
    return GATV2_MISSING_ARRAY;
  current_level.load()->backward_src(*a);
  return GATV2_OK;
}

int gatv2_counting_sort(const Gatv2SortArgs* s) {
  if (s == nullptr || !all_set(s->ptr, s->order) ||
      (s->num_items > 0 && s->keys == nullptr))
    return GATV2_MISSING_ARRAY;
  if (s->num_items < 0 || s->num_keys < 0) return GATV2_BAD_SIZE;
  std::fill(s->ptr, s->ptr + s->num_keys + 1, int64_t{0});
  for (int64_t i = 0; i < s->num_items; ++i) {
    const int64_t k = s->keys[i];
    if (k < 0 || k >= s->num_keys) return GATV2_BAD_INDEX;
    ++s->ptr[k + 1];
  }
  for (int64_t k = 0; k < s->num_keys; ++k) s->ptr[k + 1] += s->ptr[k];
  std::vector<int64_t> next(s->ptr, s->ptr + s->num_keys);
  for (int64_t i = 0; i < s->num_items; ++i)
    s->order[next[s->keys[i]]++] = i;
  return GATV2_OK;
}

}  // extern "C"
