"""Does the embedded toy-world prior draw what it is told? (issue 5)

Judges DDIM samples of the embedded prior (:mod:`cfd3d.priors.embedded`) without looking
at any ground truth of the samples themselves. Every ground-truth render (the probe's data,
the judges' checks) is made in the prior's own world (``EmbeddedPrior.world``: its
cameras, its head's face colour), so a prior trained on another world is judged on it:

1. A probe classifier, a small CNN with a colour head (the 10 named colours) and a shape
   head (the 6 basic shapes), is trained only on ground-truth renders of single basic
   shapes from the toy world (:func:`~cfd3d.priors.embedded.world.render_world` with seeds
   that the prior's training never used) and tested on other held-out renders
   (``probe_acc``: the smaller of ``probe_color_acc`` and ``probe_shape_acc``). Heads are
   left out: seen from behind a head is a sphere, and from the side its face is a sliver
   a 32-pixel probe cannot be held to.
2. ``color_acc`` / ``shape_acc``: the probe's verdict on ``--samples`` DDIM samples
   (``--steps`` 50) of each of 16 prompts "a {colour} {shape}" that together name all 10
   colours and all 6 basic shapes, at guidance ``--guidance``. ``by_guidance`` repeats this
   at guidance 1, 3 and 7.5 (``--sweep-samples`` per prompt, the same seeds; the scale equal
   to ``--guidance`` reuses the main run).
3. ``relation_acc``: 8 composition prompts with two well-separated colours, four "X on top
   of Y" and four "X next to Y, front view", judged by geometry alone (:func:`judge_relation`):
   each pixel gets the named colour that explains it best as a shaded albedo (see
   :func:`segment`); a sample counts as correct when both named colours cover at least
   :data:`MIN_PIXELS` pixels and their centroids are ordered as the prompt says (X's above
   Y's for "on": the first world's cameras look from 0-40° elevation, so "above in the
   world" is "higher in the image"; a world whose cameras reach overhead views asks for
   ", front view" here too, see :func:`relation_prompt`; X's left of Y's for "next to",
   which the toy world defines from the front, and every front view, within 45° of azimuth
   0, keeps left on the left). ``relation_judge_acc_gt`` is the judge's accuracy on
   ground-truth renders of the same eight scenes from the world's cameras (its front views
   where the prompt names one), ``relation_judge_swapped_gt`` the fraction of them it
   (wrongly) accepts for the swapped prompt ("Y on top of X").
4. ``face_acc``: for each of :data:`FACE_COLORS`, ``--face-samples`` samples of "a {colour}
   head, front view" and as many of "..., back view", judged by pixels alone
   (:func:`face_share`: the share of the head's pixels that the face colour explains
   better than the head's, where the head surrounds them); a front sample is right when
   its share reaches :data:`FACE_SHARE`, a back sample when it stays below.
   ``face_acc`` is the mean over both kinds (``face_front_rate``, ``face_back_rate``);
   ``face_judge_acc_gt`` the same judge on ground-truth renders from the world's front- and
   back-view cameras (:func:`sector_cameras`), with the world's face colour.
5. ``sample_s``: median wall time of one prompt's ``--samples`` samples at ``--guidance``
   on this CPU with ``--threads`` threads; ``weights_mb``: size of the float16 safetensors
   file in MB (10^6 bytes).

``targets_met``: ``probe_acc >= 0.95``, ``color_acc >= 0.95`` and ``shape_acc >= 0.85``.
About 10 minutes on one thread of a shared 2-core machine: the probe 1.5, the 16 x 16
guided samples 4.5, the sweep 2 and the compositions 1.2; ``--threads 2`` on an idle
machine roughly halves it. ``--quick`` shrinks everything to a smoke test of seconds.

Usage::

    python benchmarks/toy_prior.py [--seed 0] [--guidance G] [--weights PATH |
                                    --checkpoint /work/train/checkpoint.pt] [--quick]

Without ``--weights`` or ``--checkpoint`` the shipped weights are judged. The last line of
stdout is one JSON object (``world``: the world judged against); a missing or unreadable
weights file is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from cfd3d.cli import guarded
from cfd3d.errors import UserError
from cfd3d.generate.config import preset_config
from cfd3d.priors.embedded.commands import sample_images
from cfd3d.priors.embedded.prior import EmbeddedPrior
from cfd3d.priors.embedded.tokenizer import WordTokenizer
from cfd3d.priors.embedded.unet import TinyUNet, UNetConfig
from cfd3d.priors.embedded.weights import default_weights_path, weights_to_bytes
from cfd3d.priors.embedded.world import (
    BASIC_SHAPES,
    WORLD_SHADING,
    Item,
    WorldConfig,
    render_world,
    vocabulary,
    world_from_dict,
)
from cfd3d.scene.sampling import CameraSamplerConfig, ViewLabelConfig, sample_cameras
from cfd3d.scene.toy import COLORS, RELATIONS, pair, single

DEMO_GUIDANCE = preset_config("cpu-demo", "a red cube").guidance_scale
"""The guidance of the embedded prior's distillation preset: the main figures' scale."""

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
PROBE_SHAPES: tuple[str, ...] = BASIC_SHAPES
SWEEP_GUIDANCE: tuple[float, ...] = (1.0, 3.0, 7.5)
PROBE_SEED = 1000
"""Probe renders use seeds ``PROBE_SEED + 2 * seed`` (train) and ``+ 1`` (test); the
prior's own training set is rendered with its ``--seed`` (0 for the shipped weights)."""

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


