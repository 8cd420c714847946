#!/usr/bin/env bash
# GPU checks of issue 6, as one script (for a machine with one CUDA GPU and the repo's .venv):
#   1. the CUDA-only tests (bf16 / channels-last UNet, device placement);
#   2. the bench at the CIFAR-10 configuration: bf16 autocast, channels-last, compiled, against
#      diffusers.UNet2DModel of the same size, with model FLOP utilisation against the measured
#      bf16 matrix-multiply rate;
#   3. a short DDPM training run of the command line on CUDA (bf16, channels-last by default).
# Results go to ${OUT:-gpu_results}/; record the numbers in README.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -m pytest -q -p no:cacheprovider tests/test_unet.py tests/test_metrics.py tests/test_flow_matching.py \
    -k "gpu or cuda" 2>&1 | tee "$OUT/tests.txt"
$PY -m diffusion_edu bench --config cifar10 --device cuda --batch-size 128 --steps 30 --warmup 5 \
    --compile --repeats 2 --json "$OUT/bench_cifar10.json" 2>&1 | tee "$OUT/bench_cifar10.txt"
$PY -m diffusion_edu train --dataset digits --steps 2000 --device cuda --batch-size 256 \
    --no-progress --out "$OUT/run_digits" 2>&1 | tail -n 3 | tee "$OUT/train.txt"
