"""The probe: a small CNN that names the colour and the shape of a toy-world image.

It is trained only on ground-truth renders of single basic shapes from a prior's toy world
(:func:`probe_data`, :func:`train_probe`) and then judges images it has never seen: the
prior's own samples (``benchmarks/toy_prior.py``) and the renders of distilled results
(``benchmarks/toyworld.py``, where its features also feed probe FID and probe CLIP,
:mod:`cfd3d.evaluation.probe`). Heads are left out of its data: seen from behind a head
is a sphere, and from the side its face is a sliver a 32-pixel probe cannot be held to.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn import functional as F

from cfd3d.evaluation.probe import probe_probabilities
from cfd3d.priors.embedded.world import BASIC_SHAPES, Item, WorldConfig, render_world
from cfd3d.scene.toy import COLORS

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
"""The colour head's classes, in order."""
PROBE_SHAPES: tuple[str, ...] = BASIC_SHAPES
"""The shape head's classes, in order."""
PROBE_SIZE = 32
"""The probe's image size (the toy world's)."""
PROBE_SEED = 1000
"""Probe renders use seeds ``PROBE_SEED + 2 * seed`` (train) and ``+ 1`` (test); the
prior's own training set is rendered with its ``--seed`` (0 for the shipped weights)."""
PROBE_IMAGES = (4800, 800, 20)
"""The probe's training and test renders and its epochs. With 1600 training renders the
probe told shapes apart in 99 % of the first world's views, but in a world whose cameras
reach overhead (elevations up to 90°) in only 89.5 % (94.5 % below 60°, 83.5 % above);
with 4800 it scored 100 % and 99.2 % there (800 held-out renders). Learning soft edges
too (:data:`PROBE_SHARPNESS`) takes 20 epochs rather than 12 (held-out crisp renders:
97.6 % after 12, 98.9 % after 20)."""
PROBE_SHARPNESS = (0.005, 0.04)
"""Range of the surface sharpness (world units, :class:`~cfd3d.scene.toy.ToyFieldConfig`)
of the probe's training renders, drawn log-uniformly per scene: from the world's crisp
0.005 to edges a few pixels wide at 32². A probe trained on crisp renders only named the
shapes of 99.5 % of held-out crisp renders but of 30 % of renders with surfaces at 0.015
(65 % under a Gaussian blur of half a pixel, 86 % of 64² renders area-averaged to 32²):
it read the soft edges of distilled fields, and anti-aliasing, as a shape of their own.
Trained on this range (and :data:`BLUR_SIGMA`), 98.9 % crisp, 99 % at 0.01-0.03, 98.4 %
blurred by 0.8 pixels, 98.5 % from 64² (docs/benchmarks.md, session 23)."""
BLUR_SIGMA = (0.0, 1.0)
"""Range of the Gaussian blur (pixels) :func:`augment` gives half of the training images."""


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
        """``(B, 10)`` colour and ``(B, 6)`` shape logits; images of another size than
        :data:`PROBE_SIZE` (a prior's samples at 64²) are area-resized to it first."""
        h = self.features(at_probe_size(images) * 2.0 - 1.0)
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
    """``n`` ground-truth renders of single basic shapes from ``world``, at the probe's
    :data:`PROBE_SIZE` whatever the world's image size (the judge is the same for a prior
    of any resolution), their surfaces from crisp to soft (:data:`PROBE_SHARPNESS`)."""
    singles = replace(world, p_head=0.0, p_pair=0.0, image_size=PROBE_SIZE)
    images, items = render_world(singles, n, seed, sharpness=PROBE_SHARPNESS)
    color, shape = probe_labels(items)
    return LabelledImages(images.float() / 255.0, color, shape)


def augment(images: torch.Tensor, gen: torch.Generator, shift: int = 3) -> torch.Tensor:
    """Random mirror, shift by up to ``shift`` pixels (on white), a Gaussian blur
    (:data:`BLUR_SIGMA`) for half the images and Gaussian noise up to sigma 0.05, so that
    the probe tolerates the small flaws of generated images and judges shapes, not edges."""
    b, _, h, w = images.shape
    flip = torch.rand(b, generator=gen) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    padded = F.pad(images, (shift,) * 4, value=1.0)
    dy, dx = torch.randint(0, 2 * shift + 1, (2, b), generator=gen)
    images = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    low, high = BLUR_SIGMA
    sigma = low + (high - low) * torch.rand(b, generator=gen)
    sigma = torch.where(torch.rand(b, generator=gen) < 0.5, sigma, torch.zeros(b))
    images = blurred(images, sigma)
    sigma = 0.05 * torch.rand((b, 1, 1, 1), generator=gen)
    return (images + sigma * torch.randn(images.shape, generator=gen)).clamp(0.0, 1.0)


