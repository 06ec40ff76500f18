"""Backgrounds: the colour a ray sees after passing through the scene.

A background is any callable ``(directions (B, H, W, 3), generator) -> (B, H, W, 3)``
colours in [0, 1]. ``generator`` is ``None`` when evaluating: backgrounds are then
deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from cfd3d.errors import ConfigError
from cfd3d.render.rays import uniform


class Background(Protocol):
    """``background(directions (B, H, W, 3), generator) -> colours (B, H, W, 3)``."""

    def __call__(
        self, directions: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor: ...


def _check_rgb(name: str, rgb: tuple[float, float, float]) -> None:
    if len(rgb) != 3 or not all(0.0 <= c <= 1.0 for c in rgb):
        raise ConfigError(f"{name} must be three values in [0, 1], got {tuple(rgb)}")


@dataclass(frozen=True)
class SolidBackground:
    """One fixed colour.

    Attributes:
        color: RGB in [0, 1] (white by default, the toy world's background).
    """

    color: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        _check_rgb("background color", self.color)

    def __call__(
        self, directions: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        rgb = torch.tensor(self.color, dtype=directions.dtype, device=directions.device)
        return rgb.expand_as(directions)


@dataclass(frozen=True)
class RandomColorBackground:
    """A uniformly random colour per view when training (a common regulariser against the
    object blending into the background); ``eval_color`` when evaluating.

    Attributes:
        eval_color: RGB in [0, 1] used when no generator is given.
    """

    eval_color: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        _check_rgb("eval_color", self.eval_color)

    def __call__(
        self, directions: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if generator is None:
            return SolidBackground(self.eval_color)(directions)
        rgb = uniform((directions.shape[0], 1, 1, 3), generator, directions)
        return rgb.expand_as(directions)


@dataclass(frozen=True)
class EnvironmentMapConfig:
    """A learned environment map: a tiny MLP on the ray direction.

    Attributes:
        n_frequencies: sine/cosine frequencies ``2^0 .. 2^(n-1)`` of the direction
            encoding (0: the raw direction only).
        hidden_dim: width of the hidden layer.
        init_color: RGB in (0, 1) the map starts at (the output bias is set so).
    """

    n_frequencies: int = 3
    hidden_dim: int = 32
    init_color: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        if self.n_frequencies < 0 or self.hidden_dim < 1:
            raise ConfigError("environment map needs n_frequencies >= 0 and hidden_dim >= 1")
        if len(self.init_color) != 3 or not all(0.0 < c < 1.0 for c in self.init_color):
            raise ConfigError(f"init_color must be three values in (0, 1), got {self.init_color}")


class EnvironmentMap(nn.Module):
    """A learned background colour as a function of the ray direction only."""

    def __init__(self, config: EnvironmentMapConfig | None = None):
        super().__init__()
        self.config = config = config or EnvironmentMapConfig()
        in_dim = 3 + 6 * config.n_frequencies
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, config.hidden_dim), nn.ReLU(), nn.Linear(config.hidden_dim, 3)
        )
        with torch.no_grad():
            self.mlp[-1].weight.mul_(0.1)
            self.mlp[-1].bias.copy_(torch.logit(torch.tensor(config.init_color)))

    def encode(self, directions: torch.Tensor) -> torch.Tensor:
        """``(..., 3 + 6 n_frequencies)`` frequency encoding of unit directions."""
        freqs = 2.0 ** torch.arange(
            self.config.n_frequencies, dtype=directions.dtype, device=directions.device
        )
        angles = math.pi * directions[..., None, :] * freqs[:, None]
        parts = [directions, angles.sin().flatten(-2), angles.cos().flatten(-2)]
        return torch.cat(parts, dim=-1)

    def forward(
        self, directions: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return torch.sigmoid(self.mlp(self.encode(directions)))
