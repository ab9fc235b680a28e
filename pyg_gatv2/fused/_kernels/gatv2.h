// The C interface of the CPU kernels of the fused GATv2 attention.
//
// Every pass takes one record of named fields (Gatv2Args), mirrored field
// for field by a ctypes.Structure in pyg_gatv2/fused/backends/cpp.py. The
// library reports its ABI version and the name and offset of every field
// (gatv2_args_layout), which the Python side compares with its own record
// when it loads the library: a library built from other sources is refused
// with an error, never called with a record it reads differently.
//
// Floating-point arrays hold float32 or float64 values (the field dtype);
// index arrays hold int64. Absent optional arrays are null pointers.
#ifndef PYG_GATV2_GATV2_H_
#define PYG_GATV2_GATV2_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Raised whenever a field of Gatv2Args or Gatv2LayoutArgs is added, removed,
// moved or changes type, or an entry point changes what it reads or writes.
#define GATV2_ABI_VERSION 8

enum Gatv2Dtype { GATV2_FLOAT32 = 0, GATV2_FLOAT64 = 1 };

// What the entry points return.
enum Gatv2Status {
  GATV2_OK = 0,
  GATV2_BAD_DTYPE = 1,      // dtype is neither GATV2_FLOAT32 nor FLOAT64
  GATV2_MISSING_ARRAY = 2,  // a required array is a null pointer
  GATV2_BAD_SIZE = 3,       // a size or count is negative or zero
  GATV2_BAD_INDEX = 4,      // a node index out of range
};

// The fields of Gatv2Args, in order: X(type, name). The struct, and the
// layout that gatv2_args_layout reports, are both made from this list.
#define GATV2_ARGS_FIELDS(X)                                                 \
  /* The problem: dtype of the features, shape, edges, LeakyReLU slope. */  \
  X(int64_t, dtype)                                                          \
  X(int64_t, heads)                                                          \
  X(int64_t, channels)                                                       \
  X(int64_t, num_edges)                                                      \
  X(double, negative_slope)                                                  \
  X(int64_t, num_threads)                                                    \
  /* Inputs: [num_src, H, C], [num_dst, H, C], [H, C]; the edge terms    */  \
  /* [num_edges, H, C] and [num_loops, H, C]; the dropout mask           */  \
  /* [virtual edges, H]. */                                                  \
  X(const void*, x_l)                                                        \
  X(const void*, x_r)                                                        \
  X(const void*, att)                                                        \
  X(const void*, edge_term)                                                  \
  X(const void*, loop_term)                                                  \
  X(const void*, dropout_mask)                                               \
  /* The edges by destination: CSR offsets [num_dst + 1], source node and  */\
  /* virtual edge id per CSR position, and the bounds of the work ranges   */\
  /* [num_dst_ranges + 1]. */                                                \
  X(const int64_t*, dst_ptr)                                                 \
  X(const int64_t*, dst_col)                                                 \
  X(const int64_t*, dst_eid)                                                 \
  X(const int64_t*, dst_bounds)                                              \
  X(int64_t, num_dst_ranges)                                                 \
  /* The edges by source (backward_src): CSC offsets [num_src + 1], the    */\
  /* CSR position and destination of each, and the work ranges. */           \
  X(const int64_t*, src_ptr)                                                 \
  X(const int64_t*, src_pos)                                                 \
  X(const int64_t*, src_row)                                                 \
  X(const int64_t*, src_bounds)                                              \
  X(int64_t, num_src_ranges)                                                 \
  /* Nodes of more than chunk_edges in-edges (by destination) or out-edges */\
  /* (by source; 0: no node) are left out of the work ranges: their edges  */\
  /* are cut into chunks of at most chunk_edges positions, each a work     */\
  /* item of its own, whose partial sums are merged per node in chunk      */\
  /* order. Per chunk: its node, first position and end; per chunked node  */\
  /* its first chunk ([num_..._chunked + 1]); null where there is none.    */\
  X(int64_t, chunk_edges)                                                    \
  X(const int64_t*, dst_chunk_node)                                          \
  X(const int64_t*, dst_chunk_start)                                         \
  X(const int64_t*, dst_chunk_end)                                           \
  X(int64_t, num_dst_chunks)                                                 \
  X(const int64_t*, dst_chunked_ptr)                                         \
  X(int64_t, num_dst_chunked)                                                \
  X(const int64_t*, src_chunk_node)                                          \
  X(const int64_t*, src_chunk_start)                                         \
  X(const int64_t*, src_chunk_end)                                           \
  X(int64_t, num_src_chunks)                                                 \
  X(const int64_t*, src_chunked_ptr)                                         \
  X(int64_t, num_src_chunked)                                                \
  /* forward writes out [num_dst, H, C], lse [num_dst, H] and, if not null, */\
  /* alpha [virtual edges, H]. */                                            \
  X(void*, out)                                                              \
  X(void*, lse)                                                              \
  X(void*, alpha)                                                            \
  /* backward_dst reads grad_out, lse, grad_alpha (or null) and delta (or  */\
  /* null: it sums D_i itself); writes grad_x_r, grad_edge and grad_loop   */\
  /* (or null), grad_att [num_dst_ranges + num_dst_chunks, H, C], and per */\
  /* CSR position and head msg_weight and grad_logit, which backward_src   */\
  /* reads to write grad_x_l. */                                             \
  X(const void*, grad_out)                                                   \
  X(const void*, grad_alpha)                                                 \
  X(const void*, delta)                                                      \
  X(void*, grad_x_l)                                                         \
  X(void*, grad_x_r)                                                         \
  X(void*, grad_edge)                                                        \
  X(void*, grad_loop)                                                        \
  X(void*, grad_att)                                                         \
  X(void*, msg_weight)                                                       \
  X(void*, grad_logit)

