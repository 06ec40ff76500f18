"""The noise sources by name."""

from __future__ import annotations

from cfd3d.errors import ConfigError
from cfd3d.noise.base import NoiseSource
from cfd3d.noise.baselines import FixedNoise, FreshNoise, PanoramaNoise
from cfd3d.noise.config import NoiseConfig
from cfd3d.noise.integral import IntegralNoise

NOISE_SOURCES: dict[str, type[NoiseSource]] = {
    "integral": IntegralNoise,
    "fresh": FreshNoise,
    "fixed": FixedNoise,
    "panorama": PanoramaNoise,
}


def make_noise(config: NoiseConfig, shape: tuple[int, int, int]) -> NoiseSource:
    """The noise source ``config.kind`` for a prior whose input is ``shape = (C, h, w)``.

    Raises:
        ConfigError: an unknown kind or an invalid shape.
    """
    if config.kind not in NOISE_SOURCES:
        raise ConfigError(f"unknown noise kind '{config.kind}'; valid: {', '.join(NOISE_SOURCES)}")
    return NOISE_SOURCES[config.kind](config, shape)
