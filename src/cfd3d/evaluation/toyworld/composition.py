"""Judging a distilled two-object composition per object and relation.

What the judge reads from one object (:class:`Composed`): the pixels of each named colour
in the orbit's views (:func:`colour_pixels`, the pixel segmentation of
:mod:`cfd3d.evaluation.toyworld.judges`), each object's crop shown to the probe as a single
object (:func:`object_crops`) and each colour's centroid in the field's 3D geometry
(:func:`colour_centroids`); :func:`judge_composition` turns them into a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from cfd3d.errors import ConfigError
from cfd3d.evaluation.probe import probe_probabilities
from cfd3d.evaluation.toyworld.classifier import (
    COLOR_NAMES,
    PROBE_SHAPES,
    PROBE_SHARPNESS,
    PROBE_SIZE,
    LabelledImages,
    Probe,
    train_probe,
    vote,
)
from cfd3d.evaluation.toyworld.judges import (
    FOREGROUND,
    MAX_RESIDUAL,
    MIN_PIXELS,
    segment,
    shade_residual,
)
from cfd3d.evaluation.toyworld.prompts import Composition
from cfd3d.evaluation.toyworld.setting import (
    DISTANCE,
    ELEVATION,
    EVAL_SIZE,
    FOVY,
    HEADLIGHT,
    MESH_IOU_RESOLUTION,
)
from cfd3d.export.mesh import auto_threshold, cell_centres
from cfd3d.priors.embedded.world import BASIC_SHAPES, SOFT_SEED
from cfd3d.render.volume import RendererConfig, VolumeRenderer
from cfd3d.scene.cameras import spherical_cameras
from cfd3d.scene.toy import COLORS, COMPOSITION_SCALE, RELATIONS, pair, softened

MIN_SEPARATION = 0.05
"""World units by which a composition's centroids must be ordered (the true pairs are
0.14-0.6 apart; a smear of both colours is not a relation)."""
MIN_CELLS = 8
"""Surface cells a colour needs in the field for its centroid to count."""
CROP_VIEWS = (1500, 400)
"""Ground-truth pair views of the crop probe's training and test crops (about two crops a
view). With 1500 the probe names the shapes of 94.7 % of 798 held-out truth crops (400
views), against 77.9 % for the probe of single renders alone; rendering them takes about 2
minutes on one CPU thread. Trained on crisp crops only it named 71 % of crops whose
surfaces are as soft as 0.015 and 50 % at 0.03; trained across :data:`PROBE_SHARPNESS`
(20 epochs), 97.0 % crisp, 95.1 % at 0.015, 88.7 % at 0.03 (session 23)."""
CROP_SEED = 5000
"""Crop views use seeds ``CROP_SEED + 2 * seed`` (train) and ``+ 1`` (test)."""
CROP_ELEVATIONS = (ELEVATION - 15.0, ELEVATION + 15.0)
"""Elevations (degrees) of the ground-truth pair views the crop probe learns from: the
evaluation orbit's, with room either side."""


@dataclass(frozen=True)
class Composed:
    """What :func:`judge_composition` reads from one object (a result or the truth).

    Attributes:
        pixels: ``(2, V)`` pixels of each named colour in each orbit view (32² headlit,
            :func:`~cfd3d.evaluation.toyworld.judges.segment`).
        crops: ``(2, V, 3, 32, 32)`` each object's crop per view (:func:`object_crops`).
        centroids: ``(2, 3)`` centroid of each colour's surface cells in the field
            (:func:`colour_centroids`), NaN where it has fewer than :data:`MIN_CELLS`.
    """

    pixels: torch.Tensor
    crops: torch.Tensor
    centroids: torch.Tensor


def colour_pixels(images: torch.Tensor, colors: tuple[str, str]) -> torch.Tensor:
    """``(2, V)`` pixels that each of ``colors`` explains best (among all named colours) in
    each of ``(V, 3, H, W)`` images."""
    labels = segment(images)
    return torch.stack([(labels == COLOR_NAMES.index(c)).sum(dim=(1, 2)) for c in colors])


