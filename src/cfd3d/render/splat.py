"""The pure-PyTorch reference rasteriser of 3D Gaussians (3DGS, Kerbl et al. 2023).

Stages, each a small function:

1. :func:`project_gaussians` — EWA splatting (Zwicker et al. 2002): each Gaussian's world
   covariance ``Σ`` becomes the image covariance ``J W Σ Wᵀ Jᵀ + 0.3 I`` (``W`` the
   world-to-camera rotation, ``J`` the Jacobian of the perspective projection at the
   centre, whose ``x/z, y/z`` are clamped to 1.3 times the half field of view as in 3DGS;
   ``0.3 I`` is the low-pass dilation of one pixel's footprint). Gaussians closer than
   ``near`` are culled.
2. :func:`rasterize` — per view, the Gaussians are sorted by camera depth once; the image
   is cut into square tiles, and each tile takes the sorted Gaussians whose *cut-off
   ellipse* meets it. Per pixel ``α_i = min(0.99, o_i exp(-½ dᵀ Σ'⁻¹ d))``, values below
   1/255 are dropped, and compositing runs front to back with
   ``T_i = Π_{j<i} (1 - α_j)`` (in log space), stopping before the Gaussian that would
   bring ``T`` below 1e-4 — the CUDA rasteriser's rules. The cut-off ellipse is where
   ``o_i · kernel = 1/255``, so tiles lose nothing the alpha floor would keep: the result
   does not depend on the tile size (tested); tiles only bound memory
   (``tile² × Gaussians-in-tile`` values per tile).
3. :class:`SplatRenderer` — colours (spherical harmonics per view), shading, expected
   depth and normals, background: the same :class:`~cfd3d.render.types.RenderOutput`, the
   same backgrounds and shading modes as the volume renderer, so noise, priors and update
   rules do not change.

Shading needs normals. ``normal_source="axes"``: each Gaussian's shortest axis, turned
towards the camera, shades the Gaussian before compositing (as the volume renderer shades
samples). ``"depth"``: normals of the surface given by the rendered expected depth
(central differences of its points), shading the composited albedo per pixel.

Depth: ``Σ w_i z_i / max(opacity, eps)`` with ``z_i`` the camera depth of the centres,
turned into distance along each pixel's unit ray (``z / cos θ``), as ``RenderOutput``
defines it.

Backends (``SplatConfig.backend``): stages 1-2 run either here in PyTorch (``"torch"``,
any device) or in gsplat's CUDA kernels (``"gsplat"``: ``gsplat.rasterization``,
``pip install 'cfd3d[gs]'``), which composite the same per-view features (colour or
shaded colour, camera depth, normals) by the same rules; stage 3 is shared, so both
return the same ``RenderOutput``. ``"auto"`` takes gsplat on a CUDA device when it
imports. :func:`gsplat_cameras` converts our cameras (OpenGL camera-to-world, square
pixels, principal point at the image centre) to gsplat's world-to-camera ``viewmats`` in
the OpenCV convention (x right, y down, z forward) and pinhole ``Ks``. Known differences
of the CUDA path: gsplat bounds each Gaussian by a square of its opacity-aware radius
(ours: the box of the cut-off ellipse; both keep every alpha above the floor in tiles the
kernel reaches), sorts by depth per tile in float32, and its ``radius`` statistic is that
radius, not the 3 σ major axis.
"""

from __future__ import annotations

import functools
import importlib
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from cfd3d.errors import ConfigError
from cfd3d.render.background import Background, SolidBackground
from cfd3d.render.shading import (
    ShadingConfig,
    ShadingMode,
    light_positions,
    resolve_shading,
    shade,
)
from cfd3d.render.types import RenderOutput
from cfd3d.scene.cameras import Cameras
from cfd3d.scene.gaussians import ALPHA_FLOOR, GaussianField, kernel_cutoff

NormalSource = Literal["axes", "depth"]
NORMAL_SOURCES: tuple[str, ...] = ("axes", "depth")
SplatBackend = Literal["auto", "torch", "gsplat"]
SPLAT_BACKENDS: tuple[str, ...] = ("auto", "torch", "gsplat")
GSPLAT_INSTALL = "pip install 'cfd3d[gs]' (gsplat>=1.4)"

MAX_ALPHA = 0.99
"""Largest alpha of one Gaussian at one pixel (3DGS)."""
MIN_TRANSMITTANCE = 1e-4
"""Compositing stops before the Gaussian that would bring the transmittance below this."""


