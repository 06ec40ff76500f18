"""Classifier-free guidance (Ho & Salimans 2022), the one formula cfd3d uses."""

from __future__ import annotations

import torch


def classifier_free_guidance(
    eps_cond: torch.Tensor, eps_uncond: torch.Tensor, scale: float
) -> torch.Tensor:
    """``eps_uncond + scale * (eps_cond - eps_uncond)``.

    With a negative prompt, ``eps_uncond`` is the prediction for the negative prompt.
    ``scale = 1`` gives the conditional prediction, ``scale = 0`` the unconditional one.
    """
    return eps_uncond + scale * (eps_cond - eps_uncond)


def perp_neg_guidance(
    eps_pos: torch.Tensor,
    eps_uncond: torch.Tensor,
    eps_negs: list[torch.Tensor],
    weights: list[float | torch.Tensor],
    scale: float,
) -> torch.Tensor:
    """Perp-Neg (Armandpour et al. 2023, "Re-imagine the Negative Prompt Algorithm").

    ``eps_uncond + scale * (d_pos - sum_i w_i perp(d_neg_i, d_pos))`` with
    ``d = eps - eps_uncond`` and ``perp(a, b)`` the part of ``a`` orthogonal to ``b``, per
    sample. Each weight is a number or a ``(B,)`` tensor (one weight per sample, e.g. from
    the camera's azimuth). With no negatives it is :func:`classifier_free_guidance`.
    """
    d_pos = eps_pos - eps_uncond
    flat_pos = d_pos.flatten(1)
    denom = (flat_pos * flat_pos).sum(1).clamp_min(1e-12)
    total = d_pos
    for eps_neg, weight in zip(eps_negs, weights, strict=True):
        d_neg = (eps_neg - eps_uncond).flatten(1)
        coeff = (d_neg * flat_pos).sum(1) / denom
        perp = d_neg - coeff[:, None] * flat_pos
        w = torch.as_tensor(weight, dtype=d_pos.dtype, device=d_pos.device).reshape(-1, 1)
        total = total - (w * perp).view_as(d_pos)
    return eps_uncond + scale * total
