"""Score Distillation Sampling (Poole et al., "DreamFusion", 2022).

Fresh noise ``eps ~ N(0, I)`` every step and a random timestep; the gradient on the prior
input is ``w(t) (eps_hat(alpha_t z + sigma_t eps, t, y) - eps)``. It is the CFD formula with
the trajectory noise redrawn every step, which is why SDS seeks modes instead of sampling.
"""

from __future__ import annotations

import torch

from cfd3d.distill.cfd import cfd_gradient
from cfd3d.distill.weighting import Weighting
from cfd3d.priors.base import Condition, Prior


def sds_gradient(
    prior: Prior,
    z: torch.Tensor,
    t: torch.Tensor,
    condition: Condition,
    guidance_scale: float,
    generator: torch.Generator | None = None,
    weighting: Weighting = "sigma_sq",
) -> torch.Tensor:
    """The SDS gradient on the prior input, ``(B, C, h, w)``, with fresh noise drawn from
    ``generator`` (see :func:`cfd3d.distill.cfd.cfd_gradient` for the arguments)."""
    noise = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
    return cfd_gradient(prior, z, t, condition, guidance_scale, noise, weighting)
