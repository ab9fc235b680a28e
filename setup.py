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
from pathlib import Path

from setuptools import Extension, setup

KERNELS = 'pyg_gatv2/fused/_kernels'
# The flags every build of the kernels shares, and why each.
FLAGS = Path(__file__).parent / KERNELS / 'compile_flags.txt'


def compile_flags() -> list:
    """The flags of ``compile_flags.txt``, without its comments."""
    return [flag for line in FLAGS.read_text().splitlines()
            for flag in line.split('#', 1)[0].split()]


setup(ext_modules=[
    Extension(
        'pyg_gatv2.fused._cpp',
        sources=[f'{KERNELS}/gatv2.cpp'],
        depends=[f'{KERNELS}/gatv2.h', f'{KERNELS}/kernels.inc',
                 f'{KERNELS}/compile_flags.txt'],
        language='c++',
        extra_compile_args=[*compile_flags(), '-O3'],
        extra_link_args=['-fopenmp'],
        optional=True,
    )
])
