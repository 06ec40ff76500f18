"""What is rendered: cameras, learnable fields and ground-truth toy scenes.

* :mod:`cfd3d.scene.cameras` — pinhole cameras and orbits;
* :mod:`cfd3d.scene.sampling` — random training cameras and view labels;
* :mod:`cfd3d.scene.fields` — the :class:`Field` protocol and normals;
* :mod:`cfd3d.scene.encoding`, :mod:`cfd3d.scene.nerf` — the hash-grid NeRF;
* :mod:`cfd3d.scene.voxel` — the dense voxel-grid field;
* :mod:`cfd3d.scene.gaussians` — 3D Gaussians with adaptive density control;
* :mod:`cfd3d.scene.toy` — analytic toy scenes with exact meshes (imports trimesh, so it
  is not imported here).
"""

from cfd3d.scene.cameras import Cameras, look_at, orbit, spherical_cameras
from cfd3d.scene.fields import Field, FieldOutput, NormalField, field_normals
from cfd3d.scene.gaussians import GaussianConfig, GaussianField
from cfd3d.scene.nerf import NeRFConfig, NeRFField
from cfd3d.scene.sampling import (
    VIEW_LABELS,
    CameraSamplerConfig,
    ViewLabelConfig,
    sample_cameras,
    view_labels,
)
from cfd3d.scene.voxel import VoxelGridConfig, VoxelGridField

__all__ = [
    "VIEW_LABELS",
    "CameraSamplerConfig",
    "Cameras",
    "Field",
    "FieldOutput",
    "GaussianConfig",
    "GaussianField",
    "NeRFConfig",
    "NeRFField",
    "NormalField",
    "ViewLabelConfig",
    "VoxelGridConfig",
    "VoxelGridField",
    "field_normals",
    "look_at",
    "orbit",
    "sample_cameras",
    "spherical_cameras",
    "view_labels",
]
