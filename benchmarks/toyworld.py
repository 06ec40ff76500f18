"""CFD and its baselines (SDS, FSD, VSD, ISM, SDI) distil the embedded prior's toy world:
the paper's comparison (FID- and CLIP-style scores), fidelity, diversity, mode coverage.

The acceptance benchmark of issues 7 and 15. Every run is the ``cpu-demo`` preset of ``cfd3d
generate`` (48³ voxel grid, 32² renders, two views per step) with the method's own noise
source, timestep schedule, ``w(t)`` and update rule; methods share the prompts, the seeds
and one loaded prior. ``--ablation`` adds the consistency ablation: CFD (same schedule and
``w(t)``) with one fixed per-pixel noise map for every view (``cfd-fixed``) and with fresh
noise every step (``cfd-fresh``).

Seeds: the ``cpu-demo`` preset was tuned on seed 0 of this benchmark, so the runs use
seeds ``--seed`` (default :data:`HELD_OUT_SEED`), ``--seed + 1``, ... that were never used
for tuning. The probe is trained once, on its own fixed seed.

Each result is rendered from an evaluation orbit (:data:`ORBIT_VIEWS` views at elevation
15°, distance 1.4, fovy 52.5°: the middle of the training cameras), deterministic, on white.

Single-object prompts ("a red cube", ``--prompts``), ``--seeds`` seeds each:

* ``mask_iou``: IoU of opacity > 0.5 against the ground-truth scene's (the same renderer
  renders the true object, :func:`truth_scene`), pooled over the orbit's pixels; mean over
  prompts x seeds.
* ``color_err``: mean absolute RGB error between the mean albedo over the result's own
  mask (un-premultiplied from the albedo renders) and the named colour's albedo; an empty
  result (no pixel with opacity > 0.5) is a failure and counts as error 1, the largest
  possible (``empty_results`` counts them).
* ``diversity``: mean pairwise RMS distance between the albedo orbit renders of different
  seeds of one prompt, averaged over prompts (0 when ``--seeds`` is 1).

Results and the prior's samples are judged on images made alike: each result is also
rendered from :data:`WORLD_VIEWS` cameras drawn from the camera distribution of the
prior's world (``EmbeddedPrior.world``, stored with its weights), with the toy world's
random point light (flat albedo in the world's share of views), at 32², quantised to 8
bits (:func:`world_views`) — single images like the ones the prior was trained on and
samples, not the fixed orbit. The probe is trained on that world's images too, and the
ground truth is that world's (a head wears its face colour).

Compositions (``--compositions "a red cube on top of a blue sphere" ...``, default
:data:`COMPOSITIONS`, ``--comp-seeds`` seeds each) are judged per object and relation
(:func:`judge_composition`), on the orbit and on the distilled field itself:

* ``present``: each named colour covers at least ``MIN_PIXELS`` pixels (the pixel
  segmentation of ``benchmarks/toy_prior.py``) in at least half of the orbit's 32² views;
* ``shape``: each object's shape, named by the probe on crops of the orbit renders
  (:func:`object_crops`: the pixels that colour explains better than the other, re-centred
  on white and magnified by ``1 / COMPOSITION_SCALE`` to a single object's size), is the
  named one in most of the views where its colour is present;
* ``relation``: from the 3D field (:func:`colour_centroids`): the centroids of the
  field's surface cells (at the mesh export's automatic density level) whose albedo is
  nearest each named colour; "on" is right when the first lies at least
  :data:`MIN_SEPARATION` above the second along +z, "next to" when it lies that far to
  the left seen from the front (-y).

``comp_right``: all five parts right; per method ``comp_acc`` (share of results right) and
``comp_present_acc`` / ``comp_shape_acc`` (per object), ``comp_relation_acc``.
``comp_judge_gt``: the same judge on the ground truth (each true pair rendered and sampled
as a field the same way): what the judge can see, and ``relation_swapped``, how often it
accepts the swapped relation ("B on top of A") there. Compositions have no probe FID or
CLIP (the probe names single objects) and stay out of the single-object means.

Underspecified prompts ("a red object", "a torus", ``--underspecified``), ``--under-seeds``
seeds each: a probe classifier trained only on ground-truth renders (the one of
``benchmarks/toy_prior.py``) names the missing attribute (the shape for "a red object",
the colour for "a torus") of every single image: of each of a result's world views, and of
each of ``--prior-samples`` DDIM samples (50 steps, the preset's guidance) of the prior
itself for that prompt. A method's class frequencies are the mean over its results of
their views' class shares; ``mode_tv`` is their total-variation distance from the prior's.
``mode_tv_band``: the 5-95 % range of the same distance for a perfect sampler drawing as
many results (each result one draw from the prior's frequencies).

Every prompt, with the same probe (:mod:`cfd3d.evaluation.probe`), against
``--prior-samples`` samples of the prior for that prompt:

* ``probe_fid`` (the FID analogue, ↓): Fréchet distance between the probe's penultimate
  features of the results' world views (all seeds pooled) and of the prior's samples;
  ``probe_fid_floor`` is the distance between two halves of the prior's own samples (what
  a perfect sampler scores at this sample size, roughly); ``probe_fid_truth`` the distance
  of the ground-truth object's world views (fully named prompts; the same cameras as the
  results'), what an exact reconstruction of the world's object would score;
  ``probe_fid_seed_std``: the spread over seeds of one seed's views against the samples;
* ``probe_clip`` (the CLIP-score analogue, ↑): the probe's mean probability of the
  prompt's named colour and shape on the results' world views (``probe_clip_prior``: the
  same on the prior's samples, ``probe_clip_truth`` on the ground truth's views);
  ``probe_clip_seed_std``: its spread over seeds.

Per method also ``noise_share`` (time in the noise source / step time, all runs) and
``wall_s`` (distillation and evaluation of its runs).

``--field gaussians`` runs every method on 3D Gaussians (the ``toy-gaussians`` preset
instead of ``cpu-demo``; rows ``METHOD@gaussians``); ``--field voxel gaussians`` runs both
in one invocation and adds ``wall_ratio_gaussians_voxel``: per method, the mean
distillation time per run on Gaussians over that on the voxel grid. Docs then go to
``toyworld-gaussians.md``/``.png``.

``--pipeline NAME`` (e.g. ``toy``) runs each method through the stages of a ``cfd3d generate
--pipeline`` instead (every stage with the method's noise and ``w(t)``, the field handed
from stage to stage as ``generate`` does) and scores every stage's result: rows
``cfd:stage1``, ``cfd:stage2``... of the same runs, so a later stage is compared with its
own stage 1 on the same seeds; ``--steps`` then sets every stage's steps, and the docs go
to ``toyworld-NAME.md`` / ``.png``. One run takes 1-2 minutes on one
thread of the 2-core box, so the default benchmark (3 x 3 + 2 x 8 runs per method) is
long; ``--quick`` is a smoke run of seconds (3 steps, one prompt and seed of each kind,
compositions included).
Unless ``--quick``, ``docs/toyworld.md`` (tables) and ``docs/toyworld.png`` (rows: ground
truth, then each method; columns: prompts x seeds; a front-right view) are written; ``--docs
DIR`` writes them to ``DIR`` instead, also with ``--quick``. ``--cache DIR`` keeps each
run's result (named by a digest of its configs, the evaluation, the prior's weights and the
thread count), so an interrupted table resumes where it stopped.

Usage::

    python benchmarks/toyworld.py [--seed 100] [--seeds 3] [--under-seeds 8] [--steps 500]
        [--methods cfd sds fsd vsd ism sdi] [--ablation]
        [--prompts "a red cube" ...] [--underspecified "a red object" ...]
        [--compositions "a red cube on top of a blue sphere" ...] [--comp-seeds 2]
        [--weights PATH] [--docs DIR] [--pipeline NAME] [--cache DIR] [--quick]

The last line of stdout is one JSON object; progress goes to stderr. Bad prompts or counts
are one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import io
import itertools
import json
import multiprocessing
import os
import platform
import re
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch.nn import functional as F

from cfd3d.cli import guarded
from cfd3d.errors import ConfigError, UserError
from cfd3d.evaluation.probe import (
    frechet_distance,
    probe_clip,
    probe_features,
    probe_probabilities,
)
from cfd3d.export.mesh import auto_threshold, cell_centres, occupancy_grid, volumetric_iou
from cfd3d.export.video import preview_grid, to_uint8
from cfd3d.generate.command import load_prior_for
from cfd3d.generate.config import GenerateConfig, preset_config, save_config
from cfd3d.generate.outputs import run_mesh
from cfd3d.generate.pipeline import configure, pipeline_config, start_from
from cfd3d.generate.run import Run
from cfd3d.io import atomic_write_bytes, atomic_write_text, sha256_hex
from cfd3d.noise import NoiseConfig
from cfd3d.priors.base import Prior
from cfd3d.priors.embedded.commands import sample_images
from cfd3d.priors.embedded.prior import EmbeddedPrior
from cfd3d.priors.embedded.weights import sha256_of
from cfd3d.priors.embedded.world import BASIC_SHAPES, WORLD_SHADING, WorldConfig
from cfd3d.render import ShadingConfig, SolidBackground
from cfd3d.scene.cameras import Cameras, orbit, spherical_cameras
from cfd3d.scene.gaussians import GaussianField
from cfd3d.scene.sampling import sample_cameras
from cfd3d.scene.toy import COLORS, COMPOSITION_SCALE, RELATIONS, ToyScene, pair, single

METHODS: tuple[str, ...] = ("cfd", "sds", "fsd", "vsd", "ism", "sdi")
ABLATIONS: dict[str, str] = {"cfd-fixed": "fixed", "cfd-fresh": "fresh"}
"""The consistency ablation: CFD's rule, schedule and ``w(t)`` with another noise source."""
HELD_OUT_SEED = 100
"""The first seed of the runs: seed 0 tuned the ``cpu-demo`` preset, 100 onwards did not."""
PROBE_TRAIN_SEED = 0
"""The probe's own seed (its training renders and weights), whatever the runs' seeds."""
SINGLE_PROMPTS: tuple[str, ...] = ("a red cube", "a blue cone", "a yellow torus")
UNDERSPECIFIED: tuple[str, ...] = ("a red object", "a torus")
COMPOSITIONS: tuple[str, ...] = (
    "a red cube on top of a blue sphere",
    "a yellow sphere on top of a green cube",
    "a blue cube next to a yellow cylinder",
    "a green sphere next to a red cone",
)
"""Two of each relation, with colours that stay apart when shaded (as toy_prior's
``RELATION_SPECS``), so that the pixel segmentation tells the objects apart."""
MIN_SEPARATION = 0.05
"""World units by which a composition's centroids must be ordered (the true pairs are
0.14-0.6 apart; a smear of both colours is not a relation)."""
MIN_CELLS = 8
"""Surface cells a colour needs in the field for its centroid to count."""
PROBE_SIZE = 32
"""The probe's image size (the toy world's)."""
PRESET = "cpu-demo"
FIELD_PRESETS = {"voxel": PRESET, "gaussians": "toy-gaussians"}
"""The preset of each ``--field``."""

