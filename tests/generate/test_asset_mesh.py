"""The meshes a run writes: simplified to ``mesh_faces``, the albedo baked into a texture
(GLB embeds it, OBJ brings its MTL and PNG), or vertex colours with ``texture_size`` 0."""

from __future__ import annotations

import json
import struct
from dataclasses import replace

import pytest
import trimesh

from cfd3d.errors import ConfigError
from cfd3d.generate.config import preset_config
from cfd3d.generate.outputs import write_outputs
from cfd3d.generate.run import Run
from cfd3d.priors.registry import load_prior

pytest.importorskip("xatlas")

SMALL = {"mesh_resolution": 32, "turntable_frames": 2, "turntable_size": 32, "steps": 2}


def _run(**overrides) -> Run:
    config = replace(preset_config("cpu-demo", "a red cube"), **{**SMALL, **overrides})
    run = Run(config.resolved(), load_prior("embedded"))
    run.take_step()
    return run


def test_a_run_writes_a_textured_glb_and_an_obj_with_its_material(tmp_path):
    run = _run(formats=("glb", "obj"), mesh_faces=300, texture_size=64)
    written = write_outputs(run, tmp_path)
    assert {"model.glb", "model.obj", "model.mtl", "model_texture.png"} <= {
        p.name for p in tmp_path.iterdir()
    }
    assert written["obj:model.mtl"] == str(tmp_path / "model.mtl")
    glb = trimesh.load(tmp_path / "model.glb", force="mesh")
    assert glb.visual.kind == "texture"
    assert glb.visual.material.baseColorTexture.size == (64, 64)
    assert len(glb.faces) <= 330
    obj = trimesh.load(tmp_path / "model.obj", force="mesh")
    assert obj.visual.kind == "texture" and len(obj.faces) == len(glb.faces)


def test_texture_size_zero_writes_vertex_colours(tmp_path):
    run = _run(mesh_faces=0, texture_size=0)
    write_outputs(run, tmp_path)
    data = (tmp_path / "model.glb").read_bytes()
    (json_length,) = struct.unpack_from("<I", data, 12)
    gltf = json.loads(data[20 : 20 + json_length])  # the GLB's JSON chunk
    (primitive,) = gltf["meshes"][0]["primitives"]
    assert "COLOR_0" in primitive["attributes"] and "TEXCOORD_0" not in primitive["attributes"]
    assert "textures" not in gltf
    assert not (tmp_path / "model_texture.png").exists()


@pytest.mark.parametrize(
    ("field", "value"), [("mesh_faces", -1), ("mesh_faces", 50), ("texture_size", 4)]
)
def test_bad_mesh_settings_are_config_errors(field, value):
    with pytest.raises(ConfigError, match=field):
        replace(preset_config("cpu-demo", "a red cube"), **{field: value})
