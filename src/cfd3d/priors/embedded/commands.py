"""CLI commands of the embedded prior: ``train-prior``, ``sample`` and ``prior-vocab``."""

from __future__ import annotations

import argparse
import time

import torch

from cfd3d.diffusion.samplers import ddim_sample, ddim_timesteps
from cfd3d.errors import ConfigError, OutputError
from cfd3d.io import atomic_torch_save, atomic_write_bytes, ensure_writable_dir
from cfd3d.priors.embedded.prior import EmbeddedPrior
from cfd3d.text import check_text


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

    check_text(args.prompt)
    if not args.prompt.strip():
        raise ConfigError("the prompt is empty; pass a text prompt, e.g. 'a red cube'")
    if args.n <= 0 or args.steps <= 0:
        raise ConfigError("-n and --steps must be positive integers")
    out = args.out
    if out.is_dir():
        raise OutputError(f"--out '{out}' is a folder; name a PNG file, e.g. {out / 'samples.png'}")
    if out.suffix.lower() != ".png":
        raise OutputError(f"--out '{out}' must name a .png file, e.g. samples.png")
    ensure_writable_dir(out.parent)
    prior = EmbeddedPrior.load(args.weights)
    tic = time.perf_counter()
    images = sample_images(prior, args.prompt, args.n, args.guidance, args.steps, args.seed)
    pixels = (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    atomic_write_bytes(out, preview_grid(pixels))
    print(f"wrote {out} ({args.n} samples in {time.perf_counter() - tic:.1f} s)")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from dataclasses import asdict, replace

    from tqdm import tqdm

    from cfd3d.priors.embedded.tokenizer import WordTokenizer
    from cfd3d.priors.embedded.training import TrainConfig, read_training_checkpoint, train
    from cfd3d.priors.embedded.weights import write_weights
    from cfd3d.priors.embedded.world import WorldConfig, caption, render_world, vocabulary

    if args.steps is not None and args.steps <= 0:
        raise ConfigError("--steps must be a positive integer")
    if args.dataset_size is not None and args.dataset_size <= 0:
        raise ConfigError("--dataset-size must be a positive integer")
    config = TrainConfig(seed=args.seed)
    if args.steps is not None:
        config = replace(config, steps=args.steps)
    if args.dataset_size is not None:
        config = replace(config, dataset_size=args.dataset_size)
    world = WorldConfig(image_size=config.unet.image_size)
    if (args.work / "checkpoint.pt").exists():  # another run's is refused before any work
        read_training_checkpoint(args.work / "checkpoint.pt", config)
    ensure_writable_dir(args.work)
    ensure_writable_dir(args.out.parent)
    tic = time.perf_counter()
    data_file = args.work / "dataset.pt"
    key = {"world": asdict(world), "n": config.dataset_size, "seed": config.seed}
    cached = _read_dataset(data_file)
    if cached is not None and cached["key"] == key:
        images, items = cached["images"], cached["items"]
    else:
        images, items = render_world(world, config.dataset_size, config.seed, progress=True)
        atomic_torch_save(data_file, {"key": key, "images": images, "items": items})
    tokenizer = WordTokenizer(vocabulary(), config.unet.max_tokens)
    bar = tqdm(total=config.steps, desc="training the embedded prior", unit="step")

    def progress(step: int, loss: float, seconds: float) -> None:
        bar.n = step + 1
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.refresh()

    model = train(
        config,
        images,
        lambda i, gen: caption(items[i], world, gen),
        tokenizer,
        checkpoint=args.work / "checkpoint.pt",
        progress=progress,
    )
    bar.close()
    minutes = (time.perf_counter() - tic) / 60
    metadata = {
        "vocabulary": list(tokenizer.words),
        "schedule": "scaled_linear",
        "train_config": asdict(config),
        "world_config": asdict(world),
        "command": f"cfd3d train-prior --seed {config.seed} --steps {config.steps}",
    }
    checksum = write_weights(model, metadata, args.out)
    print(f"wrote {args.out} (sha256 {checksum[:12]}..., {minutes:.1f} min this call)")
    return 0


def _read_dataset(path) -> dict | None:
    """The cached dataset in ``path``, or ``None`` when absent or damaged (rendered again)."""
    if not path.exists():
        return None
    try:
        cached = torch.load(path, weights_only=False)
    except Exception as exc:  # torch raises many types for damaged files
        print(
            f"warning: cached dataset '{path}' is damaged ({type(exc).__name__}); rendering again"
        )
        return None
    return (
        cached if isinstance(cached, dict) and {"key", "images", "items"} <= set(cached) else None
    )


def _run_vocab(args: argparse.Namespace) -> int:
    prior = EmbeddedPrior.load()
    print(" ".join(prior.tokenizer.words))
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``cfd3d train-prior``, ``cfd3d sample`` and ``cfd3d prior-vocab``."""
    from pathlib import Path

    train = subparsers.add_parser(
        "train-prior",
        help="train the embedded toy-world prior from scratch",
        description=(
            "Render the toy world and train the embedded prior on it (about an hour on 2 CPU "
            "cores with the defaults). Interrupted runs resume from --work. The shipped "
            "weights were made with the defaults and --seed 0; copy the result to "
            "src/cfd3d/assets/ (with its .sha256) to replace them."
        ),
    )
    train.add_argument("--seed", type=int, default=0, help="seeds the data and the training")
    train.add_argument("--steps", type=int, default=None, help="training steps (default 3000)")
    train.add_argument(
        "--dataset-size", type=int, default=None, help="number of rendered images (default 16000)"
    )
    train.add_argument(
        "--work",
        type=Path,
        default=Path("out/train-prior"),
        help="folder for the rendered dataset and the resumable checkpoint",
    )
    train.add_argument(
        "--out",
        type=Path,
        default=Path("out/train-prior/embedded_prior.safetensors"),
        help="where to write the weights (a .sha256 file is written beside them)",
    )
    train.set_defaults(run=_run_train)

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
    sample.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="a weights file from 'cfd3d train-prior' (default: the shipped weights)",
    )
    sample.set_defaults(run=_run_sample)
    vocab = subparsers.add_parser(
        "prior-vocab",
        help="list the words the embedded prior knows",
        description="Print the embedded prior's vocabulary.",
    )
    vocab.set_defaults(run=_run_vocab)
