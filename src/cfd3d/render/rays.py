"""Ray stages of the volume renderer: bounding-sphere intersection, stratified samples and
importance resampling (Mildenhall et al. 2020, "NeRF", Sec. 4 and 5.2)."""

from __future__ import annotations

import torch


def uniform(
    shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    """``U[0, 1)`` samples shaped ``shape`` on ``like``'s device and dtype, drawn from
    ``generator`` (which may live on another device, e.g. a CPU generator for CUDA
    tensors)."""
    device = generator.device if generator is not None else like.device
    u = torch.rand(shape, generator=generator, device=device, dtype=like.dtype)
    return u.to(like.device)


def intersect_sphere(
    origins: torch.Tensor, directions: torch.Tensor, radius: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where rays enter and leave the sphere of ``radius`` around the origin.

    Args:
        origins: ``(R, 3)`` ray origins.
        directions: ``(R, 3)`` unit ray directions.
        radius: sphere radius.

    Returns:
        ``t_near`` ``(R,)`` (clamped at 0 for origins inside the sphere), ``t_far``
        ``(R,)`` and ``hit`` ``(R,)`` bool: the ray meets the sphere in front of its origin
        over a segment of positive length.
    """
    b = (origins * directions).sum(-1)
    c = (origins * origins).sum(-1) - radius * radius
    disc = b * b - c
    root = disc.clamp_min(0.0).sqrt()
    t_near = (-b - root).clamp_min(0.0)
    t_far = -b + root
    hit = (disc > 0.0) & (t_far > t_near)
    return t_near, t_far, hit


def stratified_samples(
    near: torch.Tensor, far: torch.Tensor, n_samples: int, generator: torch.Generator | None
) -> torch.Tensor:
    """``n_samples`` ray distances per ray, one in each of ``n_samples`` equal bins.

    Args:
        near, far: ``(R,)`` segment of each ray.
        n_samples: samples per ray.
        generator: if given, each sample is uniform in its bin (training); if ``None``,
            samples sit at the bin midpoints (deterministic evaluation).

    Returns:
        ``(R, n_samples)`` increasing distances.
    """
    steps = torch.arange(n_samples, device=near.device, dtype=near.dtype)
    if generator is None:
        offset = torch.full((near.shape[0], n_samples), 0.5, device=near.device, dtype=near.dtype)
    else:
        offset = uniform((near.shape[0], n_samples), generator, near)
    fraction = (steps + offset) / n_samples
    return near[:, None] + (far - near)[:, None] * fraction


def interval_edges(t: torch.Tensor, near: torch.Tensor, far: torch.Tensor) -> torch.Tensor:
    """Boundaries of the ray intervals that the samples stand for.

    Sample ``i`` represents the interval between the midpoints to its neighbours; the
    first and last intervals extend to ``near`` and ``far``, so the intervals tile the
    segment exactly.

    Args:
        t: ``(R, S)`` increasing sample distances inside ``[near, far]``.
        near, far: ``(R,)``.

    Returns:
        ``(R, S + 1)`` edges; interval lengths are ``edges.diff(dim=-1)``.
    """
    mids = 0.5 * (t[:, 1:] + t[:, :-1])
    return torch.cat([near[:, None], mids, far[:, None]], dim=-1)


def importance_samples(
    edges: torch.Tensor, weights: torch.Tensor, n_samples: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Draw distances from the piecewise-constant density given by the coarse weights.

    Inverse-transform sampling of the histogram with bin ``edges`` and bin masses
    ``weights`` (plus a small floor so empty rays still spread their samples).

    Args:
        edges: ``(R, S + 1)`` increasing bin edges.
        weights: ``(R, S)`` non-negative bin masses (treated as constants).
        n_samples: samples per ray.
        generator: random ``u`` if given, else evenly spaced ``u`` (deterministic).

    Returns:
        ``(R, n_samples)`` distances (unsorted only if ``generator`` is given).
    """
    weights = weights.detach() + 1e-5
    pdf = weights / weights.sum(dim=-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), pdf.cumsum(dim=-1)], dim=-1)
    cdf[:, -1] = 1.0
    n_rays = edges.shape[0]
    if generator is None:
        u = (torch.arange(n_samples, device=edges.device, dtype=edges.dtype) + 0.5) / n_samples
        u = u.expand(n_rays, n_samples).contiguous()
    else:
        u = uniform((n_rays, n_samples), generator, edges)
    upper = torch.searchsorted(cdf, u, right=True).clamp(1, cdf.shape[-1] - 1)
    lower = upper - 1
    cdf_lo, cdf_hi = cdf.gather(-1, lower), cdf.gather(-1, upper)
    edge_lo, edge_hi = edges.detach().gather(-1, lower), edges.detach().gather(-1, upper)
    frac = ((u - cdf_lo) / (cdf_hi - cdf_lo).clamp_min(1e-12)).clamp(0.0, 1.0)
    return edge_lo + frac * (edge_hi - edge_lo)
