import math

import pytest
import torch

from cfd3d.errors import ConfigError
from cfd3d.noise.sde import sde_refresh


def test_gamma_zero_is_the_ode():
    n = torch.randn(100)
    assert sde_refresh(n, 0.0) is n


def test_refresh_keeps_marginals_and_decorrelates_as_predicted():
    """One refresh keeps a correlation of sqrt(1 - γ) with the noise before it, k refreshes
    (1 - γ)^(k/2). With 200k samples a correlation ρ has a standard error of about
    (1 - ρ²)/√n: 2e-5 at ρ = 0.995 and 1.4e-3 at ρ = 0.61, so the bounds below (4-5
    standard errors) fail for a full redraw (ρ = 0), for no refresh (ρ = 1) and for a
    wrong rate, which the value after 1000 steps (0.0066, near 0 either way) cannot tell."""
    g = torch.Generator().manual_seed(0)
    start = torch.randn(200_000, generator=g, dtype=torch.float64)
    gamma = 0.01

    def corr(n: torch.Tensor) -> float:
        return torch.corrcoef(torch.stack([start, n]))[0, 1].item()

    n = sde_refresh(start, gamma, g)
    assert corr(n) == pytest.approx(math.sqrt(1 - gamma), abs=1e-4)
    for _ in range(99):
        n = sde_refresh(n, gamma, g)
    assert corr(n) == pytest.approx((1 - gamma) ** 50, abs=0.007)
    for _ in range(900):
        n = sde_refresh(n, gamma, g)
    assert abs(n.mean().item()) < 0.01
    assert n.var().item() == pytest.approx(1.0, abs=0.015)
    assert corr(n) == pytest.approx((1 - gamma) ** 500, abs=0.01)


@pytest.mark.parametrize("gamma", [-0.1, 1.5, math.nan])
def test_gamma_outside_unit_interval(gamma):
    with pytest.raises(ConfigError, match=r"gamma must be in \[0, 1\]"):
        sde_refresh(torch.zeros(3), gamma)
