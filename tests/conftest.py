"""Shared test options and fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

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
def shipped_world() -> WorldConfig:
    """The world the shipped embedded prior was trained on, from its recipe file."""
    from cfd3d.priors.embedded.commands import prior_configs

    return prior_configs(json.loads(RECIPE.read_text()))[1]