#define GATV2_DECLARE_FIELD(type, name) type name;
typedef struct Gatv2Args {
  GATV2_ARGS_FIELDS(GATV2_DECLARE_FIELD)
} Gatv2Args;

// The edges of a graph by destination (CSR) and by source (CSC), for the
// passes above. gatv2_layout_by_destination reads the edge list (src and
// dst, num_edges each) and writes the CSR: the virtual edges (the edges,
// then with self_loops one loop i -> i for each node i < min(num_src,
// num_dst)) stably sorted by destination, each loop after the other
// in-edges of its node. With self_loops the edges i -> i of the list make
// way for the loops: they sort after every CSR position, under the key
// num_dst, so dst_ptr has num_dst + 2 offsets, and dst_ptr[num_dst] is
// the number of CSR positions. It writes copy (if not null) with the edge
// list, and refuses an index outside [0, num_src) or [0, num_dst).
// gatv2_layout_by_source reads the first num_dst + 1 offsets of dst_ptr
// and dst_col and writes the CSC: for each source node, the CSR positions
// of its out-edges, in order, and their destinations.
#define GATV2_LAYOUT_FIELDS(X)                                               \
  X(const int64_t*, src)                                                     \
  X(const int64_t*, dst)                                                     \
  X(int64_t, num_edges)                                                      \
  X(int64_t, num_src)                                                        \
  X(int64_t, num_dst)                                                        \
  X(int64_t, self_loops)                                                     \
  X(int64_t, num_threads)                                                    \
  /* [2, num_edges] */                                                       \
  X(int64_t*, copy)                                                          \
  /* [num_dst + 2], then [num_edges + loops] each */                         \
  X(int64_t*, dst_ptr)                                                       \
  X(int64_t*, dst_col)                                                       \
  X(int64_t*, dst_eid)                                                       \
  /* [num_src + 1], then [dst_ptr[num_dst]] each */                          \
  X(int64_t*, src_ptr)                                                       \
  X(int64_t*, src_pos)                                                       \
  X(int64_t*, src_row)

typedef struct Gatv2LayoutArgs {
  GATV2_LAYOUT_FIELDS(GATV2_DECLARE_FIELD)
} Gatv2LayoutArgs;
#undef GATV2_DECLARE_FIELD