def single_prompts(n: int = 16) -> list[tuple[str, str]]:
    """``n`` (colour, shape) prompts; 16 or more cover all colours and basic shapes, each
    combination at most once (colours and shapes cycle with periods 10 and 6)."""
    return [
        (COLOR_NAMES[i % len(COLOR_NAMES)], BASIC_SHAPES[i % len(BASIC_SHAPES)]) for i in range(n)
    ]


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


# ----------------------------------------------------------------------------- the probe


class Probe(nn.Module):
    """A small CNN with a colour head and a shape head, on ``(B, 3, 32, 32)`` images in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()
            )

        self.features = nn.Sequential(
            block(3, 16),
            nn.MaxPool2d(2),
            block(16, 32),
            block(32, 32),
            nn.MaxPool2d(2),
            block(32, 64),
            block(64, 64),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.color = nn.Linear(64, len(COLOR_NAMES))
        self.shape = nn.Linear(64, len(PROBE_SHAPES))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 10)`` colour and ``(B, 7)`` shape logits."""
        h = self.features(images * 2.0 - 1.0)
        return self.color(h), self.shape(h)


@dataclass(frozen=True)
class LabelledImages:
    """Images with the probe's labels.

    Attributes:
        images: ``(N, 3, S, S)`` float in [0, 1].
        color: ``(N,)`` index into :data:`COLOR_NAMES`.
        shape: ``(N,)`` index into :data:`PROBE_SHAPES`.
    """

    images: torch.Tensor
    color: torch.Tensor
    shape: torch.Tensor