ORBIT_VIEWS, ELEVATION, DISTANCE, FOVY = 8, 15.0, 1.4, 52.5
"""The evaluation orbit: the middle of the training cameras' distance and field of view."""
EVAL_SIZE = 64
"""Pixels (square) of the orbit renders that IoU, colour and diversity are measured on."""
MESH_IOU_RESOLUTION = 64
"""Cells per axis of the volumetric mesh IoU."""
FIGURE_AZIMUTH = 35.0
"""The figure's view: front-right, so that two sides and the top show."""
WORLD_VIEWS = 16
"""Views per result drawn as the prior's training images are (:func:`world_views`)."""
WORLD_VIEW_SEED = 7919
"""Seeds the world views' cameras and lights (plus the run's seed: each seed of a prompt is
seen from its own cameras, and its ground truth from the same ones)."""
ALBEDO = ShadingConfig(mode="albedo")
HEADLIGHT = replace(WORLD_SHADING, light_jitter=0.0)
"""The toy world's diffuse shading with the light at the camera (probe and figure)."""
PRIOR_DDIM_STEPS = 50
DOCS = Path(__file__).resolve().parents[1] / "docs"


# --------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Prompt:
    """A toy-world prompt and what it names.

    Attributes:
        text: the prompt.
        color: the named colour, or ``None`` ("a torus").
        shape: the named basic shape, or ``None`` ("a red object").
    """

    text: str
    color: str | None
    shape: str | None

    @property
    def missing(self) -> str | None:
        """``"color"``, ``"shape"`` or ``None``: the attribute the prompt leaves open."""
        if self.color is None:
            return "color"
        return "shape" if self.shape is None else None


def parse_prompt(text: str) -> Prompt:
    """Read "a {colour} {shape}", "a {colour} object" or "a {shape}".

    Raises:
        UserError: for any other prompt.
    """
    words = text.strip().lower().split()
    if len(words) == 3 and words[0] == "a" and words[1] in COLORS:
        if words[2] in BASIC_SHAPES:
            return Prompt(text, words[1], words[2])
        if words[2] == "object":
            return Prompt(text, words[1], None)
    if len(words) == 2 and words[0] == "a" and words[1] in BASIC_SHAPES:
        return Prompt(text, None, words[1])
    raise UserError(
        f"cannot read the prompt {text!r}; use 'a COLOUR SHAPE', 'a COLOUR object' or "
        f"'a SHAPE' with colours {', '.join(COLORS)} and shapes {', '.join(BASIC_SHAPES)}"
    )


@dataclass(frozen=True)
class Composition:
    """A two-object prompt, "a red cube on top of a blue sphere".

    Attributes:
        text: the prompt.
        colors: the first and the second object's colour.
        shapes: their shapes.
        relation: ``"on"`` (the first on top of the second) or ``"next_to"`` (the first on
            the left, seen from the front).
    """

    text: str
    colors: tuple[str, str]
    shapes: tuple[str, str]
    relation: str

    @property
    def missing(self) -> None:
        """Nothing: a composition names everything."""
        return None

    def scene(self) -> ToyScene:
        """The true pair."""
        return pair(self.colors[0], self.shapes[0], self.relation, self.colors[1], self.shapes[1])


def parse_composition(text: str) -> Composition:
    """Read "a {colour} {shape} on top of / next to a {colour} {shape}".

    Raises:
        UserError: for any other prompt, or two objects of one colour (the judge tells
            the objects apart by their colours).
    """
    phrases = "|".join(RELATIONS.values())
    match = re.fullmatch(
        rf"a (\w+) (\w+) ({phrases}) a (\w+) (\w+)", " ".join(text.lower().split())
    )
    if match is not None:
        ca, sa, phrase, cb, sb = match.groups()
        known = {ca, cb} <= COLORS.keys() and {sa, sb} <= set(BASIC_SHAPES)
        if known and ca == cb:
            raise UserError(
                f"the two objects of {text!r} have one colour; the judge tells them apart by "
                "colour, so name two different colours"
            )
        if known:
            relation = next(k for k, v in RELATIONS.items() if v == phrase)
            return Composition(text, (ca, cb), (sa, sb), relation)
    raise UserError(
        f"cannot read the composition {text!r}; use 'a COLOUR SHAPE on top of a COLOUR SHAPE' "
        f"or '... next to ...' with colours {', '.join(COLORS)} and shapes "
        f"{', '.join(BASIC_SHAPES)}"
    )


