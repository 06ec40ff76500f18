"""The embedded prior as a :class:`cfd3d.priors.base.Prior`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from cfd3d.diffusion.schedule import make_schedule
from cfd3d.errors import UserError
from cfd3d.priors.base import Prior
from cfd3d.priors.embedded.tokenizer import WordTokenizer
from cfd3d.priors.embedded.unet import TinyUNet
from cfd3d.priors.embedded.weights import load_weights, world_from_metadata
from cfd3d.priors.embedded.world import WorldConfig


class EmbeddedPrior(Prior):
    """The toy-world text-to-image model (pixel space, 32x32 by default).

    Args:
        model: the UNet.
        tokenizer: its word-level tokenizer.
        schedule_kind: the noise schedule it was trained with.
        world: the toy world it was trained on (its cameras, its head's face...): what
            ground truth and evaluation renders of this prior must be made with.
    """

    def __init__(
        self,
        model: TinyUNet,
        tokenizer: WordTokenizer,
        schedule_kind: str = "scaled_linear",
        world: WorldConfig | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.world = world if world is not None else WorldConfig(image_size=model.config.image_size)
        self.schedule = make_schedule(schedule_kind)  # type: ignore[arg-type]
        size = model.config.image_size
        self.input_shape = (3, size, size)
        self.image_size = (size, size)

    @classmethod
    def load(cls, path: Path | None = None) -> EmbeddedPrior:
        """The shipped weights (or ``path``), verified against their checksum."""
        model, metadata = load_weights(path)
        words = metadata.get("vocabulary")
        if not isinstance(words, list):
            raise UserError(f"embedded prior weights at '{path}' carry no vocabulary; retrain them")
        tokenizer = WordTokenizer(tuple(words), model.config.max_tokens)
        world = world_from_metadata(metadata.get("world_config"), model.config.image_size, path)
        return cls(model, tokenizer, str(metadata.get("schedule", "scaled_linear")), world)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> EmbeddedPrior:
        self.model.to(device)
        return self

    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        """``(B, L)`` token ids (the text encoder runs inside the UNet)."""
        return self.tokenizer.encode(prompts).to(self.device)

    @torch.no_grad()
    def eps(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        embedding: torch.Tensor,
        cameras: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = self.model(x_t.to(self.device, torch.float32), t.to(self.device), embedding)
        return out.to(x_t.dtype)
