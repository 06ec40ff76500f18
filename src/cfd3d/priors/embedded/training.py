"""Training the embedded prior (``cfd3d train-prior``): DDPM eps-prediction with
classifier-free-guidance dropout, an EMA with warm-up, checkpoints and resume.

The data is a fixed set of toy-world renders (see :mod:`cfd3d.priors.embedded.world`);
captions are drawn afresh every step from each render's description, so the same image is
seen as "a red cube", "a cube", "a red object" or "a red cube, side view".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from cfd3d.diffusion.schedule import make_schedule
from cfd3d.errors import ConfigError, UserError
from cfd3d.io import atomic_torch_save
from cfd3d.priors.embedded.tokenizer import WordTokenizer
from cfd3d.priors.embedded.unet import TinyUNet, UNetConfig, grow


@dataclass(frozen=True)
class TrainConfig:
    """How the embedded prior is trained.

    Attributes:
        steps: optimisation steps.
        batch_size: images per step.
        lr: peak AdamW learning rate (linear warm-up, cosine decay to 10 %).
        warmup: warm-up steps.
        weight_decay: AdamW weight decay.
        cfg_dropout: probability of training on the empty prompt (for guidance).
        ema_decay: EMA decay ceiling; the decay is ``min(ema_decay, (1+n)/(10+n))``.
        dataset_size: number of toy-world renders.
        seed: seeds data, initialisation and the training order.
        checkpoint_every: steps between training checkpoints.
        init_weights: fine-tuning: a weights file of the embedded prior's format (with its
            ``.sha256`` beside it) whose model the training starts from instead of a
            random initialisation; model and EMA start as its weights, the optimiser
            afresh, and its UNet must be :attr:`unet`, or one at half its ``image_size``
            that :attr:`unet` is grown from by one level outside the others
            (:func:`~cfd3d.priors.embedded.unet.grow`). ``""``: from scratch. A
            relative path is relative to the working directory.
        unet: the architecture.
    """

    steps: int = 3000
    batch_size: int = 48
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.0
    cfg_dropout: float = 0.1
    ema_decay: float = 0.999
    dataset_size: int = 16000
    seed: int = 0
    checkpoint_every: int = 250
    init_weights: str = ""
    unet: UNetConfig = field(default_factory=lambda: UNetConfig(channels=(48, 96, 128)))

    def __post_init__(self) -> None:
        positive = {
            "steps": self.steps,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "dataset_size": self.dataset_size,
            "checkpoint_every": self.checkpoint_every,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if self.warmup < 0 or self.weight_decay < 0:
            raise ConfigError(
                f"warmup and weight_decay must not be negative, got {self.warmup} and "
                f"{self.weight_decay}"
            )
        for name in ("cfg_dropout", "ema_decay"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        check_unet(self.unet)


def check_unet(config: UNetConfig) -> None:
    """Refuse a UNet that cannot be built or cannot run on its images.

    Raises:
        ConfigError: what is wrong, e.g. channels that its GroupNorm groups do not divide.
    """
    counts = {
        "image_size": config.image_size,
        "patch": config.patch,
        "blocks_per_level": config.blocks_per_level,
        "text_layers": config.text_layers,
        "max_tokens": config.max_tokens,
        "groups": config.groups,
    }
    for name, value in counts.items():
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if not config.channels or min(config.channels) < 1:
        raise ConfigError(f"channels must be positive counts, got {config.channels}")
    if any(c % config.groups or c % 4 for c in config.channels):
        raise ConfigError(
            f"channels {config.channels} must be multiples of groups ({config.groups}) "
            "and of 4 (the attention heads)"
        )
    if config.channels[0] % 2 or config.text_width < 4 or config.text_width % 4:
        raise ConfigError(
            "channels[0] must be even and text_width a positive multiple of 4 (the "
            f"attention heads), got {config.channels[0]} and {config.text_width}"
        )
    fold = config.patch * 2 ** (len(config.channels) - 1)
    if config.image_size % fold:
        raise ConfigError(
            f"image_size {config.image_size} must be a multiple of {fold} (patch "
            f"{config.patch} times 2 per level below the first)"
        )


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up then cosine decay to 10 % of the peak."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(config.steps - config.warmup, 1)
    return config.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


def ema_update(ema: TinyUNet, model: TinyUNet, step: int, ceiling: float) -> None:
    decay = min(ceiling, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(p, 1 - decay)


def train(
    config: TrainConfig,
    images: torch.Tensor,
    captioner: Callable[[int, torch.Generator], str],
    tokenizer: WordTokenizer,
    checkpoint: Path | None = None,
    progress: Callable[[int, float, float], None] | None = None,
    stop_at: int | None = None,
    data: dict[str, Any] | None = None,
) -> TinyUNet:
    """Train and return the EMA model.

    Args:
        config: the run.
        images: ``(N, 3, S, S)`` uint8 renders.
        captioner: ``(index, generator) -> caption`` for render ``index``.
        tokenizer: maps captions to ids.
        checkpoint: file for training checkpoints; an existing one is resumed.
        progress: ``progress(step, loss, seconds_per_step)`` after every step.
        stop_at: end this call after this many steps in total (an interruption: resume
            from ``checkpoint`` later); the checkpoint is written when stopping.
        data: what defines ``images`` and their captions (``cfd3d train-prior``: the world,
            the number of images and the seed), kept in the checkpoint so that a run on
            other data does not resume it.
    """
    torch.manual_seed(config.seed)
    model = TinyUNet(config.unet)
    if config.init_weights:
        model.load_state_dict(initial_weights(config).state_dict())
    ema = TinyUNet(config.unet)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    schedule = make_schedule("scaled_linear")
    alphas_cumprod = schedule.alphas_cumprod.float()
    gen = torch.Generator().manual_seed(config.seed + 1)
    start = 0
    if checkpoint is not None and checkpoint.exists():
        state = read_training_checkpoint(checkpoint, config, data)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimiser.load_state_dict(state["optimiser"])
        gen.set_state(state["generator"])
        start = state["step"]
    n = images.shape[0]
    end = config.steps if stop_at is None else min(stop_at, config.steps)
    for step in range(start, end):
        tic = time.perf_counter()
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(config, step)
        index = torch.randint(0, n, (config.batch_size,), generator=gen)
        x0 = images[index].float() / 127.5 - 1.0
        captions = [
            ""
            if torch.rand((), generator=gen).item() < config.cfg_dropout
            else captioner(int(i), gen)
            for i in index
        ]
        ids = tokenizer.encode(captions)
        t = torch.randint(0, schedule.num_timesteps, (config.batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        abar = alphas_cumprod[t][:, None, None, None]
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        loss = F.mse_loss(model(x_t, t, ids), noise)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        ema_update(ema, model, step, config.ema_decay)
        due = (step + 1) % config.checkpoint_every == 0 or step + 1 == end
        if checkpoint is not None and due:
            state = {
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "optimiser": optimiser.state_dict(),
                "generator": gen.get_state(),
                "step": step + 1,
                "config": asdict(config),
                "data": data,
            }
            atomic_torch_save(checkpoint, state)
        if progress is not None:
            progress(step, loss.item(), time.perf_counter() - tic)
    return ema.eval()


def initial_weights(config: TrainConfig) -> TinyUNet:
    """The model that ``config.init_weights`` holds (verified against its checksum); a UNet
    with ``image_positions`` may start from one without (its positions start at zero), and
    one at twice the resolution from one at half it, grown by a level
    (:func:`~cfd3d.priors.embedded.unet.grow`).

    Raises:
        UserError: the file is missing, damaged or of another UNet.
    """
    from cfd3d.priors.embedded.weights import load_weights

    loaded, _ = load_weights(Path(config.init_weights))
    if config.unet.image_size == 2 * loaded.config.image_size:
        loaded = grow(loaded)  # a prior at half the resolution: one level more outside
    mine = replace(config.unet, image_positions=loaded.config.image_positions)
    if loaded.config != mine or (loaded.config.image_positions and not config.unet.image_positions):
        differ = _differences(asdict(loaded.config), asdict(config.unet), "unet.")
        raise UserError(
            f"init_weights '{config.init_weights}' hold another UNet ({'; '.join(differ[:3])}); "
            "give weights of this config's unet"
        )
    # weights made without image positions start a UNet with them at zero positions
    model = TinyUNet(config.unet)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    assert not unexpected and all(k.endswith(".position") for k in missing), (missing, unexpected)
    for name in missing:
        model.get_parameter(name).data.zero_()
    return model


def read_training_checkpoint(path: Path, config: TrainConfig, data: dict | None = None) -> dict:
    """A training checkpoint of ``config`` (its ``steps`` may differ: a longer run resumes
    a shorter one) and of ``data`` (see :func:`train`; not compared when ``None``, nor in a
    checkpoint written before the data was recorded).

    Raises:
        UserError: the file is damaged, or it belongs to a training run of another seed,
            configuration or data.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for damaged files
        raise UserError(
            f"training checkpoint '{path}' is unreadable ({type(exc).__name__}); delete it to "
            "train afresh"
        ) from None
    if not isinstance(state, dict) or "config" not in state:
        raise UserError(
            f"'{path}' is not a training checkpoint; delete it or choose another --work"
        )
    differ = _differences({**state["config"], "steps": 0}, {**asdict(config), "steps": 0})
    if data is not None and state.get("data") is not None:
        differ += _differences(state["data"], data, "data.")
    if differ:
        raise UserError(
            f"'{path}' is a training run with other settings ({'; '.join(differ[:3])}); "
            "choose another --work, or delete it to train afresh"
        )
    return state


def _differences(theirs: dict, mine: dict, prefix: str = "") -> list[str]:
    """``"key THEIRS, not MINE"`` for every leaf where two (nested) dicts differ."""
    out = []
    for key in sorted(set(theirs) | set(mine)):
        a, b = theirs.get(key), mine.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif _plain(a) != _plain(b):
            out.append(f"{prefix}{key} {_plain(a)}, not {_plain(b)}")
    return out


def _plain(value: Any) -> Any:
    """Tuples as lists, so that a stored ``[1, 2]`` equals ``(1, 2)``."""
    return list(value) if isinstance(value, tuple) else value
