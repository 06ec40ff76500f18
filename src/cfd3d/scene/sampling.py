"""Random training cameras and view labels for view-dependent prompts.

The default ranges are the CFD paper's stage-1 recipe (elevation 0-40°, azimuth 0-360°,
distance 1.3-1.5, fovy 40-65°, always looking at the origin). Angles follow the
conventions of :mod:`cfd3d.scene.cameras`: azimuth 0 looks at the object's front (+x).
Multi-view priors (MVDream) take views in groups around one object: with
``views_per_group = k`` the cameras come in ``k``-view groups that share elevation,
distance and field of view, with azimuths ``a, a + 360/k, ...`` (MVDream: 4 views 90° apart).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from cfd3d.errors import ConfigError
from cfd3d.scene.cameras import Cameras, spherical_cameras

ViewLabel = Literal["front", "side", "back", "overhead"]
VIEW_LABELS: tuple[ViewLabel, ...] = ("front", "side", "back", "overhead")


def _check_range(name: str, value: Sequence[float], low: float, high: float, open_: bool) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a ``(min, max)`` pair inside the limits."""
    if len(value) != 2:
        raise ConfigError(f"{name} must be a (min, max) pair, got {tuple(value)}")
    lo, hi = (float(v) for v in value)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ConfigError(f"{name} must be finite, got ({lo}, {hi})")
    if lo > hi:
        raise ConfigError(f"{name} has min > max ({lo} > {hi}); give it as (min, max)")
    inside = (low < lo and hi < high) if open_ else (low <= lo and hi <= high)
    if not inside:
        bracket = f"({low}, {high})" if open_ else f"[{low}, {high}]"
        raise ConfigError(f"{name} must lie in {bracket}, got ({lo}, {hi})")


@dataclass(frozen=True)
class CameraSamplerConfig:
    """Ranges of the random training cameras; each value is drawn uniformly from its range.

    Attributes:
        elevation_deg: ``(min, max)`` elevation above the xy-plane in degrees, within
            [-90, 90]; sampled uniformly in degrees (not uniformly on the sphere).
        azimuth_deg: ``(min, max)`` azimuth in degrees (0 = front, +x); the span
            ``max - min`` is at most 360.
        distance: ``(min, max)`` distance of the camera from the origin; the minimum must
            exceed ``bound`` so that every camera sits outside the scene.
        fovy_deg: ``(min, max)`` vertical field of view in degrees, inside (0, 180).
        bound: radius of the scene's bounding sphere (the renderer's ``bound``).
        views_per_group: ``k`` views per group (1: independent cameras). With ``k > 1`` each
            group draws one elevation, distance, field of view and first azimuth ``a`` (from
            ``azimuth_deg``) and places its views at azimuths ``a + i * 360 / k``,
            ``i = 0 .. k-1``, consecutively in the batch; 4 for MVDream.
    """

    elevation_deg: tuple[float, float] = (0.0, 40.0)
    azimuth_deg: tuple[float, float] = (0.0, 360.0)
    distance: tuple[float, float] = (1.3, 1.5)
    fovy_deg: tuple[float, float] = (40.0, 65.0)
    bound: float = 1.0
    views_per_group: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.views_per_group, bool) or not isinstance(self.views_per_group, int):
            raise ConfigError(f"views_per_group must be an integer, got {self.views_per_group!r}")
        if self.views_per_group < 1:
            raise ConfigError(f"views_per_group must be at least 1, got {self.views_per_group}")
        if not (math.isfinite(self.bound) and self.bound > 0.0):
            raise ConfigError(f"bound must be a positive number, got {self.bound}")
        _check_range("elevation_deg", self.elevation_deg, -90.0, 90.0, open_=False)
        _check_range("azimuth_deg", self.azimuth_deg, -math.inf, math.inf, open_=True)
        if self.azimuth_deg[1] - self.azimuth_deg[0] > 360.0:
            raise ConfigError(
                f"azimuth_deg spans more than 360 degrees: {tuple(self.azimuth_deg)}; "
                "use e.g. (0, 360)"
            )
        _check_range("fovy_deg", self.fovy_deg, 0.0, 180.0, open_=True)
        _check_range("distance", self.distance, self.bound, math.inf, open_=True)


