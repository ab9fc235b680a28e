"""Mutation check: deliberate faults in copies of the kernels, each of which
some test must catch.

    python tests/mutations.py              # every fault (make mutations)
    python tests/mutations.py --list       # the faults, without running
    python tests/mutations.py --jobs 1     # one pytest run at a time
    python tests/mutations.py cpp_grad_out_scaled layout_cache_stale

The working tree (tracked files and untracked ones git does not ignore) is
copied into a temporary folder, once for each of ``--jobs`` runs at a time
(as many as the process may use cores). The C++ kernels are built, with the
flags of ``pyg_gatv2/fused/_kernels/compile_flags.txt`` at ``-O1``, once for
the copies and once more for each fault in their sources
(``pyg_gatv2/fused/_kernels/``), each in a copy of its own with that fault,
as many builds at a time as the process may use cores. The tests of every
fault first run on the unchanged copies and must pass there. Then each
fault, in a copy no other run is using, edits the copy's source (one exact
text, found exactly once, replaced); the library built with that fault takes
the place of the copy's if the fault is in the kernels, the fault's tests
run with ``-x``, and the source (and the library) are restored. A fault is
*caught* when its tests fail; the table names the first failing test.
A fault that no test catches, a fault whose text is not found, or tests
that fail on the unchanged copy make the script exit with an error.
"""
import argparse
import concurrent.futures
import dataclasses
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
# The sources of the C++ kernels: a fault in any of them rebuilds the
# library, which is built beside the package's fused/ modules.
KERNELS = 'pyg_gatv2/fused/_kernels/'
CPP_KERNELS = KERNELS + 'kernels.inc'
CPP_INTERFACE = KERNELS + 'gatv2.cpp'
LIBRARY_DIR = 'pyg_gatv2/fused'
LIBRARY_GLOB = '_cpp*.so'
# The flags every build of the kernels shares (setup.py's too), at -O1
# rather than setup.py's -O3: a fault changes what the kernels compute at
# any level of optimization, and an -O1 build takes less than half the time
# (make sanitize builds at -O1 too).
COMPILE_FLAGS = KERNELS + 'compile_flags.txt'
# Seconds one pytest run or one build may take before the check gives up.
TIMEOUT = 900


@dataclasses.dataclass(frozen=True)
class Fault:
    """One deliberate fault: in ``path``, ``old`` becomes ``new``; ``tests``
    are the pytest node ids or files that must catch it, narrowed to those
    whose names match the ``-k`` expression ``keyword`` where one is
    given."""
    name: str
    what: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    keyword: str = ''

    def selection(self) -> list[str]:
        return list(self.tests) + (['-k', self.keyword] if self.keyword
                                   else [])


FIRST_ORDER = ('tests/test_conv_random.py::'
               'test_first_order_gradients_on_each_backend_match_pyg')
CPU_KERNELS = ('tests/test_fused_op_random.py::'
               'test_cpu_kernels_match_the_reference')
LAYER_RANDOM = ('tests/test_conv_random.py::'
                'test_random_graphs_and_options_match_pyg')
TRITON = 'tests/test_fused_backends_triton.py'
CPP_LIBRARY = 'tests/test_fused_cpp_library.py'
BACKENDS = 'tests/test_fused_backends.py'
LAYOUT = 'tests/test_fused_layout.py'
CHUNKED = ('tests/test_fused_op_random.py::'
           'test_cpp_kernels_with_nodes_cut_into_chunks_match_the_reference')

