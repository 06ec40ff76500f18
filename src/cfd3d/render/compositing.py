"""Alpha compositing along rays: the quadrature of the volume rendering integral
(Max 1995; Mildenhall et al. 2020, "NeRF", Eq. 3).

With densities ``σ_i`` on intervals of length ``δ_i``:
``α_i = 1 - exp(-σ_i δ_i)``, transmittance ``T_i = exp(-Σ_{j<i} σ_j δ_j)`` and weights
``w_i = T_i α_i``. Pure functions of tensors, differentiable and dtype-generic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def compositing_weights(density: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Weights ``w_i = T_i α_i`` of the samples along each ray.

    Args:
        density: ``(R, S)`` non-negative densities.
        deltas: ``(R, S)`` interval lengths.

    Returns:
        ``(R, S)`` weights; their sum over ``S`` is the ray's opacity ``1 - T_{S+1}``.
    """
    optical_depth = density * deltas
    # Exclusive cumulative sum in log space: stabler than a product of (1 - α).
    before = torch.cumsum(optical_depth, dim=-1) - optical_depth
    alpha = -torch.expm1(-optical_depth)
    return torch.exp(-before) * alpha


@dataclass(frozen=True)
class Composite:
    """Per-ray results of compositing ``R`` rays.

    Attributes:
        color: ``(R, 3)`` premultiplied colour ``Σ w_i c_i`` (no background).
        opacity: ``(R, 1)`` accumulated alpha ``Σ w_i``.
        depth: ``(R, 1)`` conditional expected distance ``Σ w_i t_i / max(opacity, eps)``.
        normal: ``(R, 3)`` ``Σ w_i n_i / max(|Σ w_i n_i|, eps)`` (unit where opaque, fading
            to zero where empty), or ``None``.
    """

    color: torch.Tensor
    opacity: torch.Tensor
    depth: torch.Tensor
    normal: torch.Tensor | None


def composite(
    weights: torch.Tensor,
    t: torch.Tensor,
    color: torch.Tensor,
    normals: torch.Tensor | None = None,
    eps: float = 1e-3,
) -> Composite:
    """Accumulate per-sample values along rays.

    Args:
        weights: ``(R, S)`` from :func:`compositing_weights`.
        t: ``(R, S)`` sample distances along unit rays.
        color: ``(R, S, 3)`` shaded sample colours.
        normals: ``(R, S, 3)`` unit normals, or ``None``.
        eps: floor of the opacity (for depth) and of the normal's length.

    Returns:
        A :class:`Composite`.
    """
    opacity = weights.sum(dim=-1, keepdim=True)
    rgb = (weights[..., None] * color).sum(dim=-2)
    depth = (weights * t).sum(dim=-1, keepdim=True) / opacity.clamp_min(eps)
    normal = None
    if normals is not None:
        normal = F.normalize((weights[..., None] * normals).sum(dim=-2), dim=-1, eps=eps)
    return Composite(color=rgb, opacity=opacity, depth=depth, normal=normal)
