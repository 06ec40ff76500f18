"""Consistent Flow Distillation (Yan et al., "Consistent Flow Distillation for Text-to-3D
Generation", ICLR 2025): the clean-flow update.

With the clean variable ``x^c_t = (x_t - sigma_t eps~) / alpha_t`` the PF-ODE reads

    d x^c_t = d(sigma_t / alpha_t) * (eps_phi(alpha_t x^c_t + sigma_t eps~, t, y) - eps~),

so the rendering ``z = g_theta(c)`` takes the place of ``x^c_t`` and receives the gradient
``w(t) (eps_hat(alpha_t z + sigma_t eps~, t, y) - eps~)``, where ``eps~`` is the trajectory's
fixed (multi-view consistent) noise and ``eps_hat`` the guided prediction.
"""

from __future__ import annotations

import torch

from cfd3d.distill.weighting import Weighting, timestep_weight
from cfd3d.priors.base import Condition, Prior


def cfd_gradient(
    prior: Prior,
    z: torch.Tensor,
    t: torch.Tensor,
    condition: Condition,
    guidance_scale: float,
    noise: torch.Tensor,
    weighting: Weighting = "sigma_over_alpha",
) -> torch.Tensor:
    """The CFD gradient on the prior input.

    Args:
        prior: the diffusion prior.
        z: ``(B, C, h, w)`` the rendering in the prior's input space (the clean variable).
        t: ``(B,)`` or scalar integer timestep.
        condition: prompt conditioning, batch ``B``.
        guidance_scale: classifier-free guidance scale.
        noise: ``(B, C, h, w)`` the trajectory noise ``eps~`` (fixed or consistent).
        weighting: ``w(t)``, see :func:`cfd3d.distill.weighting.timestep_weight`.

    Returns:
        ``(B, C, h, w)`` gradient ``w(t) (eps_hat - eps~)``, detached.
    """
    t = t.expand(z.shape[0]) if t.ndim == 0 else t
    alpha, sigma = (v.to(z.dtype)[:, None, None, None] for v in prior.schedule.alpha_sigma(t))
    with torch.no_grad():
        x_t = alpha * z.detach() + sigma * noise
        eps = prior.predict_eps(x_t, t, condition, guidance_scale)
        weight = timestep_weight(prior.schedule, t, weighting).to(z.dtype)[:, None, None, None]
        return weight * (eps - noise)
