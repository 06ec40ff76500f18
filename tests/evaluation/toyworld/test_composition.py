"""cfd3d.evaluation.toyworld.composition: the judge of two-object results."""

import torch

from cfd3d.evaluation.toyworld.classifier import COLOR_NAMES, PROBE_SHAPES, PROBE_SIZE
from cfd3d.evaluation.toyworld.composition import (
    Composed,
    crop_data,
    judge_composition,
    relation_holds,
)
from cfd3d.evaluation.toyworld.judges import FOREGROUND, MIN_PIXELS, segment
from cfd3d.evaluation.toyworld.prompts import COMPOSITIONS, parse_composition
from cfd3d.evaluation.toyworld.setting import HEADLIGHT, evaluation_cameras
from cfd3d.evaluation.toyworld.views import look
from cfd3d.priors.embedded.world import WorldConfig
from cfd3d.render import SolidBackground
from cfd3d.scene.toy import COLORS, single


def test_the_composition_judge_passes_the_truth_and_refuses_the_swap_and_a_smear(shipped_run):
    run, world = shipped_run, WorldConfig()
    front = evaluation_cameras()[0][0:1]  # the orbit's first view, as the crops'
    for text in COMPOSITIONS:
        c = parse_composition(text)
        composed = look(run, c.scene(), 64, 100, world, c).composed
        visible = composed.pixels >= MIN_PIXELS
        assert bool((visible.sum(dim=1) * 2 >= visible.shape[1]).all()), text
        assert relation_holds(composed.centroids, c.relation), text
        assert not relation_holds(composed.centroids.flip(0), c.relation), text
        # each object's crop is the single object as the probe sees it: re-centred, its size
        for k in range(2):
            alone = (
                run.renderer(
                    single(c.colors[k], c.shapes[k]),
                    front,
                    32,
                    32,
                    shading=HEADLIGHT,
                    background=SolidBackground(),
                )
                .rgb[0]
                .permute(2, 0, 1)
            )
            crop = composed.crops[k, 0]
            a, b = (1 - crop).amax(0) > FOREGROUND, (1 - alone).amax(0) > FOREGROUND
            assert float((a & b).sum() / (a | b).sum()) >= 0.6, (text, k)
    # one ball in two colours (a head whose face is blue): both colours, no relation
    smear = parse_composition("a red sphere on top of a blue sphere")
    ball = single("red", "head", COLORS["blue"])
    composed = look(run, ball, 32, 100, world, smear).composed
    assert not relation_holds(composed.centroids, "on")
    assert not relation_holds(composed.centroids, "next_to")
    assert not torch.isnan(composed.centroids).any()


def test_crop_data_labels_each_crop_with_the_object_it_shows():
    """Every crop of a random true pair shows mostly its labelled colour (the other object
    is cut away), no hidden object gives a crop, and the crops follow the seed."""
    data = crop_data(6, seed=3, size=32)
    assert 6 <= len(data.shape) <= 12
    assert data.images.shape[1:] == (3, PROBE_SIZE, PROBE_SIZE)
    labels = segment(data.images)
    for i in range(len(data.shape)):
        shown = labels[i][labels[i] >= 0]
        assert shown.numel() >= MIN_PIXELS
        assert int(torch.mode(shown).values) == int(data.color[i]), i
    again = crop_data(6, seed=3, size=32)
    assert torch.equal(again.images, data.images) and torch.equal(again.shape, data.shape)
    assert not torch.equal(crop_data(6, seed=4, size=32).images, data.images)


def test_crop_data_softens_the_same_pairs_or_keeps_them_crisp():
    """By default the crops' surfaces range from crisp to soft (PROBE_SHARPNESS), the same
    pairs seen from the same cameras as crisp crops (``sharpness=None``); softer surfaces
    blur the crops' edges."""
    crisp = crop_data(6, seed=3, size=32, sharpness=None)
    mixed = crop_data(6, seed=3, size=32)
    soft = crop_data(6, seed=3, size=32, sharpness=(0.04, 0.04))
    assert torch.equal(crisp.shape, soft.shape) and torch.equal(crisp.color, soft.color)
    assert not torch.equal(crisp.images, mixed.images)

    def edge(images):  # pixels between object and white: a soft rim has more of them
        return float(((images.amin(dim=1) > 0.05) & (images.amin(dim=1) < 0.9)).float().mean())

    assert edge(soft.images) > edge(crisp.images)


class _ReadsTheMarker(torch.nn.Module):
    """A stand-in probe whose shape logits are the crop's top-left pixel's three channels
    scattered onto sphere, cube and cylinder (the colour head always says red)."""

    def forward(self, images):
        shape = torch.full((images.shape[0], len(PROBE_SHAPES)), -20.0)
        shape[:, :3] = images[:, :, 0, 0] * 10.0
        color = torch.zeros(images.shape[0], len(COLOR_NAMES))
        color[:, COLOR_NAMES.index("red")] = 1.0
        return color, shape


def test_the_judge_breaks_a_tie_of_views_by_the_probes_probabilities():
    c = parse_composition("a red cube on top of a blue sphere")
    views = 4
    crops = torch.zeros(2, views, 3, PROBE_SIZE, PROBE_SIZE)
    crops[0, :, 1, 0, 0] = 1.0  # the cube: read as a cube in every view
    # the sphere: two views barely sphere, two clearly cylinder, a tie of votes
    crops[1, :2, :, 0, 0] = torch.tensor([0.52, 0.0, 0.5])
    crops[1, 2:, :, 0, 0] = torch.tensor([0.0, 0.0, 1.0])
    composed = Composed(
        pixels=torch.full((2, views), 100),
        crops=crops,
        centroids=torch.tensor([[0.0, 0.0, 0.3], [0.0, 0.0, -0.1]]),
    )
    verdict = judge_composition(composed, c, _ReadsTheMarker())
    assert verdict["shapes_seen"] == ["cube", "cylinder"]  # not the first class, sphere
    assert verdict["shape"] == [True, False] and not verdict["comp_right"]
    # clearly sphere in two views, barely cylinder in two: the tie goes the other way
    crops[1, :2, :, 0, 0] = torch.tensor([0.6, 0.0, 0.5])
    crops[1, 2:, :, 0, 0] = torch.tensor([0.5, 0.0, 0.51])
    assert judge_composition(composed, c, _ReadsTheMarker())["shapes_seen"][1] == "sphere"
