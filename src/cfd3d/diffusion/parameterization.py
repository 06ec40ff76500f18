"""Conversions between eps-, v- and x0-predictions for ``x_t = alpha x_0 + sigma eps``.

``v = alpha eps - sigma x_0`` (Salimans & Ho 2022, "Progressive Distillation"). The formulas
below do not assume ``alpha^2 + sigma^2 = 1``. ``alpha`` and ``sigma`` broadcast against
``x_t`` (pass them shaped ``(B, 1, 1, 1)`` for image batches).
"""

from __future__ import annotations

import torch


def eps_to_x0(
    x_t: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """The sample prediction ``x_0 = (x_t - sigma eps) / alpha``."""
    return (x_t - sigma * eps) / alpha


def x0_to_eps(
    x_t: torch.Tensor, x0: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """The noise prediction ``eps = (x_t - alpha x_0) / sigma``."""
    return (x_t - alpha * x0) / sigma


def v_to_eps(
    x_t: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """``eps = (sigma x_t + alpha v) / (alpha^2 + sigma^2)``."""
    return (sigma * x_t + alpha * v) / (alpha**2 + sigma**2)


def eps_to_v(
    x_t: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """``v = alpha eps - sigma x_0``."""
    return alpha * eps - sigma * eps_to_x0(x_t, eps, alpha, sigma)
