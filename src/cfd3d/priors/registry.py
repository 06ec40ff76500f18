"""Priors by name: the one place that turns a ``--prior`` value into a :class:`Prior`."""

from __future__ import annotations

from collections.abc import Callable

from cfd3d.errors import ConfigError
from cfd3d.priors.base import Prior
from cfd3d.priors.gmm import shapes_prior

PRIORS: dict[str, Callable[[], Prior]] = {
    "gmm": shapes_prior,
}


def load_prior(name: str) -> Prior:
    """Build the prior called ``name``.

    Raises:
        ConfigError: for an unknown name, listing the valid ones.
    """
    if name not in PRIORS:
        raise ConfigError(f"unknown prior '{name}'; valid: {', '.join(PRIORS)}")
    return PRIORS[name]()