# ------------------------------------------------------------------------ the probe


def probe_module() -> ModuleType:
    """``benchmarks/toy_prior.py``, whose ground-truth probe classifier this reuses."""
    name = "_toyworld_toy_prior"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).resolve().with_name("toy_prior.py")
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclasses look their module up while it loads
        spec.loader.exec_module(module)
    return sys.modules[name]


def class_names(missing: str) -> tuple[str, ...]:
    tp = probe_module()
    return tp.COLOR_NAMES if missing == "color" else tp.PROBE_SHAPES


def classify_missing(probe: torch.nn.Module, images: torch.Tensor, missing: str) -> torch.Tensor:
    """``(N,)`` class index of the missing attribute for ``(N, 3, 32, 32)`` images."""
    color, shape = probe_module().classify(probe, images)
    return color if missing == "color" else shape


def frequencies(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    return torch.bincount(labels, minlength=n_classes).double() / max(len(labels), 1)


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


def sampler_tv_band(freq: torch.Tensor, n: int, draws: int = 2000) -> dict[str, float]:
    """The mode TV that a perfect sampler of ``freq`` scores with ``n`` results: the 5 %,
    50 % and 95 % quantiles over ``draws`` sets of ``n`` classes drawn from ``freq``."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.multinomial(freq.double(), n * draws, replacement=True, generator=gen)
    tvs = torch.tensor(
        [total_variation(frequencies(row, len(freq)), freq) for row in labels.view(draws, n)]
    )
    q = torch.quantile(tvs.double(), torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64))
    return {
        "p05": round(float(q[0]), 4),
        "p50": round(float(q[1]), 4),
        "p95": round(float(q[2]), 4),
    }


# ------------------------------------------------------------------------ evaluation


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
        composed: what the composition judge reads (compositions only).
    """

    albedo: torch.Tensor
    opacity: torch.Tensor
    probe: torch.Tensor
    world: torch.Tensor
    figure: np.ndarray
    composed: Composed | None = None


@dataclass(frozen=True)
class Composed:
    """What :func:`judge_composition` reads from one object (a result or the truth).

    Attributes:
        pixels: ``(2, V)`` pixels of each named colour in each orbit view (32² headlit,
            :func:`segment` of ``benchmarks/toy_prior.py``).
        crops: ``(2, V, 3, 32, 32)`` each object's crop per view (:func:`object_crops`).
        centroids: ``(2, 3)`` centroid of each colour's surface cells in the field
            (:func:`colour_centroids`), NaN where it has fewer than :data:`MIN_CELLS`.
    """

    pixels: torch.Tensor
    crops: torch.Tensor
    centroids: torch.Tensor


def evaluation_cameras() -> tuple[Cameras, Cameras]:
    """The orbit (front first) and the figure's single camera."""
    one = torch.ones(1)
    figure = spherical_cameras(FIGURE_AZIMUTH * one, ELEVATION * one, DISTANCE * one, FOVY * one)
    return orbit(ORBIT_VIEWS, ELEVATION, DISTANCE, FOVY), figure


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
        composed=composed,
    )


# ------------------------------------------------------------------- compositions


def colour_pixels(images: torch.Tensor, colors: tuple[str, str]) -> torch.Tensor:
    """``(2, V)`` pixels that each of ``colors`` explains best (among all named colours) in
    each of ``(V, 3, H, W)`` images."""
    tp = probe_module()
    labels = tp.segment(images)
    return torch.stack([(labels == tp.COLOR_NAMES.index(c)).sum(dim=(1, 2)) for c in colors])


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
    tp = probe_module()
    palette = torch.tensor([COLORS[c] for c in colors], dtype=images.dtype)
    residual, nearer = tp.shade_residual(images, palette).min(dim=-1)  # (V, S, S)
    foreground = (1.0 - images).amax(dim=1) > tp.FOREGROUND
    size = images.shape[-1]
    window = max(1, round(size * COMPOSITION_SCALE))
    out = torch.ones(2, images.shape[0], 3, PROBE_SIZE, PROBE_SIZE, dtype=images.dtype)
    for k in range(2):
        mine = foreground & (nearer == k)
        core = mine & (residual < tp.MAX_RESIDUAL)
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


def judge_composition(composed: Composed, composition: Composition, probe: torch.nn.Module) -> dict:
    """The verdict on one composition result (or its truth): ``present`` and ``shape``
    per object, ``relation``, ``relation_swapped`` (would the swapped relation hold?),
    ``comp_right`` (everything right) and ``shapes_seen`` (the probe's majority per object)."""
    tp = probe_module()
    visible = composed.pixels >= tp.MIN_PIXELS  # (2, V)
    present = [bool(v.sum() * 2 >= v.numel()) for v in visible]
    shape, seen = [], []
    for k in range(2):
        if not bool(visible[k].any()):
            shape.append(False)
            seen.append(None)
            continue
        _, labels = tp.classify(probe, composed.crops[k][visible[k]])
        name = tp.PROBE_SHAPES[majority(labels, len(tp.PROBE_SHAPES))]
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


def diversity(views: list[Views]) -> float:
    """Mean pairwise RMS distance between the albedo orbit renders (0 for one result)."""
    pairs = list(itertools.combinations(views, 2))
    if not pairs:
        return 0.0
    return float(np.mean([float((a.albedo - b.albedo).square().mean().sqrt()) for a, b in pairs]))


def majority(labels: torch.Tensor, n_classes: int) -> int:
    """The most frequent label (the smallest index on a tie)."""
    return int(torch.bincount(labels, minlength=n_classes).argmax())


# ---------------------------------------------------------------------------- a run


@dataclass(frozen=True)
class Result:
    """One distilled object.

    Attributes:
        method, prompt, seed: what was run.
        views: its evaluation renders.
        mesh_iou: volumetric IoU of its exported mesh against the ground truth (fully
            named prompts only).
        noise_ms, step_ms: summed over the steps.
        distill_s, eval_s: wall time of the optimisation and of the evaluation.
    """

    method: str
    prompt: Prompt | Composition
    seed: int
    views: Views
    mesh_iou: float | None
    noise_ms: float
    step_ms: float
    distill_s: float
    eval_s: float


def method_config(base: GenerateConfig, method: str, seed: int, steps: int) -> GenerateConfig:
    """``base`` for ``method``: its noise source, timesteps and ``w(t)``; an ablation row
    (:data:`ABLATIONS`) is CFD with the row's noise source."""
    noise = None
    if method in ABLATIONS:
        method, noise = "cfd", NoiseConfig(kind=ABLATIONS[method], seed=seed)  # type: ignore[arg-type]
    return replace(
        base, method=method, seed=seed, steps=steps, noise=noise, timesteps=None, weighting=None
    ).resolved()


def distil(
    config: GenerateConfig,
    prior: Prior,
    size: int,
    init: dict | None = None,
    composition: Composition | None = None,
) -> tuple[Run, Views, dict[str, float]]:
    """Run ``config`` to its last step, its field started from the checkpoint state
    ``init`` if given (a pipeline's later stage), then render the result (:func:`look`, in
    the prior's world; timings in the dict)."""
    tic = time.perf_counter()
    run = Run(config, prior)
    if init is not None:
        start_from(run, init)
    noise_ms = step_ms = 0.0
    while run.step < config.steps:
        step = run.take_step()
        noise_ms += step.noise_ms
        step_ms += step.step_ms
    distill_s = time.perf_counter() - tic
    run.field.eval()
    views = look(run, run.field, size, config.seed, world_of(prior), composition)
    timing = {
        "noise_ms": noise_ms,
        "step_ms": step_ms,
        "distill_s": distill_s,
        "eval_s": time.perf_counter() - tic - distill_s,
    }
    return run, views, timing


