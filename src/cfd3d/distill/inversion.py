"""DDIM steps in both directions, for the rules that invert the render (ISM, SDI).

A deterministic DDIM step (Song et al. 2021, "Denoising Diffusion Implicit Models") moves
a state ``x_a`` at timestep ``a`` to timestep ``b`` along the predicted noise ``eps``:

    x_b = alpha_b x0_hat + sigma_b eps,      x0_hat = (x_a - sigma_a eps) / alpha_a.

Run from a clean image towards larger timesteps it is *DDIM inversion*: the noisy state
whose DDIM trajectory ends near that image. With ``eta > 0`` a share of fresh noise
replaces the predicted one, ``sigma_b (sqrt(1 - eta^2) eps + eta xi)`` with
``xi ~ N(0, I)`` (our reading of SDI's stochastic inversion; ``eta = 0`` is DDIM).
Timesteps are per batch element, so views at different ``t`` invert together; a step
from a timestep to itself changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cfd3d.diffusion.schedule import NoiseSchedule

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(x (B, C, h, w), t (B,) long) -> eps (B, C, h, w)``."""


def _levels(schedule: NoiseSchedule, t: torch.Tensor, like: torch.Tensor):
    alpha, sigma = schedule.alpha_sigma(t)
    shape = (-1,) + (1,) * (like.ndim - 1)
    return alpha.to(like).view(shape), sigma.to(like).view(shape)


def ddim_step(
    schedule: NoiseSchedule,
    x: torch.Tensor,
    t_from: torch.Tensor,
    t_to: torch.Tensor,
    eps: torch.Tensor,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One DDIM step of ``x`` from ``t_from`` to ``t_to`` (either direction).

    Args:
        schedule: the prior's noise schedule.
        x: ``(B, C, h, w)`` state at ``t_from``.
        t_from, t_to: ``(B,)`` integer timesteps.
        eps: ``(B, C, h, w)`` the noise prediction at ``(x, t_from)``.
        eta: share of fresh noise ``xi`` in the new state's noise (0: deterministic).
        generator: draws ``xi`` when ``eta > 0``.

    Returns:
        ``(B, C, h, w)`` the state at ``t_to``.
    """
    alpha_a, sigma_a = _levels(schedule, t_from, x)
    alpha_b, sigma_b = _levels(schedule, t_to, x)
    x0_hat = (x - sigma_a * eps) / alpha_a
    direction = eps
    if eta > 0.0:
        xi = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        moved = (t_to != t_from).view(alpha_b.shape)
        direction = torch.where(moved, (1.0 - eta**2) ** 0.5 * eps + eta * xi, eps)
    return alpha_b * x0_hat + sigma_b * direction


def ddim_invert(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    x: torch.Tensor,
    grid: torch.Tensor,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DDIM inversion of ``x`` through the timesteps ``grid``.

    Args:
        eps_fn: the noise prediction used for every step.
        schedule: the prior's noise schedule.
        x: ``(B, C, h, w)`` the state at ``grid[0]``.
        grid: ``(K + 1, B)`` integer timesteps, non-decreasing along the first axis.
        eta: see :func:`ddim_step`.
        generator: draws the fresh noise when ``eta > 0``.

    Returns:
        ``(B, C, h, w)`` the state at ``grid[-1]`` after ``K`` steps (``K`` predictions).
    """
    for k in range(grid.shape[0] - 1):
        eps = eps_fn(x, grid[k])
        x = ddim_step(schedule, x, grid[k], grid[k + 1], eps, eta, generator)
    return x


def even_grid(t: torch.Tensor, steps: int) -> torch.Tensor:
    """``(steps + 1, B)`` timesteps from 0 to ``t`` (``(B,)``) in ``steps`` even, rounded
    steps (SDI's inversion grid)."""
    fractions = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64, device=t.device)
    return (fractions[:, None] * t.double()[None]).round().long()


def strided_grid(s: torch.Tensor, stride: int, steps: int) -> torch.Tensor:
    """``(steps + 1, B)`` timesteps ending at ``s`` (``(B,)``) with ``steps`` steps of
    ``stride``, starting at ``max(s - stride * steps, 0)``; steps past ``s`` stay at
    ``s`` (LucidDreamer's inversion of ``x_s``)."""
    start = (s - stride * steps).clamp_min(0)
    k = torch.arange(steps + 1, device=s.device)[:, None]
    return torch.minimum(start[None] + k * stride, s[None])
