import math

import pytest
import torch

from cfd3d.diffusion.schedule import make_schedule
from cfd3d.errors import ConfigError


def test_scaled_linear_matches_stable_diffusion():
    s = make_schedule("scaled_linear")
    betas = 1 - s.alphas_cumprod / torch.cat(
        [torch.ones(1, dtype=torch.float64), s.alphas_cumprod[:-1]]
    )
    assert s.num_timesteps == 1000
    assert betas[0].item() == pytest.approx(0.00085, rel=1e-9)
    assert betas[-1].item() == pytest.approx(0.012, rel=1e-9)
    # sqrt(beta) is linear
    diffs = betas.sqrt().diff()
    assert torch.allclose(diffs, diffs[0].expand_as(diffs), rtol=1e-6)
    # Known value of Stable Diffusion's final alphabar (~0.0047).
    assert s.alphas_cumprod[-1].item() == pytest.approx(0.004660, abs=2e-5)


@pytest.mark.parametrize("kind", ["scaled_linear", "linear", "cosine"])
def test_schedules_are_variance_preserving_and_decreasing(kind):
    s = make_schedule(kind)
    t = torch.arange(s.num_timesteps)
    alpha, sigma = s.alpha_sigma(t)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(alpha))
    assert (alpha.diff() < 0).all()
    assert (s.sigma_over_alpha(t).diff() > 0).all()


def test_linear_betas_are_linear():
    s = make_schedule("linear", beta_start=1e-4, beta_end=0.02)
    assert 1 - s.alphas_cumprod[0].item() == pytest.approx(1e-4)


def test_cosine_matches_its_closed_form():
    s = make_schedule("cosine", num_timesteps=1000)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert s.alphas_cumprod[499].item() == pytest.approx(f(0.5) / f(0.0), rel=1e-6)


def test_index_of_fraction():
    s = make_schedule()
    assert s.index(0.98) == 979
    assert s.index(0.0) == 0
    assert s.index(1.0) == 999


def test_unknown_schedule_is_a_config_error():
    with pytest.raises(ConfigError, match="valid: scaled_linear, linear, cosine"):
        make_schedule("quadratic")  # type: ignore[arg-type]
