"""Timestep weightings ``w(t)`` shared by the update rules."""

from __future__ import annotations

from typing import Literal

import torch

from cfd3d.diffusion.schedule import NoiseSchedule
from cfd3d.errors import ConfigError

Weighting = Literal["sigma_over_alpha", "sigma_sq", "unit"]
WEIGHTINGS: tuple[str, ...] = ("sigma_over_alpha", "sigma_sq", "unit")


def timestep_weight(schedule: NoiseSchedule, t: torch.Tensor, weighting: Weighting):
    """``(B,)`` float64 weights ``w(t)``.

    ``"sigma_over_alpha"``: the CFD reference implementation's ``sigma_t / alpha_t``.
    ``"sigma_sq"``: DreamFusion's ``1 - alphabar_t``. ``"unit"``: 1 (with plain gradient
    steps of size ``-d(sigma/alpha)`` this integrates the clean-flow ODE exactly).
    """
    alpha, sigma = schedule.alpha_sigma(t)
    if weighting == "sigma_over_alpha":
        return sigma / alpha
    if weighting == "sigma_sq":
        return sigma**2
    if weighting == "unit":
        return torch.ones_like(alpha)
    raise ConfigError(f"unknown weighting '{weighting}'; valid: {', '.join(WEIGHTINGS)}")