def truth_scene(prompt: Prompt | Composition, world: WorldConfig) -> ToyScene:
    """The ground truth of a fully named prompt in ``world`` (a head wears its face)."""
    if isinstance(prompt, Composition):
        return prompt.scene()
    return single(str(prompt.color), str(prompt.shape), world.face_rgb)


def mesh_iou(run: Run, truth: ToyScene) -> float:
    """Volumetric IoU at :data:`MESH_IOU_RESOLUTION`³ between the mesh that ``cfd3d
    generate`` would export for ``run`` and the ground-truth solid (0 without a mesh)."""
    mesh, _ = run_mesh(run)
    if mesh is None:
        return 0.0
    bound = run.config.field_bound
    truth = truth.occupancy(MESH_IOU_RESOLUTION, bound)
    return volumetric_iou(occupancy_grid(mesh, MESH_IOU_RESOLUTION, bound), truth)


@dataclass(frozen=True)
class Job:
    """One run of the plan (all the stages of a pipeline): what a worker needs besides the
    prior. ``steps``: every run's (every stage's) steps; ``None`` keeps the stages' own."""

    base: GenerateConfig
    method: str
    prompt: Prompt | Composition
    seed: int
    steps: int | None
    size: int
    pipeline: str | None = None


_WORKER_PRIOR: list[Prior] = []


def start_worker(weights: Path | None, base: GenerateConfig, threads: int) -> None:
    """Initialise a worker process: its thread count and its own copy of the prior."""
    torch.set_num_threads(threads)
    _WORKER_PRIOR[:] = [load_prior(weights, base)]


def load_prior(weights: Path | None, base: GenerateConfig) -> Prior:
    if weights is not None:
        return EmbeddedPrior.load(weights)
    return load_prior_for(base)


def job_configs(job: Job) -> list[tuple[str, GenerateConfig]]:
    """``(label, config)`` of each run of ``job``: the method's (label: the method), or each
    stage of its pipeline (label ``method:stage``)."""
    if job.pipeline is None:
        base = replace(job.base, prompt=job.prompt.text)
        steps = job.steps if job.steps is not None else base.steps
        return [(job_row(job), method_config(base, job.method, job.seed, steps))]
    pipeline = configure(
        pipeline_config(job.pipeline, job.prompt.text),
        method=job.method,
        steps_per_stage=job.steps,
        overrides={"seed": job.seed},
    )
    return [(f"{job.method}:{s.name}", s.config) for s in pipeline.stages]


def job_row(job: Job) -> str:
    """The report row of a single-stage job: its method, ``METHOD@gaussians`` on Gaussians."""
    return job.method if job.base.field == "voxel" else f"{job.method}@{job.base.field}"


def stage_labels(methods: list[str], pipeline: str | None) -> list[str]:
    """The rows of the report: the methods, or each method's pipeline stages."""
    if pipeline is None:
        return methods
    stages = [s.name for s in pipeline_config(pipeline, SINGLE_PROMPTS[0]).stages]
    return [f"{m}:{s}" for m in methods for s in stages]


CACHE_VERSION = 2
"""Bumped when what a cached run holds, or how it is evaluated, changes."""


def job_key(job: Job, weights_sha: str, threads: int) -> str:
    """The name of ``job``'s results in a ``--cache`` folder: a digest of every stage's
    config, the evaluation, the prior's weights and the thread count (float sums depend on
    it), so a changed run is never read from an old result."""
    text = json.dumps(
        {
            "version": CACHE_VERSION,
            "configs": [(label, save_config(c)) for label, c in job_configs(job)],
            "prompt": job.prompt.text,
            "size": job.size,
            "orbit": [ORBIT_VIEWS, ELEVATION, DISTANCE, FOVY, MESH_IOU_RESOLUTION],
            "world_views": [WORLD_VIEWS, WORLD_VIEW_SEED],
            "weights": weights_sha,
            "threads": threads,
        },
        sort_keys=True,
    )
    return sha256_hex(text.encode())[:24]


def read_cached(path: Path) -> list[tuple[Result, Views | None]] | None:
    """A cached job's results, or ``None`` when there is none (or it cannot be read: the
    job is then run again)."""
    try:
        return torch.load(path, weights_only=False)
    except FileNotFoundError:
        return None
    except Exception as exc:  # a damaged cache file: recompute, say so
        print(f"ignoring unreadable cached result {path} ({exc})", file=sys.stderr)
        return None


