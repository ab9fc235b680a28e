"""The Triton kernels compiled for NVIDIA GPUs on a machine without one, and
what each compiled kernel takes of a multiprocessor.

    python benchmarks/triton_compile.py
    python benchmarks/triton_compile.py --arch 90 120 --out /tmp/report

Triton's interpreter, which runs the kernels in the tests on the CPU, does
not compile them: it would not see code the GPU compiler rejects, or a
kernel that spills its registers. This script compiles them as a GPU run
would: the layer's host code runs on CPU tensors (as under
``TRITON_INTERPRET=1``) while Triton compiles each launch for the target
GPU architecture (``--arch``, compute capability x 10: 80 for the A100, 90
for the H100 and H200, 100 for the B200, 120 for the RTX 50 series) down
to machine code with the ``ptxas`` that the triton package ships, and
launches nothing. The cases (``_cases``) cover every kernel and flag: the
shapes of rows of the benchmarks and of Cora's model, each dtype of the
features, autocast's bfloat16 features beside a float32 attention
vector, edge terms, dropout, attention weights, hubs cut into chunks,
int32 indices, graphs of many nodes, and every configuration that
autotuning tries.

For each compiled kernel the report gives registers per thread and bytes
of registers spilled to local memory (from ``ptxas``'s log: zero where the
registers suffice), shared memory, the widest load from global memory in
the PTX (128 bits where rows are read in vectors of four 32-bit words; 64
is a load of an int64 index), and the theoretical occupancy these allow
(resident warps per multiprocessor over the most it holds, as CUDA's
occupancy calculator counts them). Every kernel is compiled afresh (no
cache), so that ``ptxas`` runs. Nothing is timed. Writes
``triton_compile.md`` and ``.csv`` into ``--out``; exits with an error if
a kernel failed to compile or a kernel of ``triton_kernels`` was never
compiled.

Run it without ``TRITON_INTERPRET=1``: the interpreter replaces the
kernels when they are defined.
"""
import argparse
import contextlib
import dataclasses
import importlib.util
import io
import os
import re
import sys
import time
from pathlib import Path
from typing import Iterator, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import (  # noqa: E402
    command_line,
    markdown_table,
    write_report,
)

# Per multiprocessor, for the occupancy: 32-bit registers, resident warps
# and blocks, and shared memory (bytes), by compute capability (CUDA C++
# Programming Guide, "Compute Capabilities").
_REGISTERS = 65536
_MAX_WARPS = {80: 64, 86: 48, 89: 48, 90: 64, 100: 64, 120: 48}
_MAX_BLOCKS = {80: 32, 86: 16, 89: 24, 90: 32, 100: 32, 120: 32}
_SHARED = {80: 164 << 10, 86: 100 << 10, 89: 100 << 10, 90: 228 << 10,
           100: 228 << 10, 120: 100 << 10}
# Shared memory the system reserves per block (compute capability 8.0 on).
_RESERVED_SHARED = 1024
# Registers are allocated per warp, in units of 256.
_REGISTER_UNIT = 256


@dataclasses.dataclass(frozen=True)
class Case:
    """One call of the fused attention and its backward, on a random
    graph of ``nodes`` sources and destinations and 4 edges per node (at
    most 16,384: nothing runs, so the sizes only choose the kernels)."""
    name: str
    heads: int = 4
    channels: int = 32
    dtype: torch.dtype = torch.float32
    # The attention vector's dtype (the features' where None).
    att_dtype: Optional[torch.dtype] = None
    edge_terms: bool = False
    dropout: bool = False
    # Returns the attention weights and differentiates through them.
    weights: bool = False
    # Destination 0 and source 1 get more edges than a chunk holds.
    hubs: bool = False
    nodes: int = 64
    index: torch.dtype = torch.int64
    autotune: bool = False