FAULTS = (
    # The C++ kernels.
    Fault('cpp_grad_out_scaled',
          'C++ backward by destination: dL/dalpha term scaled by 1.01',
          CPP_KERNELS,
          'gw[h] = dot(gi + h * C, rows.xj + h * C, ch);',
          'gw[h] = T(1.01) * dot(gi + h * C, rows.xj + h * C, ch);',
          (FIRST_ORDER, ), 'cpp'),
    Fault('cpp_slope_in_backward_src',
          'C++ backward by source: LeakyReLU slope fixed at 0.2',
          CPP_KERNELS,
          'if (z <= T(0)) d *= slope;',
          'if (z <= T(0)) d *= T(0.2);',
          (FIRST_ORDER, ), 'cpp'),
    Fault('cpp_forward_skips_last_in_edge',
          "C++ forward: a node's last in-edge left out of the weighted sum",
          CPP_KERNELS,
          '    for (int64_t k = start; k < end; ++k) {\n'
          '      const T* xj = x_l + col[k] * HC;\n'
          '      const T* wk = w + (k - start) * H;',
          '    for (int64_t k = start; k < end - 1; ++k) {\n'
          '      const T* xj = x_l + col[k] * HC;\n'
          '      const T* wk = w + (k - start) * H;',
          (CPU_KERNELS, ), 'cpp'),
    Fault('cpp_forward_ignores_dropout',
          'C++ forward: the dropout mask not applied to the messages',
          CPP_KERNELS,
          'const T p = dropout ? wk[h] * dropout[h] : wk[h];',
          'const T p = wk[h];',
          (CPU_KERNELS, ), 'cpp'),
    Fault('cpp_chunks_merged_unscaled',
          "C++ forward: a chunked node's chunks merged without rescaling "
          'each to the largest logit of all',
          CPP_KERNELS,
          'const T scale = std::exp(part_m[q * H + h] - m);',
          'const T scale = T(1);',
          (CHUNKED, )),
    Fault('cpp_chunk_alpha_unscaled',
          "C++ forward: a chunk's attention weights left relative to the "
          "chunk's own largest logit",
          CPP_KERNELS,
          'alpha[eid[k] * H + h] *= scale[h];',
          'alpha[eid[k] * H + h] *= T(1);',
          (CHUNKED, )),
    Fault('cpp_chunk_delta_of_the_first_chunk',
          "C++ backward by destination: D_i of a chunked node taken from "
          'its first chunk alone',
          CPP_KERNELS,
          '        for (int64_t q = first + 1; q < stop; ++q)\n'
          '          node_delta += part_delta[q * H + h];',
          '        for (int64_t q = first + 1; q < first; ++q)\n'
          '          node_delta += part_delta[q * H + h];',
          (CHUNKED, )),
    Fault('cpp_chunk_src_gradient_last_part_dropped',
          "C++ backward by source: the last chunk's part of a chunked "
          "node's gradient of x_l left out",
          CPP_KERNELS,
          '    for (int64_t q = first + 1; q < stop; ++q) {\n'
          '      const T* part = part_xl.data() + q * HC;',
          '    for (int64_t q = first + 1; q < stop - 1; ++q) {\n'
          '      const T* part = part_xl.data() + q * HC;',
          (CHUNKED, )),
    Fault('cpp_fixed_shape_backward_src_one_head_short',
          'C++ backward by source, fixed shapes only: the last head left '
          'out',
          CPP_KERNELS,
          '  T* grad_xl = static_cast<T*>(a.grad_x_l);\n'
          '  // The shape, fixed at compile time where with_shape fixes '
          'it.\n'
          '  const int64_t H = FixedH ? FixedH : a.heads;',
          '  T* grad_xl = static_cast<T*>(a.grad_x_l);\n'
          '  // The shape, fixed at compile time where with_shape fixes '
          'it.\n'
          '  const int64_t H = FixedH ? FixedH - 1 : a.heads;',
          ('tests/test_conv_random.py::'
           'test_cpp_float32_kernels_match_pyg_in_float64', )),
    Fault('cpp_backend_pads_with_ones',
          'C++ backend: heads padded to whole blocks with channels of ones '
          'instead of zeros',
          'pyg_gatv2/fused/backends/cpp.py',
          '    return F.pad(t, (0, width - t.size(-1)))',
          '    return F.pad(t, (0, width - t.size(-1)), value=1.0)',
          ('tests/test_fused_backends_cpp.py::'
           'test_cpp_kernels_of_other_shapes_match_float64', )),
    Fault('layer_wise_inference_skips_the_activation',
          'GATv2.inference: the ELU between layers left out',
          'pyg_gatv2/models.py',
          '                if layer < last:\n                    x = F.elu(x)',
          '                if layer < last:\n                    x = x',
          ('tests/test_models.py::'
           'test_layer_wise_inference_equals_the_full_batch_pass', )),
    Fault('layer_keeps_the_wrong_padded_channels',
          'GATv2Conv projecting into padded heads: the last channels of each '
          'padded head kept instead of the first',
          'pyg_gatv2/conv.py',
          '        out = out[..., :self.out_channels]',
          '        out = out[..., width - self.out_channels:]',
          ('tests/test_conv_random.py::'
           'test_cpp_float32_kernels_match_pyg_in_float64', )),
    Fault('cpp_avx2_level_reads_another_slope',
          'C++ kernels of the AVX2 level only: the LeakyReLU slope read '
          '1.5 times too large',
          CPP_INTERFACE,
          'namespace gatv2_avx2 {\n#include "kernels.inc"\n'
          '}  // namespace gatv2_avx2\n',
          '#define negative_slope negative_slope * 1.5\n'
          'namespace gatv2_avx2 {\n#include "kernels.inc"\n'
          '}  // namespace gatv2_avx2\n#undef negative_slope\n',
          ('tests/test_fused_backends_cpp.py::'
           'test_every_cpu_level_gives_the_results_of_the_others', )),
    Fault('cpp_record_without_x_l_accepted',
          'C++ interface: a record without x_l passed on to the kernels',
          CPP_INTERFACE,
          '  if (!all_set(a->x_l, a->x_r, a->att, a->dst_ptr, a->dst_col,',
          '  if (!all_set(a->x_r, a->att, a->dst_ptr, a->dst_col,',
          (f'{CPP_LIBRARY}::test_the_kernels_refuse_a_broken_record', )),
    Fault('cpp_dropout_skips_negative_entries',
          'C++ nonzero dropout: negative entries not counted as nonzero',
          CPP_INTERFACE,
          '    for (int64_t i = begin; i < end; ++i) count += x[i] != T(0);',
          '    for (int64_t i = begin; i < end; ++i) count += x[i] > T(0);',
          (f'{CPP_LIBRARY}::test_the_nonzero_dropout_draws_as_the_header_'
           'says', )),
    Fault('nonzero_dropout_traced_by_compile',
          'input dropout: no fake implementation, so torch.compile traces '
          'into the search for nonzero entries',
          'pyg_gatv2/models.py',
          '@_nonzero_dropout.register_fake\ndef _(x, p):\n'
          '    return x.new_empty(x.shape)\n',
          '',
          ('tests/test_models.py::test_sparse_feature_dropout_is_one_'
           'operator_to_torch_compile', )),
    Fault('cpp_sparse_weight_grad_drops_last_run',
          'C++ sparse-input weight gradient: the last run of rows left out '
          'of the sum',
          CPP_KERNELS,
          '      for (int64_t r = 1; r < num_runs; ++r) total += '
          'sums[r * stride + e];',
          '      for (int64_t r = 1; r < num_runs - 1; ++r) total += '
          'sums[r * stride + e];',
          (f'{CPP_LIBRARY}::test_the_sparse_linear_kernels_match_the_dense_'
           'products', )),
    Fault('cpp_sparse_bias_grad_skips_first_column',
          'C++ sparse-input bias gradient: the first column of grad_out '
          'left out of the sum',
          CPP_KERNELS,
          '          for (int64_t o = 0; o < width; ++o) bias_sum[o] += g[o];',
          '          for (int64_t o = 1; o < width; ++o) bias_sum[o] += g[o];',
          (f'{CPP_LIBRARY}::test_the_sparse_linear_kernels_match_the_dense_'
           'products', )),
    Fault('sparse_projection_ignores_infinite_weights',
          'projection: a weight that is not finite still takes the sparse '
          'product, which skips zero times infinity',
          'pyg_gatv2/projection.py',
          '    if not finite:\n        return False\n',
          '',
          ('tests/test_projection.py::test_a_weight_not_finite_goes_to_'
           'torch', )),
    Fault('huge_page_buffers_not_advised',
          'buffers: a large kernel output is mapped without the advice '
          'for huge pages',
          'pyg_gatv2/fused/buffers.py',
          '                self.memory.madvise(mmap.MADV_HUGEPAGE)\n',
          '                pass\n',
          ('tests/test_buffers.py::test_large_buffers_are_advised_huge_'
           'pages', )),
    Fault('buffer_cache_reuses_live_buffers',
          'buffers: a mapping that a tensor still holds is handed out again',
          'pyg_gatv2/fused/buffers.py',
          'return self.references() <= _UNSHARED\n',
          'return self.references() <= _UNSHARED + 1\n',
          ('tests/test_buffers.py', )),
    # The Python side of the C++ backend and its library.
    Fault('cpp_record_heads_and_channels_swapped',
          'record of the C++ passes: heads and channels swapped',
          'pyg_gatv2/fused/backends/cpp.py',
          'dtype=cpp_library.DTYPES[ops.x_l.dtype], heads=H, channels=C,',
          'dtype=cpp_library.DTYPES[ops.x_l.dtype], heads=C, channels=H,',
          (FIRST_ORDER, ), 'cpp'),
    Fault('library_record_layout_unchecked',
          'library loading: the layout of the records not compared, only '
          'the ABI version',
          'pyg_gatv2/fused/cpp_library.py',
          'if version != ABI_VERSION or layout != expected:',
          'if version != ABI_VERSION:',
          (f'{CPP_LIBRARY}::test_a_library_built_from_other_sources_is_'
           'refused', )),
    # The registry of backends.
    Fault('registry_auto_takes_triton_for_cpu',
          "registry: 'auto' takes any backend that runs the call, Triton's "
          'interpreter for CPU tensors too',
          'pyg_gatv2/fused/backends/__init__.py',
          '            if backend.chosen_for(device) and not backend.reasons('
          'device,\n'
          '                                                                  '
          'dtype):',
          '            if not backend.reasons(device, dtype):',
          (f'{BACKENDS}::test_auto_choice_for_cpu_tensors', )),
    Fault('registry_float16_taken_for_granted',
          'registry: every backend taken to run float16, whatever dtypes '
          'it declares',
          'pyg_gatv2/fused/backends/__init__.py',
          '        if dtype not in self.dtypes:',
          '        if dtype not in self.dtypes + (torch.float16, ):',
          (f'{BACKENDS}::test_a_backend_that_cannot_run_the_call_says_why_'
           'and_which_can', )),
    # The Triton kernels, in Triton's interpreter on the CPU.
    Fault('triton_no_online_rescale',
          'Triton forward: the running sums not rescaled when a later '
          'block raises the maximum',
          'pyg_gatv2/fused/backends/triton_kernels.py',
          "scale = tl.where(new_m == float('-inf'), 0.0, tl.exp(m - new_m))",
          "scale = tl.where(new_m == float('-inf'), 0.0, 1.0)",
          (f'{TRITON}::test_in_degrees_across_blocks', )),
    Fault('triton_backward_src_skips_last_block',
          'Triton backward by source: the block loop stops one edge early',
          'pyg_gatv2/fused/backends/triton_kernels.py',
          '    g_xl = tl.zeros((BLOCK_H, BLOCK_C), ACC)\n'
          '    for lo in range(start, end, BLOCK_E):',
          '    g_xl = tl.zeros((BLOCK_H, BLOCK_C), ACC)\n'
          '    for lo in range(start, end - 1, BLOCK_E):',
          (f'{TRITON}::test_out_degrees_across_blocks', )),
    Fault('triton_backward_src_drops_no_messages',
          'Triton backward by source: the message weights it recomputes '
          'leave out the dropout mask',
          'pyg_gatv2/fused/backends/triton_kernels.py',
          '                CHUNK=_CHUNK_EDGES, **flags)\n'
          '        if src_chunks',
          '                CHUNK=_CHUNK_EDGES, **dict(flags, HAS_MASK=False))\n'
          '        if src_chunks',
          (f'{TRITON}::test_matches_reference', )),
    Fault('triton_backward_dst_repeats_the_last_node',
          'Triton backward by destination: a program\'s nodes past the last '
          'one run over the last node\'s edges again',
          'pyg_gatv2/fused/backends/triton_kernels.py',
          '        end = tl.where(here, tl.load(ptr + i + 1), start)',
          '        end = tl.load(ptr + i + 1)',
          (f'{TRITON}::test_a_skewed_graph', )),
    Fault('triton_grad_xr_scaled',
          'Triton backward by destination: gradient of x_r scaled by 1.01',
          'pyg_gatv2/fused/backends/triton_kernels.py',
          'g_xr += tl.sum(dz, axis=0)',
          'g_xr += 1.01 * tl.sum(dz, axis=0)',
          (f'{TRITON}::test_matches_reference', )),
    Fault('triton_chunks_merged_without_rescale',
          'Triton forward: the softmax sums of a node\'s chunks merged '
          'without rescaling them to the largest maximum',
          'pyg_gatv2/fused/backends/triton_kernels.py',
          "chunk_scale = tl.where(none, 0.0, tl.exp(chunk_m - new_m))",
          "chunk_scale = tl.where(none, 0.0, 1.0)",
          (f'{TRITON}::test_a_skewed_graph', )),
    Fault('triton_chunk_sums_skip_the_last_chunk',
          'Triton backward: the gradient of a node cut into chunks sums '
          'all but its last chunk',
          'pyg_gatv2/fused/backends/triton_kernels.py',
          '    for chunk in range(tl.load(node_ptr + n), tl.load(node_ptr + n '
          '+ 1)):\n        total +=',
          '    for chunk in range(tl.load(node_ptr + n), tl.load(node_ptr + n '
          '+ 1) - 1):\n        total +=',
          (f'{TRITON}::test_a_skewed_graph', )),
    Fault('triton_backward_dst_hubs_counted_twice',
          'Triton backward by destination: a node cut into chunks is also '
          'run whole by its own program (its share of the gradient of att '
          'counted twice)',
          'pyg_gatv2/fused/backends/triton_kernels.py',
          '        end = tl.where(end - start > CHUNK, start, end)\n'
          '        g_xr, node_g_att',
          '        g_xr, node_g_att',
          (f'{TRITON}::test_a_skewed_graph', )),
    Fault('triton_autotune_ignored',
          'Triton backend: the autotuned kernels never launched, whatever '
          'the autotune flag says',
          'pyg_gatv2/fused/backends/triton_kernels.py',
          '    if autotune:\n        meta =',
          '    if False:\n        meta =',
          (f'{TRITON}::test_autotuning_times_its_configurations_and_keeps_'
           'the_fastest', )),
    Fault('triton_running_max_float32_in_float64',
          "Triton kernels: the online softmax's running maximum starts in "
          'float32 whatever the accumulation dtype (the interpreter runs '
          'it; the GPU compiler refuses a float32 loop variable that a '
          'float64 maximum replaces)',
          'pyg_gatv2/fused/backends/triton_kernels.py',
          '    dropout mask), [BLOCK_H, BLOCK_C]."""\n'
          "    m = tl.full((BLOCK_H, ), float('-inf'), ACC)",
          '    dropout mask), [BLOCK_H, BLOCK_C]."""\n'
          "    m = tl.full((BLOCK_H, ), float('-inf'), tl.float32)",
          ('tests/test_benchmarks_triton_compile.py::'
           'test_double_precision_kernels_compile', )),
    Fault('triton_forward_channels_unspecialized',
          'Triton kernels: the forward compiled once for any heads and '
          'channels, which hides that rows of 4 x 32 are 16-byte aligned '
          '(the same results, in 32-bit loads)',
          'pyg_gatv2/fused/backends/triton_kernels.py',
          '@triton.jit\ndef _forward(x_l',
          "@triton.jit(do_not_specialize=['H', 'C'])\ndef _forward(x_l",
          ('tests/test_benchmarks_triton_compile.py::test_the_headline_'
           'kernels_keep_their_registers_and_load_vectors', )),
    Fault('triton_copies_lower_precision_features',
          "Triton backend: autocast's bfloat16 projections read from "
          'float32 copies',
          'pyg_gatv2/fused/backends/triton.py',
          '    reads_lower_precision = True',
          '    reads_lower_precision = False',
          (f'{TRITON}::test_lower_precision_features_read_directly', )),
    # The operator.
    Fault('op_gradient_not_in_the_features_dtype',
          'operator: the gradient of destination features of a lower '
          "precision than 'att' returned in that of 'att', against its "
          'fake implementation',
          'pyg_gatv2/fused/op.py',
          '            grads.x_r.to(x_r.dtype), grads.att,',
          '            grads.x_r, grads.att,',
          ('tests/test_fused_op.py::test_opcheck', )),
    Fault('op_edge_gradient_not_in_the_edge_terms_dtype',
          "operator: the gradient of edge terms of a lower precision than "
          "'att' returned in that of 'att', against its fake implementation",
          'pyg_gatv2/fused/op.py',
          '            grads.edge_term.to(edge_term.dtype) if want_edge_grad',
          '            grads.edge_term if want_edge_grad',
          ('tests/test_fused_op.py::test_opcheck', )),
    Fault('op_lower_precision_edge_terms_passed_on',
          'operator: edge terms of a lower precision than \'att\' handed to '
          'the kernels as they are',
          'pyg_gatv2/fused/op.py',
          '             if t is not None and t.dtype != dtype}',
          '             if False}',
          ('tests/test_fused_op.py::test_lower_precision_edge_terms', )),
    # The chunked PyTorch fallback.
    Fault('torch_slope_in_backward',
          'torch backward: LeakyReLU slope fixed at 0.2',
          'pyg_gatv2/fused/backends/torch.py',
          'slopes = torch.stack([att, att * slope])',
          'slopes = torch.stack([att, att * 0.2])',
          (CPU_KERNELS, ), 'torch'),
    Fault('torch_chunk_drops_an_edge',
          'torch backward: each chunk but the last ends one edge early',
          'pyg_gatv2/fused/backends/torch.py',
          '        hi = min(lo + chunk_size, num)\n'
          '        r, j, e = row[lo:hi], col[lo:hi], eid[lo:hi]',
          '        hi = min(lo + chunk_size - 1, num)\n'
          '        r, j, e = row[lo:hi], col[lo:hi], eid[lo:hi]',
          (CPU_KERNELS, ), 'torch'),
    # The edge layout.
    Fault('layout_chunks_run_past_their_node',
          'layout: the last chunk of a node runs a full chunk, into the '
          'next node\'s edges',
          'pyg_gatv2/fused/layout.py',
          '    end = torch.minimum(start + size, ptr[node + 1])',
          '    end = start + size',
          (f'{LAYOUT}::test_chunks_cut_the_nodes_of_more_edges_than_their_'
           'size', )),
    Fault('layout_drops_a_self_loop',
          'layout (C++): the implicit self-loop of the last node dropped',
          CPP_INTERFACE,
          'a->num_edges + loops, a->num_dst + 1,',
          'a->num_edges + loops - (loops > 0), a->num_dst + 1,',
          (CPU_KERNELS, )),
    Fault('layout_keeps_existing_self_loops',
          'layout (C++): edges i -> i kept beside the implicit self-loops',
          CPP_INTERFACE,
          'return a.self_loops && s == d ? a.num_dst : d;',
          'return d;',
          (CPU_KERNELS, )),
    Fault('layout_threads_out_of_order',
          "layout (C++): the threads' runs of a key placed last thread "
          'first, an unstable sort',
          CPP_INTERFACE,
          'for (int u = 0; u < parts; ++u) {\n'
          '          const int64_t c',
          'for (int u = parts - 1; u >= 0; --u) {\n'
          '          const int64_t c',
          (f'{CPP_LIBRARY}::test_layouts_are_stable_counting_sorts', )),
    Fault('layout_by_source_wrong_row',
          'layout (C++): the CSC gives an edge the destination of the CSR '
          'position before it at the start of a row',
          CPP_INTERFACE,
          'while (ptr[r + 1] <= p) ++r;',
          'while (ptr[r + 1] < p) ++r;',
          (CPU_KERNELS, )),
    Fault('layout_torch_keeps_existing_self_loops',
          "layout (torch's sort, without the library): edges i -> i kept "
          'beside the implicit self-loops',
          'pyg_gatv2/fused/layout.py',
          'dst = torch.cat([dst.masked_fill(src == dst, num_dst), loop])',
          'dst = torch.cat([dst, loop])',
          (f'{LAYOUT}::'
           'test_torch_sort_builds_the_same_layout_as_the_counting_sort', )),
    Fault('layout_cache_stale',
          'layout cache: a cached layout reused after its edge_index changed',
          'pyg_gatv2/fused/layout.py',
          '        return same_values(copy, edge_index)',
          '        return True',
          (f'{LAYOUT}::test_in_place_edit_changes_the_result',
           f'{LAYOUT}::'
           'test_layout_cache_sees_edits_that_bypass_the_version_counter')),
    Fault('cache_copies_compared_by_shape',
          'caches: a kept copy of the indices taken as unchanged when only '
          'its shape matches',
          'pyg_gatv2/weak_cache.py',
          '    return bool(np.array_equal(copy.numpy(), tensor.numpy()))',
          '    return copy.shape == tensor.shape',
          ('tests/test_weak_cache.py', 'tests/test_adjacency.py',
           f'{LAYOUT}::test_in_place_edit_changes_the_result')),
    # Mini-batch training.
    Fault('sampling_without_the_step_seed',
          "mini-batches: a step's neighbours drawn from whatever state "
          "the sampling process's generator is in",
          'pyg_gatv2/experiments/training/sampling.py',
          '            torch.manual_seed(seed)\n',
          '',
          ('tests/test_experiments_training_sampling.py::'
           'test_workers_sample_the_batches_the_training_process_would', )),
    Fault('training_threads_beside_the_workers',
          "mini-batches: training takes all of its share of the cores, "
          "beside the loader's workers",
          'pyg_gatv2/experiments/training/sampling.py',
          '    return max(1, cores // processes - num_workers)\n',
          '    return max(1, cores // processes)\n',
          ('tests/test_experiments_training_sampling.py::'
           'test_training_threads_leave_a_core_per_worker', )),
    # DictionaryLookup.
    Fault('lookup_attention_of_the_first_graph_only',
          "DictionaryLookup: every graph's attention read as if it were "
          "the batch's first graph",
          'pyg_gatv2/experiments/lookup_model.py',
          '        graph = dst // (2 * k)\n',
          '        graph = torch.zeros_like(dst)\n',
          ('tests/test_experiments_lookup.py', ),
          'own_key_attention_reads'),
    Fault('lookup_values_drawn_as_permutations',
          "DictionaryLookup: the variant's values drawn without "
          'replacement',
          'pyg_gatv2/experiments/datasets/dictionary_lookup.py',
          "        repeats = self.values == 'with_replacement'\n",
          '        repeats = False\n',
          ('tests/test_experiments_datasets_dictionary_lookup.py', ),
          'replacement'),
    Fault('noise_edges_may_repeat_edges',
          'noise experiment: noise edges drawn over every pair of distinct '
          'nodes, edges of the graph included',
          'pyg_gatv2/experiments/noise.py',
          '        keys = keys[~torch.isin(keys, existing)]\n',
          '',
          ('tests/test_experiments_noise.py', )),
    # The layer.
    Fault('layer_loop_attr_fill_value_ignored',
          "layer: self-loop edge features always filled with 'mean'",
          'pyg_gatv2/conv.py',
          '                                   self.fill_value)',
          "                                   'mean')",
          (LAYER_RANDOM, )),
    Fault('layer_loop_attr_counts_self_loops',
          "layer: the graph's own self-loops counted in the features of "
          'the loops added in their place',
          'pyg_gatv2/functional.py',
          '    dst = torch.where(src == dst, rows, dst)\n',
          '',
          ('tests/test_conv.py::test_edge_features_with_self_loops_'
           'compile_to_one_graph', )),
    Fault('layer_dropout_mask_misplaced',
          "layer: the fused path's dropout mask laid over the edges in "
          'CSR order instead of edge order',
          'pyg_gatv2/conv.py',
          '        order = (layout.kept_eid if adjacency is None else',
          '        order = (layout.dst_eid if adjacency is None else',
          ('tests/test_conv.py::'
           'test_dropout_matches_pyg_under_the_same_seed', )),
    Fault('layer_residual_from_source',
          'layer: the residual taken from the source features',
          'pyg_gatv2/conv.py',
          '            res = self.res(x_dst)',
          '            res = self.res(x_src)',
          (LAYER_RANDOM, )),
    Fault('layer_checks_skipped_under_compile',
          'layer: the input checks left out of a compiled forward',
          'pyg_gatv2/conv.py',
          '        self._check_forward_input(x_src, x_dst, edge_index, '
          'edge_attr,\n',
          '        if not torch.compiler.is_compiling():\n'
          '          self._check_forward_input(x_src, x_dst, edge_index, '
          'edge_attr,\n',
          ('tests/test_conv.py::test_bad_input_is_reported', ),
          keyword='compiled'),
    Fault('op_edge_index_unchecked_under_compile',
          "op: a compiled call reads edge_index's edge count before "
          'checking its shape',
          'pyg_gatv2/fused/op.py',
          '        check_edge_index(edge_index, _NAME)\n',
          '',
          ('tests/test_fused_op.py::test_bad_input', ),
          keyword='compiled'),
    Fault('edge_attr_check_by_identity',
          "checks: edge_attr's width looked up with 'in', which does not "
          'compare a symbolic size by value',
          'pyg_gatv2/checks.py',
          '(expected != -1 and expected != dim)',
          'expected not in (-1, dim)',
          ('tests/test_conv.py::'
           'test_layer_compiled_for_dynamic_shapes_is_one_graph', )),
    Fault('process_group_ends_before_its_ddp_wrappers',
          'training: the process group destroyed before the DDP wrappers '
          'that nothing reaches are freed',
          'pyg_gatv2/experiments/training/distributed.py',
          '    gc.collect()\n    dist.destroy_process_group()',
          '    dist.destroy_process_group()',
          ('tests/test_experiments_training_distributed.py::'
           'test_the_group_ends_after_unreachable_ddp_wrappers', )),
    Fault('process_group_keeps_the_frames_of_an_error',
          'training: an error leaving the process group keeps the locals '
          'of the frames it left, DDP wrappers among them, past the end '
          'of the group',
          'pyg_gatv2/experiments/training/distributed.py',
          '        traceback.clear_frames(err.__traceback__)\n',
          '',
          ('tests/test_experiments_training_distributed.py::'
           'test_an_error_leaving_the_group_frees_the_wrappers_it_passed',
           )),
    Fault('weak_cache_serves_another_object',
          'caches: a value kept for a freed object served to a new one '
          'under the same key (a tensor reusing its id and memory)',
          'pyg_gatv2/weak_cache.py',
          '            if entry is None or entry[0]() is not obj:',
          '            if entry is None:',
          ('tests/test_weak_cache.py', )),
    # Sparse adjacencies on the fused path.
    Fault('sparse_edges_transposed',
          'sparse adjacency: the entries of a torch.sparse adjacency read '
          'as edges target -> source',
          'pyg_gatv2/adjacency.py',
          '    return torch.stack([col, row]).detach()',
          '    return torch.stack([row, col]).detach()',
          ('tests/test_conv.py::'
           'test_sparse_adjacency_runs_fused_and_matches_pyg', )),
    Fault('sparse_duplicates_kept_with_self_loops',
          'sparse adjacency: self-loops added to a torch.sparse adjacency '
          'with its duplicate entries kept (message passing merges them)',
          'pyg_gatv2/adjacency.py',
          '    if add_self_loops:\n        num_src = adj.size(1)',
          '    if False:\n        num_src = adj.size(1)',
          ('tests/test_conv.py::'
           'test_sparse_adjacency_runs_fused_and_matches_pyg',
           'tests/test_conv.py::'
           'test_uncoalesced_coo_adjacency_is_read_as_pyg_reads_it')),
    Fault('sparse_edge_cache_trusts_the_version_counter',
          'sparse adjacency: cached edges reused on the CPU without '
          'comparing the indices, after an edit that bypassed the version '
          'counter',
          'pyg_gatv2/adjacency.py',
          '            entry.copies is None or all(',
          '            True or all(',
          ('tests/test_adjacency.py', )),
    Fault('sparse_edge_cache_ignores_self_loops',
          'sparse adjacency: the edges cached with self-loops (merged '
          'duplicates) reused without them, and the other way round',
          'pyg_gatv2/adjacency.py',
          '    key = (id(adj), add_self_loops)',
          '    key = (id(adj), True)',
          ('tests/test_adjacency.py', )),
    Fault('sparse_attention_weights_with_the_loops_last',
          "layer: a sparse adjacency's attention weights returned in the "
          'order of an edge_index (the loops last), not in that of the '
          'adjacency message passing returns',
          'pyg_gatv2/conv.py',
          '                order = sparse_message_order(adjacency)',
          '                order = layout.kept_eid',
          ('tests/test_conv.py::'
           'test_sparse_adjacency_runs_fused_and_matches_pyg', )),
    Fault('sparse_dropout_drawn_with_the_loops_last',
          "layer: the dropout mask of a sparse adjacency's attention "
          'weights drawn in the order of an edge_index (the loops last), '
          'not in the order message passing attends over the adjacency',
          'pyg_gatv2/conv.py',
          '        order = (layout.kept_eid if adjacency is None else\n'
          '                 sparse_message_order(adjacency))',
          '        order = layout.kept_eid',
          ('tests/test_conv.py::'
           'test_sparse_adjacency_runs_fused_and_matches_pyg', )),
)


