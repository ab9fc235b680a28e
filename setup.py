"""Builds the C++ kernels of the fused attention (``pyg_gatv2/fused/
_cpp_kernels.cpp``) with OpenMP; everything else is in setup.cfg.

The library is loaded through ctypes (``pyg_gatv2.fused.cpp``), not
imported, so it needs neither torch nor Python headers to build. It is
optional: without a C++ compiler with OpenMP the package installs without
it and runs the numba kernels. It is compiled for the CPU it is built on
(``-march=native``); set ``PYG_GATV2_MARCH`` (for example to
``x86-64-v3``) to build for other machines.
"""
import os

from setuptools import Extension, setup

MARCH = os.environ.get('PYG_GATV2_MARCH', 'native')

setup(ext_modules=[
    Extension(
        'pyg_gatv2.fused._cpp_kernels',
        sources=['pyg_gatv2/fused/_cpp_kernels.cpp'],
        language='c++',
        # No -ffast-math: every sum keeps the order the source gives it.
        extra_compile_args=['-std=c++17', '-O3', f'-march={MARCH}',
                            '-fopenmp', '-fno-math-errno'],
        extra_link_args=['-fopenmp'],
        optional=True,
    )
])
