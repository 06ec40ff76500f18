"""The stop-gradient surrogate loss that delivers a chosen gradient to autograd."""

from __future__ import annotations

import torch


def gradient_loss(z: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``0.5 * ||z - sg(z - grad)||^2`` summed, whose gradient w.r.t. ``z`` is exactly ``grad``.

    Args:
        z: ``(B, ...)`` differentiable prior input.
        grad: ``(B, ...)`` the update-rule gradient (detached).

    Returns:
        A scalar; ``backward()`` sends ``grad`` into ``z`` and through the renderer.
    """
    target = (z - grad).detach()
    return 0.5 * (z - target).pow(2).sum()
