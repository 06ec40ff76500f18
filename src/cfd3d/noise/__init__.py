"""Noise for distillation: multi-view consistent (integral) noise, its ablations, and the
clean-flow SDE refresh.

Typical use, once per optimisation step (see :class:`NoiseSource`)::

    noise = make_noise(NoiseConfig(kind="integral", seed=seed), prior.input_shape)
    eps = noise(render, cameras, step)      # (B, C, h, w)
    noise.refresh(gamma)                    # clean-flow SDE, gamma = 0 is the ODE
"""

from cfd3d.noise.base import NoiseSource
from cfd3d.noise.baselines import FixedNoise, FreshNoise, PanoramaNoise
from cfd3d.noise.config import IntegralNoiseConfig, NoiseConfig, PanoramaNoiseConfig
from cfd3d.noise.integral import IntegralNoise
from cfd3d.noise.registry import NOISE_SOURCES, make_noise
from cfd3d.noise.sde import check_gamma, sde_refresh

__all__ = [
    "NOISE_SOURCES",
    "FixedNoise",
    "FreshNoise",
    "IntegralNoise",
    "IntegralNoiseConfig",
    "NoiseConfig",
    "NoiseSource",
    "PanoramaNoise",
    "PanoramaNoiseConfig",
    "check_gamma",
    "make_noise",
    "sde_refresh",
]