def _cases() -> List[Case]:
    from pyg_gatv2.fused.backends.triton_kernels import _MANY_NODES
    bf16, f32 = torch.bfloat16, torch.float32
    every = dict(edge_terms=True, dropout=True, weights=True, hubs=True)
    return [
        Case('4x32 float32'),
        Case('4x32 bfloat16', dtype=bf16),
        Case('4x32 float16', dtype=torch.float16),
        Case('4x32 float64', dtype=torch.float64),
        Case('4x32 autocast (bfloat16 features, float32 att)', dtype=bf16,
             att_dtype=f32),
        Case('4x32 float32, every option', **every),
        Case('4x32 autocast, every option', dtype=bf16, att_dtype=f32,
             **every),
        Case(f'4x32 float32, {_MANY_NODES} nodes, int32 indices',
             nodes=_MANY_NODES, index=torch.int32, hubs=True),
        Case('8x8 float32 (Cora, hidden layer)', heads=8, channels=8),
        Case('1x7 float32 (Cora, output layer)', heads=1, channels=7),
        Case('4x32 float32, autotuned', hubs=True, weights=True,
             autotune=True),
        Case('4x32 bfloat16, autotuned', dtype=bf16, hubs=True,
             autotune=True),
    ]


class _Target:
    """A stand-in for Triton's CUDA driver that names a GPU architecture
    and has no device: enough for Triton to compile for it."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget
        self.target = GPUTarget('cuda', arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: Optional[int] = None) -> int:
        return 0

    def get_benchmarker(self):
        return _untimed


def _untimed(kernel_call, quantiles):
    """What autotuning times: nothing (every configuration compiles)."""
    kernel_call()
    return [0.0] * len(quantiles)


@dataclasses.dataclass
class Compiled:
    """One launch compiled: the kernel's name, its flags that are set
    (and ``NODES`` above one), edges per block (none for the kernels that
    merge chunks), warps, Triton's compiled kernel and what ``ptxas``
    wrote while compiling it."""
    kernel: str
    flags: str
    block_e: Optional[int]
    warps: int
    binary: object
    log: str


@contextlib.contextmanager
def compiling_for(arch: int) -> Iterator[List[Compiled]]:
    """Within the block, every launch of a Triton kernel compiles it for
    ``arch`` and returns without running it; yields the list of what was
    compiled, in order. Triton's driver stays the stand-in afterwards
    (without a GPU, Triton has no other)."""
    from triton import knobs
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    from pyg_gatv2.fused.backends import triton_kernels

    compiled: List[Compiled] = []
    launch = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        with contextlib.redirect_stdout(io.StringIO()) as log:
            binary = launch(self, *args, grid=grid, warmup=True, **kwargs)
        flags = ' '.join(k for k, v in kwargs.items()
                         if k.isupper() and v is True)
        if 'NODES' in kwargs and kwargs['NODES'] > 1:
            flags = f"{flags} NODES={kwargs['NODES']}".strip()
        compiled.append(Compiled(self.__name__, flags,
                                 kwargs.get('BLOCK_E'),
                                 binary.metadata.num_warps, binary,
                                 log.getvalue()))
        return binary

    kernels = [f for f in vars(triton_kernels).values()
               if isinstance(f, JITFunction)]
    tuners = list(triton_kernels._TUNED.values())
    driver.set_active(_Target(arch))
    JITFunction.run = compile_only
    settings = (knobs.compilation.always_compile,
                knobs.nvidia.dump_ptxas_log)
    knobs.compilation.always_compile = True
    knobs.nvidia.dump_ptxas_log = True
    for kernel in kernels:
        kernel.device_caches.clear()
    for tuner in tuners:
        tuner.cache.clear()
        tuner._do_bench = _untimed
    try:
        yield compiled
    finally:
        JITFunction.run = launch
        (knobs.compilation.always_compile,
         knobs.nvidia.dump_ptxas_log) = settings
        for kernel in kernels:
            kernel.device_caches.clear()
        for tuner in tuners:
            tuner.cache.clear()


def launched_kernels() -> List[str]:
    """The kernels of ``triton_kernels``: the functions that read their
    program id (the others are inlined into them), whether Triton compiles
    them or its interpreter runs them."""
    import inspect

    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    from pyg_gatv2.fused.backends import triton_kernels
    return sorted(
        name for name, f in vars(triton_kernels).items()
        if isinstance(f, (JITFunction, InterpretedFunction))
        and 'tl.program_id' in inspect.getsource(f.fn))


def _graph(case: Case) -> torch.Tensor:
    from pyg_gatv2.fused.backends.triton_kernels import _CHUNK_EDGES
    gen = torch.Generator().manual_seed(0)
    n = case.nodes
    parts = [torch.randint(0, n, (2, 4 * min(n, 4096)), generator=gen)]
    if case.hubs:
        hub = 2 * _CHUNK_EDGES
        parts.append(torch.stack([torch.randint(0, n, (hub, ),
                                                generator=gen),
                                  torch.zeros(hub, dtype=torch.long)]))
        parts.append(torch.stack([torch.ones(hub, dtype=torch.long),
                                  torch.randint(0, n, (hub, ),
                                                generator=gen)]))
    return torch.cat(parts, 1).to(case.index)


def run_case(case: Case) -> None:
    """One forward and backward of ``case`` on the triton backend."""
    from pyg_gatv2.fused import fused_gatv2_attention
    from pyg_gatv2.fused.backends import triton as triton_backend

    edge_index = _graph(case)
    n, H, C = case.nodes, case.heads, case.channels
    att_dtype = case.att_dtype or case.dtype

    def leaf(*shape, dtype=case.dtype):
        return torch.zeros(*shape, dtype=dtype, requires_grad=True)

    x_l, x_r, att = leaf(n, H, C), leaf(n, H, C), leaf(H, C, dtype=att_dtype)
    num_virtual = edge_index.size(1) + n
    edge_term = loop_term = mask = None
    if case.edge_terms:
        edge_term, loop_term = leaf(edge_index.size(1), H, C), leaf(n, H, C)
    if case.dropout:
        mask = torch.ones(num_virtual, H, dtype=att_dtype)
    triton_backend.autotune = case.autotune
    try:
        result = fused_gatv2_attention(
            x_l, x_r, att, edge_index, edge_term, loop_edge_term=loop_term,
            add_self_loops=True, dropout_mask=mask,
            return_attention_weights=case.weights, backend='triton')
        out, weights = result if case.weights else (result, None)
        loss = out.float().sum()
        if weights is not None:
            loss = loss + weights.float().sum()
        loss.backward()
    finally:
        triton_backend.autotune = False


def resources(binary, log: str, arch: int) -> dict:
    """Registers and spilled bytes (from ``ptxas``'s log), shared memory,
    the widest global load of the PTX, and the occupancy they allow."""
    used = re.search(r'Used (\d+) registers', log)
    spilled = re.search(r'(\d+) bytes spill stores', log)
    if used is None or spilled is None:
        raise RuntimeError(f'ptxas gave no register count:\n{log}')
    registers = int(used.group(1))
    shared = binary.metadata.shared
    widest = 0
    for vector, bits in re.findall(
            r'ld\.global(?:\.[a-z]+)*?(?:\.v(\d))?\.[bfsu](\d+)',
            binary.asm['ptx']):
        widest = max(widest, int(vector or 1) * int(bits))
    warps = binary.metadata.num_warps
    return dict(registers=registers, shared=shared,
                spilled=int(spilled.group(1)), widest_load=widest,
                occupancy=occupancy(arch, registers, shared, warps))


def occupancy(arch: int, registers: int, shared: int, warps: int) -> float:
    """Resident warps per multiprocessor over the most it holds, for
    blocks of ``warps`` warps of ``registers`` each and ``shared`` bytes."""
    per_warp = -(-registers * 32 // _REGISTER_UNIT) * _REGISTER_UNIT
    blocks = min(_MAX_BLOCKS[arch], _MAX_WARPS[arch] // warps,
                 _REGISTERS // (per_warp * warps),
                 _SHARED[arch] // (shared + _RESERVED_SHARED))
    return blocks * warps / _MAX_WARPS[arch]


def compile_all(arches: List[int], cases: List[Case]) -> List[dict]:
    os.environ['TRITON_INTERPRET'] = '1'   # CPU tensors for the backend
    from pyg_gatv2.fused import clear_layout_cache, cpp_library
    load = cpp_library.load
    # As on a GPU, torch builds the layouts (int32 where the indices are).
    cpp_library.load = lambda: None
    rows = []
    try:
        for arch in arches:
            for case in cases:
                start = time.perf_counter()
                with compiling_for(arch) as compiled:
                    run_case(case)
                clear_layout_cache()
                seen = set()
                for c in compiled:
                    if id(c.binary) in seen:
                        continue
                    seen.add(id(c.binary))
                    rows.append(dict(
                        arch=f'sm_{arch}', case=case.name, kernel=c.kernel,
                        flags=c.flags, block_e=c.block_e, warps=c.warps,
                        **resources(c.binary, c.log, arch)))
                print(f'sm_{arch}  {case.name}: {len(seen)} kernels, '
                      f'{time.perf_counter() - start:.1f} s', flush=True)
    finally:
        cpp_library.load = load
    return rows


# The report's columns: the CSV's keys, and the Markdown's headings.
COLUMNS = {'arch': 'arch', 'case': 'case', 'kernel': 'kernel',
           'flags': 'flags', 'block_e': 'edges per block', 'warps': 'warps',
           'registers': 'registers', 'shared': 'shared (bytes)',
           'spilled': 'spilled (bytes)', 'widest_load': 'widest load',
           'occupancy': 'occupancy'}


def markdown(rows: List[dict], arches: List[int]) -> str:
    import triton
    from triton.backends.nvidia.compiler import get_ptxas
    tools = ', '.join(f'sm_{arch}: ptxas {get_ptxas(arch).version}'
                      for arch in arches)
    shown = [{COLUMNS[k]: v for k, v in dict(
        r, kernel=f"`{r['kernel']}`", flags=r['flags'] or '-',
        block_e=r['block_e'] or '-',
        occupancy=f"{r['occupancy']:.0%}").items()} for r in rows]
    return '\n'.join([
        '# The Triton kernels compiled for NVIDIA GPUs', '',
        f'Command: `{command_line()}`', '',
        f'Versions: torch {torch.__version__}, Triton {triton.__version__}; '
        f'{tools}. Compiled without a GPU; nothing timed.', '',
        'Spilled: bytes of registers each thread spills to local memory. '
        'Widest load: bits of the widest load from global memory (128: '
        'rows read in vectors of four 32-bit words; 64: an int64 index). '
        'Occupancy: resident warps per multiprocessor over the most it '
        'holds.', '',
        markdown_table(shown, list(COLUMNS.values())), ''])


def main(argv: Optional[List[str]] = None) -> int:
    if importlib.util.find_spec('triton') is None:
        print("triton_compile.py needs triton: pip install "
              "'pyg-gatv2[gpu]'", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', type=int, nargs='+', default=[80, 90, 100],
                        choices=sorted(_MAX_WARPS),
                        help='compute capabilities x 10 (default: 80 90 '
                        '100)')
    parser.add_argument('--out', type=Path,
                        default=Path(__file__).parent / 'results')
    parser.add_argument('--case', action='append', default=None,
                        choices=[c.name for c in _cases()], metavar='NAME',
                        help='a case to compile, by name (repeat for '
                        'several; default: every case)')
    args = parser.parse_args(argv)
    if os.environ.get('TRITON_INTERPRET') == '1':
        parser.error('unset TRITON_INTERPRET: the interpreter replaces the '
                     'kernels, which then cannot be compiled')
    cases = [c for c in _cases() if args.case is None or c.name in args.case]
    rows = compile_all(args.arch, cases)
    write_report(args.out / 'triton_compile', markdown(rows, args.arch),
                 rows, list(COLUMNS))
    missing = sorted(set(launched_kernels()) - {r['kernel'] for r in rows})
    if missing and args.case is None:
        print(f'never compiled: {", ".join(missing)}', file=sys.stderr)
        return 1
    print(f'{len(rows)} kernels compiled')
    return 0


if __name__ == '__main__':
    sys.exit(main())
