"""The clean-flow SDE noise refresh.

The CFD paper's SDE variant keeps the trajectory noise mostly fixed but lets it drift:
``n <- sqrt(1 - gamma) * n + sqrt(gamma) * xi`` with fresh ``xi ~ N(0, I)``. The marginal
stays N(0, I) for any ``gamma`` in [0, 1]; ``gamma = 0`` is the probability-flow ODE (noise
fixed) and ``gamma = 1`` redraws the noise every step (SDS-like). After ``n`` refreshes the
correlation with the starting noise is ``(1 - gamma) ** (n / 2)``.
"""

from __future__ import annotations

import math

import torch

from cfd3d.errors import ConfigError


def check_gamma(gamma: float) -> float:
    """Return ``gamma`` as a float, or raise :class:`ConfigError` if it is outside [0, 1]."""
    gamma = float(gamma)
    if not 0.0 <= gamma <= 1.0 or math.isnan(gamma):
        raise ConfigError(f"gamma must be in [0, 1] (0 = ODE, fixed noise), got {gamma}")
    return gamma


def sde_refresh(
    noise: torch.Tensor, gamma: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One clean-flow SDE refresh step of ``noise`` (any shape) with rate ``gamma``."""
    gamma = check_gamma(gamma)
    if gamma == 0.0:
        return noise
    fresh = torch.randn(noise.shape, generator=generator, dtype=noise.dtype, device=noise.device)
    return math.sqrt(1.0 - gamma) * noise + math.sqrt(gamma) * fresh
