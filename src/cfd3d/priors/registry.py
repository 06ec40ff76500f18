"""Priors by name: the one place that turns a ``--prior`` value into a :class:`Prior`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from cfd3d.errors import ConfigError
from cfd3d.priors.base import Prior
from cfd3d.priors.gmm import shapes_prior


def _embedded() -> Prior:
    from cfd3d.priors.embedded.prior import EmbeddedPrior

    return EmbeddedPrior.load()


PRIORS: dict[str, Callable[[], Prior]] = {
    "embedded": _embedded,
    "gmm": shapes_prior,
}


def is_stable_diffusion(name: str) -> bool:
    """Whether ``name`` denotes a Stable Diffusion checkpoint (a hub id or a folder)."""
    return "/" in name or os.sep in name or Path(name).expanduser().exists()


def load_prior(name: str, **stable_diffusion_options) -> Prior:
    """Build the prior called ``name``: a built-in name, or a Stable Diffusion hub id /
    diffusers folder (keyword options go to
    :class:`cfd3d.priors.stable_diffusion.StableDiffusionConfig`).

    Raises:
        ConfigError: for an unknown name, listing the valid ones.
        UserError: for a Stable Diffusion model that cannot be loaded.
    """
    if name in PRIORS:
        return PRIORS[name]()
    if is_stable_diffusion(name):
        from cfd3d.priors.stable_diffusion import StableDiffusionConfig, StableDiffusionPrior

        return StableDiffusionPrior(StableDiffusionConfig(model=name, **stable_diffusion_options))
    raise ConfigError(
        f"unknown prior '{name}'; valid: {', '.join(PRIORS)}, or a Stable Diffusion hub id "
        "(e.g. stabilityai/stable-diffusion-2-1-base) or diffusers folder"
    )
