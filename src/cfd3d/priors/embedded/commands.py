"""CLI commands of the embedded prior: ``sample`` and ``prior-vocab``
(``train-prior`` lives with the toy world in :mod:`cfd3d.priors.embedded.world`)."""

from __future__ import annotations

import argparse
import time

import torch

from cfd3d.diffusion.samplers import ddim_sample, ddim_timesteps
from cfd3d.errors import ConfigError
from cfd3d.io import atomic_write_bytes, ensure_writable_dir
from cfd3d.priors.embedded.prior import EmbeddedPrior


@torch.no_grad()
def sample_images(
    prior: EmbeddedPrior,
    prompt: str,
    n: int,
    guidance_scale: float,
    steps: int = 50,
    seed: int = 0,
    negative_prompt: str = "",
) -> torch.Tensor:
    """``(n, 3, S, S)`` DDIM samples in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    cond = prior.condition(prompt, negative_prompt=negative_prompt, batch_size=n)
    grid = ddim_timesteps(prior.schedule, steps)
    noise = torch.randn((n, *prior.input_shape), generator=gen)
    _, sigma = prior.schedule.alpha_sigma(grid[0])
    z = ddim_sample(
        lambda x, t: prior.predict_eps(x, t, cond, guidance_scale),
        sigma.float() * noise,
        prior.schedule,
        grid,
    )
    return prior.decode(z)


def _run_sample(args: argparse.Namespace) -> int:
    from cfd3d.export.video import preview_grid

    if not args.prompt.strip():
        raise ConfigError("the prompt is empty; pass a text prompt, e.g. 'a red cube'")
    if args.n <= 0 or args.steps <= 0:
        raise ConfigError("-n and --steps must be positive integers")
    out = args.out
    ensure_writable_dir(out.parent if out.suffix else out)
    prior = EmbeddedPrior.load()
    tic = time.perf_counter()
    images = sample_images(prior, args.prompt, args.n, args.guidance, args.steps, args.seed)
    pixels = (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    atomic_write_bytes(out, preview_grid(pixels))
    print(f"wrote {out} ({args.n} samples in {time.perf_counter() - tic:.1f} s)")
    return 0


def _run_vocab(args: argparse.Namespace) -> int:
    prior = EmbeddedPrior.load()
    print(" ".join(prior.tokenizer.words))
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``cfd3d sample`` and ``cfd3d prior-vocab``."""
    from pathlib import Path

    sample = subparsers.add_parser(
        "sample",
        help="sample images from the embedded prior (what does it know?)",
        description="Draw DDIM samples from the embedded toy-world prior and write a grid PNG.",
    )
    sample.add_argument("prompt", help="e.g. 'a red cube' or 'a torus, side view'")
    sample.add_argument("-n", type=int, default=16, help="number of samples")
    sample.add_argument("--guidance", type=float, default=1.5, help="CFG scale")
    sample.add_argument("--steps", type=int, default=50, help="DDIM steps")
    sample.add_argument("--seed", type=int, default=0, help="random seed")
    sample.add_argument("--out", type=Path, default=Path("out/samples.png"), help="PNG path")
    sample.set_defaults(run=_run_sample)
    vocab = subparsers.add_parser(
        "prior-vocab",
        help="list the words the embedded prior knows",
        description="Print the embedded prior's vocabulary.",
    )
    vocab.set_defaults(run=_run_vocab)
