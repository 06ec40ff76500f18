"""Configuration of the distillation noise."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cfd3d.errors import ConfigError

NoiseKind = Literal["integral", "fresh", "fixed", "panorama"]
NOISE_KINDS: tuple[str, ...] = ("integral", "fresh", "fixed", "panorama")
BackgroundKind = Literal["fixed", "fresh"]


@dataclass(frozen=True)
class IntegralNoiseConfig:
    """Multi-view consistent integral noise (CFD; Chang et al., "How I Warped Your Noise").

    Attributes:
        texel_size: texel edge in world units, or ``None`` for ``0.1 / h`` at noise height
            ``h`` (0.003125 for 32x32, 0.0015625 for 64x64): about 200 texels per noise
            pixel for toy objects seen from the training cameras (distance 1.3-1.5, fovy
            40-65 degrees); a pixel covers about ``(footprint edge / texel_size)^2`` texels.
            Set it explicitly to share one field between noise resolutions. Memory (about
            4 bytes x channels per texel touched) and the cost of the SDE refresh grow with
            the rendered surface area over ``texel_size^2``.
        num_layers: slabs per normal family along its axis (see
            :mod:`cfd3d.noise.charts`); surfaces facing the same way at different depths use
            different texels.
        bound: half-edge (world units) of the cube ``[-bound, bound]^3`` the charts cover;
            surfaces outside it get fewer texels.
        tile_rows: texel rows of the tiles in which the field is created and refreshed (a
            power of two). Small tiles waste less of the SDE refresh on texels no pixel
            uses; wide ones cut fewer texel runs at tile edges.
        tile_cols: texel columns of those tiles (a power of two).
        opacity_threshold: a noise pixel whose mean rendered opacity is below this gets
            background noise.
        min_texels: a foreground pixel whose footprint holds fewer texels than this gets
            background noise.
        max_depth_jump: a footprint corner whose depth differs from the pixel centre's by
            more than this fraction (a depth discontinuity) is moved to the centre's depth.
        background: noise for background pixels: ``"fixed"`` (one seeded map per run,
            refreshed with the field) or ``"fresh"`` (redrawn every call).
    """

    texel_size: float | None = None
    num_layers: int = 4
    bound: float = 1.0
    tile_rows: int = 4
    tile_cols: int = 32
    opacity_threshold: float = 0.5
    min_texels: int = 16
    max_depth_jump: float = 0.1
    background: BackgroundKind = "fixed"

    def __post_init__(self) -> None:
        checks = (
            (
                self.texel_size is None or self.texel_size > 0.0,
                f"texel_size must be > 0 (or None), got {self.texel_size}",
            ),
            (self.num_layers >= 1, f"num_layers must be >= 1, got {self.num_layers}"),
            (self.bound > 0.0, f"bound must be > 0, got {self.bound}"),
            (
                self.tile_rows >= 1 and self.tile_rows & (self.tile_rows - 1) == 0,
                f"tile_rows must be a power of two, got {self.tile_rows}",
            ),
            (
                self.tile_cols >= 1 and self.tile_cols & (self.tile_cols - 1) == 0,
                f"tile_cols must be a power of two, got {self.tile_cols}",
            ),
            (
                0.0 < self.opacity_threshold <= 1.0,
                f"opacity_threshold must be in (0, 1], got {self.opacity_threshold}",
            ),
            (self.min_texels >= 1, f"min_texels must be >= 1, got {self.min_texels}"),
            (self.max_depth_jump > 0.0, f"max_depth_jump must be > 0, got {self.max_depth_jump}"),
            (
                self.background in ("fixed", "fresh"),
                f"background must be 'fixed' or 'fresh', got '{self.background}'",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"integral noise: {message}")


@dataclass(frozen=True)
class PanoramaNoiseConfig:
    """FSD's camera-indexed noise (Yan et al., "Flow Score Distillation", 2024): a crop of a
    fixed panoramic noise map at the camera's azimuth and elevation.

    Attributes:
        fovy_deg: vertical angle (degrees) that one crop of ``h`` rows spans; one panorama
            pixel is ``fovy_deg / h`` degrees in azimuth and elevation.
    """

    fovy_deg: float = 50.0

    def __post_init__(self) -> None:
        if not 0.0 < self.fovy_deg <= 180.0:
            raise ConfigError(f"panorama noise: fovy_deg must be in (0, 180], got {self.fovy_deg}")


@dataclass(frozen=True)
class NoiseConfig:
    """Which noise the distillation adds to the renderings, and its parameters.

    Attributes:
        kind: ``"integral"`` multi-view consistent noise on the surface (CFD, the default);
            ``"fresh"`` i.i.d. noise redrawn every call (SDS); ``"fixed"`` one fixed
            per-pixel map for every view, ignoring geometry (CFD without consistency);
            ``"panorama"`` a crop of a fixed panorama at the camera angle (FSD).
        seed: seed of every random draw of the noise source.
        integral: parameters of ``"integral"``.
        panorama: parameters of ``"panorama"``.
    """

    kind: NoiseKind = "integral"
    seed: int = 0
    integral: IntegralNoiseConfig = field(default_factory=IntegralNoiseConfig)
    panorama: PanoramaNoiseConfig = field(default_factory=PanoramaNoiseConfig)

    def __post_init__(self) -> None:
        if self.kind not in NOISE_KINDS:
            raise ConfigError(f"unknown noise kind '{self.kind}'; valid: {', '.join(NOISE_KINDS)}")
