"""Reference samplers: deterministic DDIM, the probability-flow ODE solver used in tests.

DDIM with eta = 0 (Song et al. 2021, "Denoising Diffusion Implicit Models") is the exact
Euler discretisation of the PF-ODE in the variables ``x / alpha`` and ``sigma / alpha``:

    x_s / alpha_s = x_t / alpha_t + (sigma_s / alpha_s - sigma_t / alpha_t) * eps(x_t, t).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cfd3d.diffusion.schedule import NoiseSchedule

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ddim_timesteps(schedule: NoiseSchedule, num_steps: int, t_max: int | None = None):
    """``num_steps`` evenly spaced integer timesteps from ``t_max`` down to 0 (long, desc)."""
    t_max = schedule.num_timesteps - 1 if t_max is None else t_max
    return torch.linspace(t_max, 0, num_steps, dtype=torch.float64).round().long()


@torch.no_grad()
def ddim_sample(
    eps_fn: EpsFn,
    x_t: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: torch.Tensor,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Integrate the PF-ODE with deterministic DDIM from ``timesteps[0]`` to ``timesteps[-1]``.

    Args:
        eps_fn: ``(x_t (B, ...), t (B,) long) -> eps (B, ...)``.
        x_t: ``(B, ...)`` the state at ``timesteps[0]``.
        schedule: the noise schedule.
        timesteps: ``(N,)`` decreasing integer timesteps. After stepping to the last one,
            a final step to ``sigma / alpha = 0`` returns the sample prediction ``x_0``.
        callback: called as ``callback(i, x)`` after each step.

    Returns:
        ``(B, ...)`` the predicted clean sample ``x_0`` at the last timestep.
    """
    x = x_t
    for i in range(len(timesteps) - 1):
        t, s = timesteps[i], timesteps[i + 1]
        a_t, s_t = (v.to(x.dtype) for v in schedule.alpha_sigma(t))
        a_s, s_s = (v.to(x.dtype) for v in schedule.alpha_sigma(s))
        eps = eps_fn(x, t.expand(x.shape[0]).to(x.device))
        x = a_s * (x / a_t + (s_s / a_s - s_t / a_t) * eps)
        if callback is not None:
            callback(i, x)
    t = timesteps[-1]
    a_t, s_t = (v.to(x.dtype) for v in schedule.alpha_sigma(t))
    eps = eps_fn(x, t.expand(x.shape[0]).to(x.device))
    return (x - s_t * eps) / a_t
