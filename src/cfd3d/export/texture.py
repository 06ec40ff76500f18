"""Meshes as asset pipelines expect them: decimated, UV-unwrapped, colour baked into a texture.

Marching cubes gives dense meshes with one colour per vertex. Game engines, DCC tools and
web viewers want fewer faces and a base-colour *texture*: :func:`textured_mesh` reduces the
face count with quadric-error simplification (``fast-simplification``), unwraps the mesh
into a UV atlas (``xatlas``), and bakes the field's albedo into the atlas by evaluating the
colour function at the 3D point of every covered texel (:func:`bake_texture`), so the texture
is as sharp as the field, not as the old vertex spacing. Gutters around each chart are
filled from their neighbours so bilinear filtering and mip-mapping do not bleed background
into the seams.

UV convention: trimesh's (OBJ's), ``v`` up with ``(0, 0)`` at the image's bottom-left;
row ``r`` of the image holds ``v`` in ``[1 - (r + 1) / S, 1 - r / S]``. trimesh flips ``v``
when it writes glTF (whose origin is top-left), so the same image serves GLB and OBJ.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import trimesh

from cfd3d.errors import ConfigError

ColorFn = Callable[[torch.Tensor], torch.Tensor]
"""``points (N, 3) -> albedo (N, 3)`` in [0, 1]."""


def _missing(package: str) -> ConfigError:
    return ConfigError(
        f"textured meshes need the '{package}' package; pip install '{package}' (part of "
        "cfd3d's dependencies), or set texture_size to 0 for vertex colours"
    )


def decimate(mesh: trimesh.Trimesh, target_faces: int) -> trimesh.Trimesh:
    """``mesh`` simplified to about ``target_faces`` faces (quadric error metric; geometry
    only: colours are re-sampled afterwards). Returned unchanged if it already has at most
    that many."""
    if target_faces <= 0 or len(mesh.faces) <= target_faces:
        return mesh
    try:
        import fast_simplification
    except ImportError:
        raise _missing("fast-simplification") from None
    points, faces = fast_simplification.simplify(
        np.asarray(mesh.vertices, np.float32),
        np.asarray(mesh.faces, np.int64),
        target_reduction=1.0 - target_faces / len(mesh.faces),
    )
    return trimesh.Trimesh(vertices=points, faces=faces, process=True)


def unwrap(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A UV atlas of ``mesh`` by xatlas: ``(vertices (V', 3), faces (F, 3), uv (V', 2))``;
    vertices on chart seams are duplicated, so ``V' >= V``."""
    try:
        import xatlas
    except ImportError:
        raise _missing("xatlas") from None
    mapping, faces, uv = xatlas.parametrize(
        np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.uint32)
    )
    return np.asarray(mesh.vertices)[mapping], faces.astype(np.int64), uv.astype(np.float64)


