"""Pixel judges of toy-world images, and the ground-truth renders that check them.

Every judge reads pixels alone, without any ground truth of the image it judges: each
pixel is fit as a shaded albedo of the named colours (:func:`shade_residual`,
:func:`segment`), and the judge counts and places the pixels of each colour. Used on the
embedded prior's samples (``benchmarks/toy_prior.py``: is X on top of / next to Y
(:func:`judge_relation`), does a head show its face (:func:`face_share`)) and on the
orbit renders of distilled compositions (:mod:`cfd3d.evaluation.toyworld.composition`).
:func:`render_pairs` and :func:`render_heads` render the true scenes from a world's
cameras, so that each judge can itself be judged on ground truth.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from cfd3d.evaluation.toyworld.classifier import COLOR_NAMES, PROBE_SIZE, quantise
from cfd3d.priors.embedded.world import WORLD_SHADING, WorldConfig
from cfd3d.render.volume import RendererConfig, VolumeRenderer
from cfd3d.scene.sampling import CameraSamplerConfig, ViewLabelConfig, sample_cameras
from cfd3d.scene.toy import COLORS, RELATIONS, pair, single

RELATION_SPECS: tuple[tuple[str, str, str, str, str], ...] = (
    ("red", "cube", "on", "blue", "sphere"),
    ("yellow", "sphere", "on", "green", "cube"),
    ("cyan", "cone", "on", "orange", "cylinder"),
    ("pink", "sphere", "on", "blue", "torus"),
    ("blue", "cube", "next_to", "yellow", "cylinder"),
    ("green", "sphere", "next_to", "red", "cone"),
    ("purple", "cylinder", "next_to", "cyan", "capsule"),
    ("orange", "torus", "next_to", "blue", "sphere"),
)
"""(colour, shape, relation, colour, shape): the colours of a pair are far apart even when
shaded (no red/pink, orange/brown, gray), so that the pixel segmentation can tell them."""

VIEW_LABELS = ViewLabelConfig()
"""The view phrases' sectors, as the toy world's captions use them."""
FACE_COLORS: tuple[str, ...] = ("red", "blue", "green", "purple")
"""Head colours of the face test: far from the face's own colour even when shaded."""
FACE_SHARE = 0.1
"""A head shows its face when the face colour explains at least this share of its pixels
(ground truth from front-sector training cameras: 0.08-0.8, mostly 0.2-0.5; from the back
sector: 0)."""

FOREGROUND = 0.25
"""A pixel is foreground when some channel is this far below the white background."""
SHADE_RANGE = (0.3, 1.15)
"""Brightness factors a shaded albedo may have (ambient 0.35 to fully lit, with slack)."""
MAX_RESIDUAL = 0.2
"""Pixels that no named colour explains better than this (RGB distance) are ignored."""
MIN_PIXELS = 6
"""Pixels a colour must cover to count as present (a pair's torus seen edge-on covers ~15)."""


def sector_cameras(world: WorldConfig, view: str) -> CameraSamplerConfig:
    """The world's cameras restricted to the views its captions call ``view`` ("front" or
    "back"): azimuth within the sector, elevation at most the overhead threshold."""
    width = VIEW_LABELS.front_deg if view == "front" else VIEW_LABELS.back_deg
    centre = 0.0 if view == "front" else 180.0
    low, high = world.cameras.elevation_deg
    high = min(high, VIEW_LABELS.overhead_deg)
    return replace(
        world.cameras,
        azimuth_deg=(centre - width, centre + width),
        elevation_deg=(min(low, high), high),
    )


def names_front(spec: tuple[str, str, str, str, str], world: WorldConfig) -> bool:
    """Does the composition's prompt name the front view? Always for "next to" (defined
    from the front); for "on" when the world's cameras reach overhead views, from which
    "above" is not "higher in the image"."""
    return spec[2] == "next_to" or world.cameras.elevation_deg[1] > VIEW_LABELS.overhead_deg


