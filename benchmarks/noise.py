"""Benchmark of the multi-view consistent (integral) noise of CFD (issue 4).

Renders a ground-truth toy scene with the project's volume renderer from random training
cameras and measures, for integral noise at 64x64x4 (unless stated):

* marginals of foreground (integral) and background pixels over >= 100 views: mean,
  variance and a Kolmogorov-Smirnov p-value against N(0, 1) on a subsample;
* independence inside a view: correlation of adjacent foreground pixels (both axes) and
  between channels;
* exact correspondences on an analytic flat square facing the camera: the camera shifted
  parallel to it by exactly 3 pixel widths (``shift_corr``), and rolled by 90 degrees about
  its axis (``roll_corr``);
* the integral property: noise at 2h x 2w summed over 2x2 blocks / 2 against noise at
  h x w (``refine_corr``);
* consistency across orbit steps of 2, 5, 10, 20 degrees: pixels of view B mapped to the
  pixel of view A containing the same surface point, co-visible foreground only
  (``view_corr``), and the same for fresh noise;
* the clean-flow SDE refresh: marginals after 1000 refreshes with gamma = 0.01 and the
  correlation with the starting noise against ``(1 - gamma)^(n / 2)``;
* milliseconds per view at 64x64x4 and 32x32x3, without and with the SDE refresh (one
  thread; CPU time of this process and wall time).

Usage::

    python benchmarks/noise.py [--seed 0] [--scene red_cube] [--views 100] [--threads 1]
                               [--analytic | --field gaussians [--fit-steps 300]] [--quick]

``--analytic`` replaces the renderer by an analytic ray-traced sphere (for machines or
branches without the renderer). ``--field gaussians`` measures the same on 3D Gaussians
fitted to the scene, rendered by the splatting rasteriser (:mod:`cfd3d.render.splat`):
3000 Gaussians sampled from the scene's density
(:func:`cfd3d.scene.gaussians.gaussians_from_field`), then ``--fit-steps`` steps of the
photometric fit of ``benchmarks/fit_gt.py --field gaussians``
(:func:`cfd3d.evaluation.fit.fit_gaussians_to_views`: 64 random 64² albedo views, 4 per
step, 3DGS density control); ``"fit"`` reports its held-out PSNR and how far the splatted
depth lies from the exact one. ``--quick`` is a smoke run (8 views, 2 orbit pairs, 5 fit
steps, short timings). The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import replace

import numpy as np
import torch
from scipy import stats

from cfd3d.evaluation.fit import fit_gaussians_to_views
from cfd3d.noise import NoiseConfig, make_noise
from cfd3d.noise.integral import IntegralNoise
from cfd3d.render.splat import SplatRenderer
from cfd3d.render.types import RenderOutput
from cfd3d.render.volume import VolumeRenderer
from cfd3d.scene.cameras import Cameras, spherical_cameras
from cfd3d.scene.gaussians import GaussianConfig, GaussianField, gaussians_from_field
from cfd3d.scene.toy import get_scene

SHAPE_64 = (4, 64, 64)
SHAPE_32 = (3, 32, 32)
ORBIT_STEPS = (2, 5, 10, 20)


def random_cameras(n: int, generator: torch.Generator) -> Cameras:
    """Training-like cameras: azimuth U[0, 360), elevation U[0, 40], distance U[1.3, 1.5],
    fovy U[40, 65] degrees (the CFD reference recipe)."""

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)

    return spherical_cameras(
        uniform(0.0, 360.0), uniform(0.0, 40.0), uniform(1.3, 1.5), uniform(40.0, 65.0)
    ).to("cpu")


def _as_float(cameras: Cameras) -> Cameras:
    return Cameras(cameras.c2w.float(), cameras.fovy.float())


def _hits(hit: torch.Tensor, t: torch.Tensor) -> RenderOutput:
    opacity = hit.float()[..., None]
    depth = torch.where(hit, t, torch.zeros_like(t)).float()[..., None]
    return RenderOutput(rgb=opacity.expand(*opacity.shape[:3], 3), opacity=opacity, depth=depth)


def analytic_sphere(cameras: Cameras, size: int, radius: float = 0.38) -> RenderOutput:
    """A ray-traced sphere at the origin (exact opacity and depth)."""
    cameras = Cameras(cameras.c2w.double(), cameras.fovy.double())
    origin, direction = cameras.rays(size, size)
    b = (origin * direction).sum(-1)
    disc = b * b - ((origin * origin).sum(-1) - radius**2)
    t = -b - torch.sqrt(disc.clamp_min(0.0))
    return _hits((disc > 0) & (t > 0), t)


def analytic_square(cameras: Cameras, size: int, x: float = 0.1, half: float = 0.7) -> RenderOutput:
    """A ray-traced square ``|y|, |z| <= half`` in the plane at ``x`` (facing +x)."""
    cameras = Cameras(cameras.c2w.double(), cameras.fovy.double())
    origin, direction = cameras.rays(size, size)
    t = (x - origin[..., 0]) / direction[..., 0]
    point = origin + t[..., None] * direction
    hit = (t > 0) & (point[..., 1].abs() <= half) & (point[..., 2].abs() <= half)
    return _hits(hit, t)


FIT_VIEWS, FIT_SIZE, FIT_HELDOUT = 64, 64, 8


def gaussian_fit_config(steps: int) -> GaussianConfig:
    """``benchmarks/fit_gt.py``'s Gaussians (photometric densification threshold, no
    opacity reset), started opaque enough to cover the scene from the first step."""
    return GaussianConfig(
        count=3000,
        max_count=10000,
        init_opacity=0.5,
        lr_means=1e-3,
        lr_scales=5e-3,
        lr_quats=5e-3,
        lr_opacity=5e-2,
        lr_colors=2.5e-2,
        densify_from=100,
        densify_until=max(100, int(0.6 * steps)),
        densify_every=100,
        densify_grad_threshold=2e-4,
        dense_scale=0.01,
        prune_opacity=5e-3,
    )


def fit_gaussians(scene, steps: int, generator: torch.Generator) -> tuple[GaussianField, dict]:
    """Gaussians sampled from ``scene``'s density, then fitted to its albedo views; with
    the held-out PSNR and depth error of the result."""
    tic = time.perf_counter()
    config = gaussian_fit_config(steps)
    field = GaussianField(config)
    field.set_parameters(gaussians_from_field(scene, 1.0, config, generator))
    cameras = _as_float(random_cameras(FIT_VIEWS + FIT_HELDOUT, generator))
    volume, splatter = VolumeRenderer(), SplatRenderer()
    with torch.no_grad():
        truth = volume(scene, cameras, FIT_SIZE, FIT_SIZE, shading="albedo")
    train = slice(0, FIT_VIEWS)
    fit_gaussians_to_views(
        field, splatter, cameras[train], truth.rgb[train], steps=steps, generator=generator
    )
    held = slice(FIT_VIEWS, FIT_VIEWS + FIT_HELDOUT)
    with torch.no_grad():
        out = splatter(field, cameras[held], FIT_SIZE, FIT_SIZE, shading="albedo")
    mse = (out.rgb - truth.rgb[held]).square().mean()
    both = (out.opacity > 0.5) & (truth.opacity[held] > 0.5)
    depth_err = (out.depth - truth.depth[held]).abs()[both]
    return field, {
        "steps": steps,
        "gaussians": field.count,
        "psnr_heldout": round(float(-10.0 * torch.log10(mse)), 2),
        "depth_abs_err_median": round(float(depth_err.median()), 4),
        "depth_abs_err_p90": round(float(depth_err.quantile(0.9)), 4),
        "seconds": round(time.perf_counter() - tic, 1),
    }


class Scene:
    """Renders a toy scene with the project's volume renderer, Gaussians fitted to it with
    the splatting rasteriser, or the analytic sphere."""

    def __init__(
        self,
        name: str,
        analytic: bool,
        field: str = "volume",
        fit_steps: int = 300,
        generator: torch.Generator | None = None,
    ):
        self.name = "analytic_sphere" if analytic else name
        self.analytic = analytic
        self.gaussians: GaussianField | None = None
        self.fit: dict | None = None
        if not analytic:
            self.field = get_scene(name)
            self.renderer = VolumeRenderer()
            if field == "gaussians":
                gen = generator or torch.Generator().manual_seed(0)
                self.gaussians, self.fit = fit_gaussians(self.field, fit_steps, gen)
                self.splatter = SplatRenderer()

    def render(self, cameras: Cameras, size: int, chunk: int = 16) -> RenderOutput:
        parts = []
        for first in range(0, len(cameras), chunk):
            cams = cameras[first : first + chunk]
            if self.analytic:
                parts.append(analytic_sphere(cams, size))
            elif self.gaussians is not None:
                with torch.no_grad():
                    parts.append(self.splatter(self.gaussians, _as_float(cams), size, size))
            else:
                with torch.no_grad():
                    parts.append(self.renderer(self.field, _as_float(cams), size, size))
        return RenderOutput(
            rgb=torch.cat([p.rgb for p in parts]),
            opacity=torch.cat([p.opacity for p in parts]),
            depth=torch.cat([p.depth for p in parts]),
        )


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two same-shape tensors (flattened), in float64."""
    a, b = a.double().flatten(), b.double().flatten()
    if a.numel() < 2:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def marginals(
    noise: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, per_view: int = 20
) -> dict:
    """Mean and variance of the ``(B, C, h, w)`` noise where ``(B, h, w)`` ``mask`` holds, and
    a Kolmogorov-Smirnov p-value against N(0, 1) on ``per_view`` random masked values per
    view (views of one object share texels, so pooling all values would not be independent
    samples; a few values per view nearly are)."""
    selected = noise.permute(1, 0, 2, 3)[:, mask].double().flatten()
    picks = []
    for view in range(noise.shape[0]):
        values = noise[view].permute(1, 2, 0)[mask[view]].flatten()
        order = torch.randperm(values.numel(), generator=generator)[:per_view]
        picks.append(values[order].double())
    sample = torch.cat(picks)
    return {
        "n": int(selected.numel()),
        "mean": round(float(selected.mean()), 4),
        "var": round(float(selected.var()), 4),
        "ks_pvalue": round(float(stats.kstest(sample.numpy(), "norm").pvalue), 4),
        "ks_n": int(sample.numel()),
    }