@dataclass(frozen=True)
class SplatConfig:
    """The Gaussian rasteriser.

    Attributes:
        shading: default shading (light intensities and placement); the mode can be
            overridden per call.
        normals: also return the normal map when the shading does not need normals.
        normal_source: ``"axes"`` (the Gaussians' shortest axes) or ``"depth"`` (the
            rendered depth's surface); see the module doc.
        near: Gaussians whose centre is closer to the camera plane than this are culled.
        dilation: added to the diagonal of each image covariance, in pixels² (3DGS's
            low-pass filter).
        tile_size: pixels per side of a rasterisation tile; bounds memory only.
        opacity_eps: floor of the opacity in the conditional depth and of the normal's
            length (as in the volume renderer).
        backend: ``"torch"`` (the pure-PyTorch reference), ``"gsplat"`` (gsplat's CUDA
            rasteriser; CUDA devices only) or ``"auto"`` (gsplat on CUDA when it imports,
            else torch); see the module doc.
    """

    shading: ShadingConfig = field(default_factory=ShadingConfig)
    normals: bool = False
    normal_source: NormalSource = "axes"
    near: float = 0.05
    dilation: float = 0.3
    tile_size: int = 8
    opacity_eps: float = 1e-3
    backend: SplatBackend = "auto"

    def __post_init__(self) -> None:
        if self.backend not in SPLAT_BACKENDS:
            raise ConfigError(
                f"unknown splat backend {self.backend!r}; valid: {', '.join(SPLAT_BACKENDS)}"
            )
        if self.normal_source not in NORMAL_SOURCES:
            raise ConfigError(
                f"unknown normal_source {self.normal_source!r}; valid: {', '.join(NORMAL_SOURCES)}"
            )
        if self.near <= 0.0 or self.dilation < 0.0 or self.opacity_eps <= 0.0:
            raise ConfigError("splat near and opacity_eps must be positive, dilation >= 0")
        if isinstance(self.tile_size, bool) or self.tile_size < 1:
            raise ConfigError(f"tile_size must be a positive integer, got {self.tile_size}")


@dataclass(frozen=True)
class Projection:
    """``N`` Gaussians projected into ``B`` views (pixel units, see :mod:`cameras`).

    Attributes:
        means2d: ``(B, N, 2)`` image position ``(column, row)`` of the centres.
        conics: ``(B, N, 3)`` the inverse image covariance as ``(a, b, c)`` of
            ``[[a, b], [b, c]]``.
        depths: ``(B, N)`` camera depth of the centres (positive in front).
        half_extent: ``(B, N, 2)`` half width and height of the box around the cut-off
            ellipse (no gradient).
        radius: ``(B, N)`` 3 σ radius along the major axis (no gradient).
        valid: ``(B, N)`` in front of the near plane and opaque enough to be seen.
    """

    means2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    half_extent: torch.Tensor
    radius: torch.Tensor
    valid: torch.Tensor


@dataclass(frozen=True)
class SplatInfo:
    """Per-Gaussian by-products of a render, for adaptive density control.

    Attributes:
        means2d: ``(B, N, 2)`` projected centres in pixels; after ``backward`` its
            ``grad`` holds the view-space positional gradient (when the render had a graph).
        visible: ``(B, N)`` whether the Gaussian was rasterised in the view.
        radius: ``(B, N)`` 3 σ projected radius as a fraction of the image height.
        height, width: the image size.
    """

    means2d: torch.Tensor
    visible: torch.Tensor
    radius: torch.Tensor
    height: int
    width: int

    def ndc_grad(self) -> torch.Tensor:
        """``(B, N, 2)`` gradient with respect to the centres in NDC units (``[-1, 1]``
        across the image, 3DGS's densification statistic); zeros without a gradient."""
        grad = self.means2d.grad
        if grad is None:
            return torch.zeros_like(self.means2d)
        scale = torch.tensor([0.5 * self.width, 0.5 * self.height], dtype=grad.dtype)
        return grad * scale.to(grad.device)


