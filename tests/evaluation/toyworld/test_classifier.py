"""cfd3d.evaluation.toyworld.classifier: the probe learns from ground truth."""

from cfd3d.evaluation.toyworld.classifier import probe_accuracy, probe_data, train_probe
from cfd3d.priors.embedded.world import WorldConfig

WORLD = WorldConfig()


def test_probe_learns_colours_from_a_few_renders():
    data = probe_data(48, seed=7, world=WORLD)
    assert data.images.shape == (48, 3, 32, 32) and data.images.max() <= 1.0
    probe = train_probe(data, epochs=12, seed=0, batch=16)
    color_acc, _ = probe_accuracy(probe, data)
    assert color_acc >= 0.8