def integral_mask(noise: IntegralNoise, render: RenderOutput, cameras: Cameras) -> torch.Tensor:
    """``(B, h, w)`` pixels that receive integral (not background) noise."""
    return noise.texel_counts(render, _as_float(cameras)) >= noise.config.integral.min_texels


def within_view(noise: torch.Tensor, mask: torch.Tensor) -> dict:
    """Neighbour and channel correlations over foreground pixels of ``(B, C, h, w)``."""
    m = mask[:, None].expand_as(noise)
    pair_x = m[..., 1:] & m[..., :-1]
    pair_y = m[..., 1:, :] & m[..., :-1, :]
    cx = corr(noise[..., 1:][pair_x], noise[..., :-1][pair_x])
    cy = corr(noise[..., 1:, :][pair_y], noise[..., :-1, :][pair_y])
    channels = noise.permute(1, 0, 2, 3)[:, mask]
    pairs = [
        corr(channels[i], channels[j])
        for i in range(channels.shape[0])
        for j in range(i + 1, channels.shape[0])
    ]
    worst = max(pairs, key=abs) if pairs else 0.0
    return {
        "neighbor_corr": round(max(cx, cy, key=abs), 4),
        "neighbor_corr_xy": [round(cx, 4), round(cy, 4)],
        "channel_corr": round(worst, 4),
    }


