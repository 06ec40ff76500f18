"""Render + backward cost against resolution: dense marching vs skipping + deferred (issue 12).

1. Fit the default hash-grid NeRF (``NeRFConfig()``) to a toy scene (``--scene``) in 3D
   (:func:`cfd3d.evaluation.fit.fit_field_to_scene`) and build its occupancy grid (128³).
2. For each resolution, render one view with diffuse shading (64 stratified samples per
   ray, jittered, a random light) and back-propagate a fixed random image gradient into the
   field, in a fresh child process each (so that its peak resident memory is its own):
   ``dense`` (the reference marcher, one pass with graph; ``--dense-sizes``) and ``skip``
   (occupancy grid + early ray termination + deferred back-propagation in chunks of
   ``--chunk-rays``; ``--sizes``).
3. ``bytes_per_sample``: bytes autograd keeps for backward per evaluated sample, dense
   marcher, diffuse shading (the issue's target ≤ 400).

JSON keys: ``eval_ratio`` (dense ÷ skipping field evaluations at 256²), ``psnr_vs_dense``
(dB between the two 256² images), ``bytes_per_sample`` (dense) and
``bytes_per_sample_skip``, ``peak_mb`` and ``ms`` (objects keyed by resolution, skipping
+ deferred), ``dense_peak_mb`` and ``dense_ms`` (the dense runs), ``evals_per_ray``
(both modes), ``fit_psnr`` (the fitted field vs the scene, 128², albedo).

Usage: ``python benchmarks/render_scale.py --seed 0 [--scene red_cube] [--device cuda]``;
the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from cfd3d.cli import guarded
from cfd3d.errors import ConfigError
from cfd3d.evaluation.fit import fit_field_to_scene
from cfd3d.evaluation.render_cost import (
    RenderCost,
    bytes_per_sample,
    peak_memory_mb,
    psnr,
    render_and_backward,
    reset_peak_memory,
)
from cfd3d.render.occupancy import OccupancyConfig, OccupancyGrid
from cfd3d.render.shading import ShadingConfig
from cfd3d.render.volume import RendererConfig, VolumeRenderer
from cfd3d.scene.cameras import spherical_cameras
from cfd3d.scene.nerf import NeRFConfig, NeRFField
from cfd3d.scene.toy import get_scene

SHADING = ShadingConfig(mode="diffuse")
N_SAMPLES = 64


def camera(device: torch.device):
    one = torch.ones(1)
    return spherical_cameras(30.0 * one, 20.0 * one, 1.4 * one, 50.0 * one).to(device)


def build(state_path: Path, device: torch.device) -> tuple[NeRFField, OccupancyGrid]:
    state = torch.load(state_path, weights_only=True)
    field = NeRFField(NeRFConfig()).to(device)
    field.load_state_dict(state["field"])
    grid = OccupancyGrid(OccupancyConfig(), bound=field.config.bound).to(device)
    grid.load_state_dict(state["grid"])
    return field, grid


def child(args: argparse.Namespace) -> int:
    """Measure one (mode, size) in this process; prints its JSON line."""
    device = torch.device(args.device)
    reset_peak_memory(device)
    field, grid = build(args.state, device)
    renderer = VolumeRenderer(RendererConfig(n_samples=N_SAMPLES, chunk_rays=args.chunk_rays))
    size = args.size
    grad = torch.randn(1, size, size, 3, generator=torch.Generator().manual_seed(args.seed))
    skip = args.child == "skip"

    def measured() -> RenderCost:
        return render_and_backward(
            renderer,
            field,
            camera(device),
            size,
            SHADING,
            grad.to(device),
            occupancy=grid if skip else None,
            deferred=skip,
            chunk_rays=args.chunk_rays,
            seed=args.seed,
        )

    if device.type == "cuda":
        # the first CUDA render of a process loads kernels and libraries (seconds on an
        # H200, measured): one untimed pass at the same size, then the timed one
        measured()
        field.zero_grad(set_to_none=True)
        reset_peak_memory(device)
    cost = measured()
    if args.image is not None:
        torch.save(cost.rgb.cpu(), args.image)
    print(
        json.dumps(
            {
                "ms": round(cost.ms, 1),
                "evals_per_ray": round(cost.evaluations_per_ray, 3),
                "peak_mb": round(peak_memory_mb(device), 1),
            }
        )
    )
    return 0


def measure(args: argparse.Namespace, mode: str, size: int, state: Path, image: Path) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--size",
        str(size),
        "--state",
        str(state),
        "--image",
        str(image),
        "--seed",
        str(args.seed),
        "--device",
        args.device,
        "--chunk-rays",
        str(args.chunk_rays),
        "--threads",
        str(args.threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} {size}² failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> int:
    if args.child is not None:
        return child(args)
    started = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda needs a CUDA GPU; none is available (use --device cpu)")
    gen = torch.Generator().manual_seed(args.seed)
    scene = get_scene(args.scene)
    field = NeRFField(NeRFConfig(), generator=gen)
    fit_field_to_scene(field, scene, steps=args.fit_steps, generator=gen)
    field = field.to(device)
    grid = OccupancyGrid(OccupancyConfig(), bound=field.config.bound).to(device)
    grid.update(field.density, 0, torch.Generator().manual_seed(args.seed))
    renderer = VolumeRenderer(RendererConfig(n_samples=N_SAMPLES))
    with torch.no_grad():
        fitted = renderer(field, camera(device), 128, 128, shading="albedo")
        truth = renderer(scene, camera(device).to("cpu"), 128, 128, shading="albedo")
    dense_bytes = bytes_per_sample(renderer, field, camera(device), 64, SHADING)
    skip_bytes = bytes_per_sample(renderer, field, camera(device), 64, SHADING, occupancy=grid)
    result: dict = {
        "benchmark": "render_scale",
        "seed": args.seed,
        "scene": args.scene,
        "device": str(device),
        "fit_psnr": round(psnr(fitted.rgb.cpu(), truth.rgb), 2),
        "occupied_fraction": round(grid.occupied_fraction(), 4),
        "bytes_per_sample": round(dense_bytes, 1),
        "bytes_per_sample_skip": round(skip_bytes, 1),
    }
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state.pt"
        torch.save({"field": field.state_dict(), "grid": grid.state_dict()}, state)
        runs: dict[str, dict[int, dict]] = {"dense": {}, "skip": {}}
        for mode, sizes in (("dense", args.dense_sizes), ("skip", args.sizes)):
            for size in sizes:
                runs[mode][size] = measure(args, mode, size, state, Path(tmp) / f"{mode}{size}.pt")
                print(f"{mode:5s} {size:4d}²: {runs[mode][size]}", file=sys.stderr)
        if 256 in runs["dense"] and 256 in runs["skip"]:
            dense_rgb = torch.load(Path(tmp) / "dense256.pt")
            skip_rgb = torch.load(Path(tmp) / "skip256.pt")
            result["psnr_vs_dense"] = round(psnr(skip_rgb, dense_rgb), 2)
            dense_evals = runs["dense"][256]["evals_per_ray"]
            result["eval_ratio"] = round(dense_evals / runs["skip"][256]["evals_per_ray"], 2)
    result["peak_mb"] = {str(s): r["peak_mb"] for s, r in runs["skip"].items()}
    result["ms"] = {str(s): r["ms"] for s, r in runs["skip"].items()}
    result["dense_peak_mb"] = {str(s): r["peak_mb"] for s, r in runs["dense"].items()}
    result["dense_ms"] = {str(s): r["ms"] for s, r in runs["dense"].items()}
    result["evals_per_ray"] = {
        mode: {str(s): r["evals_per_ray"] for s, r in by_size.items()}
        for mode, by_size in runs.items()
    }
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the fit and the renders")
    parser.add_argument("--scene", default="red_cube", help="toy scene the NeRF is fitted to")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[64, 128, 256, 512], help="skip+deferred sizes"
    )
    parser.add_argument(
        "--dense-sizes", type=int, nargs="*", default=[64, 128, 256], help="dense sizes"
    )
    parser.add_argument("--chunk-rays", type=int, default=8192, help="deferred chunk (rays)")
    parser.add_argument("--fit-steps", type=int, default=300, help="steps of the 3D fit")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--child", choices=("dense", "skip"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--image", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return guarded(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