def relation_prompt(spec: tuple[str, str, str, str, str], world: WorldConfig) -> str:
    """The caption of a composition, with ", front view" where :func:`names_front`."""
    return pair(*spec).caption() + (", front view" if names_front(spec, world) else "")


def shade_residual(images: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """``(N, H, W, K)`` distance of every pixel from each of ``K`` albedos ``(K, 3)`` seen
    as a shaded albedo: ``|p - k c|`` with the least-squares brightness ``k = <p, c> /
    <c, c>`` clamped to :data:`SHADE_RANGE`, for ``(N, 3, H, W)`` images in [0, 1]."""
    p = images.permute(0, 2, 3, 1)[..., None, :]  # (N, H, W, 1, 3)
    k = ((p * palette).sum(-1) / (palette * palette).sum(-1)).clamp(*SHADE_RANGE)
    return (p - k[..., None] * palette).norm(dim=-1)


def segment(images: torch.Tensor) -> torch.Tensor:
    """Label every pixel with the named colour that best explains it as a shaded albedo.

    A lit toy-world pixel is ``k * albedo`` with ``k`` in ``[ambient, 1]``
    (:data:`~cfd3d.priors.embedded.world.WORLD_SHADING`), on white. Each colour ``c`` is fit
    by the least-squares brightness ``k = <p, c> / <c, c>`` (clamped to
    :data:`SHADE_RANGE`); the pixel takes the colour with the smallest residual
    ``|p - k c|``.

    Args:
        images: ``(N, 3, H, W)`` in [0, 1].

    Returns:
        ``(N, H, W)`` long: an index into :data:`COLOR_NAMES`, or -1 for background and
        pixels no colour explains within :data:`MAX_RESIDUAL`.
    """
    palette = torch.tensor(list(COLORS.values()), dtype=images.dtype)  # (K, 3)
    best, label = shade_residual(images, palette).min(dim=-1)
    foreground = (1.0 - images).amax(dim=1) > FOREGROUND
    return torch.where(foreground & (best < MAX_RESIDUAL), label, torch.full_like(label, -1))


def judge_relation(images: torch.Tensor, color_a: str, relation: str, color_b: str) -> torch.Tensor:
    """``(N,)`` bool: do the images show ``color_a`` ``relation`` ``color_b``?

    Both colours must cover at least :data:`MIN_PIXELS` pixels; then for ``"on"`` the mean
    row of ``color_a`` must lie above (smaller row) that of ``color_b``, for ``"next_to"``
    its mean column to the left (smaller column).
    """
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}")
    labels = segment(images)
    n, h, w = labels.shape
    rows = torch.arange(h, dtype=torch.float32)[None, :, None].expand(n, h, w)
    cols = torch.arange(w, dtype=torch.float32)[None, None, :].expand(n, h, w)
    coord = rows if relation == "on" else cols
    centres, present = [], []
    for name in (color_a, color_b):
        mask = (labels == COLOR_NAMES.index(name)).float()
        count = mask.sum(dim=(1, 2))
        present.append(count >= MIN_PIXELS)
        centres.append((coord * mask).sum(dim=(1, 2)) / count.clamp_min(1.0))
    return present[0] & present[1] & (centres[0] < centres[1])


