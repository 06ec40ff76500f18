"""cfd3d.evaluation.toyworld.classifier: the probe learns from ground truth."""

from dataclasses import replace

import pytest
import torch

from cfd3d.evaluation.toyworld.classifier import (
    PROBE_SHARPNESS,
    PROBE_SIZE,
    Probe,
    at_probe_size,
    blurred,
    majority,
    probe_accuracy,
    probe_data,
    train_probe,
    vote,
)
from cfd3d.evaluation.toyworld.judges import render_heads, render_pairs
from cfd3d.priors.embedded.world import WorldConfig, render_world

WORLD = WorldConfig()


def test_probe_learns_colours_from_a_few_renders():
    data = probe_data(48, seed=7, world=WORLD)
    assert data.images.shape == (48, 3, 32, 32) and data.images.max() <= 1.0
    probe = train_probe(data, epochs=12, seed=0, batch=16)
    color_acc, _ = probe_accuracy(probe, data)
    assert color_acc >= 0.8


def test_the_probes_renders_range_from_crisp_to_soft_surfaces():
    """The probe learns shapes from renders whose edges are anything from the world's crisp
    ones to a distilled field's soft ones (PROBE_SHARPNESS), of the crisp world's scenes."""
    singles = replace(WORLD, p_head=0.0, p_pair=0.0)
    soft, soft_items = render_world(singles, 8, seed=7, sharpness=PROBE_SHARPNESS)
    crisp, crisp_items = render_world(singles, 8, seed=7)
    torch.testing.assert_close(probe_data(8, seed=7, world=WORLD).images, soft.float() / 255.0)
    assert [i.scene.primitives for i in soft_items] == [i.scene.primitives for i in crisp_items]
    assert [i.view for i in soft_items] == [i.view for i in crisp_items]
    sharpness = {i.scene.field_config.sharpness for i in soft_items}
    assert len(sharpness) == 2  # one a scene (4 views each)
    assert all(PROBE_SHARPNESS[0] <= s <= PROBE_SHARPNESS[1] for s in sharpness)
    assert {i.scene.field_config.sharpness for i in crisp_items} == {0.005}
    assert not torch.equal(soft, crisp)


def test_blurred_keeps_sigma_zero_images_and_spreads_an_edge_by_sigma():
    images = torch.zeros(3, 3, 16, 16)
    images[..., 8:] = 1.0
    out = blurred(images, torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(out[0], images[0])
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), images.mean(dim=(1, 2, 3)))
    spread = [(row > 0.01) & (row < 0.99) for row in out[:, 0, 4]]
    assert [int(s.sum()) for s in spread] == [0, 2, 4]


def test_the_judges_work_at_the_probes_size_for_a_prior_of_any_resolution():
    """A 64² prior is judged as a 32² one: the probe's data and the judges' ground truth
    are rendered at the probe's size, and larger images (the prior's samples) are
    area-averaged to it before the probe or a pixel-counting judge sees them."""
    large = WorldConfig(image_size=64)
    assert probe_data(4, seed=7, world=large).images.shape == (4, 3, PROBE_SIZE, PROBE_SIZE)
    torch.testing.assert_close(
        probe_data(4, seed=7, world=large).images, probe_data(4, seed=7, world=WORLD).images
    )
    front, _ = render_heads(("red",), views=1, seed=5, world=large)
    spec = (("red", "cube", "on", "blue", "sphere"),)
    assert front.shape[-1] == render_pairs(spec, views=1, seed=5, world=large).shape[-1] == 32
    images = torch.rand(3, 3, 64, 64)
    small = at_probe_size(images)
    torch.testing.assert_close(small, torch.nn.functional.avg_pool2d(images, 2))
    assert at_probe_size(small) is small
    probe = Probe().eval()
    with torch.no_grad():
        for got, expected in zip(probe(images), probe(small), strict=True):
            torch.testing.assert_close(got, expected)


def test_the_probe_trains_on_one_thread_whatever_the_callers_count():
    data = probe_data(8, seed=7, world=WORLD)
    seen = []
    threads = torch.get_num_threads()
    original = Probe.forward

    def spy(self, images):
        seen.append(torch.get_num_threads())
        return original(self, images)

    torch.set_num_threads(2)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Probe, "forward", spy)
            train_probe(data, epochs=1, seed=0, batch=4)
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2  # the caller's count comes back
    finally:
        torch.set_num_threads(threads)


def test_a_tied_vote_goes_to_the_likelier_class_not_the_first():
    labels = torch.tensor([0, 2, 0, 2])
    assert majority(labels, 3) == 0  # without scores: the smaller index
    scores = torch.tensor([[0.5, 0.0, 0.5], [0.1, 0.0, 0.9], [0.6, 0.0, 0.4], [0.2, 0.0, 0.8]])
    assert majority(labels, 3, scores) == 2  # 1.4 against 2.6
    assert vote(scores) == 2
    # a clear majority stands whatever the scores
    assert majority(torch.tensor([0, 0, 2]), 3, scores[:3]) == 0
    # the class with no vote cannot win on scores
    assert vote(torch.tensor([[0.4, 0.35, 0.25], [0.25, 0.35, 0.4]])) in (0, 2)
