#!/usr/bin/env bash
# Every GPU check and benchmark in one run of at most about 9 minutes, for a machine with an NVIDIA GPU
# that is lent for a short time (DEVELOPERS.md, "GPU work"). From the repository root:
#
#     bash tests/gpu/device_run.sh [RESULTS_DIR [STEPS]]   # default: $OUT, else ./gpu-results; all steps
#
# STEPS: a comma-separated subset of mma-checks, mma-tiles, bench-gemm, gpu-arrays, bench-model,
# tests-gpu, each under its own time limit below (all six: at most 610 s). Where one call may run
# 600 s at most, split them: "mma-checks,mma-tiles,bench-gemm,gpu-arrays" (330 s), then
# "bench-model,tests-gpu" (280 s). Not in the default set (issue 14, GPU training; CuPy must be there):
# bench-train (at most 300 s: bitnet bench train --device cuda, images per second vs PyTorch fp32 / bf16),
# bench-train-tf32 (the same with CUPY_TF32=1: bitnet's float GEMMs on TF32 tensor cores, as PyTorch's
# cuDNN convolutions by default),
# tests-gpu-training (at most 240 s: tests/gpu_training on CuPy instead of the emulation) and train-mnist
# (at most 300 s: the README main job with --device cuda; MNIST from $BITNET_DATA, else .data/ in the
# checkout, an ignored folder to carry: mkdir .data && cp -r ../shared/data/mnist .data/).
# A NumPy wheel in .whl/ (numpy<2.5 for numba-cuda <= 0.30.4) is installed first where present.
# Each step has its own time limit, so one that hangs does not take the others' time; each step's
# output goes to RESULTS_DIR (and the benchmarks' JSON), and the exit status is that of the tests.
set -u
out=${1:-${OUT:-gpu-results}}
steps=,${2:-mma-checks,mma-tiles,bench-gemm,gpu-arrays,bench-model,tests-gpu},
mkdir -p "$out" && out=$(cd "$out" && pwd)
if ls .whl/numpy-*.whl >/dev/null 2>&1; then
    pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
pip install -q --no-deps --no-build-isolation --no-index -e . || exit 1
{ nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv
  python -c "import numpy, numba; print('numpy', numpy.__version__, 'numba', numba.__version__)"
  python -c "from importlib.metadata import version as v; print('numba-cuda', v('numba-cuda'))" 2>&1
  python -c "import torch; print('torch', torch.__version__)" 2>&1; } > "$out/versions.txt" 2>&1
cat "$out/versions.txt"
step() {  # step NAME SECONDS COMMAND...: run (if asked for), keep the output, say how it ended
    local name=$1 limit=$2; shift 2
    [[ $steps == *,$name,* ]] || return 0
    local t0=$SECONDS
    timeout "$limit" "$@" > "$out/$name.txt" 2>&1
    local rc=$?
    echo "== $name: exit $rc in $((SECONDS - t0)) s"; tail -n 25 "$out/$name.txt"
    return $rc
}
cd tests/gpu
step mma-checks 60 python xnor_mma_checks.py fragments gemm tiles conv errors
cd ../..
step mma-tiles 100 python -m bitnet.bench.mma_tiles --json "$out/mma-tiles.json"
step bench-gemm 120 bitnet bench gemm --device cuda --json "$out/bench-gemm-cuda.json"
step gpu-arrays 50 python -m bitnet.bench.gpu_arrays --json "$out/gpu-arrays.json"
step bench-model 120 bitnet bench model --device cuda --json "$out/bench-model-cuda.json"
step bench-train 300 bitnet bench train --device cuda --rounds 3 --steps 10 --json "$out/bench-train-cuda.json"
CUPY_TF32=1 step bench-train-tf32 300 bitnet bench train --device cuda --rounds 3 --steps 10 \
    --json "$out/bench-train-cuda-tf32.json"
BITNET_TEST_CUDA=gpu step tests-gpu-training 240 python -m pytest -q tests/gpu_training
step train-mnist 300 bitnet train --model lenet-binary --dataset mnist --epochs 6 --lr 2e-3 --device cuda \
    --data-dir "${BITNET_DATA:-.data}" --no-download
BITNET_TEST_CUDA=gpu step tests-gpu 160 python -m pytest -q -x tests/gpu
