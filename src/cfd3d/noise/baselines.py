"""Noise ablations on the integral-noise interface: they ignore the geometry.

* :class:`FreshNoise`: i.i.d. N(0, 1) redrawn every call, as in Score Distillation
  Sampling (Poole et al., DreamFusion).
* :class:`FixedNoise`: one fixed map for every view, "CFD without consistency" in the
  ablation of Yan et al. (CFD).
* :class:`PanoramaNoise`: Flow Score Distillation's camera-indexed noise (Yan et al.,
  "Flow Score Distillation for Diverse Text-to-3D Generation", 2024): a fixed panoramic
  noise map cropped at the camera's azimuth and elevation.
"""

from __future__ import annotations

import torch

from cfd3d.noise.base import NoiseSource, RefreshedMap
from cfd3d.noise.config import NoiseConfig
from cfd3d.render.types import RenderOutput
from cfd3d.scene.cameras import Cameras


class FreshNoise(NoiseSource):
    """i.i.d. N(0, 1) noise, redrawn every call (SDS); :meth:`refresh` has nothing to do."""

    kind = "fresh"

    def sample(
        self, render: RenderOutput, cameras: Cameras, generator: torch.Generator
    ) -> torch.Tensor:
        shape = (render.batch_size, *self.shape)
        return torch.randn(shape, generator=generator, device=render.rgb.device)


class FixedNoise(NoiseSource):
    """One seeded ``(C, h, w)`` map used for every view and every step (follows the SDE
    refresh)."""

    kind = "fixed"

    def __init__(self, config: NoiseConfig, shape: tuple[int, int, int]):
        super().__init__(config, shape)
        self.map = RefreshedMap(self.shape, self.map_seed(1), self.clock)

    def sample(
        self, render: RenderOutput, cameras: Cameras, generator: torch.Generator
    ) -> torch.Tensor:
        values = self.map.current(render.rgb.device, generator)
        return values.expand(render.batch_size, -1, -1, -1).clone()

    def _extra_state(self) -> dict:
        return {"map": self.map.state_dict()}

    def _load_extra_state(self, state: dict) -> None:
        self.map.load_state_dict(state["map"])


class PanoramaNoise(NoiseSource):
    """A crop of a fixed equirectangular noise panorama at the camera angle (FSD).

    The panorama has one pixel per ``fovy_deg / h`` degrees: ``360 / step`` columns wrapping
    in azimuth and ``180 / step + h`` rows for elevations from +90 (top) to -90 degrees. A
    camera at azimuth ``az`` and elevation ``el`` gets the ``h x w`` window centred on
    column ``az / step`` and row ``(90 - el) / step`` (rounded to whole pixels, so the crop is
    i.i.d. N(0, 1)). Camera roll, position and geometry are ignored.
    """

    kind = "panorama"

    def __init__(self, config: NoiseConfig, shape: tuple[int, int, int]):
        super().__init__(config, shape)
        channels, height, _ = self.shape
        self.degrees_per_pixel = config.panorama.fovy_deg / height
        self.columns = max(self.shape[2], round(360.0 / self.degrees_per_pixel))
        rows = round(180.0 / self.degrees_per_pixel) + height
        self.map = RefreshedMap((channels, rows, self.columns), self.map_seed(2), self.clock)

    def sample(
        self, render: RenderOutput, cameras: Cameras, generator: torch.Generator
    ) -> torch.Tensor:
        _, height, width = self.shape
        device = render.rgb.device
        panorama = self.map.current(device, generator)
        step = self.degrees_per_pixel
        azimuth = cameras.azimuth.to(device=device, dtype=torch.float64)
        elevation = cameras.elevation.to(device=device, dtype=torch.float64)
        left = torch.round(azimuth / step).to(torch.int64) - width // 2
        top = torch.round((90.0 - elevation) / step).to(torch.int64)
        top = top.clamp(0, panorama.shape[1] - height)
        rows = top[:, None] + torch.arange(height, device=device)
        cols = (left[:, None] + torch.arange(width, device=device)) % self.columns
        crop = panorama[:, rows[:, :, None], cols[:, None, :]]
        return crop.permute(1, 0, 2, 3).contiguous()

    def _extra_state(self) -> dict:
        return {"map": self.map.state_dict()}

    def _load_extra_state(self, state: dict) -> None:
        self.map.load_state_dict(state["map"])
