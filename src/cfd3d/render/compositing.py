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


def packed_columns(ray_index: torch.Tensor, n_rays: int) -> tuple[torch.Tensor, int]:
    """Position of each packed sample within its ray, and the longest ray's sample count.

    Args:
        ray_index: ``(N,)`` int64 ray of each sample, non-decreasing (the samples of a ray
            are contiguous and in marching order).
        n_rays: number of rays ``R`` (rays without samples are allowed).

    Returns:
        ``column`` ``(N,)`` int64 (0 for the first sample of each ray) and the width
        ``max_r (samples of ray r)`` (0 when there are no samples).
    """
    rays = torch.arange(n_rays, device=ray_index.device, dtype=ray_index.dtype)
    starts = torch.searchsorted(ray_index, rays)
    counts = torch.searchsorted(ray_index, rays, right=True) - starts
    column = torch.arange(ray_index.shape[0], device=ray_index.device) - starts[ray_index]
    width = int(counts.max()) if n_rays > 0 else 0
    return column, width


def packed_compositing_weights(
    density: torch.Tensor, deltas: torch.Tensor, ray_index: torch.Tensor, n_rays: int
) -> torch.Tensor:
    """:func:`compositing_weights` of *packed* samples: a variable number per ray.

    The exclusive cumulative optical depth of each ray is taken over padded rows: the
    optical depths are scattered to an ``(R, max samples per ray)`` zero matrix, summed
    along rows and gathered back. This is the dense formula on each ray's own samples, as
    stable as the dense one (a cumulative sum over all packed samples minus per-ray
    offsets would lose precision once the total optical depth of a chunk is large) and
    differentiable; the padding costs one float per row entry, not per field evaluation.

    Args:
        density: ``(N,)`` non-negative densities.
        deltas: ``(N,)`` interval lengths.
        ray_index: ``(N,)`` int64 ray of each sample, non-decreasing, each ray's samples
            in marching order.
        n_rays: number of rays ``R``.

    Returns:
        ``(N,)`` weights ``T_i α_i``; their sum per ray is the ray's opacity.
    """
    optical_depth = density * deltas
    column, width = packed_columns(ray_index, n_rays)
    rows = optical_depth.new_zeros(n_rays, width).index_put((ray_index, column), optical_depth)
    before = (torch.cumsum(rows, dim=-1) - rows)[ray_index, column]
    alpha = -torch.expm1(-optical_depth)
    return torch.exp(-before) * alpha


def composite_packed(
    weights: torch.Tensor,
    t: torch.Tensor,
    color: torch.Tensor,
    ray_index: torch.Tensor,
    n_rays: int,
    normals: torch.Tensor | None = None,
    eps: float = 1e-3,
) -> Composite:
    """:func:`composite` of packed samples, by differentiable per-ray sums (``index_add``;
    deterministic on the CPU, atomic adds on CUDA).

    Args:
        weights: ``(N,)`` from :func:`packed_compositing_weights`.
        t: ``(N,)`` sample distances along unit rays.
        color: ``(N, 3)`` shaded sample colours.
        ray_index: ``(N,)`` int64 ray of each sample in ``[0, R)``.
        n_rays: number of rays ``R``; rays without samples come out zero.
        normals: ``(N, 3)`` unit normals, or ``None``.
        eps: floor of the opacity (for depth) and of the normal's length.

    Returns:
        A :class:`Composite` of ``R`` rays.
    """

    def ray_sum(values: torch.Tensor) -> torch.Tensor:
        return values.new_zeros(n_rays, values.shape[-1]).index_add(0, ray_index, values)

    opacity = ray_sum(weights[:, None])
    rgb = ray_sum(weights[:, None] * color)
    depth = ray_sum((weights * t)[:, None]) / opacity.clamp_min(eps)
    normal = None
    if normals is not None:
        normal = F.normalize(ray_sum(weights[:, None] * normals), dim=-1, eps=eps)
    return Composite(color=rgb, opacity=opacity, depth=depth, normal=normal)
