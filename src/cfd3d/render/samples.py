"""What one volume sample costs: query the field, differentiate its normal, shade it.

The renderer decides *where* samples lie along rays (dense stratified marching, or only
inside occupied cells) and composites them; everything that happens *at* a sample lives
here, once, so that memory-lean evaluations serve every marcher alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cfd3d.render.shading import ShadingConfig, shade
from cfd3d.scene.fields import Field, NormalMethod, field_normals


@dataclass(frozen=True)
class SampleOutput:
    """``N`` shaded samples.

    Attributes:
        density: ``(N,)`` non-negative volume density.
        color: ``(N, 3)`` shaded colour.
        normal: ``(N, 3)`` outward unit normals, or ``None`` when not asked for.
    """

    density: torch.Tensor
    color: torch.Tensor
    normal: torch.Tensor | None


def shade_samples(
    field: Field,
    points: torch.Tensor,
    lights: torch.Tensor,
    shading: ShadingConfig,
    want_normals: bool,
    normal_method: NormalMethod = "central",
    normal_eps: float = 1e-2,
) -> SampleOutput:
    """Density, shaded colour and (optionally) normals of ``N`` samples.

    Args:
        field: what is rendered.
        points: ``(N, 3)`` sample positions.
        lights: ``(N, 3)`` position of the light of each sample (ignored by ``"albedo"``).
        shading: the shading mode and light intensities.
        want_normals: compute normals even if the shading does not need them.
        normal_method, normal_eps: how fields without their own normals are differentiated
            (see :func:`cfd3d.scene.fields.field_normals`).

    Returns:
        A :class:`SampleOutput`.
    """
    out = field(points)
    normals = None
    if want_normals or shading.needs_normals:
        normals = field_normals(field, points, normal_method, normal_eps)
    color = shade(shading, out.albedo, points, normals, lights)
    return SampleOutput(density=out.density, color=color, normal=normals if want_normals else None)
