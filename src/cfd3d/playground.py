"""The 2D playground: optimise images directly under a prior with CFD, SDS or FSD.

The "renderer" is the identity, so the optimised variable *is* the clean variable
``x^c`` of the clean flow. With ``optimizer="ode"`` (plain gradient steps of size
``-d(sigma/alpha)``, unit weighting, fixed noise) CFD integrates the probability-flow ODE
exactly and lands on the prior's sample for that noise; with ``optimizer="adam"`` it runs
the way the 3D pipeline does. Everything is batched: ``batch`` images are ``batch``
independent trajectories (seeds).
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
import torch

from cfd3d.diffusion.samplers import ddim_timesteps
from cfd3d.distill.cfd import cfd_gradient
from cfd3d.distill.fsd import fsd_gradient
from cfd3d.distill.loss import gradient_loss
from cfd3d.distill.methods import METHODS, get_method, make_rule
from cfd3d.distill.sds import sds_gradient
from cfd3d.distill.timesteps import TIMESTEP_KINDS, TimestepSchedule, timestep_fraction
from cfd3d.distill.weighting import Weighting
from cfd3d.errors import ConfigError
from cfd3d.io import atomic_write_bytes, atomic_write_text, ensure_writable_dir
from cfd3d.noise.sde import check_gamma, sde_refresh
from cfd3d.priors.base import Prior
from cfd3d.priors.registry import PRIORS, is_stable_diffusion, load_prior


@dataclass(frozen=True)
class ImageConfig:
    """One 2D playground run.

    Attributes:
        prompt: text prompt (the Gaussian-mixture prior knows a few fixed prompts).
        prior: prior name (see ``cfd3d.priors.registry.PRIORS``).
        method: ``"cfd"``, ``"sds"``, ``"fsd"``, ``"vsd"``, ``"ism"`` or ``"sdi"`` (VSD
            needs a prior with a network to copy, not the Gaussian mixture).
        steps: number of optimisation steps.
        seed: seed of the noise and of the timestep sampling.
        batch: number of independent images (trajectories) optimised together.
        optimizer: ``"adam"`` (as in 3D) or ``"ode"`` (plain steps of size -d(sigma/alpha)
            on a DDIM timestep grid; with ``cfd`` this is the exact clean-flow ODE).
        lr: Adam learning rate (unused by ``"ode"``).
        guidance_scale: classifier-free guidance scale.
        gamma: clean-flow SDE refresh rate per step; 0 is the ODE.
        timesteps: timestep schedule; ``None`` takes the method's default.
        weighting: ``w(t)``; ``None`` takes the method's default (``"unit"`` for ``"ode"``).
        frames: number of trajectory frames kept for the GIF.
    """

    prompt: str = "a simple shape"
    prior: str = "gmm"
    method: str = "cfd"
    steps: int = 300
    seed: int = 0
    batch: int = 4
    optimizer: Literal["adam", "ode"] = "adam"
    lr: float = 0.03
    guidance_scale: float = 1.0
    gamma: float = 0.0
    timesteps: TimestepSchedule | None = None
    weighting: Weighting | None = None
    frames: int = 30

    def __post_init__(self) -> None:
        get_method(self.method)
        if self.prior not in PRIORS and not is_stable_diffusion(self.prior):
            raise ConfigError(
                f"unknown prior '{self.prior}'; valid: {', '.join(PRIORS)}, or a Stable "
                "Diffusion hub id or diffusers folder"
            )
        if self.steps <= 0:
            raise ConfigError(f"--steps must be a positive integer, got {self.steps}")
        if self.batch <= 0:
            raise ConfigError(f"--batch must be a positive integer, got {self.batch}")
        if self.optimizer not in ("adam", "ode"):
            raise ConfigError(f"unknown optimizer '{self.optimizer}'; valid: adam, ode")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        check_gamma(self.gamma)


@dataclass(frozen=True)
class ImageResult:
    """Outcome of :func:`optimise_images`.

    Attributes:
        z: ``(batch, C, h, w)`` final images in the prior's input space.
        images: ``(batch, 3, H, W)`` final images in [0, 1].
        frames: ``(F, batch, 3, H, W)`` snapshots along the trajectory, in [0, 1].
        noise: ``(batch, C, h, w)`` the initial trajectory noise.
    """

    z: torch.Tensor
    images: torch.Tensor
    frames: torch.Tensor
    noise: torch.Tensor


def optimise_images(
    prior: Prior,
    config: ImageConfig,
    callback: Callable[[int, float, float], None] | None = None,
    dtype: torch.dtype = torch.float32,
) -> ImageResult:
    """Optimise ``config.batch`` images under ``prior`` with the configured method.

    Args:
        prior: the prior.
        config: the run.
        callback: ``callback(step, t_fraction, loss)`` after every step (progress bars).
        dtype: working precision (float64 for exactness checks).
    """
    method = get_method(config.method)
    gen = torch.Generator().manual_seed(config.seed)
    shape = (config.batch, *prior.input_shape)
    noise0 = torch.randn(shape, generator=gen, dtype=dtype)
    noise = noise0
    z = torch.zeros(shape, dtype=dtype, requires_grad=True)
    condition = prior.condition(config.prompt, batch_size=config.batch)
    schedule = config.timesteps or method.timesteps
    weighting = config.weighting or ("unit" if config.optimizer == "ode" else method.weighting)
    if config.optimizer == "ode":
        grid = ddim_timesteps(prior.schedule, config.steps)
        levels = torch.cat(
            [prior.schedule.sigma_over_alpha(grid), torch.zeros(1, dtype=torch.float64)]
        )
        optimiser = torch.optim.SGD([z], lr=1.0)
    else:
        optimiser = torch.optim.Adam([z], lr=config.lr)
    keep = set(
        np.linspace(0, config.steps - 1, min(config.frames, config.steps)).round().astype(int)
    )
    rule = make_rule(config.method, prior, config.seed) if method.rule != "clean_flow" else None
    frames = []
    for step in range(config.steps):
        if config.optimizer == "ode":
            t = grid[step]
            for group in optimiser.param_groups:
                group["lr"] = float(levels[step] - levels[step + 1])
        else:
            t = torch.tensor(
                prior.schedule.index(timestep_fraction(schedule, step, config.steps, config.seed))
            )
        rule_args = (prior, z, t, condition, config.guidance_scale)
        if rule is not None:
            fresh = torch.randn(shape, generator=gen, dtype=dtype)
            grad = rule.gradient(z, t, condition, config.guidance_scale, fresh, weighting, step)
        elif config.method == "sds":
            grad = sds_gradient(*rule_args, generator=gen, weighting=weighting)
        elif config.method == "fsd":
            grad = fsd_gradient(*rule_args, view_noise=noise0, weighting=weighting)
        else:
            grad = cfd_gradient(*rule_args, noise=noise, weighting=weighting)
            noise = sde_refresh(noise, config.gamma, gen)
        optimiser.zero_grad(set_to_none=True)
        loss = gradient_loss(z, grad)
        loss.backward()
        optimiser.step()
        if step in keep:
            frames.append(prior.decode(z.detach()).clone())
        if callback is not None:
            callback(step, (t.item() + 1) / prior.schedule.num_timesteps, loss.item())
    final = z.detach()
    return ImageResult(final, prior.decode(final), torch.stack(frames), noise0)


def _to_uint8_grid(images: torch.Tensor, scale: int) -> np.ndarray:
    """``(B, 3, H, W)`` in [0, 1] -> one ``(H*scale, B*W*scale + gaps, 3)`` uint8 strip."""
    tiles = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    tiles = tiles.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    gap = torch.full((3, tiles.shape[2], 2), 255, dtype=torch.uint8)
    row = []
    for i, tile in enumerate(tiles):
        if i:
            row.append(gap)
        row.append(tile)
    return torch.cat(row, dim=2).permute(1, 2, 0).numpy()


def encode_png(image: np.ndarray) -> bytes:
    """``(H, W, 3)`` uint8 -> PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_gif(frames: list[np.ndarray], fps: int = 10) -> bytes:
    """A looping GIF of ``(H, W, 3)`` uint8 frames."""
    from PIL import Image

    buffer = io.BytesIO()
    pictures = [Image.fromarray(f) for f in frames]
    pictures[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=pictures[1:],
        duration=int(1000 / fps),
        loop=0,
    )
    return buffer.getvalue()