def blurred(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` images each blurred by a Gaussian of its own ``sigma`` (pixels, 0:
    unchanged), edges extended; a separable 5-tap kernel."""
    b, c, h, w = images.shape
    taps = torch.arange(-2, 3, dtype=images.dtype)
    weights = torch.exp(-(taps**2) / (2.0 * sigma.clamp_min(1e-3)[:, None] ** 2))
    weights = (weights / weights.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)
    x = F.pad(images.reshape(1, b * c, h, w), (2, 2, 2, 2), mode="replicate")
    x = F.conv2d(x, weights[:, None, None, :], groups=b * c)
    x = F.conv2d(x, weights[:, None, :, None], groups=b * c)
    return x.reshape(b, c, h, w)


def train_probe(data: LabelledImages, epochs: int, seed: int, batch: int = 64) -> Probe:
    """Adam on the sum of both heads' cross-entropies, cosine learning rate; on one thread
    whatever the caller's (the caller's count is restored), so that a benchmark's
    ``--threads`` does not change the probe: trained on two threads, the composition
    judge's probe read one distilled sphere in 3 of 8 views as a sphere, on one 4 of 8."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_probe(data, epochs, seed, batch)
    finally:
        torch.set_num_threads(threads)


def _train_probe(data: LabelledImages, epochs: int, seed: int, batch: int) -> Probe:
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


def quantise(images: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] images to 8 bits, as a saved sample would be."""
    return (images.clamp(0, 1) * 255).round() / 255.0


def at_probe_size(images: torch.Tensor) -> torch.Tensor:
    """``(N, 3, S, S)`` images area-resized to :data:`PROBE_SIZE` (unchanged at that size):
    the judges of colours, relations and faces count pixels at the probe's size, so a
    prior's samples at a higher resolution are judged as its 32² renders would be."""
    if images.shape[-2:] == (PROBE_SIZE, PROBE_SIZE):
        return images
    return F.interpolate(images, size=(PROBE_SIZE, PROBE_SIZE), mode="area")


def class_names(missing: str) -> tuple[str, ...]:
    """The probe's classes of an attribute: :data:`COLOR_NAMES` for ``"color"``,
    :data:`PROBE_SHAPES` for ``"shape"``."""
    return COLOR_NAMES if missing == "color" else PROBE_SHAPES


def classify_missing(probe: torch.nn.Module, images: torch.Tensor, missing: str) -> torch.Tensor:
    """``(N,)`` class index of the missing attribute for ``(N, 3, 32, 32)`` images."""
    return missing_probabilities(probe, images, missing).argmax(-1)


def missing_probabilities(
    probe: torch.nn.Module, images: torch.Tensor, missing: str
) -> torch.Tensor:
    """``(N, classes)`` probabilities of the missing attribute for ``(N, 3, 32, 32)`` images."""
    color, shape = probe_probabilities(probe, images)
    return color if missing == "color" else shape


def majority(labels: torch.Tensor, n_classes: int, scores: torch.Tensor | None = None) -> int:
    """The most frequent label. A tie goes to the tied class with the larger sum of
    ``scores`` (``(N, n_classes)``, e.g. the probe's probabilities for the same images)
    over the images, and without scores (or on a tie of those too) to the smallest index.

    Breaking ties by class order would favour the first shapes (a sphere over a cylinder
    when four of eight views say each), and those are the shapes most compositions ask for.
    """
    counts = torch.bincount(labels, minlength=n_classes)
    tied = counts == counts.max()
    if scores is None or int(tied.sum()) == 1:
        return int(tied.nonzero()[0])
    total = scores.double().sum(dim=0).masked_fill(~tied, float("-inf"))
    return int(total.argmax())


def vote(probabilities: torch.Tensor) -> int:
    """The class named by most of ``(N, classes)`` probabilities' argmaxes, ties broken by
    the summed probabilities (:func:`majority`)."""
    return majority(probabilities.argmax(-1), probabilities.shape[-1], probabilities)
