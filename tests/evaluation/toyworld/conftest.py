"""Fixtures of the toy-world evaluation tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from cfd3d.evaluation.toyworld.jobs import load_prior
from cfd3d.evaluation.toyworld.views import Views
from cfd3d.generate.config import preset_config
from cfd3d.generate.run import Run


@pytest.fixture(scope="session")
def shipped_run() -> Run:
    """A ``cpu-demo`` run on the shipped prior (renders ground truth like the benchmark)."""
    config = preset_config("cpu-demo", "a red cube").resolved()
    return Run(config, load_prior(None, config))


def _views(opacity: torch.Tensor, albedo: torch.Tensor) -> Views:
    """Views of one flat colour ``albedo`` ``(3,)`` with ``opacity`` ``(V, S, S)``, on white."""
    a = opacity[..., None]
    rgb = a * albedo + (1.0 - a)
    blank = np.zeros((4, 4, 3), dtype=np.uint8)
    nothing = torch.zeros(1, 3, 32, 32)
    return Views(albedo=rgb, opacity=opacity, probe=nothing, world=nothing, figure=blank)


@pytest.fixture
def flat_views() -> Callable[[torch.Tensor, torch.Tensor], Views]:
    """Makes :class:`Views` of one flat colour: ``flat_views(opacity, albedo)``."""
    return _views
