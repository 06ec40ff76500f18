"""Analytic ray-traced scenes with exact opacity and depth, shared by the noise tests."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cfd3d.render.types import RenderOutput
from cfd3d.scene.cameras import Cameras


def _output(hit: torch.Tensor, t: torch.Tensor) -> RenderOutput:
    opacity = hit.to(torch.float32)[..., None]
    depth = torch.where(hit, t, torch.zeros_like(t)).to(torch.float32)[..., None]
    rgb = opacity.expand(*opacity.shape[:3], 3).clone()
    return RenderOutput(rgb=rgb, opacity=opacity, depth=depth)


def _rays(cameras: Cameras, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    cameras = Cameras(cameras.c2w.double(), cameras.fovy.double())
    return cameras.rays(size, size)


def render_sphere(cameras: Cameras, size: int, radius: float = 0.38) -> RenderOutput:
    """A sphere of ``radius`` at the origin."""
    origin, direction = _rays(cameras, size)
    b = (origin * direction).sum(-1)
    disc = b * b - ((origin * origin).sum(-1) - radius**2)
    t = -b - torch.sqrt(disc.clamp_min(0))
    return _output((disc > 0) & (t > 0), t)


def render_box(cameras: Cameras, size: int, half: float = 0.3) -> RenderOutput:
    """An axis-aligned cube of half-size ``half`` at the origin."""
    origin, direction = _rays(cameras, size)
    inv = 1.0 / torch.where(direction.abs() < 1e-12, 1e-12, direction)
    t0 = (-half - origin) * inv
    t1 = (half - origin) * inv
    near = torch.minimum(t0, t1).max(-1).values
    far = torch.maximum(t0, t1).min(-1).values
    return _output((near < far) & (near > 0), near)


def render_square(cameras: Cameras, size: int, x: float = 0.1, half: float = 0.7) -> RenderOutput:
    """A square ``|y|, |z| <= half`` in the plane at ``x`` (visible from both sides)."""
    origin, direction = _rays(cameras, size)
    t = (x - origin[..., 0]) / direction[..., 0]
    point = origin + t[..., None] * direction
    hit = (t > 0) & (point[..., 1].abs() <= half) & (point[..., 2].abs() <= half)
    return _output(hit, t)


@pytest.fixture
def scenes() -> SimpleNamespace:
    """``sphere``, ``box`` and ``square``: ``(cameras, size, ...) -> RenderOutput``."""
    return SimpleNamespace(sphere=render_sphere, box=render_box, square=render_square)