def project_gaussians(
    means: torch.Tensor,
    covariances: torch.Tensor,
    opacity: torch.Tensor,
    cameras: Cameras,
    height: int,
    width: int,
    near: float = 0.05,
    dilation: float = 0.3,
) -> Projection:
    """EWA projection of ``N`` Gaussians into ``B`` pinhole views.

    Args:
        means: ``(N, 3)`` world centres.
        covariances: ``(N, 3, 3)`` world covariances.
        opacity: ``(N,)`` opacities (for the cut-off ellipse).
        cameras: ``B`` cameras (OpenGL convention).
        height, width: image size in pixels.
        near: cull centres closer than this camera depth.
        dilation: pixels² added to the image covariance's diagonal.

    Returns:
        A :class:`Projection`.
    """
    rotation = cameras.c2w[:, :3, :3].to(means.dtype)
    position = cameras.position.to(means.dtype)
    p_cam = torch.einsum("bni,bij->bnj", means[None] - position[:, None], rotation)
    depth = -p_cam[..., 2]
    valid = depth > near
    z = depth.clamp_min(near)
    focal = cameras.focal(height).to(means.dtype)[:, None]
    tan_y = torch.tan(0.5 * cameras.fovy.to(means.dtype))[:, None]
    tan_x = tan_y * (width / height)
    tx = (p_cam[..., 0] / z).clamp(-1.3 * tan_x, 1.3 * tan_x)
    ty = (p_cam[..., 1] / z).clamp(-1.3 * tan_y, 1.3 * tan_y)
    u = focal * p_cam[..., 0] / z + 0.5 * width
    v = -focal * p_cam[..., 1] / z + 0.5 * height
    zero = torch.zeros_like(z)
    fz = focal / z
    jacobian = torch.stack(
        [
            torch.stack([fz, zero, fz * tx], dim=-1),
            torch.stack([zero, -fz, -fz * ty], dim=-1),
        ],
        dim=-2,
    )  # (B, N, 2, 3), derivative with respect to camera coordinates
    transform = jacobian @ rotation.transpose(1, 2)[:, None]
    cov2d = transform @ covariances[None] @ transform.transpose(-1, -2)
    a = cov2d[..., 0, 0] + dilation
    b = cov2d[..., 0, 1]
    c = cov2d[..., 1, 1] + dilation
    det = (a * c - b * b).clamp_min(1e-12)
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)
    with torch.no_grad():
        cutoff = kernel_cutoff(opacity.detach())[None].expand_as(a)
        valid = valid & (cutoff > 0.0)
        half_extent = torch.sqrt(cutoff.clamp_min(0.0)[..., None] * torch.stack([a, c], -1))
        mid = 0.5 * (a + c)
        radius = 3.0 * torch.sqrt(mid + torch.sqrt((mid * mid - det).clamp_min(0.1)))
    return Projection(
        means2d=torch.stack([u, v], dim=-1),
        conics=conics,
        depths=depth,
        half_extent=half_extent,
        radius=radius,
        valid=valid,
    )


@functools.cache
def gsplat_importable() -> bool:
    """Whether ``import gsplat`` works here (checked once)."""
    try:
        importlib.import_module("gsplat")
    except ImportError:
        return False
    return True


def resolve_backend(
    backend: SplatBackend, device: torch.device | str
) -> Literal["torch", "gsplat"]:
    """The rasteriser that ``backend`` means on ``device``.

    Raises:
        ConfigError: ``"gsplat"`` on a device that is not CUDA, or without gsplat installed.
    """
    cuda = torch.device(device).type == "cuda"
    if backend == "gsplat":
        if not cuda:
            raise ConfigError(
                f"the gsplat splat backend needs a CUDA device, not {device}; use backend "
                "torch or auto"
            )
        if not gsplat_importable():
            raise ConfigError(
                f"the gsplat splat backend needs gsplat: {GSPLAT_INSTALL}; or use backend torch"
            )
        return "gsplat"
    if backend == "auto" and cuda and gsplat_importable():
        return "gsplat"
    return "torch"


