"""Discrete DDPM noise schedules.

The forward process is ``x_t = alpha_t x_0 + sigma_t eps`` with
``alpha_t = sqrt(alphabar_t)`` and ``sigma_t = sqrt(1 - alphabar_t)`` (variance preserving),
for integer timesteps ``t = 0 .. T-1`` (Ho et al. 2020, "Denoising Diffusion Probabilistic
Models"; the cosine schedule is from Nichol & Dhariwal 2021).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from cfd3d.errors import ConfigError

ScheduleKind = Literal["scaled_linear", "linear", "cosine"]
SCHEDULE_KINDS: tuple[str, ...] = ("scaled_linear", "linear", "cosine")


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete variance-preserving noise schedule.

    Attributes:
        alphas_cumprod: ``(T,)`` float64 ``alphabar_t`` for t = 0 .. T-1, decreasing.
    """

    alphas_cumprod: torch.Tensor

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``alpha_t`` and ``sigma_t`` (float64, shape of ``t``) for integer timesteps ``t``."""
        abar = self.alphas_cumprod.to(t.device)[t.long()]
        return abar.sqrt(), (1.0 - abar).sqrt()

    def sigma_over_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """``sigma_t / alpha_t`` — the time variable of the clean-flow ODE."""
        alpha, sigma = self.alpha_sigma(t)
        return sigma / alpha

    def index(self, fraction: float) -> int:
        """The integer timestep for a fraction of the schedule (0.98 -> 979 for T = 1000)."""
        return min(self.num_timesteps - 1, max(0, round(fraction * self.num_timesteps) - 1))


def make_schedule(
    kind: ScheduleKind = "scaled_linear",
    num_timesteps: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
) -> NoiseSchedule:
    """Build a schedule.

    Args:
        kind: ``"scaled_linear"`` (Stable Diffusion: betas linear in sqrt-space between
            ``beta_start`` and ``beta_end``), ``"linear"`` (DDPM: betas linear), or
            ``"cosine"`` (Nichol & Dhariwal; ``beta_start``/``beta_end`` unused).
        num_timesteps: number of discrete timesteps T.
        beta_start, beta_end: first and last beta for the linear kinds.
    """
    if num_timesteps < 2:
        raise ConfigError(f"num_timesteps must be >= 2, got {num_timesteps}")
    if kind == "scaled_linear":
        betas = (
            torch.linspace(
                math.sqrt(beta_start), math.sqrt(beta_end), num_timesteps, dtype=torch.float64
            )
            ** 2
        )
    elif kind == "linear":
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    elif kind == "cosine":
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        f = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    else:
        raise ConfigError(f"unknown noise schedule '{kind}'; valid: {', '.join(SCHEDULE_KINDS)}")
    return NoiseSchedule(torch.cumprod(1.0 - betas, dim=0))
