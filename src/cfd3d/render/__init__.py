"""Turning fields into images: the volume renderer, the Gaussian rasteriser, shading and
backgrounds."""

from cfd3d.render.background import (
    Background,
    EnvironmentMap,
    EnvironmentMapConfig,
    RandomColorBackground,
    SolidBackground,
)
from cfd3d.render.occupancy import OccupancyConfig, OccupancyGrid
from cfd3d.render.shading import SHADING_MODES, ShadingConfig, ShadingMode
from cfd3d.render.splat import SplatConfig, SplatRenderer
from cfd3d.render.types import RenderOutput
from cfd3d.render.volume import RendererConfig, VolumeRenderer

__all__ = [
    "SHADING_MODES",
    "Background",
    "EnvironmentMap",
    "EnvironmentMapConfig",
    "OccupancyConfig",
    "OccupancyGrid",
    "RandomColorBackground",
    "RenderOutput",
    "RendererConfig",
    "ShadingConfig",
    "ShadingMode",
    "SolidBackground",
    "SplatConfig",
    "SplatRenderer",
    "VolumeRenderer",
]
