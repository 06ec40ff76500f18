"""Integral noise: multi-view consistent Gaussian noise on the rendered surface.

The construction of CFD (Yan et al., "Consistent Flow Distillation for Text-to-3D
Generation") after the integral noise of Chang et al. ("How I Warped Your Noise", 2024):

1. A fixed white-noise field of ``C`` channels lives on the texels of the charts of
   :mod:`cfd3d.noise.charts` (axis planes chosen by the surface normal, in slabs), stored
   lazily by :mod:`cfd3d.noise.texels`.
2. Each foreground noise pixel's footprint on the surface is the quad spanned by its four
   corners, lifted to 3D with depths interpolated from the rendered depth (the
   opacity-weighted mean of the four render pixels around each corner); the pixel's chart
   is chosen by the quad's normal and centre point, and the quad is projected into it.
3. A texel belongs to the pixel whose footprint contains the texel's centre
   (:mod:`cfd3d.noise.raster`); overlaps are resolved so every texel goes to one pixel of a
   view. The pixel's noise is the sum of its ``k`` texels divided by ``sqrt(k)``: a sum of
   ``k`` i.i.d. N(0, 1) over ``sqrt(k)`` is N(0, 1), and disjoint texel sets make the
   pixels of a view independent.
4. Pixels below the opacity threshold, or whose footprint holds too few texels (a
   degenerate footprint), get background noise (a fixed seeded map or fresh noise).

Because texels are attached to 3D positions, a surface region keeps its noise when seen from
another camera: moving the camera parallel to a plane by whole pixels shifts the noise
map, rolling it by 90 degrees rotates it, and refining the noise grid 2x2 splits every
pixel's texels among its four children (so 2x2 sums / 2 reproduce the coarse noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cfd3d.errors import ConfigError
from cfd3d.noise.base import NoiseSource, RefreshedMap, check_resolution
from cfd3d.noise.charts import ChartLayout
from cfd3d.noise.config import NoiseConfig
from cfd3d.noise.raster import Spans, ragged_arange, rasterize_quads, remove_overlaps
from cfd3d.noise.texels import TexelField
from cfd3d.render.types import RenderOutput
from cfd3d.scene.cameras import Cameras


@dataclass(frozen=True)
class Footprints:
    """Footprints of the foreground noise pixels of ``B`` views at ``h x w``.

    Attributes:
        foreground: ``(B, h, w)`` bool, mean rendered opacity at least the threshold.
        pixel: ``(P,)`` int64 flat index ``(b * h + i) * w + j`` of each foreground pixel.
        corners: ``(P, 4, 3)`` float32 world points of the footprint corners (top-left,
            top-right, bottom-right, bottom-left).
        centre: ``(P, 3)`` float32 world point seen through the pixel centre.
    """

    foreground: torch.Tensor
    pixel: torch.Tensor
    corners: torch.Tensor
    centre: torch.Tensor

    @property
    def pixels_per_view(self) -> int:
        """``h * w``."""
        return self.foreground.shape[1] * self.foreground.shape[2]


def check_geometry(render: RenderOutput) -> None:
    """:class:`ConfigError` unless ``render`` has ``(B, H, W, 1)`` opacity and depth."""
    for name in ("opacity", "depth"):
        value = getattr(render, name, None)
        if value is None:
            raise ConfigError(
                f"integral noise needs the render's {name}; use a renderer that returns "
                "opacity and expected depth, or noise kind 'fresh', 'fixed' or 'panorama'"
            )
        expected = (render.batch_size, *render.resolution, 1)
        if tuple(value.shape) != expected:
            raise ConfigError(f"render {name} must have shape {expected}, got {tuple(value.shape)}")


def compute_footprints(
    render: RenderOutput,
    cameras: Cameras,
    height: int,
    width: int,
    opacity_threshold: float,
    max_depth_jump: float,
) -> Footprints:
    """Footprint quads of the foreground noise pixels (see module doc, step 2).

    Depths are handled as camera-space z (distance along the viewing axis), which is exact
    to interpolate on planes facing the camera.

    Args:
        render: views with ``opacity`` and ``depth`` ``(B, H, W, 1)``.
        cameras: their cameras.
        height, width: noise resolution ``h x w`` (dividing ``H x W``).
        opacity_threshold: foreground if the mean opacity of the pixel's render block is at
            least this.
        max_depth_jump: corners further than this fraction from the centre depth take the
            centre depth.
    """
    fr, fc = check_resolution(render, height, width)
    render_h, render_w = render.resolution
    f32 = torch.float32
    device = render.opacity.device
    c2w = cameras.c2w.to(device=device, dtype=f32)
    focal = 0.5 * render_h / torch.tan(0.5 * cameras.fovy.to(device=device, dtype=f32))
    # Image-plane coordinates (x right, y up, at camera z = -1) of render-pixel centres.
    x = torch.arange(render_w, device=device, dtype=f32) + (0.5 - 0.5 * render_w)
    y = (torch.arange(render_h, device=device, dtype=f32) + (0.5 - 0.5 * render_h)).neg_()
    x = x / focal[:, None]
    y = y / focal[:, None]
    opacity = render.opacity.to(f32)[..., 0]
    depth = render.depth.to(f32)[..., 0]
    # Camera-space z of the render pixels: distance along the unit ray / |(x, y, -1)|.
    z = depth * torch.rsqrt(x[:, None, :] ** 2 + y[:, :, None] ** 2 + 1.0)
    weight = torch.where(depth > 0, opacity, 0.0)
    weighted = torch.stack([opacity, weight, weight * z], dim=1)

    pooled = F.avg_pool2d(weighted, (fr, fc))
    foreground = (pooled[:, 0] >= opacity_threshold) & (pooled[:, 1] > 0)
    centre_z = pooled[:, 2] / pooled[:, 1].clamp_min(1e-30)
    # Each noise-pixel corner: opacity-weighted mean z of the 2x2 render pixels around it.
    around = F.avg_pool2d(F.pad(weighted[:, 1:], (1, 1, 1, 1)), 2, stride=(fr, fc))
    corner_w = around[:, 0]
    corner_z = around[:, 1] / corner_w.clamp_min(1e-30)

    pixel = torch.nonzero(foreground.flatten())[:, 0]
    view = pixel // (height * width)
    i = (pixel // width) % height
    j = pixel % width
    rows = i[:, None] + torch.tensor([0, 0, 1, 1], device=device)
    cols = j[:, None] + torch.tensor([0, 1, 1, 0], device=device)
    corner_index = ((view[:, None] * (height + 1) + rows) * (width + 1) + cols).flatten()
    z_centre = centre_z.flatten().index_select(0, pixel)[:, None]
    z_corner = corner_z.flatten().index_select(0, corner_index).view(-1, 4)
    ok = corner_w.flatten().index_select(0, corner_index).view(-1, 4) > 0
    ok &= (z_corner - z_centre).abs() <= max_depth_jump * z_centre
    z_corner = torch.where(ok, z_corner, z_centre)
    # World-space corner rays R (x, y, -1): a point at camera z = d is origin + d * ray.
    pixel_focal = focal.index_select(0, view)[:, None]
    corner_x = (cols * fc - 0.5 * render_w).to(f32) / pixel_focal
    corner_y = (0.5 * render_h - rows * fr).to(f32) / pixel_focal
    rotation = c2w[:, :3, :3].index_select(0, view)
    rays = (
        corner_x[..., None] * rotation[:, None, :, 0]
        + corner_y[..., None] * rotation[:, None, :, 1]
        - rotation[:, None, :, 2]
    )
    origin = c2w[:, :3, 3].index_select(0, view)[:, None, :]
    corners = origin + z_corner[..., None] * rays
    centre = origin[:, 0] + z_centre * rays.mean(dim=1)
    return Footprints(foreground, pixel, corners, centre)


@dataclass(frozen=True)
class Assignment:
    """Texel runs of a batch's footprints, each texel in at most one run per view.

    Attributes:
        spans: disjoint :class:`~cfd3d.noise.raster.Spans`, ``owner`` = footprint index.
        count: ``(P,)`` int64 number of texels of each footprint.
    """

    spans: Spans
    count: torch.Tensor


def assign_texels(footprints: Footprints, layout: ChartLayout) -> Assignment:
    """Partition texels among the footprints of each view (module doc, step 3).

    Args:
        footprints: the batch's foreground footprints.
        layout: the charts.
    """
    corners = footprints.corners
    # Quad normal from its diagonals; with the corners clockwise in the image it points
    # towards the camera, so the two sides of a thin sheet use different charts.
    normal = torch.linalg.cross(corners[:, 3] - corners[:, 1], corners[:, 2] - corners[:, 0])
    chart, axis = layout.charts(normal, footprints.centre)
    quads = layout.texel_coordinates(corners, axis).to(torch.float32)
    spans = rasterize_quads(quads, chart, layout.size)
    view = footprints.pixel // footprints.pixels_per_view
    spans = remove_overlaps(spans, view.index_select(0, spans.owner), layout.num_rows, layout.size)
    count = torch.zeros(corners.shape[0], dtype=torch.int64, device=corners.device)
    count.index_add_(0, spans.owner, spans.count)
    return Assignment(spans, count)


def split_at_tiles(spans: Spans, col_shift: int) -> Spans:
    """Cut the spans that cross tile column boundaries (every ``2^col_shift`` columns), so
    each piece lies in one tile."""
    tile_cols = 1 << col_shift
    first = spans.start >> col_shift
    pieces = ((spans.end - 1) >> col_shift) - first + 1
    crossing = torch.nonzero(pieces > 1)[:, 0]
    if crossing.shape[0] == 0:
        return spans
    whole = torch.nonzero(pieces == 1)[:, 0]
    cut = spans.select(crossing)
    group, offset = ragged_arange(pieces.index_select(0, crossing))
    tile_col = first.index_select(0, crossing).index_select(0, group) + offset
    cut = Spans(
        cut.owner.index_select(0, group),
        cut.row.index_select(0, group),
        torch.maximum(cut.start.index_select(0, group), tile_col * tile_cols),
        torch.minimum(cut.end.index_select(0, group), (tile_col + 1) * tile_cols),
    )
    kept = spans.select(whole)
    return Spans(*(torch.cat([a, b]) for a, b in zip(kept.fields(), cut.fields(), strict=True)))


#: Default texel size times the noise height (see ``IntegralNoiseConfig.texel_size``).
TEXEL_SIZE_TIMES_HEIGHT = 0.1


class IntegralNoise(NoiseSource):
    """Multi-view consistent integral noise (the CFD default); see the module doc."""

    kind = "integral"

    def __init__(self, config: NoiseConfig, shape: tuple[int, int, int]):
        super().__init__(config, shape)
        cfg = config.integral
        texel_size = (
            cfg.texel_size if cfg.texel_size is not None else TEXEL_SIZE_TIMES_HEIGHT / shape[1]
        )
        self.layout = ChartLayout.build(
            cfg.bound, texel_size, cfg.num_layers, cfg.tile_rows, cfg.tile_cols
        )
        self.field = TexelField(self.layout, self.shape[0], config.seed, self.clock)
        self.background = (
            RefreshedMap(self.shape, self.map_seed(0), self.clock)
            if cfg.background == "fixed"
            else None
        )

    def footprints(self, render: RenderOutput, cameras: Cameras) -> Footprints:
        """The footprints this source uses for ``render`` (for diagnostics and tests)."""
        check_geometry(render)
        cfg = self.config.integral
        _, height, width = self.shape
        return compute_footprints(
            render, cameras, height, width, cfg.opacity_threshold, cfg.max_depth_jump
        )

    def _integrate(
        self, render: RenderOutput, cameras: Cameras, generator: torch.Generator
    ) -> tuple[Footprints, torch.Tensor, torch.Tensor]:
        """Footprints, ``(P, C)`` texel sums and ``(P,)`` texel counts of the foreground."""
        footprints = self.footprints(render, cameras)
        self.field.to(footprints.corners.device)
        assignment = assign_texels(footprints, self.layout)
        pieces = split_at_tiles(assignment.spans, self.layout.col_shift)
        sums = self.field.run_sums(pieces.row, pieces.start, pieces.end, generator)
        total = sums.new_zeros(footprints.pixel.shape[0], self.shape[0])
        total.index_add_(0, pieces.owner, sums)
        return footprints, total, assignment.count

    def texel_counts(self, render: RenderOutput, cameras: Cameras) -> torch.Tensor:
        """``(B, h, w)`` int64 number of texels assigned to each noise pixel (0 for
        background pixels). Pixels with fewer than ``min_texels`` get background noise."""
        footprints = self.footprints(render, cameras)
        assignment = assign_texels(footprints, self.layout)
        counts = torch.zeros(footprints.foreground.numel(), dtype=torch.int64)
        counts = counts.to(footprints.pixel.device)
        counts[footprints.pixel] = assignment.count
        return counts.view(footprints.foreground.shape)

    def sample(
        self, render: RenderOutput, cameras: Cameras, generator: torch.Generator
    ) -> torch.Tensor:
        channels, height, width = self.shape
        batch = render.batch_size
        footprints, total, count = self._integrate(render, cameras, generator)
        device = total.device
        good = count >= self.config.integral.min_texels
        values = total / count.clamp_min(1).to(total.dtype).sqrt()[:, None]
        if self.background is None:
            background = torch.randn(
                (batch, channels, height, width), generator=generator, device=device
            )
        else:
            background = self.background.current(device, generator).expand(batch, -1, -1, -1)
        out = background.permute(0, 2, 3, 1).reshape(-1, channels).clone()
        out[footprints.pixel[good]] = values[good]
        return out.view(batch, height, width, channels).permute(0, 3, 1, 2).contiguous()

    def _extra_state(self) -> dict:
        state = {"field": self.field.state_dict()}
        if self.background is not None:
            state["background"] = self.background.state_dict()
        return state

    def _load_extra_state(self, state: dict) -> None:
        self.field.load_state_dict(state["field"])
        if self.background is not None:
            self.background.load_state_dict(state["background"])