def _texel_coverage(
    faces: np.ndarray, uv: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Which triangle covers each texel centre: ``(rows, cols, face, barycentric (K, 3))``
    for the ``K`` covered texels (a texel on an edge shared by two triangles is kept once)."""
    # pixel coordinates: x right, y down; texel (r, c) has its centre at (c + 0.5, r + 0.5)
    xy = np.stack([uv[:, 0] * size, (1.0 - uv[:, 1]) * size], axis=1)
    tri = xy[faces]  # (F, 3, 2)
    lo = np.ceil(tri.min(axis=1) - 0.5).astype(np.int64).clip(0, size - 1)
    hi = np.floor(tri.max(axis=1) - 0.5).astype(np.int64).clip(0, size - 1)
    width = (hi[:, 0] - lo[:, 0] + 1).clip(min=0)
    height = (hi[:, 1] - lo[:, 1] + 1).clip(min=0)
    counts = width * height
    face = np.repeat(np.arange(len(faces)), counts)
    start = np.repeat(np.cumsum(counts) - counts, counts)
    local = np.arange(int(counts.sum())) - start
    w = width[face].clip(min=1)
    cols = lo[face, 0] + local % w
    rows = lo[face, 1] + local // w
    p = np.stack([cols + 0.5, rows + 0.5], axis=1)
    a, b, c = tri[face, 0], tri[face, 1], tri[face, 2]
    v0, v1, v2 = b - a, c - a, p - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    ok = np.abs(den) > 1e-12
    den = np.where(ok, den, 1.0)
    l1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
    l2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
    bary = np.stack([1.0 - l1 - l2, l1, l2], axis=1)
    inside = ok & (bary >= -1e-6).all(axis=1)
    rows, cols, face, bary = rows[inside], cols[inside], face[inside], bary[inside]
    flat = rows * size + cols
    _, first = np.unique(flat, return_index=True)
    return rows[first], cols[first], face[first], bary[first]


def _fill_gutters(image: np.ndarray, filled: np.ndarray, iterations: int) -> np.ndarray:
    """Grow the filled texels ``iterations`` texels outwards (each new texel the mean of its
    filled 4-neighbours)."""
    image = image.copy()
    filled = filled.copy()
    for _ in range(iterations):
        total = np.zeros_like(image)
        count = np.zeros(filled.shape, np.float32)
        for axis, shift in ((0, 1), (0, -1), (1, 1), (1, -1)):
            total += np.roll(image * filled[..., None], shift, axis=axis)
            count += np.roll(filled, shift, axis=axis)
        grow = ~filled & (count > 0)
        if not grow.any():
            break
        image[grow] = total[grow] / count[grow][:, None]
        filled |= grow
    return image


def bake_texture(
    vertices: np.ndarray,
    faces: np.ndarray,
    uv: np.ndarray,
    color_fn: ColorFn,
    size: int,
    padding: int = 4,
    chunk: int = 1 << 16,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """``(size, size, 3)`` uint8 texture: ``color_fn`` at the 3D point under each covered
    texel, gutters filled ``padding`` texels outwards, the rest mid-grey.

    Args:
        vertices: ``(V, 3)`` positions of the unwrapped mesh.
        faces: ``(F, 3)`` vertex indices.
        uv: ``(V, 2)`` texture coordinates in [0, 1] (trimesh/OBJ convention, ``v`` up).
        color_fn: albedo at world points.
        size: texture width and height in texels.
        padding: gutter texels filled around each chart.
        chunk: points per call of ``color_fn``.
        device: where ``color_fn`` wants its points.
    """
    rows, cols, face, bary = _texel_coverage(faces, uv, size)
    points = np.einsum("kj,kjd->kd", bary, vertices[faces[face]])
    colors = np.empty((len(points), 3), np.float32)
    with torch.no_grad():
        for i in range(0, len(points), chunk):
            batch = torch.as_tensor(points[i : i + chunk], dtype=torch.float32, device=device)
            colors[i : i + chunk] = color_fn(batch).clamp(0, 1).float().cpu().numpy()
    image = np.full((size, size, 3), 0.5, np.float32)
    filled = np.zeros((size, size), bool)
    image[rows, cols] = colors
    filled[rows, cols] = True
    image = _fill_gutters(image, filled, padding)
    return (image * 255.0 + 0.5).astype(np.uint8)


def textured_mesh(
    mesh: trimesh.Trimesh,
    color_fn: ColorFn,
    texture_size: int,
    target_faces: int = 0,
    device: torch.device | str = "cpu",
    name: str = "texture",
) -> trimesh.Trimesh:
    """``mesh`` decimated to ``target_faces`` (0: as it is), unwrapped, with ``color_fn``
    baked into a ``texture_size``² base-colour texture (a non-metallic, fully rough PBR
    material called ``name``; OBJ export names the image ``{name}.png``), ready for
    :func:`cfd3d.export.formats.mesh_files`."""
    from PIL import Image
    from trimesh.visual.material import PBRMaterial

    if texture_size < 8:
        raise ConfigError(f"texture_size must be at least 8 texels (got {texture_size})")
    simple = decimate(mesh, target_faces)
    vertices, faces, uv = unwrap(simple)
    image = bake_texture(vertices, faces, uv, color_fn, texture_size, device=device)
    material = PBRMaterial(
        name=name,
        baseColorTexture=Image.fromarray(image),
        baseColorFactor=[255, 255, 255, 255],
        metallicFactor=0.0,
        roughnessFactor=1.0,
    )
    out = trimesh.Trimesh(
        vertices=vertices,
        faces=faces,
        visual=trimesh.visual.TextureVisuals(uv=uv, material=material),
        process=False,
    )
    out.metadata.update(mesh.metadata)
    return out