def probe_labels(items: list[Item]) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour and shape labels of single-primitive items."""
    colors = [COLOR_NAMES.index(item.scene.primitives[0].color) for item in items]
    shapes = [PROBE_SHAPES.index(item.scene.primitives[0].shape) for item in items]
    return torch.tensor(colors), torch.tensor(shapes)


def probe_data(n: int, seed: int, world: WorldConfig) -> LabelledImages:
    """``n`` ground-truth renders of single basic shapes from ``world``."""
    images, items = render_world(replace(world, p_head=0.0, p_pair=0.0), n, seed)
    color, shape = probe_labels(items)
    return LabelledImages(images.float() / 255.0, color, shape)


def augment(images: torch.Tensor, gen: torch.Generator, shift: int = 3) -> torch.Tensor:
    """Random mirror, shift by up to ``shift`` pixels (on white) and Gaussian noise up to
    sigma 0.05, so that the probe tolerates the small flaws of generated images."""
    b, _, h, w = images.shape
    flip = torch.rand(b, generator=gen) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    padded = F.pad(images, (shift,) * 4, value=1.0)
    dy, dx = torch.randint(0, 2 * shift + 1, (2, b), generator=gen)
    images = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    sigma = 0.05 * torch.rand((b, 1, 1, 1), generator=gen)
    return (images + sigma * torch.randn(images.shape, generator=gen)).clamp(0.0, 1.0)


def train_probe(data: LabelledImages, epochs: int, seed: int, batch: int = 64) -> Probe:
    """Adam on the sum of both heads' cross-entropies, cosine learning rate."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    probe = Probe()
    n = data.images.shape[0]
    steps = epochs * -(-n // batch)
    optimiser = torch.optim.Adam(probe.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    probe.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for first in range(0, n, batch):
            index = order[first : first + batch]
            color, shape = probe(augment(data.images[index], gen))
            loss = F.cross_entropy(color, data.color[index]) + F.cross_entropy(
                shape, data.shape[index]
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
    return probe.eval()


@torch.no_grad()
def classify(probe: Probe, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N,)`` colour and shape indices predicted for ``(N, 3, S, S)`` images in [0, 1]."""
    colors, shapes = [], []
    for first in range(0, images.shape[0], 256):
        color, shape = probe(images[first : first + 256])
        colors.append(color.argmax(-1))
        shapes.append(shape.argmax(-1))
    return torch.cat(colors), torch.cat(shapes)


def probe_accuracy(probe: Probe, data: LabelledImages) -> tuple[float, float]:
    """Colour and shape accuracy of ``probe`` on labelled images."""
    color, shape = classify(probe, data.images)
    return (
        float((color == data.color).float().mean()),
        float((shape == data.shape).float().mean()),
    )


# ------------------------------------------------------------------ the relation judge


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
    explains best among the pixels with head pixels on both sides along their row or their
    column, so a pale face on a white background counts where the head surrounds it and
    the background around a ball does not. 0 where the head covers fewer than
    :data:`MIN_PIXELS` pixels.
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

    inside = between(head, 1) | between(head, 2)
    face = explained & (label == 1) & inside
    n_head, n_face = head.sum(dim=(1, 2)).float(), face.sum(dim=(1, 2)).float()
    share = n_face / (n_head + n_face).clamp_min(1.0)
    return torch.where(n_head >= MIN_PIXELS, share, torch.zeros_like(share))


def render_heads(
    colors: tuple[str, ...], views: int, seed: int, world: WorldConfig
) -> tuple[torch.Tensor, ...]:
    """Ground-truth renders in [0, 1] of a head of each colour with ``world``'s face, lit
    like its images (its share in flat albedo): ``(len(colors) * views, 3, S, S)`` from its
    front-view cameras and as many from its back-view ones, grouped by colour."""
    from cfd3d.render.volume import RendererConfig, VolumeRenderer

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
                        world.image_size,
                        world.image_size,
                        shading="albedo" if albedo else "diffuse",
                        generator=gen,
                    ).rgb
                out[side].append(quantise(rgb.permute(0, 3, 1, 2)))
    return torch.cat(out["front"]), torch.cat(out["back"])


def render_pairs(
    specs: tuple[tuple[str, str, str, str, str], ...], views: int, seed: int, world: WorldConfig
) -> torch.Tensor:
    """``(len(specs) * views, 3, S, S)`` ground-truth renders in [0, 1] of each pair, from
    ``world``'s cameras (its front-view ones where the prompt names the front view, see
    :func:`names_front`), lit like its images (its share in flat albedo), grouped by spec."""
    from cfd3d.render.volume import RendererConfig, VolumeRenderer

    renderer = VolumeRenderer(RendererConfig(n_samples=world.n_samples, shading=WORLD_SHADING))
    gen = torch.Generator().manual_seed(seed)
    size = world.image_size
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
                    size,
                    size,
                    shading="albedo" if albedo else "diffuse",
                    generator=gen,
                ).rgb
            out.append((rgb.clamp(0, 1) * 255).round().permute(0, 3, 1, 2) / 255.0)
    return torch.cat(out)


# ------------------------------------------------------------------------ the prior


def prior_from_checkpoint(path: Path) -> tuple[EmbeddedPrior, int]:
    """The EMA model of a ``cfd3d train-prior`` checkpoint (for judging a run in progress),
    with the world it is trained on (the first world for checkpoints that do not say), and
    its step."""
    if not path.is_file():
        raise UserError(
            f"training checkpoint '{path}' not found; pass the --work folder's checkpoint.pt"
        )
    state = torch.load(path, map_location="cpu", weights_only=False)
    unet = dict(state["config"]["unet"])
    unet["channels"] = tuple(unet["channels"])
    unet["attention_levels"] = tuple(unet.get("attention_levels", ()))
    config = UNetConfig(**unet)
    model = TinyUNet(config)
    model.load_state_dict(state["ema"])
    model.eval().requires_grad_(False)
    data = state.get("data") or {}
    world = world_from_dict(data["world"]) if "world" in data else None
    tokenizer = WordTokenizer(vocabulary(), config.max_tokens)
    return EmbeddedPrior(model, tokenizer, world=world), int(state["step"])


def quantise(images: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] images to 8 bits, as a saved sample would be."""
    return (images.clamp(0, 1) * 255).round() / 255.0


@dataclass(frozen=True)
class SingleScores:
    """The probe's verdict on samples of single-object prompts.

    Attributes:
        color_acc: fraction of samples whose colour is the prompt's.
        shape_acc: fraction of samples whose shape is the prompt's.
        n: number of samples.
        per_prompt: prompt -> [colour accuracy, shape accuracy].
        seconds: wall time of each prompt's sampling.
    """

    color_acc: float
    shape_acc: float
    n: int
    per_prompt: dict[str, list[float]]
    seconds: list[float]


def judge_singles(
    prior: EmbeddedPrior,
    probe: Probe,
    prompts: list[tuple[str, str]],
    samples: int,
    guidance: float,
    steps: int,
    seed: int,
) -> SingleScores:
    """Judge ``samples`` DDIM samples of each "a {colour} {shape}" prompt with the probe."""
    color_hits, shape_hits, seconds, per_prompt = [], [], [], {}
    for index, (color, shape) in enumerate(prompts):
        prompt = f"a {color} {shape}"
        tic = time.perf_counter()
        images = sample_images(prior, prompt, samples, guidance, steps, seed * 1000 + index)
        seconds.append(time.perf_counter() - tic)
        got_color, got_shape = classify(probe, quantise(images))
        hit_c = (got_color == COLOR_NAMES.index(color)).float()
        hit_s = (got_shape == PROBE_SHAPES.index(shape)).float()
        color_hits.append(hit_c)
        shape_hits.append(hit_s)
        per_prompt[prompt] = [round(float(hit_c.mean()), 3), round(float(hit_s.mean()), 3)]
    return SingleScores(
        color_acc=round(float(torch.cat(color_hits).mean()), 4),
        shape_acc=round(float(torch.cat(shape_hits).mean()), 4),
        n=samples * len(prompts),
        per_prompt=per_prompt,
        seconds=seconds,
    )


def run(args: argparse.Namespace) -> int:
    counts = {
        "--samples": args.samples,
        "--sweep-samples": args.sweep_samples,
        "--relation-samples": args.relation_samples,
        "--face-samples": args.face_samples,
        "--steps": args.steps,
        "--threads": args.threads,
    }
    for flag, value in counts.items():
        if value <= 0:
            raise UserError(f"{flag} must be positive, got {value}")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    quick = args.quick
    n_probe_train, n_probe_test, epochs = (96, 32, 1) if quick else (1600, 400, 12)
    samples = 2 if quick else args.samples
    sweep_samples = 1 if quick else args.sweep_samples
    rel_samples = 2 if quick else args.relation_samples
    face_samples = 2 if quick else args.face_samples
    gt_views = 2 if quick else 8
    steps = 2 if quick else args.steps
    prompts = single_prompts(2 if quick else 16)
    specs = RELATION_SPECS[3:5] if quick else RELATION_SPECS

    result: dict = {"seed": args.seed, "quick": quick, "threads": args.threads}
    if args.checkpoint is not None:
        prior, step = prior_from_checkpoint(args.checkpoint)
        result["checkpoint"], result["checkpoint_step"] = str(args.checkpoint), step
        metadata = {"vocabulary": list(prior.tokenizer.words), "schedule": "scaled_linear"}
        result["weights_mb"] = round(len(weights_to_bytes(prior.model, metadata)) / 1e6, 2)
    else:
        path = args.weights or default_weights_path()
        prior = EmbeddedPrior.load(path)
        result["weights"] = str(path)
        result["weights_mb"] = round(path.stat().st_size / 1e6, 2)
    if prior.input_shape != (3, 32, 32):
        raise UserError(f"the benchmark judges 32x32 priors; this one draws {prior.input_shape}")
    world = prior.world
    result["world"] = asdict(world)

    # 1. The probe, on ground truth only.
    print("training the probe on ground-truth renders", file=sys.stderr)
    train_data = probe_data(n_probe_train, PROBE_SEED + 2 * args.seed, world)
    test_data = probe_data(n_probe_test, PROBE_SEED + 2 * args.seed + 1, world)
    probe = train_probe(train_data, epochs, args.seed)
    probe_color, probe_shape = probe_accuracy(probe, test_data)
    result.update(
        probe_acc=round(min(probe_color, probe_shape), 4),
        probe_color_acc=round(probe_color, 4),
        probe_shape_acc=round(probe_shape, 4),
        probe_n=[n_probe_train, n_probe_test],
        probe_s=round(time.perf_counter() - start, 1),
    )

    # 2. Single objects at the main guidance, then the sweep.
    print(f"judging single objects at guidance {args.guidance}", file=sys.stderr)
    main_run = judge_singles(prior, probe, prompts, samples, args.guidance, steps, args.seed)
    result.update(
        guidance=args.guidance,
        color_acc=main_run.color_acc,
        shape_acc=main_run.shape_acc,
        n=main_run.n,
        samples_per_prompt=samples,
        steps=steps,
        sample_s=round(statistics.median(main_run.seconds), 2),
        per_prompt=main_run.per_prompt,
    )
    by_guidance = {}
    for scale in SWEEP_GUIDANCE:
        if scale == args.guidance:
            sweep = main_run
        else:
            print(f"judging single objects at guidance {scale}", file=sys.stderr)
            sweep = judge_singles(prior, probe, prompts, sweep_samples, scale, steps, args.seed)
        by_guidance[f"{scale:g}"] = {
            "color_acc": sweep.color_acc,
            "shape_acc": sweep.shape_acc,
            "n": sweep.n,
        }
    result["by_guidance"] = by_guidance

    # 3. Compositions, and the judge checked on ground truth.
    print("judging compositions", file=sys.stderr)
    truth = render_pairs(specs, gt_views, PROBE_SEED + 2 * args.seed, world)
    right, swapped, hits, by_kind = [], [], [], {"on": [], "next_to": []}
    for index, spec in enumerate(specs):
        ca, _, relation, cb, _ = spec
        views = truth[index * gt_views : (index + 1) * gt_views]
        right.append(judge_relation(views, ca, relation, cb))
        swapped.append(judge_relation(views, cb, relation, ca))
        images = sample_images(
            prior,
            relation_prompt(spec, world),
            rel_samples,
            args.guidance,
            steps,
            args.seed * 1000 + 500 + index,
        )
        hit = judge_relation(quantise(images), ca, relation, cb)
        hits.append(hit)
        by_kind[relation].append(hit)
    result.update(
        relation_acc=round(float(torch.cat(hits).float().mean()), 4),
        relation_by_kind={
            k: round(float(torch.cat(v).float().mean()), 4) for k, v in by_kind.items() if v
        },
        relation_n=rel_samples * len(specs),
        relation_judge_acc_gt=round(float(torch.cat(right).float().mean()), 4),
        relation_judge_swapped_gt=round(float(torch.cat(swapped).float().mean()), 4),
    )
    # 4. The head's face, front against back, and the judge checked on ground truth.
    print("judging the head's face", file=sys.stderr)
    face_colors = FACE_COLORS[:1] if quick else FACE_COLORS
    front_gt, back_gt = render_heads(face_colors, gt_views, PROBE_SEED + 2 * args.seed, world)
    front_hits, back_hits = [], []
    for index, color in enumerate(face_colors):
        for side, hits in (("front", front_hits), ("back", back_hits)):
            images = sample_images(
                prior,
                f"a {color} head, {side} view",
                face_samples,
                args.guidance,
                steps,
                args.seed * 1000 + 700 + 2 * index + (side == "back"),
            )
            share = face_share(quantise(images), color, world.face_rgb)
            hits.append(share >= FACE_SHARE if side == "front" else share < FACE_SHARE)
    judge_gt = []
    for index, color in enumerate(face_colors):
        part = slice(index * gt_views, (index + 1) * gt_views)
        judge_gt.append(face_share(front_gt[part], color, world.face_rgb) >= FACE_SHARE)
        judge_gt.append(face_share(back_gt[part], color, world.face_rgb) < FACE_SHARE)
    front_rate = float(torch.cat(front_hits).float().mean())
    back_rate = float(torch.cat(back_hits).float().mean())
    result.update(
        face_acc=round((front_rate + back_rate) / 2, 4),
        face_front_rate=round(front_rate, 4),
        face_back_rate=round(back_rate, 4),
        face_n=2 * face_samples * len(face_colors),
        face_judge_acc_gt=round(float(torch.cat(judge_gt).float().mean()), 4),
    )
    result["load_average"] = [round(v, 2) for v in os.getloadavg()]
    result["total_s"] = round(time.perf_counter() - start, 1)
    result["targets_met"] = bool(
        result["probe_acc"] >= 0.95 and result["color_acc"] >= 0.95 and result["shape_acc"] >= 0.85
    )
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seeds the probe data and the samples")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--weights", type=Path, default=None, help="a safetensors weights file")
    source.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="a 'cfd3d train-prior' checkpoint.pt (judges its EMA model; for development)",
    )
    parser.add_argument(
        "--guidance",
        type=float,
        default=DEMO_GUIDANCE,
        help=f"CFG scale of the main figures (default: the cpu-demo preset's, {DEMO_GUIDANCE:g})",
    )
    parser.add_argument("--samples", type=int, default=16, help="samples per single-object prompt")
    parser.add_argument(
        "--sweep-samples",
        type=int,
        default=4,
        help="samples per prompt at the other guidance scales",
    )
    parser.add_argument("--relation-samples", type=int, default=8, help="samples per composition")
    parser.add_argument(
        "--face-samples", type=int, default=8, help="samples per head prompt and side"
    )
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds)")
    args = parser.parse_args(argv)
    return guarded(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
