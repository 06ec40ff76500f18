"""Small meshes shared by the export tests."""

import numpy as np
import pytest
import trimesh


@pytest.fixture
def coloured_mesh() -> trimesh.Trimesh:
    """An icosphere (162 vertices, radius 0.5, off-centre) with distinct vertex colours."""
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    mesh.apply_translation([0.1, -0.2, 0.3])
    rgba = np.random.default_rng(0).integers(0, 256, size=(len(mesh.vertices), 4), dtype=np.uint8)
    rgba[:, 3] = 255
    mesh.visual.vertex_colors = rgba
    return mesh
