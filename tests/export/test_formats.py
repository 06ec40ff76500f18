"""Mesh files: GLB/OBJ/PLY bytes load back with trimesh, with their vertex colours."""

import io
import json
import struct

import numpy as np
import pytest
import trimesh

from cfd3d.errors import ConfigError
from cfd3d.export import EXPORT_FORMATS, GLTF_FROM_WORLD, mesh_to_bytes


def load(data: bytes, fmt: str) -> trimesh.Trimesh:
    """The one mesh in a file. A GLB loads as a scene; its geometry keeps the vertex
    colours, which trimesh's ``force="mesh"`` concatenation would drop (the mesh has a
    material, so trimesh stores them as a vertex attribute beside it)."""
    if fmt == "glb":
        scene = trimesh.load(io.BytesIO(data), file_type=fmt, process=False)
        (mesh,) = scene.geometry.values()
        return mesh
    return trimesh.load(io.BytesIO(data), file_type=fmt, force="mesh", process=False)


def loaded_colours(mesh: trimesh.Trimesh) -> np.ndarray:
    """Vertex colours of a loaded mesh (trimesh keeps GLB colours beside the material)."""
    if isinstance(mesh.visual, trimesh.visual.TextureVisuals):
        return mesh.visual.vertex_attributes["color"]
    return mesh.visual.vertex_colors


def glb_json(data: bytes) -> dict:
    magic, version, length = struct.unpack("<4sII", data[:12])
    assert (magic, version, length) == (b"glTF", 2, len(data))
    chunk_length, chunk_type = struct.unpack("<I4s", data[12:20])
    assert chunk_type == b"JSON"
    return json.loads(data[20 : 20 + chunk_length])


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_round_trip_keeps_geometry_and_colours(coloured_mesh, fmt):
    data = mesh_to_bytes(coloured_mesh, fmt)
    assert isinstance(data, bytes)
    loaded = load(data, fmt)
    assert loaded.vertices.shape == coloured_mesh.vertices.shape
    np.testing.assert_array_equal(loaded.faces, coloured_mesh.faces)
    expected = coloured_mesh.vertices
    if fmt == "glb":
        expected = trimesh.transform_points(expected, GLTF_FROM_WORLD)
    np.testing.assert_allclose(loaded.vertices, expected, atol=1e-6)  # float32 storage
    # OBJ stores colours as decimal fractions; GLB and PLY as the bytes themselves.
    colours = loaded_colours(loaded).astype(int)
    tolerance = 1 if fmt == "obj" else 0
    assert np.abs(colours - coloured_mesh.visual.vertex_colors.astype(int)).max() <= tolerance
    assert loaded.volume > 0  # winding (outward normals) preserved


def test_glb_is_gltf2_in_y_up_axes_with_a_diffuse_material(coloured_mesh):
    data = mesh_to_bytes(coloured_mesh, "glb")
    gltf = glb_json(data)
    assert gltf["asset"]["version"] == "2.0"
    primitive = gltf["meshes"][0]["primitives"][0]
    assert {"POSITION", "NORMAL", "COLOR_0"} <= set(primitive["attributes"])
    colour = gltf["accessors"][primitive["attributes"]["COLOR_0"]]
    assert (colour["componentType"], colour["type"], colour["normalized"]) == (
        5121,
        "VEC4",
        True,
    )
    pbr = gltf["materials"][primitive["material"]]["pbrMetallicRoughness"]
    assert pbr.get("metallicFactor") == 0.0
    # World +z (up) becomes glTF +y; world +x (front) becomes glTF +z.
    position = gltf["accessors"][primitive["attributes"]["POSITION"]]
    np.testing.assert_allclose(position["max"][1], coloured_mesh.bounds[1, 2], atol=1e-6)
    np.testing.assert_allclose(position["max"][2], coloured_mesh.bounds[1, 0], atol=1e-6)


def test_gltf_axes_are_a_rotation():
    rotation = GLTF_FROM_WORLD[:3, :3]
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3))
    assert np.linalg.det(rotation) == pytest.approx(1.0)
    np.testing.assert_array_equal(rotation @ [0, 0, 1], [0, 1, 0])
    np.testing.assert_array_equal(rotation @ [1, 0, 0], [0, 0, 1])


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_mesh_without_colours(fmt):
    mesh = trimesh.creation.box()
    loaded = load(mesh_to_bytes(mesh, fmt), fmt)
    assert len(loaded.faces) == 12
    assert loaded.volume == pytest.approx(1.0)
    if fmt == "glb":
        attributes = glb_json(mesh_to_bytes(mesh, fmt))["meshes"][0]["primitives"][0]
        assert "COLOR_0" not in attributes["attributes"]


@pytest.mark.parametrize("fmt", ["stl", "GLB", ".glb", ""])
def test_unknown_format_is_a_config_error(coloured_mesh, fmt):
    with pytest.raises(ConfigError, match="choose one of: glb, obj, ply"):
        mesh_to_bytes(coloured_mesh, fmt)


def test_empty_mesh_is_refused():
    with pytest.raises(ValueError, match="without faces"):
        mesh_to_bytes(trimesh.Trimesh(), "glb")
