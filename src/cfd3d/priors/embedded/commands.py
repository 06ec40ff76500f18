"""CLI commands of the embedded prior: ``train-prior``, ``sample`` and ``prior-vocab``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import time
from pathlib import Path
from typing import Any

import torch

from cfd3d.diffusion.samplers import ddim_sample, ddim_timesteps
from cfd3d.errors import ConfigError, OutputError
from cfd3d.io import atomic_torch_save, atomic_write_bytes, ensure_writable_dir
from cfd3d.jsonconfig import merged
from cfd3d.priors.embedded.prior import EmbeddedPrior
from cfd3d.priors.embedded.training import TrainConfig, check_unet
from cfd3d.priors.embedded.world import WorldConfig
from cfd3d.text import check_text

CONFIG_SECTIONS: tuple[str, ...] = ("train", "world", "unet")
"""The objects a ``cfd3d train-prior --config`` file may hold."""
LONGEST_CAPTION = "a yellow cylinder on top of a yellow capsule, overhead view"
"""A toy-world caption of the most words (a pair with a view phrase)."""


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


def prior_configs(data: Any) -> tuple[TrainConfig, WorldConfig]:
    """The training run and the world of a ``cfd3d train-prior --config`` object.

    ``data`` is a JSON object with optional ``"train"``, ``"world"`` and ``"unet"`` objects,
    each a partial dict of :class:`TrainConfig` (without ``unet``), :class:`WorldConfig`
    and :class:`~cfd3d.priors.embedded.unet.UNetConfig` fields merged over the defaults
    (nested objects, e.g. the world's ``cameras``, merge too, and its ``pair_cameras`` merge
    over its ``cameras``); lists stand for tuples. The
    world's ``image_size`` follows the UNet's unless given, and must equal it.

    Raises:
        ConfigError: unknown keys, values of the wrong type or invalid values (one line
            naming the section and the key).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"the file must hold a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(CONFIG_SECTIONS))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(unknown)}; valid: {', '.join(CONFIG_SECTIONS)}"
        )
    train = data.get("train", {})
    if isinstance(train, dict) and "unet" in train:
        raise ConfigError('train: give the UNet\'s settings as a top-level "unet" object')
    base = TrainConfig()
    unet = merged(base.unet, data.get("unet", {}), "unet")
    try:
        check_unet(unet)
    except ConfigError as exc:
        raise ConfigError(f"unet: {exc}") from None
    config = merged(dataclasses.replace(base, unet=unet), train, "train")
    world_data, pair_data = data.get("world", {}), None
    if isinstance(world_data, dict) and isinstance(world_data.get("pair_cameras"), dict):
        world_data = dict(world_data)  # pair_cameras merge over the world's cameras
        pair_data = world_data.pop("pair_cameras")
    world = merged(WorldConfig(image_size=unet.image_size), world_data, "world")
    if pair_data is not None:
        pair_cameras = merged(world.cameras, pair_data, "world.pair_cameras")
        world = dataclasses.replace(world, pair_cameras=pair_cameras)
    if world.image_size != unet.image_size:
        raise ConfigError(
            f"world: image_size {world.image_size} must equal the unet's, {unet.image_size} "
            "(the prior draws the world's images)"
        )
    return config, world


def prior_config_dict(config: TrainConfig, world: WorldConfig) -> dict[str, Any]:
    """Every setting of ``config`` and ``world`` as a ``--config`` object (what reproduces
    them with ``cfd3d train-prior --config FILE``)."""
    train = dataclasses.asdict(config)
    unet = train.pop("unet")
    return {"train": train, "world": dataclasses.asdict(world), "unet": unet}


