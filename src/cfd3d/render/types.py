"""Typed renderer outputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RenderOutput:
    """What a renderer returns for ``B`` views of ``H x W`` pixels (channels last).

    Attributes:
        rgb: ``(B, H, W, 3)`` colour in [0, 1], composited over the background.
        opacity: ``(B, H, W, 1)`` accumulated alpha in [0, 1].
        depth: ``(B, H, W, 1)`` expected distance along the (unit) ray to the surface,
            conditional on hitting it: ``sum_i w_i t_i / max(opacity, eps)``; 0 where the
            ray hits nothing.
        normal: ``(B, H, W, 3)`` expected world-space unit normal (zeros where empty), or
            ``None`` if the renderer did not compute normals.
    """

    rgb: torch.Tensor
    opacity: torch.Tensor
    depth: torch.Tensor
    normal: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.rgb.shape[0]

    @property
    def resolution(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[2]

    def image(self) -> torch.Tensor:
        """``(B, 3, H, W)`` colour in [0, 1], the layout priors take."""
        return self.rgb.permute(0, 3, 1, 2)
