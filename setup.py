"""Builds the C++ kernels of the fused attention (``pyg_gatv2/fused/
_kernels/``) with OpenMP; everything else is in setup.cfg.

The library is loaded through ctypes (``pyg_gatv2/fused/cpp_library.py``),
not imported, so it needs neither torch nor Python headers to build. It is
optional: without a C++ compiler with OpenMP the package installs without
it and the fused path runs its PyTorch backend. The library is compiled
for the x86-64 baseline and holds the kernels once more for AVX2 and for
AVX-512, picked at run time by what the CPU supports: a wheel built on one
machine runs on any other of the same platform.
"""
from setuptools import Extension, setup

KERNELS = 'pyg_gatv2/fused/_kernels'

setup(ext_modules=[
    Extension(
        'pyg_gatv2.fused._cpp',
        sources=[f'{KERNELS}/gatv2.cpp'],
        depends=[f'{KERNELS}/gatv2.h', f'{KERNELS}/kernels.inc'],
        language='c++',
        # No -ffast-math: every sum keeps the order the source gives it.
        # No -march: the CPU levels are chosen inside, at run time.
        # -fno-trapping-math reorders nothing: it lets GCC turn LeakyReLU's
        # branch into a vector select, which under the default
        # -ftrapping-math only AVX-512's masked instructions allow; the
        # avx2 and default levels otherwise ran the channel loops one
        # element at a time, 10 to 30 times slower than avx512. (avx512
        # and default give the same bits as without it; avx2 moves by
        # rounding, where its vector loops fuse multiply-adds.)
        extra_compile_args=['-std=c++17', '-O3', '-fopenmp',
                            '-fno-math-errno', '-fno-trapping-math'],
        extra_link_args=['-fopenmp'],
        optional=True,
    )
])