def shift_and_roll(config: NoiseConfig) -> dict:
    """Exact correspondences on the analytic square, at 64x64 from 128x128 renders."""
    _, h, _w = SHAPE_64
    size = 2 * h
    distance, fovy = 1.4, 50.0
    base = spherical_cameras(
        torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([distance]), torch.tensor([fovy])
    )
    # Shift along the camera's right axis by 3 noise-pixel widths at the square's depth.
    depth = distance - 0.1
    pixel = 2.0 * depth * math.tan(math.radians(fovy) / 2.0) / h
    shifted = base.c2w.clone()
    shifted[:, :3, 3] += 3.0 * pixel * base.c2w[:, :3, 0]
    rolled = base.c2w.clone()
    rolled[:, :3, 0], rolled[:, :3, 1] = base.c2w[:, :3, 1], -base.c2w[:, :3, 0]
    cams = Cameras(torch.cat([base.c2w, shifted, rolled]), base.fovy.repeat(3))
    render = analytic_square(cams, size)
    noise = make_noise(config, SHAPE_64)
    values = noise(render, _as_float(cams), 0)
    mask = integral_mask(noise, render, cams)
    a, b, r = values[0], values[1], values[2]
    # Moving the camera right moves the image content left: b[:, :, j] = a[:, :, j + 3].
    both = mask[0][:, 3:] & mask[1][:, :-3]
    shift = corr(a[:, :, 3:][:, both], b[:, :, :-3][:, both])
    # Rolling the camera by +90 degrees turns the image by -90: a = rot90(r, 1).
    back = torch.rot90(r, 1, dims=(1, 2))
    both = mask[0] & torch.rot90(mask[2], 1, dims=(0, 1))
    roll = corr(a[:, both], back[:, both])
    return {"shift_corr": round(shift, 4), "roll_corr": round(roll, 4)}