def gsplat_cameras(cameras: Cameras, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Our cameras in gsplat's conventions.

    Args:
        cameras: ``B`` cameras (OpenGL camera-to-world: x right, y up, looking down -z).
        height, width: image size in pixels.

    Returns:
        ``(B, 4, 4)`` world-to-camera ``viewmats`` in the OpenCV convention (x right, y
        down, z forward: our camera frame with y and z negated) and ``(B, 3, 3)`` pinhole
        ``Ks`` (focal ``cameras.focal(height)`` on both axes, principal point at the
        image centre ``(width / 2, height / 2)``, pixel ``(i, j)`` centred at
        ``(j + 0.5, i + 0.5)`` as in :func:`project_gaussians`).
    """
    c2w = cameras.c2w.to(torch.float32)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], device=c2w.device))
    viewmats = flip @ torch.linalg.inv(c2w)
    focal = cameras.focal(height).to(torch.float32)
    ks = torch.zeros(len(cameras), 3, 3, device=c2w.device)
    ks[:, 0, 0] = focal
    ks[:, 1, 1] = focal
    ks[:, 0, 2] = 0.5 * width
    ks[:, 1, 2] = 0.5 * height
    ks[:, 2, 2] = 1.0
    return viewmats, ks


def camera_depths(means: torch.Tensor, cameras: Cameras) -> torch.Tensor:
    """``(B, N)`` camera depth (positive in front) of ``(N, 3)`` centres in ``B`` views."""
    forward = -cameras.c2w[:, :3, 2].to(means.dtype)
    position = cameras.position.to(means.dtype)
    return torch.einsum("bni,bi->bn", means[None] - position[:, None], forward)


@dataclass(frozen=True)
class Rasterized:
    """What a backend's rasterisation returns for ``B`` views of ``N`` Gaussians.

    Attributes:
        features: ``(B, H, W, C)`` composited features ``Σ w_i f_i``.
        opacity: ``(B, H, W, 1)`` ``Σ w_i``.
        means2d: ``(B, N, 2)`` projected centres in pixels (retaining its gradient when
            the render has a graph).
        visible: ``(B, N)`` whether each Gaussian was rasterised in each view.
        radius: ``(B, N)`` projected radius in pixels (no gradient).
    """

    features: torch.Tensor
    opacity: torch.Tensor
    means2d: torch.Tensor
    visible: torch.Tensor
    radius: torch.Tensor


def rasterize_gsplat(
    field: GaussianField,
    features: torch.Tensor,
    cameras: Cameras,
    height: int,
    width: int,
    config: SplatConfig,
) -> Rasterized:
    """Stages 1-2 in gsplat's CUDA kernels (``gsplat.rasterization``, classic mode, not
    packed): the same features composited by the same rules as :func:`rasterize`.

    Args:
        field: the Gaussians (on a CUDA device).
        features: ``(B, N, C)`` per-view values to composite.
        cameras: ``B`` cameras.
        height, width: image size.
        config: ``near`` and ``dilation`` (gsplat's ``near_plane`` and ``eps2d``).
    """
    from gsplat import rasterization

    viewmats, ks = gsplat_cameras(cameras, height, width)
    device = field.means.device
    image, alpha, meta = rasterization(
        field.means,
        field.quats,
        field.scales,
        field.opacity,
        features,
        viewmats.to(device),
        ks.to(device),
        width,
        height,
        near_plane=config.near,
        eps2d=config.dilation,
        packed=False,
        render_mode="RGB",
        rasterize_mode="classic",
        channel_chunk=max(32, features.shape[-1]),
    )
    means2d = meta["means2d"]
    if means2d.requires_grad:
        means2d.retain_grad()
    radii = meta["radii"]  # gsplat 1.5: per image axis, a Gaussian counts where both are > 0
    per_axis = radii.ndim == 3
    visible = (radii > 0).all(-1) if per_axis else radii > 0
    radius = (radii.amax(-1) if per_axis else radii).to(features.dtype)
    return Rasterized(image, alpha, means2d, visible, radius)


def _composite_tile(
    pixels: torch.Tensor,
    means2d: torch.Tensor,
    conics: torch.Tensor,
    opacity: torch.Tensor,
    features: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Front-to-back compositing of ``n`` depth-sorted Gaussians at ``P`` pixels.

    Args:
        pixels: ``(P, 2)`` pixel centres.
        means2d, conics, opacity, features: ``(n, 2)``, ``(n, 3)``, ``(n,)``, ``(n, C)``.

    Returns:
        ``(P, C)`` weighted features ``Σ w_i f_i`` and ``(P,)`` opacity ``Σ w_i``.
    """
    d = pixels[:, None, :] - means2d[None]
    a, b, c = conics.unbind(-1)
    power = -0.5 * (a * d[..., 0].square() + c * d[..., 1].square()) - b * d[..., 0] * d[..., 1]
    alpha = (opacity * torch.exp(power.clamp_max(0.0))).clamp_max(MAX_ALPHA)
    alpha = torch.where(alpha >= ALPHA_FLOOR, alpha, torch.zeros_like(alpha))
    log_keep = torch.log1p(-alpha)
    after = torch.cumsum(log_keep, dim=-1)
    live = after >= math.log(MIN_TRANSMITTANCE)
    weights = torch.where(live, alpha * torch.exp(after - log_keep), torch.zeros_like(alpha))
    return weights @ features, weights.sum(dim=-1)


def rasterize(
    projection: Projection,
    opacity: torch.Tensor,
    features: torch.Tensor,
    height: int,
    width: int,
    tile_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Alpha-composite projected Gaussians tile by tile (see the module doc).

    Args:
        projection: from :func:`project_gaussians` (``B`` views, ``N`` Gaussians).
        opacity: ``(N,)`` opacities.
        features: ``(B, N, C)`` per-view values to composite (colour, depth, normal...).
        height, width: image size.
        tile_size: tile side in pixels.

    Returns:
        ``(B, H, W, C)`` composited features ``Σ w_i f_i``, ``(B, H, W, 1)`` opacity and
        ``(B, N)`` whether each Gaussian met a tile of the view.
    """
    n_views, _, channels = features.shape
    dtype, device = features.dtype, features.device
    out_features, out_opacity, visible = [], [], []
    for view in range(n_views):
        means2d, conics = projection.means2d[view], projection.conics[view]
        lo = (projection.means2d[view] - projection.half_extent[view]).detach()
        hi = (projection.means2d[view] + projection.half_extent[view]).detach()
        valid = projection.valid[view]
        depth = torch.where(valid, projection.depths[view].detach(), torch.inf)
        order = torch.sort(depth, stable=True).indices
        order = order[valid[order]]
        seen = torch.zeros(valid.shape, dtype=torch.bool, device=device)
        pixel_index, tile_features, tile_opacity = [], [], []
        for top in range(0, height, tile_size):
            for left in range(0, width, tile_size):
                bottom, right = min(top + tile_size, height), min(left + tile_size, width)
                hit = (
                    (hi[order, 0] >= left + 0.5)
                    & (lo[order, 0] <= right - 0.5)
                    & (hi[order, 1] >= top + 0.5)
                    & (lo[order, 1] <= bottom - 0.5)
                )
                index = order[hit]
                if index.numel() == 0:
                    continue
                seen[index] = True
                rows = torch.arange(top, bottom, device=device)
                cols = torch.arange(left, right, device=device)
                grid_r, grid_c = torch.meshgrid(rows, cols, indexing="ij")
                pixels = torch.stack([grid_c, grid_r], -1).reshape(-1, 2).to(dtype) + 0.5
                values, alpha = _composite_tile(
                    pixels, means2d[index], conics[index], opacity[index], features[view, index]
                )
                pixel_index.append((grid_r * width + grid_c).reshape(-1))
                tile_features.append(values)
                tile_opacity.append(alpha)
        image = features.new_zeros(height * width, channels)
        alpha_image = features.new_zeros(height * width)
        if pixel_index:
            index = torch.cat(pixel_index)
            image = image.index_copy(0, index, torch.cat(tile_features))
            alpha_image = alpha_image.index_copy(0, index, torch.cat(tile_opacity))
        else:  # nothing in view: zeros that still hang on the graph, so backward runs
            image = image + 0.0 * features[view].sum()
        out_features.append(image.view(height, width, channels))
        out_opacity.append(alpha_image.view(height, width, 1))
        visible.append(seen)
    return torch.stack(out_features), torch.stack(out_opacity), torch.stack(visible)


def depth_normals(points: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, 3)`` unit normals of a surface given by per-pixel ``points``
    ``(B, H, W, 3)`` (central differences, one-sided at the border), facing the viewer
    (against the ray ``directions`` ``(B, H, W, 3)``)."""
    d_row, d_col = torch.gradient(points, dim=(1, 2))
    normal = F.normalize(torch.cross(d_row, d_col, dim=-1), dim=-1, eps=1e-12)
    facing = (normal * directions).sum(-1, keepdim=True) > 0.0
    return torch.where(facing, -normal, normal)


class SplatRenderer:
    """Renders a :class:`~cfd3d.scene.gaussians.GaussianField` from a batch of cameras.

    Example::

        renderer = SplatRenderer(SplatConfig())
        out = renderer(gaussians, cameras, 32, 32, shading="diffuse", generator=gen)
        out.rgb  # (B, 32, 32, 3)
    """

    def __init__(self, config: SplatConfig | None = None):
        self.config = config or SplatConfig()

    def __call__(
        self,
        field: GaussianField,
        cameras: Cameras,
        height: int,
        width: int,
        *,
        shading: ShadingMode | ShadingConfig | None = None,
        background: Background | None = None,
        generator: torch.Generator | None = None,
    ) -> RenderOutput:
        """Render ``B = len(cameras)`` views; arguments as for
        :class:`~cfd3d.render.volume.VolumeRenderer` (the generator draws the lights, then
        the background, in the volume renderer's order)."""
        return self.render_with_info(
            field,
            cameras,
            height,
            width,
            shading=shading,
            background=background,
            generator=generator,
        )[0]

    def render_with_info(
        self,
        field: GaussianField,
        cameras: Cameras,
        height: int,
        width: int,
        *,
        shading: ShadingMode | ShadingConfig | None = None,
        background: Background | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[RenderOutput, SplatInfo]:
        """:meth:`__call__` plus the :class:`SplatInfo` density control needs."""
        cfg = self.config
        shading_config = resolve_shading(self.config.shading, shading)
        background = background or SolidBackground()
        want_normals = cfg.normals or shading_config.needs_normals
        origins, directions = cameras.rays(height, width)
        n_views = len(cameras)
        lights = None
        if shading_config.needs_normals:
            lights = light_positions(cameras, shading_config, generator)

        means = field.means
        opacity = field.opacity
        backend = resolve_backend(cfg.backend, means.device)
        projection = None
        if backend == "torch":
            projection = project_gaussians(
                means, field.covariances(), opacity, cameras, height, width, cfg.near, cfg.dilation
            )
            if projection.means2d.requires_grad:
                projection.means2d.retain_grad()
            depths = projection.depths
        else:
            depths = camera_depths(means, cameras)
        position = cameras.position.to(means.dtype)
        view_dirs = F.normalize(means[None] - position[:, None], dim=-1)
        albedo = field.colors(view_dirs)  # (B, N, 3)
        per_gaussian_normals = want_normals and cfg.normal_source == "axes"
        parts = [albedo, depths[..., None]]
        if per_gaussian_normals:
            axes = field.shortest_axes()[None].expand_as(view_dirs)
            facing = (axes * view_dirs).sum(-1, keepdim=True) > 0.0
            normals = torch.where(facing, -axes, axes)
            if shading_config.needs_normals:
                assert lights is not None
                flat = shade(
                    shading_config,
                    albedo.reshape(-1, 3),
                    means[None].expand_as(albedo).reshape(-1, 3),
                    normals.reshape(-1, 3),
                    lights[:, None].expand_as(albedo).reshape(-1, 3),
                )
                parts[0] = flat.view_as(albedo)
            parts.append(normals)
        features = torch.cat(parts, dim=-1)
        if projection is not None:
            image, alpha, seen = rasterize(
                projection, opacity, features, height, width, cfg.tile_size
            )
            raster = Rasterized(
                image, alpha, projection.means2d, seen & projection.valid, projection.radius
            )
        else:
            raster = rasterize_gsplat(field, features, cameras, height, width, cfg)
        image, alpha = raster.features, raster.opacity
        color = image[..., :3]
        # camera depth -> distance along the unit ray: divide by cos θ = 1 / |(x, y, -1)|
        stretch = cameras.pixel_directions(height, width).to(image.dtype).norm(dim=-1)
        depth = image[..., 3:4] * stretch[..., None] / alpha.clamp_min(cfg.opacity_eps)
        normal = None
        if per_gaussian_normals:
            normal = F.normalize(image[..., 4:7], dim=-1, eps=cfg.opacity_eps)
        elif want_normals:
            surface = depth_normals(origins + depth * directions, directions)
            normal = F.normalize(surface * alpha, dim=-1, eps=cfg.opacity_eps)
            if shading_config.needs_normals:
                assert lights is not None
                pixel_lights = lights[:, None, None].expand_as(color)
                shaded = shade(
                    shading_config,
                    color.reshape(-1, 3),
                    (origins + depth * directions).reshape(-1, 3),
                    surface.reshape(-1, 3),
                    pixel_lights.reshape(-1, 3),
                ).view_as(color)
                color = shaded * alpha if shading_config.mode == "textureless" else shaded
        rgb = color + (1.0 - alpha) * background(directions, generator)
        info = SplatInfo(
            means2d=raster.means2d,
            visible=raster.visible,
            radius=raster.radius / height,
            height=height,
            width=width,
        )
        out = RenderOutput(
            rgb=rgb, opacity=alpha, depth=depth, normal=normal if want_normals else None
        )
        assert out.rgb.shape[0] == n_views
        return out, info