def sample_cameras(
    config: CameraSamplerConfig,
    n: int,
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str | None = None,
) -> Cameras:
    """Draw ``n`` random cameras looking at the origin, in groups of
    ``config.views_per_group`` (see :class:`CameraSamplerConfig`).

    Args:
        config: the sampling ranges.
        n: number of cameras, a multiple of ``config.views_per_group``.
        generator: source of randomness (a CPU generator; the global one if ``None``).
        device: where the returned cameras live (default: CPU).

    Returns:
        ``n`` cameras in float32; the views of group ``g`` are ``g*k .. g*k + k-1``.
    """
    k = config.views_per_group
    if n < 1:
        raise ConfigError(f"the number of cameras must be at least 1, got {n}")
    if n % k:
        raise ConfigError(
            f"{n} cameras cannot be split into groups of views_per_group={k}; "
            f"use a multiple of {k} views per step"
        )
    u = torch.rand(4, n // k, generator=generator, dtype=torch.float64)
    u = u.repeat_interleave(k, dim=1)
    step = (torch.arange(n, dtype=torch.float64) % k) * (360.0 / k)

    def lerp(bounds: tuple[float, float], t: torch.Tensor) -> torch.Tensor:
        return bounds[0] + (bounds[1] - bounds[0]) * t

    cameras = spherical_cameras(
        (lerp(config.azimuth_deg, u[0]) + step).float(),
        lerp(config.elevation_deg, u[1]).float(),
        lerp(config.distance, u[2]).float(),
        lerp(config.fovy_deg, u[3]).float(),
    )
    return cameras if device is None else cameras.to(device)


@dataclass(frozen=True)
class ViewLabelConfig:
    """Angular thresholds of DreamFusion's view-dependent prompt labels.

    A view is ``"overhead"`` above ``overhead_deg`` elevation; otherwise ``"front"`` when
    its azimuth is within ``front_deg`` of 0, ``"back"`` within ``back_deg`` of 180, and
    ``"side"`` elsewhere.

    Attributes:
        front_deg: half-width of the front sector in degrees.
        back_deg: half-width of the back sector in degrees.
        overhead_deg: elevation in degrees above which a view is overhead.
    """

    front_deg: float = 45.0
    back_deg: float = 45.0
    overhead_deg: float = 60.0

    def __post_init__(self) -> None:
        if self.front_deg < 0.0 or self.back_deg < 0.0:
            raise ConfigError("front_deg and back_deg must be non-negative")
        if self.front_deg + self.back_deg > 180.0:
            raise ConfigError(
                f"front_deg + back_deg must be at most 180 so the sectors do not overlap, "
                f"got {self.front_deg} + {self.back_deg}"
            )
        if not -90.0 <= self.overhead_deg <= 90.0:
            raise ConfigError(f"overhead_deg must lie in [-90, 90], got {self.overhead_deg}")


def view_labels(cameras: Cameras, config: ViewLabelConfig | None = None) -> list[ViewLabel]:
    """DreamFusion's view label of each camera (for prompts like "..., back view").

    Args:
        cameras: ``B`` cameras.
        config: thresholds (defaults: front/back ±45°, overhead above 60°).

    Returns:
        ``B`` labels, each one of :data:`VIEW_LABELS`.
    """
    config = config or ViewLabelConfig()
    azimuth = cameras.azimuth.double()  # in [0, 360)
    from_front = torch.minimum(azimuth, 360.0 - azimuth)
    from_back = (azimuth - 180.0).abs()
    elevation = cameras.elevation.double()
    labels: list[ViewLabel] = []
    for el, front, back in zip(
        elevation.tolist(), from_front.tolist(), from_back.tolist(), strict=True
    ):
        if el > config.overhead_deg:
            labels.append("overhead")
        elif front < config.front_deg:
            labels.append("front")
        elif back < config.back_deg:
            labels.append("back")
        else:
            labels.append("side")
    return labels
