"""Exports: field → mesh (marching cubes) → GLB/OBJ/PLY bytes; Gaussians → 3DGS PLY bytes;
turntables → MP4/GIF; previews.

Everything here returns bytes or objects; the CLI writes the files (atomically).
"""

from cfd3d.export.formats import EXPORT_FORMATS, GLTF_FROM_WORLD, mesh_to_bytes
from cfd3d.export.mesh import DEFAULT_THRESHOLD, extract_mesh, occupancy_grid, volumetric_iou
from cfd3d.export.ply import gaussians_to_ply
from cfd3d.export.video import frames_to_gif, frames_to_mp4, preview_grid, turntable_frames

__all__ = [
    "DEFAULT_THRESHOLD",
    "EXPORT_FORMATS",
    "GLTF_FROM_WORLD",
    "extract_mesh",
    "frames_to_gif",
    "frames_to_mp4",
    "gaussians_to_ply",
    "mesh_to_bytes",
    "occupancy_grid",
    "preview_grid",
    "turntable_frames",
    "volumetric_iou",
]
