"""Each update rule's gradient equals its formula, and the loss delivers it exactly."""

import pytest
import torch

from cfd3d.distill import (
    cfd_gradient,
    fsd_gradient,
    gradient_loss,
    sds_gradient,
    timestep_weight,
)
from cfd3d.errors import ConfigError
from cfd3d.priors.gmm import shapes_prior


@pytest.fixture
def setup():
    prior = shapes_prior(size=4)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(3, 3, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(3, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([900, 400, 50])
    cond = prior.condition("a simple shape", negative_prompt="a green triangle", batch_size=3)
    return prior, z, noise, t, cond


def _formula(prior, z, noise, t, cond, scale, weight):
    alpha, sigma = (v[:, None, None, None] for v in prior.schedule.alpha_sigma(t))
    x_t = alpha * z + sigma * noise
    eps_c = prior.eps(x_t, t, cond.cond)
    eps_u = prior.eps(x_t, t, cond.uncond)
    eps_hat = eps_u + scale * (eps_c - eps_u)
    return weight[:, None, None, None] * (eps_hat - noise)


def test_cfd_gradient_equals_formula(setup):
    prior, z, noise, t, cond = setup
    alpha, sigma = prior.schedule.alpha_sigma(t)
    got = cfd_gradient(prior, z, t, cond, 2.5, noise)
    assert torch.allclose(got, _formula(prior, z, noise, t, cond, 2.5, sigma / alpha))


def test_fsd_gradient_equals_formula_with_view_noise(setup):
    prior, z, noise, t, cond = setup
    alpha, sigma = prior.schedule.alpha_sigma(t)
    got = fsd_gradient(prior, z, t, cond, 1.5, view_noise=noise)
    assert torch.allclose(got, _formula(prior, z, noise, t, cond, 1.5, sigma / alpha))


def test_sds_gradient_uses_fresh_noise_and_sigma_squared(setup):
    prior, z, _, t, cond = setup
    got = sds_gradient(prior, z, t, cond, 3.0, generator=torch.Generator().manual_seed(9))
    fresh = torch.randn(z.shape, generator=torch.Generator().manual_seed(9), dtype=z.dtype)
    _, sigma = prior.schedule.alpha_sigma(t)
    assert torch.allclose(got, _formula(prior, z, fresh, t, cond, 3.0, sigma**2))
    again = sds_gradient(prior, z, t, cond, 3.0, generator=torch.Generator().manual_seed(10))
    assert not torch.allclose(got, again)


def test_gradient_loss_delivers_the_gradient_through_a_renderer(setup):
    prior, _, noise, t, cond = setup
    theta = torch.randn(3, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    z = torch.tanh(theta) * 0.8  # a stand-in differentiable renderer
    grad = cfd_gradient(prior, z, t, cond, 2.0, noise)
    gradient_loss(z, grad).backward()
    expected = grad * 0.8 * (1 - torch.tanh(theta.detach()) ** 2)
    assert torch.allclose(theta.grad, expected)


def test_weightings(setup):
    prior, *_ = setup
    t = torch.tensor([10, 990])
    alpha, sigma = prior.schedule.alpha_sigma(t)
    assert torch.allclose(timestep_weight(prior.schedule, t, "sigma_over_alpha"), sigma / alpha)
    assert torch.allclose(timestep_weight(prior.schedule, t, "sigma_sq"), sigma**2)
    assert torch.equal(
        timestep_weight(prior.schedule, t, "unit"), torch.ones(2, dtype=torch.float64)
    )
    with pytest.raises(ConfigError, match="valid: sigma_over_alpha"):
        timestep_weight(prior.schedule, t, "snr")  # type: ignore[arg-type]