def object_crops(images: torch.Tensor, colors: tuple[str, str]) -> torch.Tensor:
    """Each object of a composition cut out of its renders and shown as the probe sees a
    single object.

    Every foreground pixel goes to the one of the two ``colors`` that explains it better
    as a shaded albedo. An object's core is its pixels that its colour explains within
    ``MAX_RESIDUAL``; its crop keeps the core and the pixels next to it (the blended rim),
    on white, centred on the core's bounding box (stray edge pixels of the other object
    neither count nor show), in a window of ``COMPOSITION_SCALE`` times the image (a
    pair's primitives are that much smaller than a single one), resized to the probe's 32².

    Args:
        images: ``(V, 3, S, S)`` renders in [0, 1] on white.
        colors: the first and the second object's colour.

    Returns:
        ``(2, V, 3, 32, 32)`` crops, 8-bit quantised; all white where an object has no pixel.
    """
    palette = torch.tensor([COLORS[c] for c in colors], dtype=images.dtype)
    residual, nearer = shade_residual(images, palette).min(dim=-1)  # (V, S, S)
    foreground = (1.0 - images).amax(dim=1) > FOREGROUND
    size = images.shape[-1]
    window = max(1, round(size * COMPOSITION_SCALE))
    out = torch.ones(2, images.shape[0], 3, PROBE_SIZE, PROBE_SIZE, dtype=images.dtype)
    for k in range(2):
        mine = foreground & (nearer == k)
        core = mine & (residual < MAX_RESIDUAL)
        near_core = F.max_pool2d(core[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0
        for v in range(images.shape[0]):
            if not bool(core[v].any()):
                continue
            mask = mine[v] & near_core[v]
            rows = core[v].any(dim=1).nonzero()[:, 0]
            cols = core[v].any(dim=0).nonzero()[:, 0]
            top = round((int(rows[0]) + int(rows[-1]) + 1 - window) / 2)
            left = round((int(cols[0]) + int(cols[-1]) + 1 - window) / 2)
            padded = F.pad(torch.where(mask, images[v], 1.0), (window,) * 4, value=1.0)
            crop = padded[:, top + window : top + 2 * window, left + window : left + 2 * window]
            if window != PROBE_SIZE:
                crop = F.interpolate(
                    crop[None], size=(PROBE_SIZE, PROBE_SIZE), mode="bilinear", antialias=True
                )[0]
            out[k, v] = (crop.clamp(0, 1) * 255).round() / 255.0
    return out


@torch.no_grad()
def colour_centroids(
    field: torch.nn.Module,
    colors: tuple[str, str],
    bound: float,
    device: torch.device,
    resolution: int = MESH_IOU_RESOLUTION,
) -> torch.Tensor:
    """``(2, 3)`` centroids of the surface cells of ``field`` whose albedo is nearest each
    of ``colors`` among the named colours.

    The field is sampled at the cell centres of a ``resolution``³ grid over
    ``[-bound, bound]³``; a cell is occupied above the mesh export's automatic density
    level (:func:`cfd3d.export.mesh.auto_threshold`) and on the surface when one of its 26
    neighbours is not (cells outside the grid are empty). A colour with fewer than
    :data:`MIN_CELLS` cells gets NaN. ``field`` is evaluated on ``device``.
    """
    axis = torch.as_tensor(cell_centres(resolution, bound), dtype=torch.float32)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    density, albedo = [], []
    for chunk in points.split(65536):
        out = field(chunk.to(device))
        density.append(out.density.reshape(-1).float().cpu())
        albedo.append(out.albedo.float().cpu())
    grid = torch.cat(density).reshape((resolution,) * 3)
    centroids = torch.full((2, 3), float("nan"))
    try:
        level = auto_threshold(grid.double().numpy())
    except ConfigError:  # an empty field: no surface, no centroid
        return centroids
    empty = F.pad((grid <= level).float()[None, None], (1,) * 6, value=1.0)
    surface = (grid > level) & (F.max_pool3d(empty, 3, stride=1)[0, 0] > 0)
    palette = torch.tensor(list(COLORS.values()))
    nearest = torch.cdist(torch.cat(albedo), palette).argmin(dim=-1).reshape(grid.shape)
    for k, color in enumerate(colors):
        cells = surface & (nearest == list(COLORS).index(color))
        if int(cells.sum()) >= MIN_CELLS:
            centroids[k] = points[cells.reshape(-1)].mean(dim=0)
    return centroids


def relation_holds(centroids: torch.Tensor, relation: str) -> bool:
    """Is the first centroid ``relation`` the second: at least :data:`MIN_SEPARATION`
    higher (+z) for ``"on"``, that far to the left seen from the front (-y) for
    ``"next_to"``? False where either is NaN."""
    first, second = centroids
    gap = first[2] - second[2] if relation == "on" else second[1] - first[1]
    return bool(gap >= MIN_SEPARATION)


def crop_data(
    n_views: int,
    seed: int,
    size: int = EVAL_SIZE,
    sharpness: tuple[float, float] | None = PROBE_SHARPNESS,
) -> LabelledImages:
    """Crops (:func:`object_crops`) of ground-truth pairs, labelled with each object's colour
    and shape: what the composition judge shows the probe, from truth it has never judged.

    Each of ``n_views`` views shows a random pair of basic shapes in two different colours
    and a random relation, seen as the evaluation orbit sees (its distance and field of
    view, headlit, ``size``² and 8-bit) from a random azimuth and an elevation in
    :data:`CROP_ELEVATIONS`, its surface from crisp to soft (``sharpness``, as the
    probe's single renders: :data:`PROBE_SHARPNESS`; ``None``: the world's crisp one; the
    pairs and cameras are the same whatever it is); an object whose colour covers fewer
    than :data:`MIN_PIXELS` pixels there (hidden behind the other) gives no crop.
    """
    gen = torch.Generator().manual_seed(seed)
    soft_gen = torch.Generator().manual_seed(seed + SOFT_SEED)
    renderer = VolumeRenderer(RendererConfig(n_samples=64))
    colors = list(COLORS)

    def pick(options) -> str:
        return options[int(torch.randint(0, len(options), (), generator=gen))]

    crops, color_labels, shape_labels = [], [], []
    for _ in range(n_views):
        ca, cb = pick(colors), pick(colors)
        while cb == ca:
            cb = pick(colors)
        sa, sb = pick(BASIC_SHAPES), pick(BASIC_SHAPES)
        scene = pair(ca, sa, pick(list(RELATIONS)), cb, sb)
        if sharpness is not None:
            scene = softened(scene, sharpness, soft_gen)
        azimuth = 360.0 * torch.rand(1, generator=gen)
        low, high = CROP_ELEVATIONS
        elevation = low + (high - low) * torch.rand(1, generator=gen)
        one = torch.ones(1)
        camera = spherical_cameras(azimuth, elevation, DISTANCE * one, FOVY * one)
        with torch.no_grad():
            rgb = renderer(scene, camera, size, size, shading=HEADLIGHT).rgb
        image = (rgb.clamp(0, 1) * 255).round().permute(0, 3, 1, 2) / 255.0
        seen = colour_pixels(image, (ca, cb))[:, 0]
        pieces = object_crops(image, (ca, cb))[:, 0]
        for k, (color, shape) in enumerate(((ca, sa), (cb, sb))):
            if int(seen[k]) >= MIN_PIXELS:
                crops.append(pieces[k])
                color_labels.append(COLOR_NAMES.index(color))
                shape_labels.append(PROBE_SHAPES.index(shape))
    return LabelledImages(
        torch.stack(crops), torch.tensor(color_labels), torch.tensor(shape_labels)
    )


def train_crop_probe(
    singles: LabelledImages, crops: LabelledImages, epochs: int, seed: int
) -> Probe:
    """The composition judge's probe: trained on ground-truth single renders and pair crops
    (:func:`crop_data`) together. A probe of single renders alone reads an object that the
    other half hides or crowds (a sphere under a cube) as another shape: on the shipped
    world's truth it named both shapes of only 7 of 8 pairs."""
    data = LabelledImages(
        torch.cat([singles.images, crops.images]),
        torch.cat([singles.color, crops.color]),
        torch.cat([singles.shape, crops.shape]),
    )
    return train_probe(data, epochs, seed)


def judge_composition(composed: Composed, composition: Composition, probe: torch.nn.Module) -> dict:
    """The verdict on one composition result (or its truth): ``present`` and ``shape``
    per object, ``relation``, ``relation_swapped`` (would the swapped relation hold?),
    ``comp_right`` (everything right) and ``shapes_seen`` (the probe's majority per object
    over the visible views, a tie to the likelier shape: :func:`vote`)."""
    visible = composed.pixels >= MIN_PIXELS  # (2, V)
    present = [bool(v.sum() * 2 >= v.numel()) for v in visible]
    shape, seen = [], []
    for k in range(2):
        if not bool(visible[k].any()):
            shape.append(False)
            seen.append(None)
            continue
        _, shapes = probe_probabilities(probe, composed.crops[k][visible[k]])
        name = PROBE_SHAPES[vote(shapes)]
        seen.append(name)
        shape.append(present[k] and name == composition.shapes[k])
    relation = relation_holds(composed.centroids, composition.relation)
    return {
        "present": present,
        "shape": shape,
        "relation": relation,
        "relation_swapped": relation_holds(composed.centroids.flip(0), composition.relation),
        "comp_right": all(present) and all(shape) and relation,
        "shapes_seen": seen,
    }


def verdict_text(verdict: dict) -> str:
    """One line of a composition's verdict, e.g. "wrong: colours yes/yes, shapes cube/cone,
    relation no"."""
    yes = ["yes" if v else "no" for v in verdict["present"]]
    seen = [name or "-" for name in verdict["shapes_seen"]]
    relation = "yes" if verdict["relation"] else "no"
    right = "right" if verdict["comp_right"] else "wrong"
    return f"{right}: colours {'/'.join(yes)}, shapes {'/'.join(seen)}, relation {relation}"
