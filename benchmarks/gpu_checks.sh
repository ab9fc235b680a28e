#!/usr/bin/env bash
# The GPU checks and figures in one run, on a machine with a CUDA GPU whose
# Python has torch, triton, torch_geometric, pytest and hypothesis (the
# package runs from this checkout, not installed):
#
#   bash benchmarks/gpu_checks.sh [OUT]
#
# 1. benchmarks/kernels.py at N=200k, E=4M, 64 in, 4x32, self-loops, fp32:
#    PyG eager and compiled against ours in Triton, eager and compiled, and
#    with a new edge_index every step;
# 2. the tests marked cuda (the choice of Triton for CUDA tensors, the
#    Triton kernels on the device, their randomised parity, no host sync in
#    a steady-state step, the compiled model);
# 3. the same case in bfloat16;
# 4. the scale of ogbn-products: 2.4M nodes, 62M edges, full batch.
#
# Each step has its own time limit, and a failed step does not stop the
# next. Reports go to OUT (default benchmarks/results).
set -u
out=${1:-benchmarks/results}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$py -c 'import torch, triton, torch_geometric as g
print(f"torch {torch.__version__}, triton {triton.__version__}, "
      f"PyG {g.__version__}, CUDA {torch.version.cuda}")'

step() { echo "== $(date +%T) $*"; }
kernels="$py benchmarks/kernels.py --device cuda --no-cora --out $out"
step float32
timeout 150 $kernels --nodes 200000 --degrees 20 --repeats 21 \
    --max-memory 100 --name kernels_cuda \
    --impls pyg,pyg_compile,fused_triton,fused_compile,fused_fresh
step tests
timeout 150 $py -m pytest -q -p no:cacheprovider -m cuda \
    tests/test_fused_backends.py tests/test_fused_backends_triton.py \
    tests/test_fused_op.py tests/test_fused_op_random.py 2>&1 \
    | tee "$out/cuda_tests.log" | tail -n 30
step bfloat16
timeout 100 $kernels --nodes 200000 --degrees 20 --repeats 21 \
    --max-memory 100 --dtype bfloat16 --name kernels_cuda_bf16 \
    --impls pyg,pyg_compile,fused_triton,fused_compile
step products
timeout 150 $kernels --nodes 2400000 --degrees 26 --repeats 5 \
    --max-memory 1000 --name kernels_cuda_products \
    --impls pyg,pyg_compile,fused_triton
step done
