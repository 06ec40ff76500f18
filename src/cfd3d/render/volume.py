"""The differentiable volume renderer, as a composition of small stages:

rays → bounding-sphere intersection → stratified samples → (importance resampling) →
field query → normals → shading → alpha compositing → background.

Everything is vectorised over all rays of all views; rays that miss the sphere are never
sampled, and samples only ever lie inside it. No device is hard-coded: the renderer runs
where the cameras and the field live.

Two marchers share the sample placement. The dense one (the default and the reference)
queries the field at every sample. Given an :class:`~cfd3d.render.occupancy.OccupancyGrid`,
the skipping one drops the samples in empty cells before any field query, then, from a
density pass without gradients, the samples behind the point where the transmittance
falls below ``RendererConfig.termination``; the survivors are shaded with gradients and
composited as packed samples (nerfacc's scheme, Li et al. 2023).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cfd3d.errors import ConfigError
from cfd3d.render.background import Background, SolidBackground
from cfd3d.render.compositing import (
    Composite,
    composite,
    composite_packed,
    compositing_weights,
    packed_compositing_weights,
)
from cfd3d.render.occupancy import OccupancyGrid
from cfd3d.render.rays import (
    importance_samples,
    intersect_sphere,
    interval_edges,
    stratified_samples,
)
from cfd3d.render.samples import shade_samples
from cfd3d.render.shading import ShadingConfig, ShadingMode, light_positions, resolve_shading
from cfd3d.render.types import RenderOutput
from cfd3d.scene.cameras import Cameras
from cfd3d.scene.fields import NORMAL_METHODS, Field, NormalMethod


@dataclass(frozen=True)
class RendererConfig:
    """The volume renderer.

    Attributes:
        bound: radius of the bounding sphere around the origin; nothing outside is rendered.
        n_samples: stratified samples per ray (jittered when a generator is given).
        n_importance: extra samples per ray drawn from the stratified samples' weights
            (0: none). Both sets are queried once and merged.
        shading: default shading (light intensities and placement); the mode can be
            overridden per call.
        normals: also return the normal map when the shading does not need normals.
        normal_method: how normals are differentiated for fields without their own
            ``normals()`` (``"central"`` differences or ``"autograd"``).
        normal_eps: central-difference step in world units.
        opacity_eps: floor of the opacity in the conditional depth and of the normal's
            length (see :class:`cfd3d.render.compositing.Composite`).
        chunk_rays: rays per field query; bounds memory for large images without
            changing the result.
        termination: with an occupancy grid, a ray stops once its transmittance falls
            below this (early ray termination); what it leaves out weighs at most this
            much. The dense marcher ignores it.
    """

    bound: float = 1.0
    n_samples: int = 64
    n_importance: int = 0
    shading: ShadingConfig = field(default_factory=ShadingConfig)
    normals: bool = False
    normal_method: NormalMethod = "central"
    normal_eps: float = 1e-2
    opacity_eps: float = 1e-3
    chunk_rays: int = 16384
    termination: float = 1e-4

    def __post_init__(self) -> None:
        if self.bound <= 0.0:
            raise ConfigError(f"renderer bound must be positive, got {self.bound}")
        if self.n_samples < 1 or self.n_importance < 0:
            raise ConfigError(
                f"need n_samples >= 1 and n_importance >= 0, got {self.n_samples} and "
                f"{self.n_importance}"
            )
        if self.normal_method not in NORMAL_METHODS:
            raise ConfigError(
                f"unknown normal_method {self.normal_method!r}; valid: {', '.join(NORMAL_METHODS)}"
            )
        if self.normal_eps <= 0.0 or self.opacity_eps <= 0.0:
            raise ConfigError("normal_eps and opacity_eps must be positive")
        chunk = self.chunk_rays
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ConfigError(f"chunk_rays must be a positive integer, got {chunk!r}")
        if not 0.0 < self.termination < 1.0:
            raise ConfigError(
                f"termination must lie strictly between 0 and 1, got {self.termination}"
            )


class VolumeRenderer:
    """Renders a :class:`~cfd3d.scene.fields.Field` from a batch of cameras.

    Example::

        renderer = VolumeRenderer(RendererConfig(n_samples=64))
        out = renderer(field, cameras, 32, 32, shading="diffuse", generator=gen)
        out.rgb  # (B, 32, 32, 3)
    """

    def __init__(self, config: RendererConfig | None = None):
        self.config = config or RendererConfig()

    def __call__(
        self,
        field: Field,
        cameras: Cameras,
        height: int,
        width: int,
        *,
        shading: ShadingMode | ShadingConfig | None = None,
        background: Background | None = None,
        generator: torch.Generator | None = None,
        occupancy: OccupancyGrid | None = None,
    ) -> RenderOutput:
        """Render ``B = len(cameras)`` views.

        Args:
            field: what to render.
            cameras: ``B`` cameras.
            height, width: image size in pixels.
            shading: a mode name (with the config's light settings), a full
                :class:`ShadingConfig`, or ``None`` for the config's.
            background: the background (default: solid white).
            generator: randomness for training (jittered samples, random lights, random
                background colours); ``None`` renders deterministically.
            occupancy: march with empty-space skipping and early termination through
                this grid (same generator draws as the dense marcher); ``None`` marches
                densely.

        Returns:
            :class:`RenderOutput` with ``(B, H, W, C)`` maps; ``normal`` is set when the
            shading needs normals or ``config.normals`` is true.
        """
        shading_config = resolve_shading(self.config.shading, shading)
        background = background or SolidBackground()
        origins, directions = cameras.rays(height, width)
        n_views = len(cameras)
        ray_lights = None
        if shading_config.needs_normals:
            lights = light_positions(cameras, shading_config, generator)
            ray_lights = lights[:, None, :].expand(n_views, height * width, 3).reshape(-1, 3)
        result = self.render_rays(
            field,
            origins.reshape(-1, 3),
            directions.reshape(-1, 3),
            shading=shading_config,
            lights=ray_lights,
            generator=generator,
            occupancy=occupancy,
        )

        def image(values: torch.Tensor) -> torch.Tensor:
            return values.view(n_views, height, width, values.shape[-1])

        opacity = image(result.opacity)
        rgb = image(result.color) + (1.0 - opacity) * background(directions, generator)
        normal = None if result.normal is None else image(result.normal)
        return RenderOutput(rgb=rgb, opacity=opacity, depth=image(result.depth), normal=normal)

    def render_rays(
        self,
        field: Field,
        origins: torch.Tensor,
        directions: torch.Tensor,
        *,
        shading: ShadingMode | ShadingConfig | None = None,
        lights: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        occupancy: OccupancyGrid | None = None,
    ) -> Composite:
        """Render ``R`` arbitrary rays (e.g. a random batch of pixels from many views).

        Args:
            field: what to render.
            origins: ``(R, 3)`` ray origins.
            directions: ``(R, 3)`` unit ray directions.
            shading: as in :meth:`__call__`.
            lights: ``(R, 3)`` light position for each ray; required unless the shading
                mode is ``"albedo"``.
            generator: randomness (jittered samples); ``None`` is deterministic. Draws
                are made chunk by chunk, in ray order, and are the same with and without
                ``occupancy``.
            occupancy: as in :meth:`__call__`.

        Returns:
            A :class:`~cfd3d.render.compositing.Composite` of ``R`` rays without
            background (colour premultiplied by opacity); rays that miss the bounding
            sphere (or, with ``occupancy``, meet only empty cells) are zero. ``normal`` is
            set when the shading needs normals or ``config.normals`` is true.
        """
        shading_config = resolve_shading(self.config.shading, shading)
        want_normals = self.config.normals or shading_config.needs_normals
        if shading_config.needs_normals and lights is None:
            raise ValueError(f"shading mode {shading_config.mode!r} needs light positions")
        if lights is None:
            lights = torch.zeros_like(origins)
        t_near, t_far, hit = intersect_sphere(origins, directions, self.config.bound)
        index = hit.nonzero()[:, 0]
        chunks = []
        for start in range(0, index.shape[0], self.config.chunk_rays):
            sel = index[start : start + self.config.chunk_rays]
            chunks.append(
                self._render_hits(
                    field,
                    origins[sel],
                    directions[sel],
                    t_near[sel],
                    t_far[sel],
                    lights[sel],
                    shading_config,
                    want_normals,
                    generator,
                    occupancy,
                )
            )

        def scatter(values: list[torch.Tensor], channels: int) -> torch.Tensor:
            full = origins.new_zeros(origins.shape[0], channels)
            if not values:
                return full
            return full.index_copy(0, index, torch.cat(values, dim=0))

        return Composite(
            color=scatter([c.color for c in chunks], 3),
            opacity=scatter([c.opacity for c in chunks], 1),
            depth=scatter([c.depth for c in chunks], 1),
            normal=scatter([c.normal for c in chunks], 3) if want_normals else None,
        )

    def _render_hits(
        self,
        field: Field,
        origins: torch.Tensor,
        directions: torch.Tensor,
        near: torch.Tensor,
        far: torch.Tensor,
        lights: torch.Tensor,
        shading: ShadingConfig,
        want_normals: bool,
        generator: torch.Generator | None,
        occupancy: OccupancyGrid | None,
    ) -> Composite:
        """Render ``R`` rays that hit the sphere; all inputs ``(R, ...)``."""
        if occupancy is not None:
            return self._march_occupied(
                field,
                origins,
                directions,
                near,
                far,
                lights,
                shading,
                want_normals,
                generator,
                occupancy,
            )
        cfg = self.config
        n_rays = origins.shape[0]
        t = stratified_samples(near, far, cfg.n_samples, generator)
        if cfg.n_importance > 0:
            coarse = origins[:, None, :] + t[..., None] * directions[:, None, :]
            with torch.no_grad():
                density = field(coarse.reshape(-1, 3)).density.view(n_rays, -1)
            edges = interval_edges(t, near, far)
            weights = compositing_weights(density, edges.diff(dim=-1))
            t_fine = importance_samples(edges, weights, cfg.n_importance, generator)
            t = torch.cat([t, t_fine], dim=-1).sort(dim=-1).values
        points = origins[:, None, :] + t[..., None] * directions[:, None, :]
        n_per_ray = t.shape[1]
        sample_lights = lights[:, None, :].expand(n_rays, n_per_ray, 3).reshape(-1, 3)
        samples = shade_samples(
            field,
            points.reshape(-1, 3),
            sample_lights,
            shading,
            want_normals,
            cfg.normal_method,
            cfg.normal_eps,
        )
        weights = compositing_weights(
            samples.density.view(n_rays, n_per_ray), interval_edges(t, near, far).diff(dim=-1)
        )
        return composite(
            weights,
            t,
            samples.color.view(n_rays, n_per_ray, 3),
            None if samples.normal is None else samples.normal.view(n_rays, n_per_ray, 3),
            cfg.opacity_eps,
        )

    def _march_occupied(
        self,
        field: Field,
        origins: torch.Tensor,
        directions: torch.Tensor,
        near: torch.Tensor,
        far: torch.Tensor,
        lights: torch.Tensor,
        shading: ShadingConfig,
        want_normals: bool,
        generator: torch.Generator | None,
        occupancy: OccupancyGrid,
    ) -> Composite:
        """The skipping twin of the dense march in :meth:`_render_hits`.

        Same candidate distances and interval edges (and the same generator draws) as
        the dense march; candidates in empty cells are dropped before any field query
        (their density counts as zero, also in the weights that place importance
        samples), then a density pass without gradients finds the transmittance before
        each candidate and drops those where it is below ``termination``. The survivors
        are shaded with gradients and composited as packed samples. The field is never
        queried with zero points (the hash encoding cannot take them).
        """
        cfg = self.config
        n_rays = origins.shape[0]
        t = stratified_samples(near, far, cfg.n_samples, generator)
        occupied, density = _occupied_density(field, occupancy, origins, directions, t)
        if cfg.n_importance > 0:
            edges = interval_edges(t, near, far)
            weights = compositing_weights(density, edges.diff(dim=-1))
            t_fine = importance_samples(edges, weights, cfg.n_importance, generator)
            occupied_fine, density_fine = _occupied_density(
                field, occupancy, origins, directions, t_fine
            )
            t, order = torch.cat([t, t_fine], dim=-1).sort(dim=-1)
            occupied = torch.cat([occupied, occupied_fine], dim=-1).gather(-1, order)
            density = torch.cat([density, density_fine], dim=-1).gather(-1, order)
        deltas = interval_edges(t, near, far).diff(dim=-1)
        with torch.no_grad():
            optical_depth = density * deltas
            transmittance = torch.exp(optical_depth - torch.cumsum(optical_depth, dim=-1))
            keep = occupied & (transmittance >= cfg.termination)
        ray_index, column = keep.nonzero(as_tuple=True)
        deltas_kept = deltas[ray_index, column]
        if ray_index.shape[0] == 0:
            # Nothing survives: one sample of zero length keeps the (zero) result on the
            # field's graph, as the dense marcher's always is, so backward still runs.
            ray_index = column = torch.zeros(1, dtype=torch.long, device=t.device)
            deltas_kept = deltas.new_zeros(1)
        t_kept = t[ray_index, column]
        points = origins[ray_index] + t_kept[:, None] * directions[ray_index]
        samples = shade_samples(
            field,
            points,
            lights[ray_index],
            shading,
            want_normals,
            cfg.normal_method,
            cfg.normal_eps,
        )
        weights = packed_compositing_weights(samples.density, deltas_kept, ray_index, n_rays)
        return composite_packed(
            weights, t_kept, samples.color, ray_index, n_rays, samples.normal, cfg.opacity_eps
        )


def _density(field: Field, points: torch.Tensor) -> torch.Tensor:
    """``(N,)`` density at ``points`` ``(N, 3)``: the field's ``density()`` where it has
    one (the NeRF's skips its albedo network), else ``field(points).density``."""
    density_fn = getattr(field, "density", None)
    if callable(density_fn):
        return density_fn(points)
    return field(points).density


def _occupied_density(
    field: Field,
    occupancy: OccupancyGrid,
    origins: torch.Tensor,
    directions: torch.Tensor,
    t: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which candidates ``(R, S)`` lie in occupied cells, and their density without
    gradients (zero in empty cells, where the field is not queried)."""
    with torch.no_grad():
        points = origins[:, None, :] + t[..., None] * directions[:, None, :]
        occupied = occupancy.occupied(points.reshape(-1, 3)).view(t.shape)
        density = torch.zeros_like(t)
        if occupied.any():
            density[occupied] = _density(field, points[occupied]).to(t.dtype)
    return occupied, density
