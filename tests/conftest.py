"""Shared test options and fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cfd3d.priors.embedded.training import TrainConfig
from cfd3d.priors.embedded.world import WorldConfig

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "embedded-prior.json"
"""The shipped embedded prior's recipe (``cfd3d train-prior --config``)."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--regen-golden",
        action="store_true",
        default=False,
        help="rewrite golden images instead of comparing against them",
    )


@pytest.fixture
def regen_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--regen-golden"))


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def shipped_recipe() -> tuple[TrainConfig, WorldConfig]:
    """The training and world the shipped embedded prior was made with (:data:`RECIPE`)."""
    from cfd3d.priors.embedded.commands import read_prior_config

    return read_prior_config(RECIPE)


@pytest.fixture(scope="session")
def shipped_world(shipped_recipe: tuple[TrainConfig, WorldConfig]) -> WorldConfig:
    """The world the shipped embedded prior was trained on."""
    return shipped_recipe[1]