def face_share(
    images: torch.Tensor, color: str, face_rgb: tuple[float, float, float]
) -> torch.Tensor:
    """``(N,)`` share of a head's pixels showing its face, in ``(N, 3, H, W)`` images.

    Every pixel is fit as a shaded albedo (as in :func:`segment`) by the head's colour and
    by the face's (``face_rgb``, the world's); the head is the pixels the head's
    colour explains best (within :data:`MAX_RESIDUAL`), the face the pixels the face colour
    explains best. A face as pale as the background (no channel :data:`FOREGROUND` below
    white) counts only where head pixels lie on both sides along its row or its column, so
    it counts where the head surrounds it and the background around a ball does not; a
    darker face counts wherever it shows (it reaches the silhouette in views from above).
    0 where the head covers fewer than :data:`MIN_PIXELS` pixels.
    """
    palette = torch.tensor([COLORS[color], face_rgb], dtype=images.dtype)  # (2, 3)
    best, label = shade_residual(images, palette).min(dim=-1)
    explained = best < MAX_RESIDUAL
    head = explained & (label == 0)

    def between(mask: torch.Tensor, dim: int) -> torch.Tensor:
        """Pixels with some ``mask`` pixel on both sides along ``dim``."""
        before = mask.int().cummax(dim=dim).values.bool()
        after = mask.flip(dim).int().cummax(dim=dim).values.bool().flip(dim)
        return before & after

    face = explained & (label == 1)
    if max(1.0 - c for c in face_rgb) <= FOREGROUND:
        face &= between(head, 1) | between(head, 2)
    n_head, n_face = head.sum(dim=(1, 2)).float(), face.sum(dim=(1, 2)).float()
    share = n_face / (n_head + n_face).clamp_min(1.0)
    return torch.where(n_head >= MIN_PIXELS, share, torch.zeros_like(share))


def render_heads(
    colors: tuple[str, ...], views: int, seed: int, world: WorldConfig
) -> tuple[torch.Tensor, ...]:
    """Ground-truth renders in [0, 1] of a head of each colour with ``world``'s face, lit
    like its images (its share in flat albedo): ``(len(colors) * views, 3, 32, 32)`` (the
    probe's size, :data:`PROBE_SIZE`, whatever the world's) from its
    front-view cameras and as many from its back-view ones, grouped by colour."""
    renderer = VolumeRenderer(RendererConfig(n_samples=world.n_samples, shading=WORLD_SHADING))
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, list[torch.Tensor]] = {"front": [], "back": []}
    for color in colors:
        for side in ("front", "back"):
            camera = sample_cameras(sector_cameras(world, side), views, gen)
            for i in range(views):
                albedo = float(torch.rand((), generator=gen)) < world.p_albedo
                with torch.no_grad():
                    rgb = renderer(
                        single(color, "head", world.face_rgb),
                        camera[i : i + 1],
                        PROBE_SIZE,
                        PROBE_SIZE,
                        shading="albedo" if albedo else "diffuse",
                        generator=gen,
                    ).rgb
                out[side].append(quantise(rgb.permute(0, 3, 1, 2)))
    return torch.cat(out["front"]), torch.cat(out["back"])


def render_pairs(
    specs: tuple[tuple[str, str, str, str, str], ...], views: int, seed: int, world: WorldConfig
) -> torch.Tensor:
    """``(len(specs) * views, 3, 32, 32)`` ground-truth renders in [0, 1] of each pair (at
    :data:`PROBE_SIZE`, whatever the world's image size), from
    ``world``'s cameras (its front-view ones where the prompt names the front view, see
    :func:`names_front`), lit like its images (its share in flat albedo), grouped by spec."""
    renderer = VolumeRenderer(RendererConfig(n_samples=world.n_samples, shading=WORLD_SHADING))
    gen = torch.Generator().manual_seed(seed)
    out = []
    for spec in specs:
        cameras = sector_cameras(world, "front") if names_front(spec, world) else world.cameras
        camera = sample_cameras(cameras, views, gen)
        for i in range(views):
            albedo = float(torch.rand((), generator=gen)) < world.p_albedo
            with torch.no_grad():
                rgb = renderer(
                    pair(*spec),
                    camera[i : i + 1],
                    PROBE_SIZE,
                    PROBE_SIZE,
                    shading="albedo" if albedo else "diffuse",
                    generator=gen,
                ).rgb
            out.append((rgb.clamp(0, 1) * 255).round().permute(0, 3, 1, 2) / 255.0)
    return torch.cat(out)
