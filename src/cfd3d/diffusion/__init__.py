"""Diffusion math: noise schedules, parameterisations, guidance and reference samplers."""

from cfd3d.diffusion.guidance import classifier_free_guidance
from cfd3d.diffusion.parameterization import eps_to_x0, v_to_eps, x0_to_eps
from cfd3d.diffusion.samplers import ddim_sample, ddim_timesteps
from cfd3d.diffusion.schedule import NoiseSchedule, make_schedule

__all__ = [
    "NoiseSchedule",
    "classifier_free_guidance",
    "ddim_sample",
    "ddim_timesteps",
    "eps_to_x0",
    "make_schedule",
    "v_to_eps",
    "x0_to_eps",
]
