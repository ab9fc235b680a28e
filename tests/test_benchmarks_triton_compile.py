"""benchmarks/triton_compile.py: the Triton kernels compiled for the A100
(sm_80), the H100 (sm_90) and the B200 (sm_100) without a GPU. The
interpreter that runs them in the other tests never compiles them, so this
is where code that only the GPU compiler rejects, or a spilling kernel,
shows up on the CPU."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'
sys.path.insert(0, str(BENCHMARKS))
import triton_compile  # noqa: E402
from _common import read_csv  # noqa: E402

pytest.importorskip('triton', reason='triton is a test dependency: '
                    'make setup')

ARCHES = ('sm_80', 'sm_90', 'sm_100')
# What the GPU benchmarks measure (gpu_checks.sh float32, bfloat16 and
# autocast): the step of 4 heads x 32 channels, no option.
HEADLINE = ('4x32 float32', '4x32 bfloat16',
            '4x32 autocast (bfloat16 features, float32 att)')


def compile_report(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env['TRITON_CACHE_DIR'] = str(out / 'triton_cache')
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / 'triton_compile.py'), '--out',
         str(out), *args], env=env, capture_output=True, text=True,
        timeout=900)


def compiled(out: Path, arches, cases) -> list:
    args = ['--arch', *arches]
    for case in cases:
        args += ['--case', case]
    run = compile_report(out, *args)
    assert run.returncode == 0, run.stderr[-3000:]
    return read_csv(out / 'triton_compile.csv')


@pytest.fixture(scope='module')
def report(tmp_path_factory):
    # Every case on each architecture, but autotuning's configurations
    # (four fifths of the compiling) on sm_90 only.
    cases = [c.name for c in triton_compile._cases()]
    tuned = [name for name in cases if name.endswith('autotuned')]
    return (compiled(tmp_path_factory.mktemp('untuned'), ['80', '90', '100'],
                     [c for c in cases if c not in tuned])
            + compiled(tmp_path_factory.mktemp('tuned'), ['90'], tuned))


def test_every_kernel_compiles_for_each_architecture_in_every_case(report):
    kernels = set(triton_compile.launched_kernels())
    assert len(kernels) == 9
    cases = {c.name for c in triton_compile._cases()}
    for arch in ARCHES:
        rows = [r for r in report if r['arch'] == arch]
        assert {r['kernel'] for r in rows} == kernels
        expected = cases if arch == 'sm_90' else {
            c for c in cases if not c.endswith('autotuned')}
        assert {r['case'] for r in rows} == expected


def test_the_options_compile_their_own_kernels(report):
    def flags(case, kernel):
        return {r['flags'] for r in report if r['case'] == case
                and r['kernel'] == kernel and r['arch'] == 'sm_90'}

    assert flags('4x32 float32, every option', '_forward') == {
        'HAS_MASK WANT_ALPHA HAS_EDGE'}
    assert flags('4x32 float32, every option', '_backward_dst') == {
        'WANT_EDGE_GRAD HAS_EDGE HAS_MASK HAS_GRAD_ALPHA'}
    assert flags('4x32 float32, 131072 nodes, int32 indices',
                  '_backward_dst') == {'NODES=16'}
    # Autotuning compiles a kernel per configuration: 4 block sizes x 3
    # warp counts, all fitting 4 x 32 rows.
    for kernel in ('_forward', '_backward_dst', '_backward_src'):
        tuned = {(r['block_e'], r['warps']) for r in report
                 if r['case'] == '4x32 float32, autotuned'
                 and r['kernel'] == kernel and r['arch'] == 'sm_90'}
        assert tuned == {(str(b), str(w)) for b in (4, 8, 16, 32)
                         for w in (2, 4, 8)}, kernel


@pytest.fixture(scope='module')
def headline(tmp_path_factory):
    return compiled(tmp_path_factory.mktemp('headline'), ['80', '90', '100'],
                    HEADLINE)


@pytest.mark.parametrize('case', HEADLINE)
@pytest.mark.parametrize('arch', ARCHES)
def test_the_headline_kernels_keep_their_registers_and_load_vectors(
        headline, arch, case):
    rows = [r for r in headline if r['arch'] == arch and r['case'] == case]
    assert {r['kernel'] for r in rows} == {
        '_forward', '_backward_dst', '_backward_src'}
    for r in rows:
        assert int(r['spilled']) == 0, r
        # Whole rows of 4 x 32 features in 128-bit loads.
        assert int(r['widest_load']) == 128, r
        assert 0 < int(r['registers']) <= 255
        assert 0 < float(r['occupancy']) <= 1


def test_double_precision_kernels_compile(tmp_path):
    # float64 accumulates in float64 throughout: the GPU compiler refuses a
    # loop variable that starts in float32 and is replaced by a float64
    # value, which the interpreter runs. (The test above covers it too,
    # among every case, at some minutes.)
    rows = compiled(tmp_path, ['90'], ['4x32 float64'])
    assert {'_forward', '_backward_dst', '_backward_src'} <= {
        r['kernel'] for r in rows}


def test_occupancy_counts_registers_warps_and_shared_memory():
    # 56 registers x 32 threads = 1792 per warp (7 units of 256); 4 warps
    # take 7168 of the 65536: 9 blocks, 36 of the 64 warps.
    assert triton_compile.occupancy(90, 56, 1024, 4) == 36 / 64
    # 255 registers: 8160 per warp, 8192 allocated: 8 warps.
    assert triton_compile.occupancy(90, 255, 0, 2) == 8 / 64
    # 32 registers: the 16 blocks of 4 warps that the warps allow.
    assert triton_compile.occupancy(80, 32, 0, 4) == 1.0
    # Shared memory: 100 KB per block, 2 blocks of the 228 KB.
    assert triton_compile.occupancy(90, 32, 100 << 10, 4) == 8 / 64


def test_it_refuses_to_run_under_the_interpreter(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET='1')
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / 'triton_compile.py'), '--out',
         str(tmp_path)], env=env, capture_output=True, text=True,
        timeout=300)
    assert run.returncode == 2
    assert 'unset TRITON_INTERPRET' in run.stderr