def run_image_command(args: argparse.Namespace) -> int:
    """``cfd3d image``: write ``final.png``, ``trajectory.gif`` and ``config.json``."""
    timesteps = None
    if args.schedule is not None:
        timesteps = TimestepSchedule(kind=args.schedule)
    config = ImageConfig(
        prompt=args.prompt,
        prior=args.prior,
        method=args.method,
        steps=args.steps,
        seed=args.seed,
        batch=args.batch,
        optimizer=args.optimizer,
        lr=args.lr,
        guidance_scale=args.guidance,
        gamma=args.gamma,
        timesteps=timesteps,
    )
    if not config.prompt.strip():
        raise ConfigError("the prompt is empty; pass a text prompt, e.g. 'a simple shape'")
    out = ensure_writable_dir(args.out)
    prior = load_prior(config.prior)
    prior.condition(config.prompt)  # fail on an unknown prompt before any work
    from tqdm import tqdm

    with tqdm(total=config.steps, disable=args.quiet, desc=config.method, unit="step") as bar:

        def progress(step: int, t: float, loss: float) -> None:
            bar.set_postfix(t=f"{t:.3f}", loss=f"{loss:.3g}", refresh=False)
            bar.update(1)

        result = optimise_images(prior, config, progress)
    scale = max(1, 128 // prior.image_size[0])
    atomic_write_bytes(out / "final.png", encode_png(_to_uint8_grid(result.images, scale)))
    gif_frames = [_to_uint8_grid(f, scale) for f in result.frames]
    atomic_write_bytes(out / "trajectory.gif", encode_gif(gif_frames))
    record = asdict(
        replace(config, timesteps=config.timesteps or get_method(config.method).timesteps)
    )
    atomic_write_text(out / "config.json", json.dumps(record, indent=2) + "\n")
    if not args.quiet:
        print(f"wrote {out / 'final.png'} and {out / 'trajectory.gif'}")
    return 0


def add_image_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``cfd3d image``."""
    defaults = ImageConfig()
    parser = subparsers.add_parser(
        "image",
        help="2D playground: optimise images under a prior with CFD, SDS or FSD",
        description=(
            "Optimise images directly under a text-to-image prior (the 2D clean-flow "
            "playground). Writes final.png (the images side by side), trajectory.gif and "
            "config.json into --out."
        ),
    )
    parser.add_argument("prompt", help="text prompt, e.g. 'a simple shape'")
    parser.add_argument(
        "--prior",
        default=defaults.prior,
        help=f"prior: {', '.join(PRIORS)}, or a Stable Diffusion hub id / diffusers folder",
    )
    parser.add_argument(
        "--method", default=defaults.method, help=f"update rule: {', '.join(METHODS)}"
    )
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimisation steps")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
    parser.add_argument(
        "--batch", type=int, default=defaults.batch, help="number of images (trajectories)"
    )
    parser.add_argument(
        "--optimizer",
        default=defaults.optimizer,
        help="adam (as in 3D) or ode (exact clean-flow ODE steps)",
    )
    parser.add_argument("--lr", type=float, default=defaults.lr, help="Adam learning rate")
    parser.add_argument("--guidance", type=float, default=defaults.guidance_scale, help="CFG scale")
    parser.add_argument(
        "--gamma",
        type=float,
        default=defaults.gamma,
        help="clean-flow SDE noise refresh rate per step in [0, 1]; 0 = ODE",
    )
    parser.add_argument(
        "--schedule",
        default=None,
        help=f"timestep schedule: {', '.join(TIMESTEP_KINDS)} (default: the method's)",
    )
    parser.add_argument("--out", default="out/image", help="output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_image_command)