def refinement(scene: Scene, config: NoiseConfig, cameras: Cameras) -> dict:
    """2x2 sums / 2 of noise at 2h x 2w against noise at h x w (same field)."""
    c, h, w = SHAPE_64
    render = scene.render(cameras, 2 * h)
    coarse_noise = make_noise(config, (c, h, w))
    fine_noise = make_noise(config, (c, 2 * h, 2 * w))
    coarse = coarse_noise(render, _as_float(cameras), 0)
    fine = fine_noise(render, _as_float(cameras), 0)
    summed = torch.nn.functional.avg_pool2d(fine, 2) * 2.0
    fine_mask = integral_mask(fine_noise, render, cameras).float()
    fine_all = torch.nn.functional.avg_pool2d(fine_mask[:, None], 2)[:, 0] == 1.0
    mask = integral_mask(coarse_noise, render, cameras) & fine_all
    return {
        "refine_corr": round(
            corr(coarse.permute(1, 0, 2, 3)[:, mask], summed.permute(1, 0, 2, 3)[:, mask]), 4
        )
    }


def _project(points: torch.Tensor, cameras: Cameras, h: int, w: int) -> torch.Tensor:
    """``(B, P, 2)`` (row, col) noise-pixel coordinates of ``(B, P, 3)`` world points."""
    c2w = cameras.c2w.double()
    local = torch.einsum("bji,bpj->bpi", c2w[:, :3, :3], points - c2w[:, None, :3, 3])
    focal = 0.5 * h / torch.tan(0.5 * cameras.fovy.double())
    depth = -local[..., 2]
    col = local[..., 0] / depth * focal[:, None] + 0.5 * w
    row = -local[..., 1] / depth * focal[:, None] + 0.5 * h
    return torch.stack([row, col], dim=-1)


