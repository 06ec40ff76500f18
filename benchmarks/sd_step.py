"""Time one complete CFD step with the full-size Stable Diffusion 2.1-base prior (issue 6).

Builds the SD 2.1-base architecture from its configs with random weights
(:func:`cfd3d.priors.sd_random.build_random_components`; no download: a step's time does
not depend on the weight values), a hash-grid NeRF and the volume renderer, and times the
phases of CFD steps on one device:

* ``render``: ``--batch`` random training cameras, the field rendered at
  ``--resolution``² with opacity and depth (``--shading``, ``--samples`` per ray);
* ``noise``: the multi-view consistent integral noise at the prior's input size
  (64x64x4) and its clean-flow SDE refresh;
* ``encode``: the differentiable VAE encoder (renders of another size are resized to 512²);
* ``unet``: the guided prediction (conditional and negative-prompt branches batched, UNet
  batch ``2 x --batch``) and the CFD gradient;
* ``backward``: the surrogate loss backward through the VAE encoder and the renderer into
  the field;
* ``optimizer``: the Adam step on the field.

The reference recipe's settings are used where they matter for cost (guidance 70, annealed
timestep, gamma 1e-2 -> 1e-4, cameras of stage 1). One warm-up step is not timed;
``ms_per_step`` and ``split_ms`` are medians over ``--steps`` timed steps. CUDA is
synchronised around every phase. A step whose field gradient is not finite is not taken
(as in ``cfd3d generate``); ``nonfinite_steps`` counts them (warm-up included).
``peak_mem_mb`` is ``torch.cuda.max_memory_allocated`` on CUDA (weights included) and the
process's peak resident set size on the CPU (model building included).

Memory: by default the step renders as ``cfd3d generate``'s ``sd-stage1`` does, with an
occupancy grid (empty-space skipping, early ray termination) and deferred
back-propagation (:mod:`cfd3d.render.deferred`): the render runs without graph, the
gradient on the image comes back through the VAE encoder, and rays are re-rendered with
graph ``--chunk-rays`` at a time, so the render's memory no longer grows with the image
(the VAE encoder at 512² costs 1.7 GB in float16, the float16 weights 2.5 GB). The
occupancy grid starts all occupied and learns the (random) field's density at step 0,
so a random NeRF's blob is what is skipped around. ``--dense`` times the one-pass dense
marcher instead.

``--field gaussians`` times the step on 3D Gaussians instead of the NeRF: ``sd-gaussians``'s
initial blob (5000 Gaussians) rendered by :class:`~cfd3d.render.splat.SplatRenderer`
(``--splat-backend``: gsplat on CUDA when installed, else the pure-PyTorch reference), the
rest of the step as above (issue 13's GPU figure: ms per CFD step at 512²).

``--small`` runs a reduced version on the CPU: the same topology at about 1/10 of the
width (8x8x4 latents of 64x64 images, 8.5M-parameter UNet) and a smaller hash grid, in
well under a minute on one thread. The full size runs on the CPU too, slowly (minutes per
step; float32 weights 5 GB, and the render's memory as above, so use
``--resolution 128`` unless the machine has about 64 GB).

Usage::

    python benchmarks/sd_step.py [--seed 0] [--small] [--device cuda] [--steps 3]
                                 [--resolution 512] [--low-vram] [--threads 1]
                                 [--field nerf|gaussians] [--splat-backend auto]

The last line of stdout is one JSON object. Errors a user can cause (no CUDA device,
a resolution the latent size does not divide) are one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from cfd3d.cli import guarded
from cfd3d.distill.cfd import cfd_gradient
from cfd3d.distill.gamma import gamma_at
from cfd3d.distill.loss import gradient_loss
from cfd3d.distill.timesteps import TimestepSchedule, timestep_fraction
from cfd3d.errors import ConfigError, UserError
from cfd3d.evaluation.render_cost import peak_memory_mb
from cfd3d.generate.config import preset_config
from cfd3d.generate.run import gradients_finite
from cfd3d.noise import NoiseConfig, make_noise
from cfd3d.priors.sd_random import Preset, build_random_components
from cfd3d.priors.stable_diffusion import StableDiffusionConfig, StableDiffusionPrior, low_vram
from cfd3d.render.deferred import render_deferred
from cfd3d.render.occupancy import OccupancyConfig, OccupancyGrid
from cfd3d.render.shading import SHADING_MODES, ShadingConfig
from cfd3d.render.splat import SplatConfig, SplatRenderer, resolve_backend
from cfd3d.render.volume import RendererConfig, VolumeRenderer
from cfd3d.scene.encoding import HashGridConfig
from cfd3d.scene.gaussians import GaussianField
from cfd3d.scene.nerf import NeRFConfig, NeRFField
from cfd3d.scene.sampling import CameraSamplerConfig, sample_cameras

PHASES = ("render", "noise", "encode", "unet", "backward", "optimizer")
PROMPT = "a DSLR photo of a hamburger"
NEGATIVE_PROMPT = "blurry, low quality"
GUIDANCE = 70.0  # the reference recipe's stage 1 (does not change the cost)
RUN_STEPS = 25_000  # the reference run length, for the timestep and gamma schedules


@dataclass(frozen=True)
class Setup:
    """One benchmark size.

    Attributes:
        preset: the random Stable Diffusion preset.
        latent_size: the prior's input height and width (the noise resolution).
        resolution: default render height and width.
        samples: default stratified samples per ray.
        nerf: the field.
    """

    preset: Preset
    latent_size: int
    resolution: int
    samples: int
    nerf: NeRFConfig


FULL = Setup("sd21-base", latent_size=64, resolution=512, samples=64, nerf=NeRFConfig())
SMALL = Setup(
    "small",
    latent_size=8,
    resolution=64,
    samples=32,
    nerf=NeRFConfig(
        encoding=HashGridConfig(n_levels=8, log2_table_size=15, max_resolution=256),
        hidden_dim=32,
    ),
)


class PhaseTimer:
    """Wall-clock milliseconds per named phase, synchronising CUDA around each."""

    def __init__(self, device: torch.device):
        self.device = device
        self.ms: dict[str, float] = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.ms[name] = 1000.0 * (time.perf_counter() - start)


def pick_device(name: str | None, small: bool) -> torch.device:
    """``--device``, defaulting to the CPU for ``--small`` and to CUDA when available."""
    if name is None:
        name = "cpu" if small or not torch.cuda.is_available() else "cuda"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}'; use cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device '{name}' is not supported here; use cpu or cuda[:N]")
    return device


def build_prior(
    setup: Setup, device: torch.device, seed: int, low_vram_mode: bool
) -> StableDiffusionPrior:
    """The random-weight Stable Diffusion prior of ``setup`` on ``device``."""
    parts = build_random_components(setup.preset, seed=seed)
    config = StableDiffusionConfig(device=str(device))
    if low_vram_mode:
        config = low_vram(config)
    return StableDiffusionPrior.from_modules(
        config,
        unet=parts.unet,
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        scheduler_config=dict(parts.scheduler.config),
    )


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    setup = SMALL if args.small else FULL
    resolution = args.resolution or setup.resolution
    if resolution < 1 or resolution % setup.latent_size:
        raise ConfigError(
            f"--resolution must be a positive multiple of the latent size "
            f"{setup.latent_size}, got {resolution}"
        )
    if args.steps < 1 or args.batch < 1 or (args.samples is not None and args.samples < 1):
        raise ConfigError("--steps, --batch and --samples must be at least 1")
    if args.chunk_rays < 1:
        raise ConfigError(f"--chunk-rays must be a positive integer, got {args.chunk_rays}")
    device = pick_device(args.device, args.small)
    if args.low_vram and device.type != "cuda":
        raise UserError("--low-vram (float16, CPU offload) needs a CUDA device; drop it on the CPU")
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cpu" and not args.small:
        print(
            "warning: the full-size Stable Diffusion step on the CPU is slow (minutes per step) "
            "and needs about 10 GB of memory at --resolution 512 (float32 weights and the VAE "
            "encoder's activations); use --small for a quick run",
            file=sys.stderr,
        )
    torch.manual_seed(args.seed)

    prior = build_prior(setup, device, args.seed, args.low_vram)
    field_generator = torch.Generator().manual_seed(args.seed)
    renderer = VolumeRenderer(
        RendererConfig(n_samples=args.samples or setup.samples, chunk_rays=args.chunk_rays)
    )
    occupancy = None
    splatter = None
    if args.field == "gaussians":
        gaussians = preset_config("sd-gaussians", PROMPT).gaussians
        field: torch.nn.Module = GaussianField(gaussians, generator=field_generator).to(device)
        backend = resolve_backend(args.splat_backend, device)
        splatter = SplatRenderer(SplatConfig(backend=backend))
        groups = field.parameter_groups()
    else:
        field = NeRFField(setup.nerf, generator=field_generator).to(device)
        if not args.dense:
            occupancy = OccupancyGrid(OccupancyConfig(), field.config.bound).to(device)
        groups = [
            {"params": field.grid_parameters(), "lr": 1e-2},
            {"params": field.mlp_parameters(), "lr": 1e-3},
        ]
    noise = make_noise(NoiseConfig(kind="integral", seed=args.seed), prior.input_shape)
    optimiser = torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)
    condition = prior.condition(PROMPT, negative_prompt=NEGATIVE_PROMPT, batch_size=args.batch)
    cameras_generator = torch.Generator().manual_seed(args.seed)
    render_generator = torch.Generator(device=device).manual_seed(args.seed)
    timesteps = TimestepSchedule()
    build_s = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        resident_mb = torch.cuda.memory_allocated(device) / 2**20

    skipped: list[bool] = []

    def step(index: int) -> dict[str, float]:
        timer = PhaseTimer(device)
        deferred = None
        with timer("render"):
            if occupancy is not None:
                occupancy.update(field.density, index)
            cameras = sample_cameras(
                CameraSamplerConfig(), args.batch, cameras_generator, device=device
            )
            if splatter is not None or args.dense:  # one pass with graph
                render = (splatter or renderer)(
                    field,  # type: ignore[arg-type]
                    cameras,
                    resolution,
                    resolution,
                    shading=args.shading,
                    generator=render_generator,
                )
                image = render.rgb
            else:
                deferred = render_deferred(
                    renderer,
                    field,
                    cameras,
                    resolution,
                    resolution,
                    shading=ShadingConfig(mode=args.shading),
                    generator=render_generator,
                    chunk_rays=args.chunk_rays,
                    occupancy=occupancy,
                )
                render = deferred.output
                image = render.rgb.detach().requires_grad_(True)
        with timer("noise"):
            eps = noise(render, cameras, index)
            noise.refresh(gamma_at(index, RUN_STEPS))
        with timer("encode"):
            z = prior.encode(image.permute(0, 3, 1, 2))
        with timer("unet"):
            fraction = timestep_fraction(timesteps, index, RUN_STEPS)
            t = torch.tensor(prior.schedule.index(fraction), device=device)
            grad = cfd_gradient(prior, z, t, condition, GUIDANCE, eps)
        with timer("backward"):
            gradient_loss(z, grad).backward()
            if deferred is not None:
                deferred.backward(image.grad)
        with timer("optimizer"):  # as the Run does: a non-finite step is not taken
            finite = gradients_finite(optimiser)
            if finite:
                optimiser.step()
            optimiser.zero_grad(set_to_none=True)
        skipped.append(not finite)
        return timer.ms

    step(0)  # warm-up: allocator, kernels, lazily created noise tiles
    timed = [step(index) for index in range(1, args.steps + 1)]
    totals = [sum(ms.values()) for ms in timed]
    result: dict[str, object] = {
        "seed": args.seed,
        "small": args.small,
        "preset": setup.preset,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(prior.dtype).removeprefix("torch."),
        "low_vram": args.low_vram,
        "resolution": resolution,
        "prior_input": list(prior.input_shape),
        "batch": args.batch,
        "field": args.field,
        "samples_per_ray": renderer.config.n_samples if splatter is None else None,
        "marcher": (
            f"splat:{splatter.config.backend}"
            if splatter is not None
            else "dense"
            if args.dense
            else "skipping+deferred"
        ),
        "chunk_rays": args.chunk_rays,
        "shading": args.shading,
        "unet_params": sum(p.numel() for p in prior.unet.parameters()),
        "steps": args.steps,
        "nonfinite_steps": sum(skipped),
        "ms_per_step": round(statistics.median(totals), 1),
        "split_ms": {
            phase: round(statistics.median(ms[phase] for ms in timed), 1) for phase in PHASES
        },
        "peak_mem_mb": round(peak_memory_mb(device), 1),
        "peak_mem_kind": "cuda_max_allocated" if device.type == "cuda" else "cpu_max_rss",
    }
    if device.type == "cuda":
        result["resident_mb"] = round(resident_mb, 1)
    result.update(
        threads=torch.get_num_threads(),
        build_s=round(build_s, 1),
        wall_s=round(time.perf_counter() - started, 1),
    )
    print(json.dumps(result))
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, field and noise")
    parser.add_argument(
        "--small", action="store_true", help="reduced widths and 64x64 renders, on the CPU"
    )
    parser.add_argument(
        "--device", default=None, help="cpu or cuda[:N] (default: cpu with --small, else cuda)"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    parser.add_argument(
        "--resolution", type=int, default=None, help="render size (default 512; 64 with --small)"
    )
    parser.add_argument("--batch", type=int, default=1, help="views per step")
    parser.add_argument(
        "--samples", type=int, default=None, help="samples per ray (default 64; 32 with --small)"
    )
    parser.add_argument("--shading", choices=SHADING_MODES, default="albedo", help="shading mode")
    parser.add_argument(
        "--low-vram", action="store_true", help="the prior's low-VRAM preset (CUDA only)"
    )
    parser.add_argument(
        "--dense",
        action="store_true",
        help="the dense one-pass marcher (default: occupancy grid + deferred back-propagation, "
        "as cfd3d generate's sd-stage1)",
    )
    parser.add_argument(
        "--chunk-rays", type=int, default=16384, help="rays re-rendered with graph at a time"
    )
    parser.add_argument(
        "--field",
        choices=("nerf", "gaussians"),
        default="nerf",
        help="the hash-grid NeRF (sd-stage1) or 3D Gaussians (sd-gaussians' initial blob)",
    )
    parser.add_argument(
        "--splat-backend",
        choices=("auto", "torch", "gsplat"),
        default="auto",
        help="the Gaussians' rasteriser (auto: gsplat on CUDA when installed)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return guarded(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
