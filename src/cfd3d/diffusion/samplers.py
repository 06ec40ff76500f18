"""Reference samplers: deterministic DDIM, the probability-flow ODE solver used in tests.

DDIM with eta = 0 (Song et al. 2021, "Denoising Diffusion Implicit Models") is the exact
Euler discretisation of the PF-ODE in the variables ``x / alpha`` and ``sigma / alpha``:

    x_s / alpha_s = x_t / alpha_t + (sigma_s / alpha_s - sigma_t / alpha_t) * eps(x_t, t).

Stable Diffusion's own sampler (diffusers' ``DDIMScheduler`` with ``eta = 0``) is the same
step on the grid of :func:`leading_timesteps`; its last step goes to ``alphabar = 1``
(``set_alpha_to_one=True``: ``ddim_sample`` as is) or to ``alphabar_0``
(``set_alpha_to_one=False``, SD 1.x/2.x: append timestep 0 and pass ``to_x0=False``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cfd3d.diffusion.schedule import NoiseSchedule
from cfd3d.errors import ConfigError

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ddim_timesteps(
    schedule: NoiseSchedule, num_steps: int, t_max: int | None = None
) -> torch.Tensor:
    """``num_steps`` evenly spaced integer timesteps from ``t_max`` down to 0 (long, desc)."""
    t_max = schedule.num_timesteps - 1 if t_max is None else t_max
    return torch.linspace(t_max, 0, num_steps, dtype=torch.float64).round().long()


def leading_timesteps(
    num_steps: int, num_train_timesteps: int = 1000, steps_offset: int = 0
) -> torch.Tensor:
    """Stable Diffusion's DDIM sub-sequence of timesteps (Song et al. 2021, sec. 4.2), in
    the "leading" spacing (named in Lin et al. 2024, "Common Diffusion Noise Schedules and
    Sample Steps are Flawed", table 2).

    ``k * (T // N) + steps_offset`` for ``k = N - 1 .. 0``: the grid of diffusers'
    ``DDIMScheduler.set_timesteps`` with ``timestep_spacing="leading"`` (its default; SD
    1.x/2.x use ``steps_offset=1``, giving 981, 961, ..., 1 for 50 steps). Only on this grid
    does each of diffusers' steps, from ``t`` to ``t - T // N``, land on the next timestep.

    Args:
        num_steps: N, the number of sampling steps.
        num_train_timesteps: T, the schedule's length.
        steps_offset: added to every timestep.

    Returns:
        ``(N,)`` long, decreasing.

    Raises:
        ConfigError: when N is not in ``1 .. T`` or the grid leaves ``0 .. T - 1``.
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise ConfigError(
            f"the number of sampling steps must lie in 1..{num_train_timesteps}, got {num_steps}"
        )
    ratio = num_train_timesteps // num_steps
    timesteps = torch.arange(num_steps - 1, -1, -1, dtype=torch.long) * ratio + steps_offset
    if timesteps[0] >= num_train_timesteps or timesteps[-1] < 0:
        raise ConfigError(
            f"steps_offset {steps_offset} moves the timesteps outside 0..{num_train_timesteps - 1}"
        )
    return timesteps


@torch.no_grad()
def ddim_sample(
    eps_fn: EpsFn,
    x_t: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: torch.Tensor,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    to_x0: bool = True,
) -> torch.Tensor:
    """Integrate the PF-ODE with deterministic DDIM from ``timesteps[0]`` to ``timesteps[-1]``.

    Args:
        eps_fn: ``(x_t (B, ...), t (B,) long) -> eps (B, ...)``.
        x_t: ``(B, ...)`` the state at ``timesteps[0]``.
        schedule: the noise schedule.
        timesteps: ``(N,)`` decreasing integer timesteps.
        callback: called as ``callback(i, x)`` after each step between two timesteps.
        to_x0: after stepping to the last timestep, take a final step to
            ``sigma / alpha = 0`` and return the sample prediction ``x_0`` there; ``False``
            returns the state at the last timestep instead (no model call there).

    Returns:
        ``(B, ...)`` the predicted clean sample ``x_0`` at the last timestep, or the state
        at the last timestep when ``to_x0`` is ``False``.
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
    if not to_x0:
        return x
    t = timesteps[-1]
    a_t, s_t = (v.to(x.dtype) for v in schedule.alpha_sigma(t))
    eps = eps_fn(x, t.expand(x.shape[0]).to(x.device))
    return (x - s_t * eps) / a_t
