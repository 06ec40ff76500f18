"""Score Distillation via Inversion (Lukoianov et al., "Score Distillation via
Reparametrized DDIM", NeurIPS 2024).

SDS is DDIM with the noise of each step redrawn at random; SDI draws it instead from the
render itself: DDIM inversion of ``z`` from 0 to ``t`` (with guidance ``s_inv``, negative
in the reference) gives ``x_t``, and the noise that ``x_t`` carries,

    kappa = (x_t - alpha_t z) / sigma_t,

takes the place of SDS's ``eps``: the gradient on ``z`` is ``w(t) (eps_hat(x_t, t, y) -
kappa)``.

Reference defaults (the official threestudio guidance): guidance 7.5, inversion guidance
-7.5, 10 inversion steps, ``eta = 0.3``, ``t`` annealed linearly from 0.98 to 0.02,
``w(t) = sigma_t^2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cfd3d.distill.inversion import ddim_invert, even_grid
from cfd3d.distill.weighting import Weighting, timestep_weight
from cfd3d.errors import ConfigError
from cfd3d.priors.base import Condition, Prior


@dataclass(frozen=True)
class SDIConfig:
    """SDI's inversion settings (reference defaults).

    Attributes:
        inversion_steps: DDIM inversion steps from 0 to ``t``.
        inversion_guidance: classifier-free guidance scale of the inversion's predictions.
        eta: share of fresh noise per inversion step (0: deterministic DDIM inversion).
    """

    inversion_steps: int = 10
    inversion_guidance: float = -7.5
    eta: float = 0.3

    def __post_init__(self) -> None:
        steps = self.inversion_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"sdi.inversion_steps must be a positive integer, got {steps!r}")
        if not 0.0 <= self.eta <= 1.0:
            raise ConfigError(f"sdi.eta must lie in [0, 1], got {self.eta}")


def sdi_noise(
    prior: Prior,
    z: torch.Tensor,
    t: torch.Tensor,
    condition: Condition,
    config: SDIConfig = SDIConfig(),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverted state ``x_t`` of ``z`` and the noise ``kappa`` it carries.

    Args:
        prior, z, t, condition: as in :func:`sdi_gradient`.
        config: the inversion's steps, guidance and ``eta``.
        generator: the inversion's fresh noise (``eta > 0``).

    Returns:
        ``x_t`` and ``kappa = (x_t - alpha_t z) / sigma_t``, both ``(B, C, h, w)``.
    """
    t = t.expand(z.shape[0]) if t.ndim == 0 else t

    def eps_inversion(x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        return prior.predict_eps(x, at, condition, config.inversion_guidance)

    with torch.no_grad():
        grid = even_grid(t, config.inversion_steps)
        x_t = ddim_invert(eps_inversion, prior.schedule, z.detach(), grid, config.eta, generator)
        alpha, sigma = (v.to(z.dtype)[:, None, None, None] for v in prior.schedule.alpha_sigma(t))
        return x_t, (x_t - alpha * z.detach()) / sigma


def sdi_gradient(
    prior: Prior,
    z: torch.Tensor,
    t: torch.Tensor,
    condition: Condition,
    guidance_scale: float,
    config: SDIConfig = SDIConfig(),
    generator: torch.Generator | None = None,
    weighting: Weighting = "sigma_sq",
) -> torch.Tensor:
    """The SDI gradient on the prior input.

    Args:
        prior: the diffusion prior.
        z: ``(B, C, h, w)`` the rendering in the prior's input space (taken as the state
            at timestep 0, where the inversion starts).
        t: ``(B,)`` or scalar integer timestep.
        condition: prompt conditioning, batch ``B``.
        guidance_scale: classifier-free guidance scale of ``eps_hat``.
        config: the inversion's steps, guidance and ``eta``.
        generator: the inversion's fresh noise (``eta > 0``).
        weighting: ``w(t)``.

    Returns:
        ``(B, C, h, w)`` gradient ``w(t) (eps_hat(x_t, t, y) - kappa)``, detached.
    """
    t = t.expand(z.shape[0]) if t.ndim == 0 else t
    x_t, kappa = sdi_noise(prior, z, t, condition, config, generator)
    with torch.no_grad():
        eps = prior.predict_eps(x_t, t, condition, guidance_scale)
        weight = timestep_weight(prior.schedule, t, weighting).to(z.dtype)[:, None, None, None]
        return weight * (eps - kappa)
