"""An object seen by the toy-world evaluation, and the measures on what is seen.

:func:`look` renders a distilled field or a ground-truth scene (:func:`truth_scene`) into
:class:`Views`: albedo and opacity from the evaluation orbit
(:mod:`cfd3d.evaluation.toyworld.setting`), headlit renders for the probe, views drawn as
the prior's training images are (:func:`world_views`) and the figure's tile. On them:
:func:`mask_iou`, :func:`mean_color`, :func:`diversity`, the head's :func:`face_by_view`
and a torus's hole (:func:`hole_pixels`); on the exported mesh, :func:`mesh_iou`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from cfd3d.errors import UserError
from cfd3d.evaluation.toyworld.composition import (
    Composed,
    colour_centroids,
    colour_pixels,
    object_crops,
)
from cfd3d.evaluation.toyworld.prompts import Composition, Prompt
from cfd3d.evaluation.toyworld.setting import (
    ALBEDO,
    EVAL_SIZE,
    HEADLIGHT,
    MESH_IOU_RESOLUTION,
    WORLD_VIEW_SEED,
    WORLD_VIEWS,
    evaluation_cameras,
    overhead_camera,
)
from cfd3d.export.mesh import occupancy_grid, volumetric_iou
from cfd3d.export.video import to_uint8
from cfd3d.generate.outputs import run_mesh
from cfd3d.generate.run import Run
from cfd3d.priors.base import Prior
from cfd3d.priors.embedded.prior import EmbeddedPrior
from cfd3d.priors.embedded.world import WORLD_SHADING, WorldConfig
from cfd3d.render import ShadingConfig, SolidBackground
from cfd3d.scene.cameras import Cameras
from cfd3d.scene.gaussians import GaussianField
from cfd3d.scene.sampling import sample_cameras
from cfd3d.scene.toy import COLORS, ToyScene, single


@dataclass(frozen=True)
class Views:
    """One object seen from the evaluation cameras.

    Attributes:
        albedo: ``(V, S, S, 3)`` albedo renders on white, ``S`` = :data:`EVAL_SIZE`.
        opacity: ``(V, S, S)`` opacity.
        probe: ``(V, 3, 32, 32)`` headlit renders at the world's size, 8-bit quantised.
        world: ``(W, 3, 32, 32)`` renders drawn as the prior's training images are (its
            cameras, lighting and share of flat albedo; :func:`world_views`), 8-bit
            quantised: what the probe metrics compare with the prior's own samples.
        figure: ``(F, F, 3)`` uint8 headlit front-right view.
        overhead: ``(S, S)`` opacity seen from straight above (:func:`hole_pixels` reads
            a torus's hole in it).
        composed: what the composition judge reads (compositions only).
    """

    albedo: torch.Tensor
    opacity: torch.Tensor
    probe: torch.Tensor
    world: torch.Tensor
    figure: np.ndarray
    overhead: torch.Tensor | None = None
    composed: Composed | None = None


def renderer_for(run: Run, field: object):
    """The run's rasteriser for its Gaussians, its volume renderer for anything else (a
    voxel grid, a NeRF, a ground-truth scene)."""
    if isinstance(field, GaussianField) and run.splatter is not None:
        return run.splatter
    return run.renderer


def world_of(prior: Prior) -> WorldConfig:
    """The toy world ``prior`` was trained on.

    Raises:
        UserError: ``prior`` is not the embedded prior (the only one with a toy world).
    """
    if not isinstance(prior, EmbeddedPrior):
        raise UserError("toyworld.py distils the embedded prior; pass its --weights")
    return prior.world


@torch.no_grad()
def world_views(run: Run, field: torch.nn.Module, seed: int, world: WorldConfig) -> torch.Tensor:
    """``(WORLD_VIEWS, 3, 32, 32)`` renders of ``field`` made the way ``world`` makes the
    prior's training images (:func:`cfd3d.priors.embedded.world.render_world`): cameras
    from its camera distribution, the toy world's random point light, flat albedo in its
    share of images, on white; quantised to 8 bits as the prior's samples are.

    The probe metrics compare these with the prior's samples, so both sides are single
    images drawn alike; deterministic for a ``seed``.
    """
    gen = torch.Generator().manual_seed(WORLD_VIEW_SEED + seed)
    cameras = sample_cameras(world.cameras, WORLD_VIEWS, gen)
    albedo = torch.rand(WORLD_VIEWS, generator=gen) < world.p_albedo
    out = torch.empty((WORLD_VIEWS, 3, 32, 32))
    for flat, shading in ((False, WORLD_SHADING), (True, ALBEDO)):
        index = (albedo == flat).nonzero()[:, 0]
        if len(index) == 0:
            continue
        rgb = renderer_for(run, field)(
            field,
            cameras[index].to(run.device),
            32,
            32,
            shading=shading,
            background=SolidBackground(),
            generator=torch.Generator(run.device).manual_seed(WORLD_VIEW_SEED + seed),
        ).rgb
        out[index] = rgb.clamp(0, 1).permute(0, 3, 1, 2).cpu()
    return (out * 255).round() / 255.0


@torch.no_grad()
def look(
    run: Run,
    field: torch.nn.Module,
    size: int,
    seed: int,
    world: WorldConfig,
    composition: Composition | None = None,
) -> Views:
    """Render ``field`` (the run's, or a ground-truth scene) with the run's renderer;
    ``seed`` chooses the world views' cameras (:func:`world_views`); for a ``composition``
    also what its judge reads (:class:`Composed`)."""
    cameras, figure_camera = evaluation_cameras()
    device = run.device
    white = SolidBackground()

    def render(cams: Cameras, px: int, shading: ShadingConfig):
        renderer = renderer_for(run, field)
        return renderer(field, cams.to(device), px, px, shading=shading, background=white)

    albedo = render(cameras, size, ALBEDO)
    overhead = render(overhead_camera(), size, ALBEDO).opacity[0, ..., 0].cpu()
    probe = render(cameras, 32, HEADLIGHT).rgb.clamp(0, 1).permute(0, 3, 1, 2)
    probe = ((probe * 255).round() / 255.0).cpu()
    figure = render(figure_camera, size, HEADLIGHT).rgb
    composed = None
    if composition is not None:
        shaded = render(cameras, size, HEADLIGHT).rgb.clamp(0, 1).permute(0, 3, 1, 2).cpu()
        composed = Composed(
            pixels=colour_pixels(probe, composition.colors),
            crops=object_crops((shaded * 255).round() / 255.0, composition.colors),
            centroids=colour_centroids(
                field, composition.colors, run.config.field_bound, run.device
            ),
        )
    return Views(
        albedo=albedo.rgb.clamp(0, 1).cpu(),
        opacity=albedo.opacity[..., 0].cpu(),
        probe=probe,
        world=world_views(run, field, seed, world),
        figure=to_uint8(figure.cpu())[0],
        overhead=overhead,
        composed=composed,
    )


def mask_iou(views: Views, truth: Views) -> float:
    """IoU of opacity > 0.5, pooled over the orbit's pixels."""
    a, b = views.opacity > 0.5, truth.opacity > 0.5
    union = int((a | b).sum())
    return float((a & b).sum()) / union if union else 1.0


def mean_color(views: Views) -> torch.Tensor | None:
    """``(3,)`` mean albedo over the object's mask (opacity > 0.5), or ``None`` if empty.

    A render on white is ``c_premultiplied + (1 - a)``, so the albedo is
    ``(rgb - (1 - a)) / a``.
    """
    a = views.opacity[..., None]
    mask = views.opacity > 0.5
    if not bool(mask.any()):
        return None
    albedo = (views.albedo - (1.0 - a)) / a.clamp_min(1e-6)
    return albedo[mask].mean(dim=0)


def hole_pixels(opacity: torch.Tensor) -> int:
    """Background pixels (opacity ≤ 0.5) of one ``(S, S)`` view that the object encloses:
    those no 4-connected path of background pixels joins to the image's border. Seen from
    straight above (:attr:`Views.overhead`), a torus's hole; 0 for a disc or a bowl."""
    background = opacity <= 0.5
    reached = torch.zeros_like(background)
    reached[0, :], reached[-1, :], reached[:, 0], reached[:, -1] = (
        background[0, :],
        background[-1, :],
        background[:, 0],
        background[:, -1],
    )
    while True:
        grown = reached.clone()
        grown[1:] |= reached[:-1]
        grown[:-1] |= reached[1:]
        grown[:, 1:] |= reached[:, :-1]
        grown[:, :-1] |= reached[:, 1:]
        grown &= background
        if torch.equal(grown, reached):
            return int((background & ~reached).sum())
        reached = grown


def diversity(views: list[Views]) -> float:
    """Mean pairwise RMS distance between the albedo orbit renders (0 for one result)."""
    if len(views) < 2:
        return 0.0
    return _mean_off_diagonal(_rms_distances(views))


def diversity_se(views: list[Views]) -> float | None:
    """The jackknife standard error of :func:`diversity` over the results (leave one
    result out, ``sqrt((n - 1) / n * sum((d_i - mean d_i)^2))``); ``None`` below three
    results. With eight seeds a prompt it is 0.02-0.05 on the toy world, so a difference
    of diversity between two configurations smaller than that is within the seeds' noise."""
    n = len(views)
    if n < 3:
        return None
    distances = _rms_distances(views)
    # without result i the pairs' sum loses row i twice (the matrix is symmetric)
    leave_one_out = (distances.sum() - 2.0 * distances.sum(axis=1)) / ((n - 1) * (n - 2))
    spread = ((leave_one_out - leave_one_out.mean()) ** 2).sum()
    return float(np.sqrt((n - 1) / n * spread))


def _rms_distances(views: list[Views]) -> np.ndarray:
    """The symmetric matrix of RMS distances between the albedo renders of ``views``."""
    n = len(views)
    distances = np.zeros((n, n))
    for i, j in itertools.combinations(range(n), 2):
        d = float((views[i].albedo - views[j].albedo).square().mean().sqrt())
        distances[i, j] = distances[j, i] = d
    return distances


def _mean_off_diagonal(distances: np.ndarray) -> float:
    n = len(distances)
    return float(distances.sum() / (n * (n - 1)))


def truth_scene(prompt: Prompt | Composition, world: WorldConfig) -> ToyScene:
    """The ground truth of a fully named prompt in ``world`` (a head wears its face)."""
    if isinstance(prompt, Composition):
        return prompt.scene()
    return single(str(prompt.color), str(prompt.shape), world.face_rgb)


YAW_PERIOD_DEG = 90.0
"""Turns about the vertical axis the toy world's prior cannot tell apart. Every primitive
looks the same every 90° about +z (a cube) or at every angle (the round ones), training
cameras are drawn at uniform azimuths with the light placed around the camera, and a view
phrase covers 90° of azimuth (front and back ±45°, the two sides 90° each, overhead all):
so the images of "a red cube, front view" are the same for a cube turned by any angle,
and a distilled cube is right at any yaw."""


def yaw_aligned_iou(
    occupied: np.ndarray, truth: ToyScene, bound: float, coarse_deg: float = 5.0
) -> tuple[float, float]:
    """The best volumetric IoU between an ``occupied`` grid (of :mod:`cfd3d.export.mesh`)
    and ``truth`` turned about the vertical axis by an angle in ``[0,``
    :data:`YAW_PERIOD_DEG` ``)``, and that angle: every ``coarse_deg`` degrees, then every
    degree within ``coarse_deg`` of the best."""

    def iou(yaw: float) -> float:
        return volumetric_iou(occupied, truth.occupancy(occupied.shape[0], bound, yaw))

    scores = {float(a): iou(float(a)) for a in np.arange(0.0, YAW_PERIOD_DEG, coarse_deg)}
    best = max(scores, key=scores.__getitem__)
    for a in np.arange(best - coarse_deg + 1.0, best + coarse_deg):
        yaw = float(a) % YAW_PERIOD_DEG
        if yaw not in scores:
            scores[yaw] = iou(yaw)
    best = max(scores, key=scores.__getitem__)
    return float(scores[best]), best


def mesh_iou(run: Run, truth: ToyScene) -> tuple[float, float]:
    """Volumetric IoU at :data:`MESH_IOU_RESOLUTION`³ between the mesh that ``cfd3d
    generate`` would export for ``run`` and the ground-truth solid (0 without a mesh):
    ``(up to yaw, as placed)``, the first the best over the turns the prior cannot tell
    apart (:data:`YAW_PERIOD_DEG`, :func:`yaw_aligned_iou`), the second against the solid
    as the world places it (faces along the axes)."""
    mesh, _ = run_mesh(run)
    if mesh is None:
        return 0.0, 0.0
    bound = run.config.field_bound
    occupied = occupancy_grid(mesh, MESH_IOU_RESOLUTION, bound)
    placed = volumetric_iou(occupied, truth.occupancy(MESH_IOU_RESOLUTION, bound))
    aligned, _ = yaw_aligned_iou(occupied, truth, bound)
    return aligned, placed


FACE_TOLERANCE = 0.2
"""Largest RGB distance from the face colour of a pixel counted as face."""


def true_head(color: str, world: WorldConfig) -> ToyScene:
    """The ground truth of "a {color} head" in ``world``: its face in the world's colour."""
    return single(color, "head", world.face_rgb)


def face_by_view(
    albedo: torch.Tensor, opacity: torch.Tensor, color: str, face_rgb: tuple[float, float, float]
) -> list[float]:
    """Share of face pixels (albedo ``face_rgb``) among the object's pixels, per view of
    ``(V, S, S, 3)`` albedo renders on white with ``(V, S, S)`` opacity.

    A pixel is face when its un-premultiplied albedo is nearer ``face_rgb`` than the
    head's ``color`` and within :data:`FACE_TOLERANCE` of it; the object's pixels are
    those with opacity > 0.5.
    """
    a = opacity[..., None].clamp_min(1e-6)
    rgb = (albedo - (1.0 - opacity[..., None])) / a  # un-premultiply (white background)
    face, body = torch.tensor(face_rgb), torch.tensor(COLORS[color])
    to_face = (rgb - face).norm(dim=-1)
    is_face = (to_face < FACE_TOLERANCE) & (to_face < (rgb - body).norm(dim=-1))
    mask = opacity > 0.5
    counts = mask.flatten(1).sum(1).clamp_min(1)
    return ((is_face & mask).flatten(1).sum(1) / counts).tolist()


def faces(run: Run, field: torch.nn.Module, color: str, world: WorldConfig) -> list[float]:
    """:func:`face_by_view` of ``field`` seen from the evaluation orbit, with ``world``'s
    face colour."""
    views = look(run, field, EVAL_SIZE, run.config.seed, world)
    return face_by_view(views.albedo, views.opacity, color, world.face_rgb)
