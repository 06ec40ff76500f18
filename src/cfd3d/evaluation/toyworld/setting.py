"""How the toy-world evaluation looks at an object: its fixed cameras, sizes and lights.

The evaluation orbit (:data:`ORBIT_VIEWS` views at elevation :data:`ELEVATION`, distance
:data:`DISTANCE`, fovy :data:`FOVY`: the middle of the training cameras), the view from
straight above that finds a torus's hole, the figure's view, the image sizes, the world
views' count and seed, the shadings and the grid of the 3D measures.
``benchmarks/toyworld.py`` digests these into its cache keys.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from cfd3d.priors.embedded.world import WORLD_SHADING
from cfd3d.render import ShadingConfig
from cfd3d.scene.cameras import Cameras, orbit, spherical_cameras

ORBIT_VIEWS, ELEVATION, DISTANCE, FOVY = 8, 15.0, 1.4, 52.5
"""The evaluation orbit: the middle of the training cameras' distance and field of view."""
EVAL_SIZE = 64
"""Pixels (square) of the orbit renders that IoU, colour and diversity are measured on."""
MESH_IOU_RESOLUTION = 64
"""Cells per axis of the volumetric mesh IoU."""
FIGURE_AZIMUTH = 35.0
"""The figure's view: front-right, so that two sides and the top show."""
WORLD_VIEWS = 16
"""Views per result drawn as the prior's training images are
(:func:`~cfd3d.evaluation.toyworld.views.world_views`)."""
WORLD_VIEW_SEED = 7919
"""Seeds the world views' cameras and lights (plus the run's seed: each seed of a prompt is
seen from its own cameras, and its ground truth from the same ones)."""
ALBEDO = ShadingConfig(mode="albedo")
"""Flat albedo: what IoU, colour and diversity are measured on."""
HEADLIGHT = replace(WORLD_SHADING, light_jitter=0.0)
"""The toy world's diffuse shading with the light at the camera (probe and figure)."""
BACK_VIEW = ORBIT_VIEWS // 2
"""Index of azimuth 180° in the orbit (front first)."""
HOLE_MIN_PIXELS = 25
"""Enclosed background pixels of the overhead view (:func:`overhead_camera`, at
:data:`EVAL_SIZE`) from which a result counts as having a hole: about a quarter of the true
torus's (its hole, radius 0.14, seen through from above: 112 pixels)."""


def overhead_camera() -> Cameras:
    """A camera straight above the object at the orbit's distance and field of view, which
    looks down through a torus's hole."""
    one = torch.ones(1)
    return spherical_cameras(0.0 * one, 90.0 * one, DISTANCE * one, FOVY * one)


def evaluation_cameras() -> tuple[Cameras, Cameras]:
    """The orbit (front first) and the figure's single camera."""
    one = torch.ones(1)
    figure = spherical_cameras(FIGURE_AZIMUTH * one, ELEVATION * one, DISTANCE * one, FOVY * one)
    return orbit(ORBIT_VIEWS, ELEVATION, DISTANCE, FOVY), figure
