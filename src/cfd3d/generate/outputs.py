"""The files a finished run leaves: mesh(es), turntable video and GIF, preview grid."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import trimesh

from cfd3d.errors import ConfigError
from cfd3d.export.formats import mesh_files
from cfd3d.export.mesh import extract_mesh, vertex_colors
from cfd3d.export.ply import gaussians_to_ply
from cfd3d.export.texture import decimate, textured_mesh
from cfd3d.export.video import frames_to_gif, frames_to_mp4, preview_grid, turntable_frames
from cfd3d.generate.run import Run
from cfd3d.io import atomic_write_bytes
from cfd3d.render import SolidBackground
from cfd3d.scene.gaussians import GaussianField

MESH_NAME = "model"
TURNTABLE_NAME = "turntable"
PREVIEW_NAME = "preview.png"


def render_turntable(run: Run, n_frames: int, size: int) -> np.ndarray:
    """``(n, size, size, 3)`` uint8 frames of a front-first orbit, lit by a headlight on
    white (deterministic: no jitter, no random light)."""
    shading = replace(run.config.shading, mode="diffuse", light_jitter=0.0)
    background = SolidBackground()
    cams = run.config.cameras
    distance = 0.5 * (cams.distance[0] + cams.distance[1])
    fovy = 0.5 * (cams.fovy_deg[0] + cams.fovy_deg[1])
    return turntable_frames(
        lambda views: run.render(views, size, shading, None, background),
        n_frames,
        size,
        size,
        elevation_deg=15.0,
        distance=distance,
        fovy_deg=fovy,
        batch=4,
    )


def run_mesh(run: Run) -> tuple[trimesh.Trimesh | None, dict[str, str]]:
    """The mesh of ``run``'s field and ``{"mesh_threshold": level}``, or ``None`` and
    ``{"mesh_error": why}`` when the field has no surface."""
    c = run.config
    field = run.field
    # An explicit level may be above a young field's density (a short run): fall back to
    # lower levels, and say so in the summary, rather than leave the run without a mesh.
    t = c.mesh_threshold
    error = ""
    for threshold in [None] if t is None else [t, 0.5 * t, 0.25 * t]:
        try:
            mesh = extract_mesh(
                field.density,  # type: ignore[attr-defined]
                lambda p: field(p).albedo,
                resolution=c.mesh_resolution,
                bound=c.field_bound,
                threshold=threshold,
                min_component_fraction=0.01,
            )
        except ConfigError as exc:
            error = str(exc)
            continue
        return mesh, {"mesh_threshold": f"{mesh.metadata['threshold']:.4g}"}
    return None, {"mesh_error": error}


def write_outputs(run: Run, folder: Path) -> dict[str, str]:
    """Export the field of ``run`` into ``folder``; returns ``{kind: path}``.

    Every file is written atomically. A field without a surface at the configured
    threshold (nothing was distilled) skips the mesh with a note instead of failing the run.
    Gaussians are also written as splats, ``model.ply`` in the 3DGS layout
    (:mod:`cfd3d.export.ply`).
    """
    c = run.config
    written: dict[str, str] = {}
    run.field.eval()
    with torch.no_grad():
        frames = render_turntable(run, c.turntable_frames, c.turntable_size)
    written["mp4"] = str(
        atomic_write_bytes(folder / f"{TURNTABLE_NAME}.mp4", frames_to_mp4(frames, c.fps))
    )
    written["gif"] = str(
        atomic_write_bytes(folder / f"{TURNTABLE_NAME}.gif", frames_to_gif(frames, min(c.fps, 25)))
    )
    picks = np.linspace(0, len(frames), 8, endpoint=False).astype(int)
    written["preview"] = str(
        atomic_write_bytes(folder / PREVIEW_NAME, preview_grid(frames[picks], 4))
    )
    if isinstance(run.field, GaussianField):
        path = atomic_write_bytes(folder / f"{MESH_NAME}.ply", gaussians_to_ply(run.field))
        written["splats"] = str(path)
    mesh, notes = run_mesh(run)
    written.update(notes)
    if mesh is None:
        return written
    mesh = asset_mesh(run, mesh)
    for fmt in c.formats:
        for name, data in mesh_files(mesh, fmt, MESH_NAME).items():
            path = str(atomic_write_bytes(folder / name, data))
            written[fmt if name == f"{MESH_NAME}.{fmt}" else f"{fmt}:{name}"] = path
    return written


def asset_mesh(run: Run, mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """The mesh as files carry it: simplified to ``mesh_faces`` and, with a
    ``texture_size``, unwrapped with the field's albedo baked into a texture (else the
    albedo at the remaining vertices)."""
    c = run.config
    field = run.field

    def albedo(points: torch.Tensor) -> torch.Tensor:
        return field(points).albedo

    with torch.no_grad():
        if c.texture_size > 0:
            return textured_mesh(
                mesh, albedo, c.texture_size, c.mesh_faces, run.device, f"{MESH_NAME}_texture"
            )
        simple = decimate(mesh, c.mesh_faces)
        if simple is not mesh:
            simple.visual.vertex_colors = vertex_colors(
                albedo, simple.vertices, 1 << 16, run.device
            )
        return simple
