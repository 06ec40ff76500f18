"""Fit a learnable field to a ground-truth toy scene: directly in 3D (no rendering), or,
for Gaussians, photometrically to rendered views.

Benchmarks of the renderer need a field that looks like a distilled object (a compact,
opaque shape in mostly empty space) without running a distillation. Regressing the
field's opacity over a short interval and its albedo onto the scene's at random points
gets there in seconds, for the NeRF and the voxel grid alike. Gaussians have no such
per-point form, so :func:`fit_gaussians_to_views` fits them to views as 3DGS does.
"""

from __future__ import annotations

import torch

from cfd3d.render.splat import SplatRenderer
from cfd3d.scene.cameras import Cameras
from cfd3d.scene.fields import Field
from cfd3d.scene.gaussians import GaussianField, adaptive_density_control


def fit_field_to_scene(
    field: torch.nn.Module,
    scene: Field,
    *,
    steps: int = 300,
    points_per_step: int = 8192,
    bound: float = 1.0,
    spacing: float = 2.0 / 64,
    lr: float = 1e-2,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Adam on ``α = 1 - exp(-σ · spacing)`` and the albedo at random points.

    Half the points are uniform in ``[-bound, bound]³``, half uniform in the ball of
    radius ``0.6 · bound`` where toy objects live. The albedo error is weighted by the
    scene's opacity (the albedo of empty space is never seen).

    Args:
        field: a learnable field (its parameters are updated in place).
        scene: the ground truth (e.g. :class:`cfd3d.scene.toy.ToyScene`).
        steps: optimisation steps.
        points_per_step: points per step.
        bound: half-size of the cube the field lives in.
        spacing: the interval whose opacity is regressed (about the renderer's sample
            spacing).
        lr: Adam's learning rate.
        generator: randomness of the points (``None``: the global generator).

    Returns:
        The loss of every step.
    """
    optimiser = torch.optim.Adam(field.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-15)
    half = points_per_step // 2
    losses = []
    for _ in range(steps):
        cube = (2.0 * torch.rand(half, 3, generator=generator) - 1.0) * bound
        direction = torch.nn.functional.normalize(torch.randn(half, 3, generator=generator), dim=-1)
        radius = 0.6 * bound * torch.rand(half, 1, generator=generator) ** (1.0 / 3.0)
        points = torch.cat([cube, direction * radius])
        with torch.no_grad():
            truth = scene(points)
            alpha_true = -torch.expm1(-truth.density * spacing)
        out = field(points)
        alpha = -torch.expm1(-out.density * spacing)
        albedo_error = (out.albedo - truth.albedo).square().sum(-1)
        loss = (alpha - alpha_true).square().mean() + (alpha_true * albedo_error).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    return losses


def fit_gaussians_to_views(
    field: GaussianField,
    renderer: SplatRenderer,
    cameras: Cameras,
    images: torch.Tensor,
    *,
    steps: int = 500,
    views_per_step: int = 4,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Photometric fit of Gaussians to views (3DGS's optimisation, Kerbl et al. 2023).

    Each step renders ``views_per_step`` random views (albedo shading on white), takes
    the mean squared error against ``images`` and an Adam step with the field's
    per-group learning rates, then adaptive density control on the step's view-space
    gradients (:func:`~cfd3d.scene.gaussians.adaptive_density_control`, the field's own
    schedule).

    Args:
        field: the Gaussians (updated in place; their count changes).
        renderer: the rasteriser.
        cameras: ``V`` training cameras.
        images: ``(V, H, W, 3)`` target colours in [0, 1].
        steps: optimisation steps.
        views_per_step: views per step.
        generator: randomness of the views and of split children.

    Returns:
        The loss of every step.
    """
    optimiser = torch.optim.Adam(field.parameter_groups(), betas=(0.9, 0.99), eps=1e-15)
    height, width = images.shape[1:3]
    losses = []
    for step in range(steps):
        index = torch.randperm(len(cameras), generator=generator)[:views_per_step]
        out, info = renderer.render_with_info(
            field, cameras[index], height, width, shading="albedo"
        )
        loss = (out.rgb - images[index]).square().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        field.accumulate_stats(info.ndc_grad(), info.visible, info.radius)
        adaptive_density_control(field, optimiser, step + 1, generator)
        losses.append(float(loss.detach()))
    return losses
