#!/usr/bin/env bash
# The checks to run whenever a CUDA GPU is available (one short script, ~10 minutes):
# the CUDA twin tests, then the figures docs/benchmarks.md asks for on a GPU.
# Usage: tools/gpu_checks.sh [OUT_DIR]   (needs .venv with a CUDA build of torch)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-out/gpu-checks}"
mkdir -p "$OUT"
PY=.venv/bin/python
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))" | tee "$OUT/device.txt"
# CUDA twins of the pure-PyTorch paths (skipped on CPU-only machines; the gsplat twin,
# tests/render/test_splat_gsplat.py, also skips unless gsplat is installed: pip install
# 'cfd3d[gs]' before, where the device has a network).
.venv/bin/pytest -q -rs tests/render tests/scene tests/priors/test_mvdream.py 2>&1 | tail -5 | tee "$OUT/pytest.txt"
# Render + backward against resolution on the GPU (CUDA max_memory_allocated).
$PY benchmarks/render_scale.py --seed 0 --device cuda | tail -1 | tee "$OUT/render_scale.json"
# One full-size SD 2.1-base CFD step at 512² (float16), skipping + deferred, and dense.
$PY benchmarks/sd_step.py --seed 0 --device cuda --resolution 512 --steps 5 --shading diffuse \
    | tail -1 | tee "$OUT/sd_step_512.json"
$PY benchmarks/sd_step.py --seed 0 --device cuda --resolution 128 --steps 5 --shading diffuse \
    | tail -1 | tee "$OUT/sd_step_128.json"
# The same step on 3D Gaussians (sd-gaussians' blob; gsplat when installed, else torch).
$PY benchmarks/sd_step.py --seed 0 --device cuda --resolution 512 --steps 5 --shading diffuse \
    --field gaussians | tail -1 | tee "$OUT/sd_step_512_gaussians.json"
