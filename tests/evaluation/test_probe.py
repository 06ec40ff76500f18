"""The probe metrics on sets with known answers."""

import math

import pytest
import torch
from torch import nn

from cfd3d.evaluation.probe import (
    frechet_distance,
    frechet_distance_gaussians,
    gaussian_fit,
    probe_clip,
    probe_features,
    probe_probabilities,
)


def _gaussian(n: int, mean: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return mean + std * torch.randn(n, mean.numel(), generator=g, dtype=torch.float64)


def test_identical_sets_are_at_distance_zero():
    a = _gaussian(200, torch.zeros(16), 1.0, 0)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(a, a.flip(0)) == pytest.approx(0.0, abs=1e-9)  # order is irrelevant


def test_the_closed_form_for_two_gaussians():
    # N(mu1, s1^2 I) vs N(mu2, s2^2 I) in D dimensions: |mu1 - mu2|^2 + D (s1 - s2)^2
    d = 6
    mu1, mu2 = torch.zeros(d, dtype=torch.float64), torch.full((d,), 0.5, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    exact = 1.5 + d * (1.0 - 2.0) ** 2
    assert frechet_distance_gaussians(mu1, eye, mu2, 4.0 * eye) == pytest.approx(exact, rel=1e-12)
    # a non-commuting pair: 1-D marginals along rotated axes, checked against the 2x2
    # formula tr(A + B - 2 (A^1/2 B A^1/2)^1/2) with sqrt of a 2x2 PSD matrix in closed form
    a = torch.tensor([[2.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
    c, s = math.cos(0.7), math.sin(0.7)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    b = rot @ torch.diag(torch.tensor([3.0, 0.2], dtype=torch.float64)) @ rot.T
    root_a = torch.diag(a.diagonal().sqrt())
    m = root_a @ b @ root_a
    tr_sqrt = math.sqrt(float(torch.trace(m)) + 2 * math.sqrt(float(torch.det(m))))
    expected = float(torch.trace(a + b)) - 2 * tr_sqrt
    zero = torch.zeros(2, dtype=torch.float64)
    assert frechet_distance_gaussians(zero, a, zero, b) == pytest.approx(expected, rel=1e-10)
    # and from samples, within sampling error
    x = _gaussian(20000, mu1, 1.0, 1)
    y = _gaussian(20000, mu2, 2.0, 2)
    assert frechet_distance(x, y) == pytest.approx(exact, rel=0.03)


def test_singular_covariances_and_float32_inputs_are_stable():
    a = _gaussian(5, torch.zeros(64), 1.0, 3).float()  # 5 samples in 64-D: rank 4
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    one = a[:1]
    mean, cov = gaussian_fit(one)
    assert torch.equal(mean, one[0].double())
    assert torch.equal(cov, torch.zeros(64, 64, dtype=torch.float64))
    assert frechet_distance(one, one) == 0.0
    with pytest.raises(ValueError, match="non-empty"):
        frechet_distance(a, a[:, :3])


class _Probe(nn.Module):
    """Two heads on 2-D features that are the images' mean red and mean blue."""

    def __init__(self) -> None:
        super().__init__()
        self.color = nn.Linear(2, 2)
        self.shape = nn.Linear(2, 3)
        with torch.no_grad():
            self.color.weight.copy_(torch.tensor([[20.0, -20.0], [-20.0, 20.0]]))
            self.color.bias.zero_()
            self.shape.weight.zero_()
            self.shape.bias.copy_(torch.tensor([0.0, 0.0, math.log(2.0)]))

    def forward(self, images):
        h = torch.stack([images[:, 0].mean((1, 2)), images[:, 2].mean((1, 2))], dim=1)
        return self.color(h), self.shape(h)


def _images(n: int, rgb: tuple[float, float, float], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor(rgb)[None, :, None, None].expand(n, 3, 4, 4)
    return (base + 0.05 * torch.randn(n, 3, 4, 4, generator=g)).clamp(0, 1)


def test_probe_features_are_the_input_of_its_head_and_swapped_classes_are_far():
    probe = _Probe()
    red, blue = _images(30, (0.9, 0.1, 0.1), 0), _images(30, (0.1, 0.1, 0.9), 1)
    features = probe_features(probe, red, batch=7)
    assert features.shape == (30, 2)
    assert torch.allclose(features[:, 0], red[:, 0].mean((1, 2)))
    same = frechet_distance(features, probe_features(probe, _images(30, (0.9, 0.1, 0.1), 2)))
    swapped = frechet_distance(features, probe_features(probe, blue))
    assert same < 1e-3 and swapped > 1.0  # |(0.8, -0.8)|^2 = 1.28
    assert not probe.color._forward_pre_hooks  # the hook is removed


def test_probe_clip_is_the_mean_probability_of_the_named_attributes():
    probe = _Probe()
    red, blue = _images(10, (0.9, 0.1, 0.1), 0), _images(10, (0.1, 0.1, 0.9), 1)
    color, shape = probe_probabilities(probe, red, batch=3)
    assert color.shape == (10, 2) and shape.shape == (10, 3)
    assert torch.allclose(shape, torch.tensor([0.25, 0.25, 0.5]).expand(10, 3))
    assert probe_clip((color, shape), (0, None)) == pytest.approx(1.0, abs=1e-6)
    assert probe_clip(probe_probabilities(probe, blue), (0, None)) < 1e-6  # swapped class
    assert probe_clip((color, shape), (0, 2)) == pytest.approx(0.75, abs=1e-6)
    with pytest.raises(ValueError, match="names no attribute"):
        probe_clip((color, shape), (None, None))