int64_t gatv2_abi_version(void);
// "name:offset:size,..." for every field of Gatv2Args, then ";" and the
// same for Gatv2LayoutArgs.
const char* gatv2_args_layout(void);

// The CPU levels the kernels are compiled for, best first
// ("avx512,avx2,default" on x86-64), those this CPU runs, and the one in
// use (at load: the best this CPU runs).
const char* gatv2_capabilities(void);
const char* gatv2_supported_capabilities(void);
const char* gatv2_capability(void);
// Selects a level by name; 0 on success, -1 for an unknown name, -2 for a
// level this CPU cannot run.
int gatv2_set_capability(const char* name);

// How the float32 kernels run heads x channels, written to fixed[3]: the
// heads and the channels per head that they fix at compile time, each 0
// where they read it at run time, for heads of the width fixed[2], the
// channels rounded up to whole blocks of 8. Callers pad float32 heads to
// that width with zero channels: the kernels for whole blocks are the
// fast ones.
int gatv2_compiled_shape(int64_t heads, int64_t channels, int64_t* fixed);

int gatv2_forward(const Gatv2Args* args);
int gatv2_backward_dst(const Gatv2Args* args);
int gatv2_backward_src(const Gatv2Args* args);
int gatv2_layout_by_destination(const Gatv2LayoutArgs* args);
int gatv2_layout_by_source(const Gatv2LayoutArgs* args);

// Dropout of the nonzero entries of the n entries of x (dtype as above),
// the input dropout of pyg_gatv2.models.sparse_feature_dropout, in two
// passes over num_runs runs of the entries, run r being the entries
// [n * r / num_runs, n * (r + 1) / num_runs). gatv2_count_nonzero writes
// offsets[num_runs + 1]: offsets[r] is the number of entries before run r
// that are not zero (NaN is not zero). gatv2_drop_nonzero reads those
// offsets and keep[offsets[num_runs]], one byte per nonzero entry in
// order (not 0: kept), and writes out[n]: x[i] * scale for a kept entry,
// x[i] * 0 for a dropped one (NaN for NaN or an infinity, as dropout
// gives) and 0 for an entry that is zero; scale is rounded to the dtype.
int gatv2_count_nonzero(int64_t dtype, const void* x, int64_t n,
                        int64_t num_runs, int64_t num_threads,
                        int64_t* offsets);
int gatv2_drop_nonzero(int64_t dtype, const void* x, int64_t n,
                       int64_t num_runs, int64_t num_threads,
                       const int64_t* offsets, const uint8_t* keep,
                       double scale, void* out);

// The linear map of a mostly-zero input (bag-of-words features), reading
// only its nonzero entries (NaN is not zero), each found as a bit of a
// compare mask: x [rows, in] row-major (dtype as above), weight_t
// [in, out_features] (the weight transposed), bias [out_features] or
// null. gatv2_sparse_linear writes out [rows, out_features] = x @ weight_t
// + bias, each row summing its products in the order of x's columns and
// then adding the bias. gatv2_sparse_linear_weight_grad writes grad_weight_t
// [in, out_features] = x^T @ grad_out, grad_out [rows, out_features]: run r
// of num_runs runs of the rows (as above) sums its rows in order into a
// buffer of its own, and the runs' sums are added in run order, so that
// the result depends on num_runs and not on num_threads. Where grad_bias
// [out_features] is not null, it gets the sum of the rows of grad_out,
// the gradient of the bias, summed the same way in the same pass.
int gatv2_sparse_linear(int64_t dtype, const void* x, int64_t rows,
                        int64_t in, const void* weight_t, const void* bias,
                        int64_t out_features, int64_t num_threads, void* out);
int gatv2_sparse_linear_weight_grad(int64_t dtype, const void* x,
                                    int64_t rows, int64_t in,
                                    const void* grad_out,
                                    int64_t out_features, int64_t num_runs,
                                    int64_t num_threads, void* grad_weight_t,
                                    void* grad_bias);

#ifdef __cplusplus
}
#endif

#endif  // PYG_GATV2_GATV2_H_
