"""Mesh files as bytes: binary glTF 2.0 (GLB, the default), Wavefront OBJ and binary PLY.

Writing is left to trimesh's exporters; this module only chooses their options and the
axes. cfd3d's world is +z up with the object's front facing +x; glTF mandates +y up with
the front facing +z, so GLB vertices are rotated by :data:`GLTF_FROM_WORLD`
(``(x, y, z) -> (y, z, x)``, a proper rotation). OBJ and PLY have no axis convention and
keep cfd3d's world coordinates.
"""

from __future__ import annotations

import numpy as np
import trimesh
from trimesh.exchange.obj import export_obj
from trimesh.exchange.ply import export_ply
from trimesh.visual.material import PBRMaterial

from cfd3d.errors import ConfigError
from cfd3d.text import quote

EXPORT_FORMATS = ("glb", "obj", "ply")
"""Mesh formats :func:`mesh_to_bytes` writes; the first is the default."""

GLTF_FROM_WORLD = np.array(
    [
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
"""``(4, 4)`` rotation from cfd3d world axes (+z up, front +x) to glTF's (+y up, front +z)."""


def check_format(fmt: str) -> str:
    """Return ``fmt`` if it is one of :data:`EXPORT_FORMATS`.

    Raises:
        ConfigError: naming the valid formats otherwise.
    """
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(
            f"unknown mesh format '{quote(str(fmt))}'; choose one of: {', '.join(EXPORT_FORMATS)}"
        )
    return fmt


def mesh_to_bytes(mesh: trimesh.Trimesh, fmt: str) -> bytes:
    """Encode a mesh, with its vertex colours and normals, as a file in format ``fmt``.

    Args:
        mesh: a triangle mesh in cfd3d world coordinates, optionally with
            ``visual.vertex_colors``.
        fmt: one of :data:`EXPORT_FORMATS`.

    Returns:
        The file's bytes. GLB: glTF 2.0 with ``POSITION``, ``NORMAL`` and (if the mesh has
        vertex colours) ``COLOR_0`` as normalised RGBA bytes, and a non-metallic, fully
        rough PBR material (glTF's default material is metallic, which renders vertex
        colours dark); in glTF axes. OBJ: text with ``v x y z r g b`` lines and normals.
        PLY: binary little-endian with uchar RGBA and normals.

    Raises:
        ConfigError: if ``fmt`` is not a supported format.
        ValueError: if the mesh has no faces.
    """
    check_format(fmt)
    if len(mesh.faces) == 0:
        raise ValueError("cannot export a mesh without faces")
    if fmt == "glb":
        return _to_glb(mesh)
    if fmt == "obj":
        text = export_obj(mesh, include_normals=True, include_color=True, include_texture=False)
        return text.encode("utf-8")
    return export_ply(mesh, encoding="binary", vertex_normal=True)


def mesh_files(mesh: trimesh.Trimesh, fmt: str, stem: str) -> dict[str, bytes]:
    """Every file of ``mesh`` in format ``fmt``, by file name: ``{stem}.{fmt}`` and, for a
    textured mesh (:func:`cfd3d.export.texture.textured_mesh`) as OBJ, its material
    library ``{stem}.mtl`` and texture image (GLB embeds the texture; PLY, which has no
    textures, gets the texture sampled at the vertices as vertex colours)."""
    check_format(fmt)
    if len(mesh.faces) == 0:
        raise ValueError("cannot export a mesh without faces")
    if _has_texture(mesh) and fmt == "obj":
        text, extra = export_obj(
            mesh,
            include_normals=True,
            include_texture=True,
            return_texture=True,
            mtl_name=f"{stem}.mtl",
        )
        return {f"{stem}.obj": text.encode("utf-8"), **extra}
    if _has_texture(mesh) and fmt == "ply":
        colored = mesh.copy()
        colored.visual = mesh.visual.to_color()
        return {f"{stem}.ply": mesh_to_bytes(colored, fmt)}
    return {f"{stem}.{fmt}": mesh_to_bytes(mesh, fmt)}


def _has_vertex_colors(mesh: trimesh.Trimesh) -> bool:
    return mesh.visual.kind == "vertex"


def _has_texture(mesh: trimesh.Trimesh) -> bool:
    material = getattr(mesh.visual, "material", None)
    return mesh.visual.kind == "texture" and (
        getattr(material, "baseColorTexture", None) is not None
        or getattr(material, "image", None) is not None
    )


def _to_glb(mesh: trimesh.Trimesh) -> bytes:
    """GLB bytes of ``mesh`` rotated into glTF axes, with a diffuse material (and its
    base-colour texture, if it has one)."""
    if _has_texture(mesh):
        visual = trimesh.visual.TextureVisuals(uv=mesh.visual.uv, material=mesh.visual.material)
    else:
        material = PBRMaterial(
            name="cfd3d",
            baseColorFactor=[255, 255, 255, 255],
            metallicFactor=0.0,
            roughnessFactor=1.0,
        )
        visual = trimesh.visual.TextureVisuals(material=material)
    if _has_vertex_colors(mesh):
        visual.vertex_attributes["color"] = np.asarray(mesh.visual.vertex_colors, np.uint8)
    out = trimesh.Trimesh(
        vertices=trimesh.transform_points(mesh.vertices, GLTF_FROM_WORLD),
        faces=mesh.faces,
        visual=visual,
        process=False,
    )
    return out.export(file_type="glb", include_normals=True)