def view_consistency(
    scene: Scene, configs: dict[str, NoiseConfig], generator: torch.Generator, n_base: int
) -> dict:
    """Correlation between views ``delta`` degrees apart on an orbit, per noise kind."""
    c, h, w = SHAPE_64
    azimuth = 360.0 * torch.rand(n_base, generator=generator, dtype=torch.float64)
    elevation = 30.0 * torch.rand(n_base, generator=generator, dtype=torch.float64)
    ones = torch.ones(n_base, dtype=torch.float64)
    results: dict[str, dict[str, float]] = {kind: {} for kind in configs}
    for delta in ORBIT_STEPS:
        cams = spherical_cameras(
            torch.cat([azimuth, azimuth + delta]),
            torch.cat([elevation, elevation]),
            1.4 * torch.cat([ones, ones]),
            50.0 * torch.cat([ones, ones]),
        )
        render = scene.render(cams, 2 * h)
        reference = make_noise(configs["integral"], SHAPE_64)
        assert isinstance(reference, IntegralNoise)
        footprints = reference.footprints(render, _as_float(cams))
        mask = integral_mask(reference, render, cams).flatten()
        centre = torch.full((2 * n_base * h * w, 3), torch.nan, dtype=torch.float64)
        centre[footprints.pixel] = footprints.centre.double()
        centre = centre.view(2 * n_base, h * w, 3)
        valid = mask.view(2 * n_base, h * w)
        a_cams = cams[:n_base]
        rc = _project(centre[n_base:], a_cams, h, w).floor().long()
        inside = (rc[..., 0] >= 0) & (rc[..., 0] < h) & (rc[..., 1] >= 0) & (rc[..., 1] < w)
        target = rc[..., 0].clamp(0, h - 1) * w + rc[..., 1].clamp(0, w - 1)
        a_centre = centre[:n_base].gather(1, target[..., None].expand(-1, -1, 3))
        a_valid = valid[:n_base].gather(1, target)
        tolerance = 3.0 * 2.0 * 1.4 * math.tan(math.radians(25.0)) / h
        near = (a_centre - centre[n_base:]).norm(dim=-1) < tolerance
        pair = valid[n_base:] & inside & a_valid & near
        for kind, config in configs.items():
            noise = make_noise(config, SHAPE_64)(render, _as_float(cams), 0)
            flat = noise.reshape(2 * n_base, c, h * w)
            a = flat[:n_base].gather(2, target[:, None].expand(-1, c, -1))
            b = flat[n_base:]
            m = pair[:, None].expand(-1, c, -1)
            results[kind][str(delta)] = round(corr(a[m], b[m]), 4)
        results.setdefault("pairs", {})[str(delta)] = int(pair.sum())
    return results


def sde_check(
    scene: Scene, config: NoiseConfig, render: RenderOutput, cameras: Cameras, generator
) -> dict:
    """Marginals and decorrelation under the clean-flow SDE refresh (gamma = 0.01)."""
    gamma = 0.01
    noise = make_noise(config, SHAPE_64)
    cams = _as_float(cameras)
    start = noise(render, cams, 0)
    view_mask = integral_mask(noise, render, cameras)
    mask = view_mask[:, None].expand_as(start)
    out = {}
    step = 0
    for n in (100, 1000):
        while step < n:
            noise.refresh(gamma)
            step += 1
        now = noise(render, cams, step)
        out[str(n)] = {
            "corr": round(corr(start[mask], now[mask]), 4),
            "expected": round((1.0 - gamma) ** (n / 2.0), 4),
            "bg_corr": round(corr(start[~mask], now[~mask]), 4),
        }
    out["after_1000"] = {
        "fg": marginals(now, view_mask, generator),
        "bg": marginals(now, ~view_mask, generator),
    }
    return {"gamma": gamma, **out}


def timing(
    scene: Scene,
    config: NoiseConfig,
    shape: tuple[int, int, int],
    views: int,
    calls: int,
    generator: torch.Generator,
    gamma: float = 0.0,
) -> dict:
    """Milliseconds per view of integral noise after a warm-up (median over calls), with
    ``gamma > 0`` refreshing the field before every call (the SDE).

    Measured on one thread (CPU time of this process and wall time): on a shared 2-core
    machine torch's default two threads make every parallel op wait for a core that another
    process holds, which measures the machine's load, not this code (we saw the same calls
    take 10 ms or 300 ms per view that way).
    """
    _, h, _ = shape
    cams = _as_float(random_cameras(views * calls, generator))
    render = scene.render(cams, 2 * h)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    noise = make_noise(config, shape)
    for call in range(calls):  # warm-up: every view once (materialises the tiles)
        part = _slice(render, call * views, (call + 1) * views)
        noise(part, cams[call * views : (call + 1) * views], call)
    cpu, wall = [], []
    for call in range(calls):
        part = _slice(render, call * views, (call + 1) * views)
        noise.refresh(gamma)
        t0, w0 = time.process_time(), time.perf_counter()
        noise(part, cams[call * views : (call + 1) * views], calls + call)
        cpu.append(time.process_time() - t0)
        wall.append(time.perf_counter() - w0)
    torch.set_num_threads(threads)
    return {
        "views_per_call": views,
        "threads": 1,
        "cpu": round(1e3 * float(np.median(cpu)) / views, 2),
        "wall": round(1e3 * float(np.median(wall)) / views, 2),
    }