def read_prior_config(path: Path) -> tuple[TrainConfig, WorldConfig]:
    """:func:`prior_configs` of a JSON file.

    Raises:
        ConfigError: a missing, unreadable or invalid file.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config file '{path}' not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read --config file '{path}' ({exc})") from None
    try:
        return prior_configs(data)
    except ConfigError as exc:
        raise ConfigError(f"--config '{path}': {exc}") from None


def _run_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from cfd3d.priors.embedded.tokenizer import WordTokenizer
    from cfd3d.priors.embedded.training import initial_weights, read_training_checkpoint, train
    from cfd3d.priors.embedded.weights import write_weights
    from cfd3d.priors.embedded.world import caption, render_world, vocabulary

    for flag, value in (("--steps", args.steps), ("--dataset-size", args.dataset_size)):
        if value is not None and value <= 0:
            raise ConfigError(f"{flag} must be a positive integer")
    if args.threads is not None and args.threads <= 0:
        raise ConfigError("--threads must be a positive integer")
    if args.config is not None:
        config, world = read_prior_config(args.config)
    else:
        config = TrainConfig()
        world = WorldConfig(image_size=config.unet.image_size)
    overrides = {"seed": args.seed, "steps": args.steps, "dataset_size": args.dataset_size}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    words = vocabulary()
    if config.unet.vocab_size <= len(words):
        raise ConfigError(
            f"unet vocab_size must exceed the {len(words)} words of the toy world (id 0 is "
            f"padding), got {config.unet.vocab_size}"
        )
    tokenizer = WordTokenizer(words, config.unet.max_tokens)
    longest = len(tokenizer.split(LONGEST_CAPTION))
    if config.unet.max_tokens < longest:
        raise ConfigError(
            f"unet max_tokens must be at least {longest}, the longest caption's words "
            f"({LONGEST_CAPTION!r}), got {config.unet.max_tokens}"
        )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data_file = args.work / "dataset.pt"
    key = {"world": dataclasses.asdict(world), "n": config.dataset_size, "seed": config.seed}
    if (args.work / "checkpoint.pt").exists():  # another run's is refused before any work
        read_training_checkpoint(args.work / "checkpoint.pt", config, key)
    if config.init_weights:  # so are weights to fine-tune that cannot be used
        initial_weights(config)
    ensure_writable_dir(args.work)
    ensure_writable_dir(args.out.parent)
    tic = time.perf_counter()
    cached = _read_dataset(data_file)
    if cached is not None and cached["key"] == key:
        images, items = cached["images"], cached["items"]
    else:
        images, items = render_world(world, config.dataset_size, config.seed, progress=True)
        atomic_torch_save(data_file, {"key": key, "images": images, "items": items})
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
        data=key,
    )
    bar.close()
    minutes = (time.perf_counter() - tic) / 60
    metadata: dict[str, object] = {
        "vocabulary": list(tokenizer.words),
        "schedule": "scaled_linear",
        "train_config": dataclasses.asdict(config),
        "world_config": dataclasses.asdict(world),
        "command": f"cfd3d train-prior --seed {config.seed} --steps {config.steps}",
    }
    if config.init_weights:
        from cfd3d.priors.embedded.weights import sha256_of

        metadata["init_weights_sha256"] = sha256_of(Path(config.init_weights))
    if args.config is not None:
        command = ["cfd3d", "train-prior", "--config", str(args.config)]
        command += ["--seed", str(config.seed), "--steps", str(config.steps)]
        command += ["--dataset-size", str(config.dataset_size)]
        metadata["command"] = shlex.join(command)
        metadata["train_prior_config"] = prior_config_dict(config, world)
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
    train = subparsers.add_parser(
        "train-prior",
        help="train the embedded toy-world prior from scratch",
        description=(
            "Render the toy world and train the embedded prior on it. Interrupted runs "
            "resume from --work. The shipped weights were made by two runs, which `make "
            "prior` spells out (about 2 hours on 2 CPU cores): configs/embedded-prior-front.json "
            "(pairs of objects seen from the front), then configs/embedded-prior.json, which "
            "starts from the first run's weights (their metadata records the command and "
            "every setting); copy the result to src/cfd3d/assets/ (with its .sha256) to "
            "replace them. Without --config: the "
            "first prior's smaller world, 3000 steps. --config FILE.json changes the "
            "training, the world or the UNet."
        ),
    )
    train.add_argument(
        "--config",
        type=Path,
        default=None,
        help='a JSON object with optional "train", "world" and "unet" objects, each merged '
        "over the defaults (e.g. configs/embedded-prior.json); --seed, --steps and "
        "--dataset-size override it",
    )
    train.add_argument(
        "--seed", type=int, default=None, help="seeds the data and the training (default 0)"
    )
    train.add_argument("--steps", type=int, default=None, help="training steps (default 3000)")
    train.add_argument(
        "--dataset-size", type=int, default=None, help="number of rendered images (default 16000)"
    )
    train.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's choice; float sums, so the last bits of the "
        "weights, depend on it)",
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
        help="where to write the weights (their checksum, NAME.sha256, is written beside them)",
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
