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
