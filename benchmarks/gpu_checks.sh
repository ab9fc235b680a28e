#!/usr/bin/env bash
# The GPU checks and figures in one run, on a machine with a CUDA GPU whose
# Python has torch, triton, torch_geometric, pytest and hypothesis (the
# package runs from this checkout, not installed):
#
#   bash benchmarks/gpu_checks.sh [OUT [STEP ...]]
#
# Steps, in this order (all of them by default; name some to run those):
#
#   float32   benchmarks/kernels.py at N=200k, E=4M, 64 in, 4x32, self-loops:
#             PyG eager and compiled against ours in Triton, eager,
#             autotuned and compiled, and with a new edge_index every step;
#             the forward kernel's share of the copy bandwidth;
#   bfloat16  the same case in bfloat16;
#   autocast  the same case in float32 under torch.autocast(bfloat16);
#   powerlaw  the same counts on a power-law graph (skewed degrees: its
#             hubs are cut into chunks), ours untuned and autotuned;
#   tests     the tests marked cuda (the choice of Triton for CUDA tensors,
#             the Triton kernels on the device, their randomised parity, no
#             host sync in a steady-state step, the compiled model);
#   scale     benchmarks/scale.py: the largest full-batch step that fits,
#             on graphs drawn on the device, of 62M (ogbn-products), 250M
#             and 1B edges, bfloat16, our indices int32, with PyG eager and
#             compiled until they run out of memory;
#   turbo     (by name only) benchmarks/vs_turbo_gnn.py: our attention
#             operator beside turbo-gnn's at N=200k, E=4M, uniform and
#             power-law; turbo-gnn is built first where it is not
#             installed, from the source archive $TURBO_GNN_SDIST (pip
#             download --no-deps turbo-gnn), which needs nvcc;
#   planetoid (by name only) benchmarks/accuracy.py on the GPU: Cora and
#             CiteSeer, 3 seeds, ours and PyG's layer, test accuracy and
#             time per epoch; reads the raw files from $PYG_GATV2_RAW_DIR;
#   compile   (by name only) benchmarks/compile.py on the GPU: a 2-layer
#             model under torch.compile, ours and PyG's, N=200k, E=4M;
#   profile   (by name only) benchmarks/step_profile.py on the GPU: where
#             a step of the Triton kernels goes, pass by pass, against
#             the copy bandwidth;
#   products  (by name only; scale's first size is the same graph)
#             kernels.py at the scale of ogbn-products: 2.4M nodes, 62M
#             edges, float32;
#   minibatch (by name only) benchmarks/minibatch.py on the GPU: NeighborLoader
#             batches of a 600k-node graph sampled on 8 CPU threads (4
#             workers ahead of training), both models trained on the GPU;
#             needs torch-sparse (or pyg-lib) for the sampler.
#
# Each step has its own time limit (the default steps' add up to 720 s;
# name fewer steps where the lent time is shorter), and a failed step
# does not stop the next. Reports go to OUT (default
# benchmarks/results). With GPU_CHECKS_DRY_RUN=1 the steps print their
# commands instead of running them (no GPU needed; the tests read them).
set -u
out=${1:-benchmarks/results}
shift $(( $# > 0 ? 1 : 0 ))
steps=${*:-float32 bfloat16 autocast powerlaw tests scale}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
dry=${GPU_CHECKS_DRY_RUN:-}
run() {
    if [ -n "$dry" ]; then echo "$*"; else "$@"; fi
}
if [ -z "$dry" ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version \
        --format=csv,noheader
    $py -c 'import torch, triton, torch_geometric as g
print(f"torch {torch.__version__}, triton {triton.__version__}, "
      f"PyG {g.__version__}, CUDA {torch.version.cuda}")'
fi

kernels="$py benchmarks/kernels.py --device cuda --no-cora --out $out"
headline="--nodes 200000 --degrees 20 --repeats 11 --max-memory 100"
pyg_and_ours=pyg,pyg_compile,fused_triton,fused_triton_tuned,fused_compile
for step in $steps; do
    echo "== $(date +%T) $step"
    case $step in
    float32)
        run timeout 140 $kernels $headline --name kernels_cuda \
            --impls $pyg_and_ours,fused_fresh ;;
    bfloat16)
        run timeout 100 $kernels $headline --dtype bfloat16 \
            --name kernels_cuda_bf16 --impls $pyg_and_ours ;;
    autocast)
        run timeout 100 $kernels $headline --autocast \
            --name kernels_cuda_autocast --impls $pyg_and_ours ;;
    powerlaw)
        run timeout 100 $kernels $headline --graph powerlaw \
            --name kernels_cuda_powerlaw \
            --impls pyg,pyg_compile,fused_triton,fused_triton_tuned
        ;;
    tests)
        run timeout 100 $py -m pytest -q -p no:cacheprovider -m cuda \
            tests/test_fused_backends.py tests/test_fused_backends_triton.py \
            tests/test_fused_op.py tests/test_fused_op_random.py 2>&1 \
            | tee "$out/cuda_tests.log" | tail -n 30 ;;
    scale)
        gib=80
        [ -n "$dry" ] || gib=$(nvidia-smi --query-gpu=memory.total \
              --format=csv,noheader,nounits | head -n 1 \
              | awk '{print $1 / 1024}')
        run timeout 180 $py benchmarks/scale.py --max-memory "$gib" \
            --timeout 120 --out "$out" ;;
    turbo)
        if [ -z "$dry" ] && ! $py -c 'import turbo_gnn' 2>/dev/null; then
            if [ -z "${TURBO_GNN_SDIST:-}" ]; then
                echo "turbo-gnn is not installed and TURBO_GNN_SDIST is unset"
            elif ! command -v nvcc >/dev/null; then
                echo "turbo-gnn cannot build here: no nvcc (CUDA toolkit)"
            else
                TURBO_GNN_FORCE_BUILD=TRUE MAX_JOBS=16 timeout 300 \
                    $py -m pip install --no-build-isolation --no-deps \
                    --no-index "$TURBO_GNN_SDIST" 2>&1 | tail -n 20
            fi
        fi
        for graph in uniform powerlaw; do
            run timeout 90 $py benchmarks/vs_turbo_gnn.py --graph $graph \
                --name vs_turbo_gnn_$graph --out "$out"
        done ;;
    planetoid)
        run timeout 150 $py benchmarks/accuracy.py --device cuda \
            --datasets Cora CiteSeer --seeds 3 --name accuracy_cuda \
            --out "$out" ;;
    compile)
        run timeout 200 $py benchmarks/compile.py --device cuda \
            --nodes 200000 --name compile_cuda --out "$out" ;;
    profile)
        run timeout 150 $py benchmarks/step_profile.py --device cuda \
            --no-cora --name step_profile_cuda --out "$out" ;;
    products)
        run timeout 120 $kernels --nodes 2400000 --degrees 26 --repeats 5 \
            --max-memory 1000 --name kernels_cuda_products \
            --impls pyg,pyg_compile,fused_triton ;;
    minibatch)
        run timeout 300 $py benchmarks/minibatch.py --device cuda --threads 8 \
            --workers 4 --out "$out" ;;
    *)
        echo "unknown step '$step': choose from float32 bfloat16 autocast" \
             "powerlaw tests scale turbo planetoid compile profile" \
             "products minibatch" ;;
    esac
done
echo "== $(date +%T) done"
