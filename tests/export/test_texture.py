"""Decimated, UV-unwrapped meshes with the colour baked into a texture: the texture holds the
colour function where the UVs point (read back from the GLB by a reader written from the
glTF spec, not by trimesh), OBJ comes with its MTL and image (the Khronos validator's check
is in test_gltf_validator.py)."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from cfd3d.export.formats import GLTF_FROM_WORLD, mesh_files
from cfd3d.export.texture import bake_texture, decimate, textured_mesh, unwrap

pytest.importorskip("xatlas")
pytest.importorskip("fast_simplification")


def color_fn(points: torch.Tensor) -> torch.Tensor:
    """A smooth colour that differs everywhere on the sphere."""
    return torch.stack(
        [0.5 + points[:, 0], 0.5 + points[:, 1], 0.5 + 0.8 * points[:, 2]], dim=-1
    ).clamp(0, 1)


@pytest.fixture(scope="module")
def sphere() -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=4, radius=0.45)


def _sample(image: np.ndarray, uv: np.ndarray, v_down: bool) -> np.ndarray:
    """Nearest-texel colours at ``uv`` in [0, 1]² (``v_down``: glTF's top-left origin)."""
    size = image.shape[0]
    v = uv[:, 1] if v_down else 1.0 - uv[:, 1]
    cols = np.clip((uv[:, 0] * size).astype(int), 0, size - 1)
    rows = np.clip((v * size).astype(int), 0, size - 1)
    return image[rows, cols, :3].astype(np.float64) / 255.0


def test_baked_texture_holds_the_colour_under_each_uv(sphere):
    vertices, faces, uv = unwrap(sphere)
    assert len(faces) == len(sphere.faces) and (uv >= 0).all() and (uv <= 1).all()
    image = bake_texture(vertices, faces, uv, color_fn, 256)
    # sample at face centroids (inside charts, away from seams)
    centre_uv = uv[faces].mean(axis=1)
    centre_xyz = vertices[faces].mean(axis=1)
    want = color_fn(torch.as_tensor(centre_xyz, dtype=torch.float32)).numpy()
    err = np.abs(_sample(image, centre_uv, v_down=False) - want)
    assert np.median(err) < 0.01 and np.quantile(err, 0.99) < 0.05
    # a texture of the wrong orientation (v flipped) would not match
    flipped = np.abs(_sample(image, centre_uv, v_down=True) - want)
    assert np.median(flipped) > 0.05


def test_decimation_keeps_the_shape(sphere):
    simple = decimate(sphere, 500)
    assert 400 <= len(simple.faces) <= 520
    radius = np.linalg.norm(simple.vertices, axis=1)
    assert np.abs(radius - 0.45).max() < 0.02
    assert decimate(sphere, 10**6) is sphere


def _read_glb(data: bytes) -> tuple[dict, bytes]:
    """The JSON and BIN chunks of a GLB (glTF 2.0 spec, section 4.4)."""
    magic, version, length = struct.unpack_from("<III", data, 0)
    assert magic == 0x46546C67 and version == 2 and length == len(data)
    json_len, json_type = struct.unpack_from("<II", data, 12)
    assert json_type == 0x4E4F534A
    gltf = json.loads(data[20 : 20 + json_len])
    bin_len, bin_type = struct.unpack_from("<II", data, 20 + json_len)
    assert bin_type == 0x004E4942
    start = 28 + json_len
    return gltf, data[start : start + bin_len]


def _accessor(gltf: dict, blob: bytes, index: int) -> np.ndarray:
    acc = gltf["accessors"][index]
    view = gltf["bufferViews"][acc["bufferView"]]
    assert acc["componentType"] == 5126  # FLOAT
    width = {"VEC2": 2, "VEC3": 3}[acc["type"]]
    offset = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    count = acc["count"] * width
    return np.frombuffer(blob, np.float32, count, offset).reshape(-1, width)


def test_glb_carries_the_texture_where_a_gltf_reader_finds_it(sphere):
    mesh = textured_mesh(sphere, color_fn, 256, target_faces=2000)
    assert len(mesh.faces) <= 2100
    data = mesh_files(mesh, "glb", "model")["model.glb"]
    gltf, blob = _read_glb(data)
    primitive = gltf["meshes"][0]["primitives"][0]
    material = gltf["materials"][primitive["material"]]
    texture = gltf["textures"][material["pbrMetallicRoughness"]["baseColorTexture"]["index"]]
    image_info = gltf["images"][texture["source"]]
    assert image_info["mimeType"] == "image/png"
    view = gltf["bufferViews"][image_info["bufferView"]]
    png = blob[view.get("byteOffset", 0) : view.get("byteOffset", 0) + view["byteLength"]]
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert image.shape == (256, 256, 3)
    positions = _accessor(gltf, blob, primitive["attributes"]["POSITION"])
    uv = _accessor(gltf, blob, primitive["attributes"]["TEXCOORD_0"])
    # back from glTF axes to cfd3d's world (GLTF_FROM_WORLD is a rotation)
    world = positions @ GLTF_FROM_WORLD[:3, :3]
    want = color_fn(torch.as_tensor(world.copy(), dtype=torch.float32)).numpy()
    err = np.abs(_sample(image, uv, v_down=True) - want)  # glTF: origin top-left
    assert np.median(err) < 0.02


def test_obj_comes_with_its_material_and_texture(sphere):
    mesh = textured_mesh(sphere, color_fn, 64, target_faces=500)
    files = mesh_files(mesh, "obj", "model")
    assert set(files) >= {"model.obj", "model.mtl"}
    obj = files["model.obj"].decode()
    mtl = files["model.mtl"].decode()
    assert "mtllib model.mtl" in obj and "\nvt " in obj
    (texture_name,) = [line.split()[1] for line in mtl.splitlines() if line.startswith("map_Kd")]
    assert Image.open(io.BytesIO(files[texture_name])).size == (64, 64)
    ply = mesh_files(mesh, "ply", "model")["model.ply"]
    loaded = trimesh.load(io.BytesIO(ply), file_type="ply")
    assert loaded.visual.kind == "vertex"  # the texture sampled at the vertices