def tracked_files() -> list[str]:
    """The files of the working tree that git tracks, and the untracked ones
    it does not ignore."""
    out = subprocess.run(
        ['git', 'ls-files', '--cached', '--others', '--exclude-standard',
         '-z'], cwd=REPO, check=True, capture_output=True, timeout=60).stdout
    return [name for name in out.decode().split('\0')
            if name and (REPO / name).is_file()]


def copy_tree(dest: Path) -> None:
    for name in tracked_files():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)


def environment(copy: Path) -> dict:
    """The environment of the runs in ``copy``: its package first on the
    path, ahead of the editable install of the repository."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [str(copy)] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep)
                       if p])
    env['PYTHONDONTWRITEBYTECODE'] = '1'
    return env


def compile_flags(copy: Path) -> list:
    """The flags of ``copy``'s ``compile_flags.txt``, without comments."""
    text = (copy / COMPILE_FLAGS).read_text()
    return [flag for line in text.splitlines()
            for flag in line.split('#', 1)[0].split()]


def build(copy: Path) -> None:
    """Builds the C++ kernels in ``copy`` (in place) with the flags of
    ``compile_flags.txt`` at ``-O1``, under the name of the library
    setup.py built in the repository."""
    kernels = copy / KERNELS
    target = copy / LIBRARY_DIR / built_library(REPO).name
    proc = subprocess.run(
        [os.environ.get('CXX', 'g++'), *compile_flags(copy), '-O1',
         '-fPIC', '-shared', str(kernels / 'gatv2.cpp'), '-o', str(target)],
        cwd=copy, capture_output=True, text=True, timeout=TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError(f'building the C++ kernels failed:\n'
                           f'{proc.stderr[-3000:]}')


def built_library(copy: Path) -> Path:
    found = sorted((copy / LIBRARY_DIR).glob(LIBRARY_GLOB))
    if len(found) != 1:
        raise RuntimeError(f'expected one built C++ library in {copy}, '
                           f'found {[p.name for p in found]}')
    return found[0]


def check_imports_from(copy: Path) -> None:
    """Refuses to go on unless ``import pyg_gatv2`` in the runs takes the
    copy's package: faults in the copy must be what the tests see."""
    proc = subprocess.run(
        [sys.executable, '-c', 'import pyg_gatv2; print(pyg_gatv2.__file__)'],
        cwd=copy, env=environment(copy), capture_output=True, text=True,
        timeout=300, check=True)
    where = Path(proc.stdout.strip()).resolve()
    if copy.resolve() not in where.parents:
        raise RuntimeError(f'the tests would import pyg_gatv2 from {where}, '
                           f'not from the copy {copy}')


@dataclasses.dataclass
class Outcome:
    passed: bool
    first_failure: str
    seconds: float


FAILED_LINE = re.compile(r'^(?:FAILED|ERROR) (\S+)', re.M)


def run_tests(copy: Path, selection: list[str], stop_early: bool
              ) -> Outcome:
    """Runs pytest on the tests of ``selection`` (node ids and pytest
    options) in ``copy``; with ``stop_early`` it stops at the first
    failure."""
    command = [sys.executable, '-m', 'pytest', '-q', '-rfE',
               '-p', 'no:cacheprovider', *selection]
    if stop_early:
        command.insert(3, '-x')
    tic = time.monotonic()
    try:
        proc = subprocess.run(command, cwd=copy, env=environment(copy),
                              capture_output=True, text=True,
                              timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return Outcome(False, f'(timed out after {TIMEOUT} s)',
                       time.monotonic() - tic)
    seconds = time.monotonic() - tic
    if proc.returncode == 0:
        return Outcome(True, '', seconds)
    match = FAILED_LINE.search(proc.stdout)
    if match:
        return Outcome(False, match.group(1), seconds)
    if proc.returncode < 0:
        # The faulty kernels brought the test process down: a fault caught,
        # in the way that matters most to see.
        running = re.findall(r'^(tests/\S+) ', proc.stdout, re.M)
        where = f' in {running[-1]}' if running else ''
        return Outcome(False, f'(crashed with '
                       f'{signal.Signals(-proc.returncode).name}{where})',
                       seconds)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
    return Outcome(False, f'(exit {proc.returncode}: {" / ".join(tail)})',
                   seconds)


def apply(copy: Path, fault: Fault) -> str:
    """Applies ``fault`` to ``copy``; returns the original text."""
    path = copy / fault.path
    text = path.read_text()
    count = text.count(fault.old)
    if count != 1:
        raise LookupError(f'{fault.name}: the text to change occurs {count} '
                          f'times in {fault.path} (expected once)')
    path.write_text(text.replace(fault.old, fault.new))
    return text


def in_kernels(fault: Fault) -> bool:
    return fault.path.startswith(KERNELS)


def build_libraries(tmp: Path, faults: list[Fault]) -> dict[str, Path]:
    """Builds the C++ kernels in the copy ``tmp / 'repo'``, and those of
    each fault of ``faults`` in the kernels, each in a copy of the working
    tree of its own (``tmp / 'builds' / <fault>``) with that fault, as many
    at a time as the process may use cores; returns the built library of
    each fault (under ``''``, the unchanged one). A build that fails stops
    the check."""
    jobs = {'': tmp / 'repo'}
    for fault in faults:
        if in_kernels(fault):
            jobs[fault.name] = tmp / 'builds' / fault.name
            copy_tree(jobs[fault.name])
            apply(jobs[fault.name], fault)
    for copy in jobs.values():
        for stale in (copy / LIBRARY_DIR).glob(LIBRARY_GLOB):
            stale.unlink()
    workers = min(len(jobs), usable_cores())
    print(f'Building the C++ kernels {len(jobs)} times, {workers} at a '
          f'time ...', flush=True)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        done = {name: pool.submit(build, copy)
                for name, copy in jobs.items()}
        for name, future in done.items():
            try:
                future.result()
            except RuntimeError as error:
                raise RuntimeError(
                    f'{name or "the unchanged copy"}: {error}') from None
    return {name: built_library(copy) for name, copy in jobs.items()}


def check_fault(copy: Path, fault: Fault, library: Path,
                pristine_library: Path, faulty_library: Optional[Path]
                ) -> dict:
    """Runs the tests of ``fault`` in ``copy`` with the fault in its
    source and, for a fault in the kernels, ``faulty_library`` (built with
    it) in place of ``library``; restores both."""
    original = apply(copy, fault)
    try:
        if faulty_library is not None:
            shutil.copy2(faulty_library, library)
        outcome = run_tests(copy, fault.selection(), stop_early=True)
    finally:
        (copy / fault.path).write_text(original)
        if faulty_library is not None:
            shutil.copy2(pristine_library, library)
    return dict(fault=fault.name, what=fault.what, file=fault.path,
                caught=not outcome.passed,
                caught_by=outcome.first_failure or '-',
                seconds=outcome.seconds)


def table(rows: list[dict]) -> str:
    lines = ['| fault | what | file | caught by | seconds |',
             '|---|---|---|---|---|']
    for row in rows:
        by = row['caught_by'] if row['caught'] else '**SURVIVED**'
        lines.append(f"| {row['fault']} | {row['what']} | {row['file']} | "
                     f"{by} | {row['seconds']:.0f} |")
    return '\n'.join(lines)


def select(names: list[str]) -> list[Fault]:
    if not names:
        return list(FAULTS)
    known = {fault.name: fault for fault in FAULTS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f'unknown faults: {", ".join(unknown)}; '
                         f'see --list')
    return [known[name] for name in names]


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


def prepare_copies(tmp: Path, jobs: int, faults: list[Fault]
                   ) -> tuple[list[Path], Path, dict[str, Path]]:
    """The copies the tests run in (``tmp / 'repo'`` and ``jobs - 1``
    more), each with the unchanged library; the unchanged library kept
    aside; the library of each fault in the kernels."""
    copy = tmp / 'repo'
    copy_tree(copy)
    for fault in faults:  # every text must be there before any build
        (copy / fault.path).write_text(apply(copy, fault))
    tic = time.monotonic()
    libraries = build_libraries(tmp, faults)
    print(f'Built in {time.monotonic() - tic:.0f} s.', flush=True)
    library = libraries.pop('')
    pristine = tmp / library.name
    shutil.copy2(library, pristine)
    copies = [copy]
    for slot in range(1, jobs):
        copies.append(tmp / f'repo-{slot}')
        copy_tree(copies[-1])
        shutil.copy2(pristine, copies[-1] / library.relative_to(copy))
    for each in copies:
        check_imports_from(each)
    return copies, pristine, libraries


def run_baseline(copies: list[Path], tests: list[str]) -> Outcome:
    """Runs ``tests`` on the unchanged copies, split among them."""
    shares = [tests[i::len(copies)] for i in range(len(copies))]
    runs = [(copy, share) for copy, share in zip(copies, shares, strict=True)
            if share]
    with concurrent.futures.ThreadPoolExecutor(len(runs)) as pool:
        outcomes = list(pool.map(
            lambda run: run_tests(*run, stop_early=False), runs))
    failed = [outcome for outcome in outcomes if not outcome.passed]
    return Outcome(not failed, failed[0].first_failure if failed else '',
                   max(outcome.seconds for outcome in outcomes))


def check_faults(copies: list[Path], faults: list[Fault], pristine: Path,
                 libraries: dict[str, Path]) -> list[dict]:
    """Checks every fault, as many at a time as there are copies, each in
    a copy no other check is using; the rows in the order of ``faults``."""
    free: queue.SimpleQueue = queue.SimpleQueue()
    for copy in copies:
        free.put(copy)

    def check(fault: Fault) -> dict:
        copy = free.get()
        try:
            row = check_fault(copy, fault, built_library(copy), pristine,
                              libraries.get(fault.name))
        finally:
            free.put(copy)
        by = row['caught_by'] if row['caught'] else 'SURVIVED'
        print(f"{fault.name}: {by} ({row['seconds']:.0f} s)", flush=True)
        return row

    with concurrent.futures.ThreadPoolExecutor(len(copies)) as pool:
        return list(pool.map(check, faults))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('faults', nargs='*',
                        help='names of the faults to check (default: all)')
    parser.add_argument('--list', action='store_true',
                        help='list the faults and their tests, then stop')
    parser.add_argument('--jobs', type=int, default=usable_cores(),
                        help='pytest runs at a time, each in a copy of its '
                        'own (default: the usable cores)')
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error('--jobs must be at least 1')
    faults = select(args.faults)
    if args.list:
        for fault in faults:
            print(f"{fault.name}: {fault.what} ({fault.path}; "
                  f"{' '.join(fault.selection())})")
        return 0
    jobs = min(args.jobs, len(faults))
    with tempfile.TemporaryDirectory(prefix='pyg_gatv2_mutations_') as tmp:
        copies, pristine, libraries = prepare_copies(Path(tmp), jobs,
                                                     faults)
        tests = list(dict.fromkeys(t for f in faults for t in f.tests))
        print(f'Unchanged copies: {" ".join(tests)} ...', flush=True)
        baseline = run_baseline(copies, tests)
        if not baseline.passed:
            print(f'The tests fail without any fault '
                  f'({baseline.first_failure}); fix them first.',
                  file=sys.stderr)
            return 1
        print(f'Passed in {baseline.seconds:.0f} s. {len(faults)} faults, '
              f'{jobs} at a time:', flush=True)
        tic = time.monotonic()
        rows = check_faults(copies, faults, pristine, libraries)
    print(table(rows))
    print(f'Faults checked in {time.monotonic() - tic:.0f} s.')
    survived = [row['fault'] for row in rows if not row['caught']]
    if survived:
        print(f'Not caught: {", ".join(survived)}', file=sys.stderr)
        return 1
    print(f'All {len(rows)} faults caught.')
    return 0


if __name__ == '__main__':
    sys.exit(main())
