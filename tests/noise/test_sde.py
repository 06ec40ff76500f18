import math

import pytest
import torch

from cfd3d.errors import ConfigError
from cfd3d.noise.sde import sde_refresh


def test_gamma_zero_is_the_ode():
    n = torch.randn(100)
    assert sde_refresh(n, 0.0) is n


def test_refresh_keeps_marginals_and_decorrelates_as_predicted():
    g = torch.Generator().manual_seed(0)
    start = torch.randn(200_000, generator=g, dtype=torch.float64)
    n = start
    gamma, steps = 0.01, 1000
    for _ in range(steps):
        n = sde_refresh(n, gamma, g)
    assert abs(n.mean().item()) < 0.01
    assert n.var().item() == pytest.approx(1.0, abs=0.015)
    corr = torch.corrcoef(torch.stack([start, n]))[0, 1].item()
    assert corr == pytest.approx((1 - gamma) ** (steps / 2), abs=0.01)


@pytest.mark.parametrize("gamma", [-0.1, 1.5, math.nan])
def test_gamma_outside_unit_interval(gamma):
    with pytest.raises(ConfigError, match=r"gamma must be in \[0, 1\]"):
        sde_refresh(torch.zeros(3), gamma)
