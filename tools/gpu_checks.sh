#!/usr/bin/env bash
# The checks to run whenever a CUDA GPU is lent (one script, under ten minutes on an H200):
# the CUDA twin tests, end-to-end runs on CUDA, and the figures docs/benchmarks.md asks for.
#
# Usage: tools/gpu_checks.sh [OUT_DIR]
#   PY=python3     the interpreter (default .venv/bin/python; it needs a CUDA build of torch,
#                  cfd3d importable and the [sd] extra; [gs] for the gsplat checks)
#   TAR_TO=F.tgz   also pack OUT_DIR into F.tgz after every step (for a machine that hands
#                  back only a few files, and may be stopped at any point)
#
# Steps run most important first, each under its own time limit, and a failing step does not
# stop the next: every step prints one line "name rc=N SECONDS: last line of its log".
# gsplat (a pure-Python wheel) compiles its CUDA kernels on first use: that build runs in
# the background from the start, for the device's compute capability only.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-out/gpu-checks}"
mkdir -p "$OUT"
PY="${PY:-.venv/bin/python}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

pack() { if [ -n "${TAR_TO:-}" ]; then tar czf "$TAR_TO" -C "$OUT" . 2>/dev/null; fi; }
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "$name rc=$rc $((SECONDS - start))s: $(tail -n 1 "$OUT/$name.log" | cut -c1-2000)"
    pack
}

step device 60 bash -c "nvidia-smi -L; $PY -c \"import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), torch.cuda.get_device_capability())\""
TORCH_CUDA_ARCH_LIST="$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null)"
export TORCH_CUDA_ARCH_LIST MAX_JOBS="${MAX_JOBS:-12}"

BUILD=
if $PY -c "import gsplat" 2>/dev/null; then
    (timeout 360 $PY -c "from gsplat.cuda._backend import _C; assert _C is not None, 'no kernels'; print('gsplat kernels ready')" \
        >"$OUT/gsplat_build.log" 2>&1; echo "gsplat_build rc=$?: $(tail -n 1 "$OUT/gsplat_build.log")") &
    BUILD=$!
fi

SD="$PY benchmarks/sd_step.py --seed 0 --device cuda --steps 5 --shading diffuse"
# One full-size SD 2.1-base CFD step at 512² (float16 prior; occupancy grid + deferred).
step sd_step_512 150 $SD --resolution 512
# CUDA twins of the pure-PyTorch paths (noise, renderer, mesh extraction).
step twins 120 $PY -m pytest -q -rs -p no:cacheprovider -k cuda \
    tests/noise/test_integral.py tests/render/test_renderer.py tests/export/test_mesh.py
# cfd3d generate end to end on CUDA: the embedded prior; the paper pipeline, tiny weights.
step smoke 180 $PY tools/gpu_smoke.py "$OUT/smoke-runs" --device cuda
rm -rf "$OUT/smoke-runs"
# Render + backward against resolution (CUDA max_memory_allocated).
step render_scale 150 $PY benchmarks/render_scale.py --seed 0 --device cuda
if [ -n "$BUILD" ]; then
    wait "$BUILD"
    # The gsplat twin of the pure-PyTorch rasteriser, then the Gaussian step on it.
    step gsplat_twin 120 $PY -m pytest -q -s -rs -p no:cacheprovider tests/render/test_splat_gsplat.py
    step sd_step_512_gaussians_gsplat 120 $SD --resolution 512 --field gaussians --splat-backend gsplat
fi
step sd_step_512_gaussians_torch 120 $SD --resolution 512 --field gaussians --splat-backend torch
step sd_step_512_dense 120 $SD --resolution 512 --dense
step sd_step_128 120 $SD --resolution 128