def write_cached(path: Path, runs: list[tuple[Result, Views | None]]) -> None:
    buffer = io.BytesIO()
    torch.save(runs, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def run_job(job: Job, prior: Prior | None = None) -> list[tuple[Result, Views | None]]:
    """Distil ``job`` (each stage from the previous stage's final state), one result per
    run; also render the ground truth of a fully named prompt or a composition."""
    prior = prior if prior is not None else _WORKER_PRIOR[0]
    world = world_of(prior)
    composition = job.prompt if isinstance(job.prompt, Composition) else None
    results: list[tuple[Result, Views | None]] = []
    state = None
    for label, config in job_configs(job):
        run_, views, timing = distil(config, prior, job.size, state, composition)
        state = run_.state_dict()
        truth = None
        iou = None
        if job.prompt.missing is None:
            scene = truth_scene(job.prompt, world)
            truth = look(run_, scene, job.size, job.seed, world, composition)
            if composition is None:
                iou = round(mesh_iou(run_, scene), 4)
        results.append((Result(label, job.prompt, job.seed, views, iou, **timing), truth))
    return results


# ---------------------------------------------------------------------------- report


EMPTY_COLOR_ERR = 1.0
"""The colour error of an empty result: the largest possible (albedos lie in [0, 1])."""


def mean_or_none(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def single_detail(runs: list[Result], truth: Views) -> dict:
    """Per-seed mask IoU and colour error of one fully named prompt, and their means."""
    target = torch.tensor(COLORS[runs[0].prompt.color])
    seeds = []
    for r in runs:
        colour = mean_color(r.views)
        err = EMPTY_COLOR_ERR if colour is None else float((colour - target).abs().mean())
        seeds.append(
            {
                "seed": r.seed,
                "mask_iou": round(mask_iou(r.views, truth), 4),
                "mesh_iou": r.mesh_iou,
                "color_err": round(err, 4),
                "empty": colour is None,
            }
        )
    return {
        "mask_iou": mean_or_none([s["mask_iou"] for s in seeds]),
        "mesh_iou": mean_or_none([s["mesh_iou"] for s in seeds if s["mesh_iou"] is not None]),
        "color_err": mean_or_none([s["color_err"] for s in seeds]),
        "empty_results": sum(int(s["empty"]) for s in seeds),
        "diversity": round(diversity([r.views for r in runs]), 4),
        "seeds": seeds,
    }


def probe_detail(runs: list[Result], probe: torch.nn.Module, reference: torch.Tensor) -> dict:
    """``probe_fid`` and ``probe_clip`` of one prompt's results (see the module docstring)
    against the probe features ``reference`` ``(M, D)`` of the prior's samples."""
    tp = probe_module()
    prompt = runs[0].prompt
    named = (
        None if prompt.color is None else tp.COLOR_NAMES.index(prompt.color),
        None if prompt.shape is None else tp.PROBE_SHAPES.index(prompt.shape),
    )
    renders = torch.cat([r.views.world for r in runs])
    per_seed_fid = [frechet_distance(probe_features(probe, r.views.world), reference) for r in runs]
    per_seed_clip = [probe_clip(probe_probabilities(probe, r.views.world), named) for r in runs]
    return {
        "probe_fid": round(frechet_distance(probe_features(probe, renders), reference), 4),
        "probe_fid_seed_std": round(float(np.std(per_seed_fid)), 4),
        "probe_fid_seeds": [round(v, 4) for v in per_seed_fid],
        "probe_clip": round(probe_clip(probe_probabilities(probe, renders), named), 4),
        "probe_clip_seed_std": round(float(np.std(per_seed_clip)), 4),
        "probe_clip_seeds": [round(v, 4) for v in per_seed_clip],
    }


def underspecified_detail(
    runs: list[Result], probe: torch.nn.Module, prior_freq: torch.Tensor
) -> dict:
    """The probe's classes of the missing attribute on each result's world views (shares;
    ``classes`` counts each result's majority), the total variation of the mean shares from
    the prior's ``prior_freq``, and how often the named attribute is right on those views
    (``known_acc``)."""
    prompt = runs[0].prompt
    missing = prompt.missing
    known = "shape" if missing == "color" else "color"
    names, known_names = class_names(missing), class_names(known)
    known_index = known_names.index(prompt.shape if known == "shape" else prompt.color)
    shares, labels, known_hits, seeds = [], [], [], []
    for r in runs:
        color, shape = probe_module().classify(probe, r.views.world)
        votes, known_votes = (color, shape) if missing == "color" else (shape, color)
        shares.append(frequencies(votes, len(names)))
        labels.append(majority(votes, len(names)))
        known_hits.append(float((known_votes == known_index).double().mean()))
        seeds.append({"seed": r.seed, missing: names[labels[-1]]})
    freq = torch.stack(shares).mean(dim=0)
    counts = torch.bincount(torch.tensor(labels), minlength=len(names))
    return {
        "classified": missing,
        "classes": {n: int(c) for n, c in zip(names, counts.tolist(), strict=True) if c},
        "class_shares": {
            n: round(float(f), 4) for n, f in zip(names, freq.tolist(), strict=True) if f > 0
        },
        "mode_tv": round(total_variation(freq, prior_freq), 4),
        "known_acc": round(float(np.mean(known_hits)), 4),
        "diversity": round(diversity([r.views for r in runs]), 4),
        "seeds": seeds,
    }


def verdict_text(verdict: dict) -> str:
    """One line of a composition's verdict, e.g. "colours yes/yes, shapes cube/cone, on no"."""
    yes = ["yes" if v else "no" for v in verdict["present"]]
    seen = [name or "-" for name in verdict["shapes_seen"]]
    relation = "yes" if verdict["relation"] else "no"
    right = "right" if verdict["comp_right"] else "wrong"
    return f"{right}: colours {'/'.join(yes)}, shapes {'/'.join(seen)}, relation {relation}"


def composition_detail(runs: list[Result], probe: torch.nn.Module) -> dict:
    """Per-seed verdicts (:func:`judge_composition`) of one composition's results and the
    shares right: all parts (``comp_acc``), each object's colour and shape, the relation."""
    prompt = runs[0].prompt
    assert isinstance(prompt, Composition)
    seeds = []
    for r in runs:
        assert r.views.composed is not None
        verdict = judge_composition(r.views.composed, prompt, probe)
        seeds.append({"seed": r.seed, **verdict})
    return {
        "comp_acc": mean_or_none([float(s["comp_right"]) for s in seeds]),
        "comp_present_acc": mean_or_none([float(v) for s in seeds for v in s["present"]]),
        "comp_shape_acc": mean_or_none([float(v) for s in seeds for v in s["shape"]]),
        "comp_relation_acc": mean_or_none([float(s["relation"]) for s in seeds]),
        "diversity": round(diversity([r.views for r in runs]), 4),
        "seeds": seeds,
    }


def composition_truth(
    truths: dict[str, Views], compositions: list[Composition], probe: torch.nn.Module
) -> dict:
    """The composition judge on the ground truth: per composition its verdict, and the
    shares right over them (what ``comp_acc`` of a perfect result would be)."""
    verdicts = {}
    for c in compositions:
        composed = truths[c.text].composed
        assert composed is not None
        verdicts[c.text] = judge_composition(composed, c, probe)
    values = list(verdicts.values())
    return {
        "comp_right": mean_or_none([float(v["comp_right"]) for v in values]),
        "present": mean_or_none([float(p) for v in values for p in v["present"]]),
        "shape": mean_or_none([float(p) for v in values for p in v["shape"]]),
        "relation": mean_or_none([float(v["relation"]) for v in values]),
        "relation_swapped": mean_or_none([float(v["relation_swapped"]) for v in values]),
        "per_prompt": verdicts,
    }


def summarise(
    results: list[Result],
    truths: dict[str, Views],
    probe: torch.nn.Module,
    prior_freq: dict[str, torch.Tensor],
    prior_features: dict[str, torch.Tensor],
) -> dict:
    """The JSON of one method's results."""
    by_prompt: dict[str, list[Result]] = {}
    for r in results:
        by_prompt.setdefault(r.prompt.text, []).append(r)
    per_prompt = {}
    for text, runs in by_prompt.items():
        if isinstance(runs[0].prompt, Composition):
            per_prompt[text] = composition_detail(runs, probe)
            continue
        if runs[0].prompt.missing is None:
            per_prompt[text] = single_detail(runs, truths[text])
        else:
            per_prompt[text] = underspecified_detail(runs, probe, prior_freq[text])
        per_prompt[text].update(probe_detail(runs, probe, prior_features[text]))
    singles = [d for d in per_prompt.values() if "mask_iou" in d]
    unders = {t: d for t, d in per_prompt.items() if "mode_tv" in d}
    comps = [d for d in per_prompt.values() if "comp_acc" in d]
    seeds = [s for d in singles for s in d["seeds"]]
    comp_seeds = [s for d in comps for s in d["seeds"]]
    noise = sum(r.noise_ms for r in results)
    step = sum(r.step_ms for r in results)
    details = [d for d in per_prompt.values() if "probe_fid" in d]
    return {
        "probe_fid": mean_or_none([d["probe_fid"] for d in details]),
        "probe_fid_seed_std": mean_or_none([d["probe_fid_seed_std"] for d in details]),
        "probe_clip": mean_or_none([d["probe_clip"] for d in details]),
        "probe_clip_seed_std": mean_or_none([d["probe_clip_seed_std"] for d in details]),
        "mask_iou": mean_or_none([s["mask_iou"] for s in seeds]),
        "mesh_iou": mean_or_none([s["mesh_iou"] for s in seeds if s["mesh_iou"] is not None]),
        "color_err": mean_or_none([s["color_err"] for s in seeds]),
        "diversity": mean_or_none([d["diversity"] for d in singles]),
        "diversity_underspecified": mean_or_none([d["diversity"] for d in unders.values()]),
        "mode_tv": {t: d["mode_tv"] for t, d in unders.items()},
        "comp_acc": mean_or_none([float(s["comp_right"]) for s in comp_seeds]),
        "comp_present_acc": mean_or_none([float(v) for s in comp_seeds for v in s["present"]]),
        "comp_shape_acc": mean_or_none([float(v) for s in comp_seeds for v in s["shape"]]),
        "comp_relation_acc": mean_or_none([float(s["relation"]) for s in comp_seeds]),
        "noise_share": round(noise / step, 4) if step > 0 else 0.0,
        "wall_s": round(sum(r.distill_s + r.eval_s for r in results), 1),
        "distill_s_per_run": round(float(np.mean([r.distill_s for r in results])), 2),
        "empty_results": sum(int(not bool((r.views.opacity > 0.5).any())) for r in results),
        "per_prompt": per_prompt,
    }


def machine(device: torch.device) -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU used"
    return (
        f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s), "
        f"{where}, torch {torch.__version__}"
    )


def figure_png(results: list[Result], truths: dict[str, Views], methods: list[str]) -> bytes:
    """Rows: ground truth (white for underspecified prompts), then each method; columns:
    the (prompt, seed) pairs in run order."""
    columns = [(r.prompt.text, r.seed) for r in results if r.method == methods[0]]
    blank = np.full_like(results[0].views.figure, 255)
    tiles = [truths[p].figure if p in truths else blank for p, _ in columns]
    index = {(r.method, r.prompt.text, r.seed): r.views.figure for r in results}
    for m in methods:
        tiles += [index[(m, p, s)] for p, s in columns]
    return preview_grid(np.stack(tiles), ncols=len(columns))


def fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def composition_lines(result: dict, methods: list[str]) -> list[str]:
    """The markdown section on compositions (none without them)."""
    truth = result.get("comp_judge_gt")
    if truth is None:
        return []
    lines = [
        "",
        "## Compositions",
        "",
        f"{len(result['config']['compositions'])} two-object prompts × "
        f"{result['config']['comp_seeds']} seeds. Right: both named colours present (≥ "
        f"{probe_module().MIN_PIXELS} pixels in at least half of the orbit's 32² views), both "
        "shapes named by the probe on each object's crop (its colour's pixels, re-centred on "
        "white at a single object's scale; majority over the views), and the relation "
        "from the distilled field's 3D geometry (centroids of the surface cells nearest "
        f"each colour, ordered by at least {MIN_SEPARATION:g} along +z for “on top of”, "
        "along −y, the left seen from the front, for “next to”). The judge on the ground "
        f"truth: right {fmt(truth['comp_right'])}, colours {fmt(truth['present'])}, shapes "
        f"{fmt(truth['shape'])}, relation {fmt(truth['relation'])}, swapped relation "
        f"accepted {fmt(truth['relation_swapped'])}.",
        "",
        "| method | comp acc | colours present | shapes | relation | per prompt (right) |",
        "|---|---|---|---|---|---|",
    ]
    for m in methods:
        r = result[m]
        shown = "; ".join(
            f"{text}: {d['comp_acc']:.2f}" for text, d in r["per_prompt"].items() if "comp_acc" in d
        )
        lines.append(
            f"| {m} | {fmt(r['comp_acc'])} | {fmt(r['comp_present_acc'])} | "
            f"{fmt(r['comp_shape_acc'])} | {fmt(r['comp_relation_acc'])} | {shown} |"
        )
    return lines


def markdown(
    result: dict, methods: list[str], command: str, machine_text: str, stem: str = "toyworld"
) -> str:
    config = result["config"]
    under = config["underspecified"]
    pipeline = config.get("pipeline")
    runs = (
        f"Pipeline `{pipeline}` (rows `method:stage`: each stage's result of the same runs), "
        f"steps per stage {config['steps'] or 'the stages’ own'}"
        if pipeline
        else f"Preset `{config['preset']}`, {config['steps']} steps"
    )
    lines = [
        "# toyworld — " + ", ".join(methods) + " on the embedded prior's toy world",
        "",
        f"Written by `benchmarks/toyworld.py` on {config['date']}.",
        "",
        f"- Machine: {machine_text}",
        f"- Command: `{command}`",
        f"- {runs}, guidance "
        f"{config['guidance_scale']:g}, seeds {config['seeds']} (single objects) and "
        f"{config['under_seeds']} (underspecified), seeds {config['seeds_used'][0]}–"
        f"{config['seeds_used'][-1]} (the preset was tuned on seed {config['tuning_seed']}); "
        f"weights `{config['weights']}`.",
        f"- Probe (trained on ground-truth renders only): colour accuracy "
        f"{result['probe']['color_acc']:.3f}, shape accuracy {result['probe']['shape_acc']:.3f}"
        f" on {result['probe']['n_test']} held-out renders.",
        f"- Total wall time {result['wall_s']:.0f} s.",
        "",
        "Results are judged by the probe on single images drawn as the prior's training "
        f"images are ({WORLD_VIEWS} per result: the world's cameras, lighting and share of "
        "flat albedo, 32², 8-bit), like the prior's samples. "
        "probe FID (↓): Fréchet distance between the probe's penultimate features of the "
        "results' views and of the prior's own samples for the prompt (mean over "
        "prompts; ± the spread over seeds of one seed's views); probe CLIP (↑): the probe's "
        "mean probability of the prompt's named colour and shape (± spread over seeds); "
        "the ground truth seen from the same cameras scores "
        f"{fmt(result.get('truth', {}).get('probe_fid'), 2)} and "
        f"{fmt(result.get('truth', {}).get('probe_clip'))} (fully named prompts). "
        "mask IoU (↑) and colour error (↓, an empty result counts as 1) against ground truth "
        "over an 8-view orbit; empty: results with no opaque pixel; mesh "
        f"IoU (↑): volumetric IoU at {MESH_IOU_RESOLUTION}³ of the mesh `cfd3d generate` "
        "exports (automatic threshold) against the ground-truth solid; "
        "diversity: mean pairwise RMS between seeds' orbit renders; mode TV (↓): total "
        "variation between the results' class shares (the missing attribute, per view) and "
        "the prior's own samples' classes.",
        "",
    ]
    header = ["method", "probe FID", "probe CLIP", "mask IoU", "mesh IoU", "colour err", "empty"]
    header += ["diversity"]
    header += [f"mode TV “{p}”" for p in under] + ["noise share", "wall s"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in methods:
        r = result[m]
        row = [
            m,
            f"{fmt(r['probe_fid'], 2)} ± {fmt(r['probe_fid_seed_std'], 2)}",
            f"{fmt(r['probe_clip'])} ± {fmt(r['probe_clip_seed_std'])}",
            fmt(r["mask_iou"]),
            fmt(r["mesh_iou"]),
            fmt(r["color_err"]),
            str(r["empty_results"]),
            fmt(r["diversity"]),
        ]
        row += [fmt(r["mode_tv"].get(p)) for p in under]
        row += [fmt(r["noise_share"]), f"{r['wall_s']:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "## Per prompt",
        "",
        "| method | prompt | probe FID | probe CLIP | mask IoU | mesh IoU | colour err | "
        "diversity | results |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        for text, d in result[m]["per_prompt"].items():
            if "comp_acc" in d:
                continue
            if "classes" in d:
                shown = ", ".join(f"{k} {v:.2f}" for k, v in d["class_shares"].items())
                shown += f" (TV {d['mode_tv']:.3f}, named attribute right {d['known_acc']:.2f})"
            else:
                shown = "IoU per seed " + " / ".join(f"{s['mask_iou']:.2f}" for s in d["seeds"])
            lines.append(
                f"| {m} | {text} | {fmt(d['probe_fid'], 2)} | {fmt(d['probe_clip'])} | "
                f"{fmt(d.get('mask_iou'))} | {fmt(d.get('mesh_iou'))} | "
                f"{fmt(d.get('color_err'))} | "
                f"{fmt(d['diversity'])} | {shown} |"
            )
    lines += composition_lines(result, methods)
    lines += [
        "",
        "The prior's own samples against themselves (the reference of probe FID and CLIP):",
    ]
    lines += [""]
    for text, ref in result["prior_reference"].items():
        truth = ""
        if "probe_fid_truth" in ref:
            truth = (
                f"; the ground truth's views: probe FID {ref['probe_fid_truth']:.2f}, "
                f"probe CLIP {ref['probe_clip_truth']:.3f}"
            )
        lines.append(
            f"- “{text}”: probe FID between two halves {ref['probe_fid_floor']:.2f}, "
            f"probe CLIP {ref['probe_clip_prior']:.3f}{truth}"
        )
    if result["prior_classes"]:
        lines += ["", "The prior's own samples (the reference of mode TV):", ""]
    for text, freq in result["prior_classes"].items():
        shown = ", ".join(f"{k} {v:.2f}" for k, v in freq.items() if v > 0)
        band = result["prior_reference"][text]["mode_tv_band"]
        lines.append(
            f"- “{text}”: {shown}; a perfect sampler of these classes with "
            f"{config['under_seeds']} results scores mode TV {band['p50']:.2f} "
            f"(5–95 %: {band['p05']:.2f}–{band['p95']:.2f})"
        )
    lines += [
        "",
        f"![toyworld]({stem}.png)",
        "",
        "Rows: ground truth (blank for underspecified prompts), then "
        + ", ".join(methods)
        + "; columns: "
        + "; ".join(f"“{p}” × {n}" for p, n in config["columns"])
        + f" seeds. Front-right view (azimuth {FIGURE_AZIMUTH:g}°), headlight.",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main


def check_counts(args: argparse.Namespace) -> None:
    counts = {
        "--seeds": args.seeds,
        "--under-seeds": args.under_seeds,
        "--comp-seeds": args.comp_seeds,
        "--prior-samples": args.prior_samples,
        "--threads": args.threads,
        "--jobs": args.jobs,
    }
    if args.steps is not None:
        counts["--steps"] = args.steps
    for flag, value in counts.items():
        if value <= 0:
            raise UserError(f"{flag} must be positive, got {value}")
    for method in args.methods:
        if method not in METHODS:
            raise UserError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if args.ablation and args.pipeline is not None:
        raise UserError("--ablation runs the single-stage preset; leave out --pipeline")
    if args.pipeline is not None and args.field != ["voxel"]:
        raise UserError("--field runs single-stage presets; leave out --pipeline")


def run(args: argparse.Namespace) -> int:
    check_counts(args)
    singles = [parse_prompt(p) for p in args.prompts]
    unders = [parse_prompt(p) for p in args.underspecified]
    for p in singles:
        if p.missing is not None:
            raise UserError(f"--prompts takes fully named objects ('a red cube'), got {p.text!r}")
    for p in unders:
        if p.missing is None:
            raise UserError(
                f"--underspecified takes prompts without a colour or a shape, got {p.text!r}"
            )
    comps = [parse_composition(text) for text in args.compositions]
    if not (singles or unders or comps):
        raise UserError("nothing to run: give --prompts, --underspecified or --compositions")
    torch.set_num_threads(args.threads)
    quick = args.quick
    if quick:
        singles, comps = singles[:1], comps[:1]
    seeds = [args.seed + i for i in range(1 if quick else args.seeds)]
    under_seeds = [args.seed + i for i in range(1 if quick else args.under_seeds)]
    comp_seeds = [args.seed + i for i in range(1 if quick else args.comp_seeds)]
    prior_samples = 4 if quick else args.prior_samples
    ddim_steps = 2 if quick else PRIOR_DDIM_STEPS
    size = 32 if quick else EVAL_SIZE
    n_train, n_test, epochs = (96, 32, 1) if quick else (1600, 400, 12)
    methods = list(dict.fromkeys(args.methods))
    if args.ablation:
        methods += [a for a in ABLATIONS if a not in methods]

    start = time.perf_counter()
    first = (singles or unders or comps)[0].text
    if args.pipeline is None:
        base = preset_config(PRESET, first)
        steps: int | None = args.steps or (3 if quick else base.steps)
    else:
        base = pipeline_config(args.pipeline, first).stages[0].config
        steps = args.steps or (3 if quick else None)
    fields = list(dict.fromkeys(args.field))
    bases = {f: base if f == "voxel" else preset_config(FIELD_PRESETS[f], first) for f in fields}
    rows = [
        r if f == "voxel" else f"{r}@{f}"
        for f in fields
        for r in stage_labels(methods, args.pipeline)
    ]
    prior = load_prior(args.weights, base)
    world = world_of(prior)
    if args.weights is not None:
        weights = str(args.weights)
    else:
        from cfd3d.priors.embedded.weights import default_weights_path

        weights = str(default_weights_path())

    tp = probe_module()
    print("training the probe on ground-truth renders", file=sys.stderr)
    probe_seed = tp.PROBE_SEED + 2 * PROBE_TRAIN_SEED
    probe_data = tp.probe_data(n_train, probe_seed, world)
    probe = tp.train_probe(probe_data, epochs, PROBE_TRAIN_SEED)
    test_data = tp.probe_data(n_test, probe_seed + 1, world)
    probe_color, probe_shape = tp.probe_accuracy(probe, test_data)

    prior_freq: dict[str, torch.Tensor] = {}
    prior_classes: dict[str, dict[str, float]] = {}
    prior_features: dict[str, torch.Tensor] = {}
    prior_reference: dict[str, dict[str, float]] = {}
    for index, p in enumerate([*singles, *unders]):
        print(f"sampling the prior for {p.text!r}", file=sys.stderr)
        images = tp.quantise(
            sample_images(
                prior,
                p.text,
                prior_samples,
                base.guidance_scale,
                ddim_steps,
                1000 * args.seed + index,
            )
        )
        prior_features[p.text] = probe_features(probe, images)
        half = prior_samples // 2
        named = (
            None if p.color is None else tp.COLOR_NAMES.index(p.color),
            None if p.shape is None else tp.PROBE_SHAPES.index(p.shape),
        )
        prior_reference[p.text] = {
            "probe_fid_floor": round(
                frechet_distance(prior_features[p.text][:half], prior_features[p.text][half:]), 4
            ),
            "probe_clip_prior": round(probe_clip(probe_probabilities(probe, images), named), 4),
        }
        if p.missing is None:
            continue
        names = class_names(p.missing)
        labels = classify_missing(probe, images, p.missing)
        prior_freq[p.text] = frequencies(labels, len(names))
        prior_classes[p.text] = {
            n: round(float(f), 4) for n, f in zip(names, prior_freq[p.text], strict=True)
        }
        prior_reference[p.text]["mode_tv_band"] = sampler_tv_band(
            prior_freq[p.text], len(under_seeds)
        )

    plan: list[tuple[Prompt | Composition, int]] = [(p, s) for p in singles for s in seeds]
    plan += [(p, s) for p in unders for s in under_seeds]
    plan += [(c, s) for c in comps for s in comp_seeds]
    jobs = [
        Job(bases[f], m, p, s, steps, size, args.pipeline)
        for f in fields
        for m in methods
        for p, s in plan
    ]
    results: list[Result] = []
    truths: dict[str, Views] = {}
    truth_world: dict[tuple[str, int], torch.Tensor] = {}

    def report(done: int, runs: list[tuple[Result, Views | None]]) -> None:
        for result, truth in runs:
            report_one(done, result, truth)

    def report_one(done: int, result: Result, truth: Views | None) -> None:
        results.append(result)
        prompt = result.prompt
        if isinstance(prompt, Composition):
            if truth is not None:
                truths.setdefault(prompt.text, truth)
            verdict = "composition " + verdict_text(
                judge_composition(result.views.composed, prompt, probe)
            )
        elif truth is not None:
            truths.setdefault(prompt.text, truth)
            truth_world[(prompt.text, result.seed)] = truth.world
            verdict = f"mask IoU {mask_iou(result.views, truths[prompt.text]):.3f}"
            verdict += f", mesh IoU {result.mesh_iou:.3f}"
        else:
            label = classify_missing(probe, result.views.world, prompt.missing)
            names = class_names(prompt.missing)
            verdict = f"{prompt.missing} {names[majority(label, len(names))]}"
        print(
            f"[{done}/{len(jobs)}] {result.method} {prompt.text!r} seed {result.seed}: "
            f"distilled in {result.distill_s:.1f} s, {verdict}",
            file=sys.stderr,
        )

    cached: dict[int, list[tuple[Result, Views | None]]] = {}
    paths: dict[int, Path] = {}
    if args.cache is not None:
        args.cache.mkdir(parents=True, exist_ok=True)
        weights_sha = sha256_of(Path(weights))
        for i, job in enumerate(jobs):
            paths[i] = args.cache / f"{job_key(job, weights_sha, args.threads)}.pt"
            runs = read_cached(paths[i])
            if runs is not None:
                cached[i] = runs
        print(f"{len(cached)} of {len(jobs)} runs read from {args.cache}", file=sys.stderr)

    def finish(done: int, i: int, runs: list[tuple[Result, Views | None]]) -> None:
        if i in paths and i not in cached:
            write_cached(paths[i], runs)
        report(done, runs)

    done = 0
    for i in sorted(cached):
        done += 1
        finish(done, i, cached[i])
    todo = [i for i in range(len(jobs)) if i not in cached]
    if args.jobs == 1:
        for i in todo:
            done += 1
            finish(done, i, run_job(jobs[i], prior))
    else:
        # Workers of one thread each, methods interleaved so that all advance together.
        order = sorted(todo, key=lambda i: (i % len(plan), i // len(plan)))
        with ProcessPoolExecutor(
            args.jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=start_worker,
            initargs=(args.weights, base, args.threads),
        ) as pool:
            futures = {pool.submit(run_job, jobs[i]): i for i in order}
            for future in as_completed(futures):
                done += 1
                finish(done, futures[future], future.result())
    if args.jobs != 1 or cached:
        rank = {(job_row(j), j.prompt.text, j.seed): i for i, j in enumerate(jobs)}
        results.sort(key=lambda r: rank[(r.method.split(":")[0], r.prompt.text, r.seed)])

    result: dict = {
        m: summarise(
            [r for r in results if r.method == m],
            truths,
            probe,
            prior_freq,
            prior_features,
        )
        for m in rows
    }
    if len(fields) > 1:
        result["wall_ratio_gaussians_voxel"] = {
            m: round(
                result[f"{m}@gaussians"]["distill_s_per_run"] / result[m]["distill_s_per_run"], 3
            )
            for m in stage_labels(methods, None)
        }
    result["prior_classes"] = prior_classes
    truth_fid, truth_clip = [], []
    for p in singles:  # the ground truth seen from the results' cameras, all seeds pooled
        views = torch.cat([truth_world[(p.text, s)] for s in seeds])
        named = (tp.COLOR_NAMES.index(p.color), tp.PROBE_SHAPES.index(p.shape))
        truth_fid.append(frechet_distance(probe_features(probe, views), prior_features[p.text]))
        truth_clip.append(probe_clip(probe_probabilities(probe, views), named))
        prior_reference[p.text]["probe_fid_truth"] = round(truth_fid[-1], 4)
        prior_reference[p.text]["probe_clip_truth"] = round(truth_clip[-1], 4)
    result["truth"] = {"probe_fid": mean_or_none(truth_fid), "probe_clip": mean_or_none(truth_clip)}
    if comps:
        result["comp_judge_gt"] = composition_truth(truths, comps, probe)
    result["prior_reference"] = prior_reference
    result["probe"] = {
        "color_acc": round(probe_color, 4),
        "shape_acc": round(probe_shape, 4),
        "n_train": n_train,
        "n_test": n_test,
    }
    result["config"] = {
        "seed": args.seed,
        "seeds_used": sorted({s for _, s in plan}),
        "tuning_seed": 0,
        "held_out": 0 not in {s for _, s in plan},
        "probe_seed": PROBE_TRAIN_SEED,
        "ablation": bool(args.ablation),
        "quick": quick,
        "preset": ", ".join(FIELD_PRESETS[f] for f in fields) if args.pipeline is None else None,
        "pipeline": args.pipeline,
        "steps": steps,
        "guidance_scale": base.guidance_scale,
        "prompts": [p.text for p in singles],
        "underspecified": [p.text for p in unders],
        "compositions": [c.text for c in comps],
        "seeds": len(seeds),
        "under_seeds": len(under_seeds),
        "comp_seeds": len(comp_seeds),
        "prior_samples": prior_samples,
        "prior_ddim_steps": ddim_steps,
        "orbit": {
            "views": ORBIT_VIEWS,
            "elevation_deg": ELEVATION,
            "distance": DISTANCE,
            "fovy_deg": FOVY,
            "size": size,
        },
        "weights": weights,
        "world": asdict(world),
        "threads": args.threads,
        "jobs": args.jobs,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "columns": [[p.text, len(seeds)] for p in singles]
        + [[p.text, len(under_seeds)] for p in unders]
        + [[c.text, len(comp_seeds)] for c in comps],
    }
    result["load_average"] = [round(v, 2) for v in os.getloadavg()]
    result["wall_s"] = round(time.perf_counter() - start, 1)
    docs = args.docs if args.docs is not None else (None if quick else DOCS)
    if docs is not None:
        command = shlex.join(["python", "benchmarks/toyworld.py", *sys.argv[1:]])
        stem = "toyworld" if args.pipeline is None else f"toyworld-{args.pipeline}"
        if fields != ["voxel"]:
            stem = "toyworld-gaussians"
        text = markdown(result, rows, command, machine(prior.device), stem)
        atomic_write_text(Path(docs) / f"{stem}.md", text)
        atomic_write_bytes(Path(docs) / f"{stem}.png", figure_png(results, truths, rows))
        result["docs"] = str(docs)
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seed",
        type=int,
        default=HELD_OUT_SEED,
        help=f"the first seed of every prompt (default {HELD_OUT_SEED}: seed 0 tuned the preset)",
    )
    parser.add_argument(
        "--prompts", nargs="*", default=list(SINGLE_PROMPTS), help="single-object prompts"
    )
    parser.add_argument(
        "--underspecified",
        nargs="*",
        default=list(UNDERSPECIFIED),
        help="prompts without a colour or a shape ('a red object', 'a torus')",
    )
    parser.add_argument(
        "--compositions",
        nargs="*",
        default=list(COMPOSITIONS),
        help="two-object prompts ('a red cube on top of a blue sphere', '... next to ...'); "
        "none to leave them out",
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds per single-object prompt")
    parser.add_argument(
        "--under-seeds", type=int, default=8, help="seeds per underspecified prompt"
    )
    parser.add_argument("--comp-seeds", type=int, default=2, help="seeds per composition")
    parser.add_argument(
        "--steps", type=int, default=None, help="steps per run (default: the preset's, 500)"
    )
    parser.add_argument(
        "--methods", nargs="+", default=list(METHODS), help=", ".join(METHODS) + " (default: all)"
    )
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="also CFD with fixed per-pixel noise (cfd-fixed) and with fresh noise (cfd-fresh)",
    )
    parser.add_argument(
        "--prior-samples", type=int, default=64, help="prior samples per underspecified prompt"
    )
    parser.add_argument(
        "--weights", type=Path, default=None, help="embedded prior weights (default: shipped)"
    )
    parser.add_argument(
        "--docs", type=Path, default=None, help="write toyworld.md/.png here (default: docs/)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (per job)")
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs in parallel, each in its own process"
    )
    parser.add_argument(
        "--pipeline",
        default=None,
        help="run each method through this cfd3d generate pipeline (e.g. toy) and score "
        "every stage",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run of seconds; writes no docs"
    )
    parser.add_argument(
        "--field",
        nargs="+",
        choices=tuple(FIELD_PRESETS),
        default=["voxel"],
        help="the field(s) each method distils: voxel (cpu-demo, default), gaussians "
        "(toy-gaussians), or both (the Gaussians' wall time per run beside the voxel's)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="keep each run's result in this folder and reuse it when the benchmark is run "
        "again (an interrupted table resumes; a changed config or prior runs anew)",
    )
    args = parser.parse_args(argv)
    return guarded(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
