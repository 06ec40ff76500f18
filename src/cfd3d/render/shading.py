"""Shading of volume samples (DreamFusion, Poole et al. 2022, Sec. 3.1 and App. A.2).

* ``"albedo"``: the field's albedo, unlit.
* ``"diffuse"``: Lambertian, ``albedo * (ambient + diffuse * max(0, n · l))`` with a point
  light ``l`` placed around the camera;
* ``"textureless"``: the same lighting on a white albedo, so the prior must judge the
  geometry alone (DreamFusion's augmentation against flat "painted-on" shapes).

The distillation loop picks a mode per step; light positions are drawn per view.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F

from cfd3d.errors import ConfigError
from cfd3d.render.rays import uniform
from cfd3d.scene.cameras import Cameras
from cfd3d.scene.fields import unit_vectors

ShadingMode = Literal["albedo", "diffuse", "textureless"]
SHADING_MODES: tuple[str, ...] = ("albedo", "diffuse", "textureless")


@dataclass(frozen=True)
class ShadingConfig:
    """How samples are shaded and lit.

    Attributes:
        mode: ``"albedo"``, ``"diffuse"`` or ``"textureless"`` (see module doc).
        ambient: ambient light intensity.
        diffuse: point-light intensity (ambient + diffuse = 1 keeps a lit white surface
            at 1).
        light_distance: ``(min, max)`` distance of the point light from the origin.
        light_jitter: standard deviation of the Gaussian perturbation of the light
            direction around the camera direction (unit vectors; 0 puts the light at the
            camera). Only used when a generator is given (training); evaluation always
            uses a headlight at the mean distance.
    """

    mode: ShadingMode = "albedo"
    ambient: float = 0.2
    diffuse: float = 0.8
    light_distance: tuple[float, float] = (1.5, 2.5)
    light_jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in SHADING_MODES:
            raise ConfigError(
                f"unknown shading mode {self.mode!r}; valid: {', '.join(SHADING_MODES)}"
            )
        if self.ambient < 0.0 or self.diffuse < 0.0:
            raise ConfigError("ambient and diffuse light intensities must be >= 0")
        lo, hi = self.light_distance
        if not 0.0 < lo <= hi:
            raise ConfigError(
                f"light_distance must be (min, max) with 0 < min <= max, got {self.light_distance}"
            )
        if self.light_jitter < 0.0:
            raise ConfigError(f"light_jitter must be >= 0, got {self.light_jitter}")

    @property
    def needs_normals(self) -> bool:
        return self.mode != "albedo"


def resolve_shading(
    default: ShadingConfig, shading: ShadingMode | ShadingConfig | None
) -> ShadingConfig:
    """A renderer's shading for one call: ``default`` (``None``), ``default`` in another
    mode (a mode name) or ``shading`` itself (a config).

    Raises:
        ConfigError: for an unknown mode name.
    """
    if shading is None:
        return default
    if isinstance(shading, ShadingConfig):
        return shading
    if shading not in SHADING_MODES:
        raise ConfigError(f"unknown shading mode {shading!r}; valid: {', '.join(SHADING_MODES)}")
    return replace(default, mode=shading)


def light_positions(
    cameras: Cameras, config: ShadingConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """``(B, 3)`` point-light positions, one per view, around the camera directions.

    With a generator: direction ``normalize(ĉ + light_jitter · N(0, I))`` (``ĉ`` the unit
    camera position), distance uniform in ``light_distance``. Without: a headlight
    (``ĉ`` at the mean distance).
    """
    direction = F.normalize(cameras.position, dim=-1)
    lo, hi = config.light_distance
    if generator is None:
        return direction * (0.5 * (lo + hi))
    n = len(cameras)
    noise = torch.randn(
        (n, 3), generator=generator, device=generator.device, dtype=direction.dtype
    ).to(direction.device)
    direction = F.normalize(direction + config.light_jitter * noise, dim=-1)
    distance = lo + (hi - lo) * uniform((n, 1), generator, direction)
    return direction * distance


def shade(
    config: ShadingConfig,
    albedo: torch.Tensor,
    points: torch.Tensor,
    normals: torch.Tensor | None,
    lights: torch.Tensor,
) -> torch.Tensor:
    """Colours of ``N`` samples.

    Args:
        config: the shading mode and light intensities.
        albedo: ``(N, 3)`` in [0, 1].
        points: ``(N, 3)`` sample positions.
        normals: ``(N, 3)`` unit normals (required unless the mode is ``"albedo"``).
        lights: ``(N, 3)`` position of the light that illuminates each sample.

    Returns:
        ``(N, 3)`` shaded colours in [0, ambient + diffuse].
    """
    if config.mode == "albedo":
        return albedo
    if normals is None:
        raise ValueError(f"shading mode {config.mode!r} needs normals")
    to_light = unit_vectors(lights - points)
    lambert = (normals * to_light).sum(dim=-1, keepdim=True).clamp_min(0.0)
    light = config.ambient + config.diffuse * lambert
    if config.mode == "textureless":
        return light.expand_as(albedo)
    return albedo * light