def _slice(render: RenderOutput, first: int, last: int) -> RenderOutput:
    return RenderOutput(
        rgb=render.rgb[first:last],
        opacity=render.opacity[first:last],
        depth=render.depth[first:last],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of cameras and noise")
    parser.add_argument("--scene", default="red_cube", help="ground-truth toy scene name")
    parser.add_argument("--views", type=int, default=100, help="random views for marginals")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for the statistics (timings always use one); on a shared "
        "machine more threads mostly wait for busy cores",
    )
    parser.add_argument(
        "--analytic",
        action="store_true",
        help="use an analytic ray-traced sphere instead of the project's renderer",
    )
    parser.add_argument(
        "--field",
        choices=("volume", "gaussians"),
        default="volume",
        help="render the scene itself (volume renderer) or Gaussians fitted to it (splatting)",
    )
    parser.add_argument(
        "--fit-steps", type=int, default=300, help="gaussians: photometric fit steps"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: few views, short fit and timings"
    )
    args = parser.parse_args()
    if args.analytic and args.field == "gaussians":
        parser.error("--analytic and --field gaussians exclude each other")
    if args.fit_steps < 1:
        parser.error(f"--fit-steps must be a positive integer, got {args.fit_steps}")
    if args.quick:
        args.views, args.fit_steps = min(args.views, 8), min(args.fit_steps, 5)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()
    scene = Scene(args.scene, args.analytic, args.field, args.fit_steps, generator)
    config = NoiseConfig(kind="integral", seed=args.seed)

    cameras = random_cameras(args.views, generator)
    render = scene.render(cameras, 2 * SHAPE_64[1])
    noise = make_noise(config, SHAPE_64)
    assert isinstance(noise, IntegralNoise)
    values = noise(render, _as_float(cameras), 0)
    counts = noise.texel_counts(render, _as_float(cameras))
    mask = counts >= config.integral.min_texels
    per_pixel = counts[mask].double()
    result: dict = {
        "scene": scene.name,
        "field": args.field,
        "fit": scene.fit,
        "seed": args.seed,
        "views": args.views,
        "shape": list(SHAPE_64),
        "fg": marginals(values, mask, generator),
        "bg": marginals(values, ~mask, generator),
        "texels_per_pixel": {
            "mean": round(float(per_pixel.mean()), 1),
            "p05": round(float(per_pixel.quantile(0.05)), 1),
        },
        "fg_fraction": round(float(mask.float().mean()), 4),
    }
    result.update(within_view(values, mask))
    result.update(shift_and_roll(config))
    # One field for both resolutions: the default texel size depends on the noise height.
    shared = replace(config, integral=replace(config.integral, texel_size=0.1 / SHAPE_64[1]))
    result.update(refinement(scene, shared, cameras[:8]))
    consistency = view_consistency(
        scene,
        {"integral": config, "fresh": replace(config, kind="fresh")},
        generator,
        n_base=2 if args.quick else 12,
    )
    result["view_corr"] = consistency["integral"]
    result["fresh_view_corr"] = consistency["fresh"]
    result["view_pairs"] = consistency["pairs"]
    result["sde"] = sde_check(scene, config, render, cameras, generator)
    calls = 2 if args.quick else 10
    result["ms_per_view"] = {
        "64x64x4": timing(scene, config, SHAPE_64, 4, min(calls, 5), generator),
        "32x32x3": timing(scene, config, SHAPE_32, 4, min(calls, 6), generator),
        "32x32x3_2_views": timing(scene, config, SHAPE_32, 2, calls, generator),
        "32x32x3_2_views_sde": timing(scene, config, SHAPE_32, 2, calls, generator, gamma=1e-3),
    }
    result["load_average"] = [round(v, 2) for v in os.getloadavg()]
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
