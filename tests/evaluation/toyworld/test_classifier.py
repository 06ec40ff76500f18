"""cfd3d.evaluation.toyworld.classifier: the probe learns from ground truth."""

import pytest
import torch

from cfd3d.evaluation.toyworld.classifier import (
    Probe,
    majority,
    probe_accuracy,
    probe_data,
    train_probe,
    vote,
)
from cfd3d.priors.embedded.world import WorldConfig

WORLD = WorldConfig()


def test_probe_learns_colours_from_a_few_renders():
    data = probe_data(48, seed=7, world=WORLD)
    assert data.images.shape == (48, 3, 32, 32) and data.images.max() <= 1.0
    probe = train_probe(data, epochs=12, seed=0, batch=16)
    color_acc, _ = probe_accuracy(probe, data)
    assert color_acc >= 0.8


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
