"""Flow Score Distillation (Yan et al., "Flow Score Distillation for Diverse Text-to-3D
Generation", 2024).

FSD uses the clean-flow update with a noise that is fixed per *camera*: a crop of a
panoramic noise map at the camera's azimuth and elevation, with no geometry (see
``cfd3d.noise``). In 2D there is no camera and the noise is simply fixed. The gradient is
the CFD formula; what differs is where ``noise`` comes from, so this rule only documents
and names that contract.
"""

from __future__ import annotations

import torch

from cfd3d.distill.cfd import cfd_gradient
from cfd3d.distill.weighting import Weighting
from cfd3d.priors.base import Condition, Prior


def fsd_gradient(
    prior: Prior,
    z: torch.Tensor,
    t: torch.Tensor,
    condition: Condition,
    guidance_scale: float,
    view_noise: torch.Tensor,
    weighting: Weighting = "sigma_over_alpha",
) -> torch.Tensor:
    """The FSD gradient ``w(t) (eps_hat(alpha_t z + sigma_t n(c), t, y) - n(c))``.

    Args:
        view_noise: ``(B, C, h, w)`` noise ``n(c)`` indexed by each view's camera angle.
        Others: as in :func:`cfd3d.distill.cfd.cfd_gradient`.
    """
    return cfd_gradient(prior, z, t, condition, guidance_scale, view_noise, weighting)
