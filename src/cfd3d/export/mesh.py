"""From a density field to a coloured triangle mesh, and back to an occupancy grid.

Grid convention (shared by :func:`extract_mesh` and :func:`occupancy_grid`): a grid of
``resolution`` cells per axis covers the cube ``[-bound, bound]³``; index ``i`` along an
axis is the cell centre ``x_i = -bound + (i + 0.5) · h`` with ``h = 2 · bound / resolution``,
and arrays are indexed ``[i_x, i_y, i_z]`` (x first).

Surfaces come from marching cubes (Lorensen & Cline, SIGGRAPH 1987) as implemented by
PyMCubes. We use PyMCubes rather than scikit-image because it is already a core
dependency, is a single small compiled extension (scikit-image pulls in a large
dependency tree for one function), and returns shared (already indexed) vertices.
"""

from __future__ import annotations

from collections.abc import Callable

import mcubes
import numpy as np
import torch
import trimesh

from cfd3d.errors import ConfigError

DensityFn = Callable[[torch.Tensor], torch.Tensor]
ColorFn = Callable[[torch.Tensor], torch.Tensor]

DEFAULT_THRESHOLD = 10.0
"""Default density level of the extracted surface (per unit length).

A ray crossing a layer of this density 0.1 units thick accumulates an opacity of
``1 - exp(-1) ≈ 0.63``, so the level set sits where a rendered surface becomes opaque.
"""

AUTO_LEVEL = 0.5
"""The automatic threshold's fraction of the field's interior density (see
:func:`auto_threshold`)."""


def auto_threshold(grid: np.ndarray, level: float = AUTO_LEVEL) -> float:
    """A surface density for a field whose interior density is not known in advance.

    Distilled fields saturate at whatever density makes them opaque (a few units to a
    few hundred), so no fixed level fits them all. The interior density is estimated as
    the mean density weighted by ``σ²``, ``Σσ³ / Σσ²`` over the grid, which the dense
    inside dominates whatever the object's size (the thin rise at the surface and empty
    space weigh little), and the surface is put at ``level`` of it: half-way up the
    density's rise from empty space to the inside.

    Raises:
        ConfigError: if the grid holds no density at all.
    """
    values = np.clip(grid.astype(np.float64), 0.0, None)
    squares = values * values
    weight = float(squares.sum())
    if not weight > 0.0:
        raise ConfigError("field is empty (no density anywhere); nothing to mesh")
    return level * float((squares * values).sum()) / weight


def cell_centres(resolution: int, bound: float) -> np.ndarray:
    """``(resolution,)`` float64 cell-centre coordinates along one axis (see module doc)."""
    h = 2.0 * bound / resolution
    return -bound + (np.arange(resolution, dtype=np.float64) + 0.5) * h


def _infer_device(fn: Callable) -> torch.device:
    """The device of the module behind ``fn`` (a module or its bound method), else CPU."""
    owner = fn if isinstance(fn, torch.nn.Module) else getattr(fn, "__self__", None)
    if isinstance(owner, torch.nn.Module):
        for tensor in (*owner.parameters(), *owner.buffers()):
            return tensor.device
    return torch.device("cpu")


def _check_grid_args(resolution: int, bound: float) -> None:
    if not isinstance(resolution, int) or resolution < 2:
        raise ConfigError(f"mesh resolution must be an integer >= 2, got {resolution!r}")
    if not bound > 0.0:
        raise ConfigError(f"mesh bound must be positive, got {bound!r}")


def sample_grid(
    density_fn: DensityFn,
    resolution: int,
    bound: float,
    chunk: int = 65536,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Evaluate a density at all cell centres of the grid, in chunks and without gradients.

    Args:
        density_fn: ``points (N, 3) -> density (N,)``.
        resolution: cells per axis.
        bound: half-size of the cube.
        chunk: points per call of ``density_fn``.
        device: where the points are created (default: the device of the module behind
            ``density_fn``, else CPU).

    Returns:
        ``(resolution, resolution, resolution)`` float64 densities, indexed ``[x, y, z]``.

    Raises:
        ValueError: if ``density_fn`` returns the wrong shape or non-finite values.
    """
    _check_grid_args(resolution, bound)
    if chunk < 1:
        raise ConfigError(f"mesh extraction chunk must be >= 1, got {chunk}")
    device = torch.device(device) if device is not None else _infer_device(density_fn)
    axis = torch.as_tensor(cell_centres(resolution, bound), dtype=torch.float32, device=device)
    total = resolution**3
    out = np.empty(total, dtype=np.float64)
    with torch.no_grad():
        for start in range(0, total, chunk):
            index = torch.arange(start, min(start + chunk, total), device=device)
            ix = index // (resolution * resolution)
            iy = (index // resolution) % resolution
            iz = index % resolution
            points = torch.stack(
                [axis.index_select(0, ix), axis.index_select(0, iy), axis.index_select(0, iz)],
                dim=-1,
            )
            density = density_fn(points)
            if density.numel() != points.shape[0]:
                raise ValueError(
                    f"density_fn must return (N,) for (N, 3) points, got {tuple(density.shape)}"
                )
            out[start : start + points.shape[0]] = (
                density.reshape(-1).to("cpu", torch.float64).numpy()
            )
    if not np.isfinite(out).all():
        raise ValueError("density_fn returned non-finite values")
    return out.reshape(resolution, resolution, resolution)


def _pad_closed(grid: np.ndarray, threshold: float) -> np.ndarray:
    """Pad the grid by one cell so that the surface closes exactly on the cube's faces.

    A boundary cell above the threshold gets the mirrored value ``2·threshold - d`` beyond
    it, so linear interpolation puts the crossing half-way, at ``±bound``; a boundary cell
    at or below the threshold gets a value below both it and the threshold (no crossing).
    """
    edge = np.pad(grid, 1, mode="edge")
    border = np.ones(edge.shape, dtype=bool)
    border[1:-1, 1:-1, 1:-1] = False
    outside = np.where(edge > threshold, 2.0 * threshold - edge, edge - 1.0)
    return np.where(border, outside, edge)


def extract_mesh(
    density_fn: DensityFn,
    color_fn: ColorFn | None = None,
    *,
    resolution: int = 128,
    bound: float = 1.0,
    threshold: float | None = DEFAULT_THRESHOLD,
    chunk: int = 65536,
    min_component_fraction: float = 0.0,
    device: torch.device | str | None = None,
) -> trimesh.Trimesh:
    """Marching-cubes mesh of the level set ``density = threshold``, with vertex colours.

    The density is sampled at the cell centres of the grid (module doc); the grid is
    padded so that the surface closes on the faces of ``[-bound, bound]³``, which makes
    the mesh watertight even where the field touches the box (the box's edges come out
    chamfered by half a cell, like every sharp edge marching cubes meets). Vertices are
    mapped back to world coordinates; the mesh is cleaned (vertices merged, degenerate
    faces and unreferenced vertices removed, optionally small floaters dropped) and its
    faces wound counter-clockwise seen from outside, so normals point outwards.

    Args:
        density_fn: ``points (N, 3) -> density (N,)``, larger inside.
        color_fn: ``points (N, 3) -> rgb (N, 3)`` in [0, 1], evaluated at the vertices;
            ``None`` gives a mesh without colours.
        resolution: cells per axis.
        bound: half-size of the sampled cube.
        threshold: density of the surface; ``None`` chooses it with
            :func:`auto_threshold`. The level used is kept in ``mesh.metadata["threshold"]``.
        chunk: points per call of ``density_fn``/``color_fn``.
        min_component_fraction: drop connected components with fewer than this fraction
            of all faces (floaters); 0 keeps everything.
        device: where query points are created (default: the device of the module behind
            ``density_fn``, else CPU).

    Returns:
        A watertight :class:`trimesh.Trimesh` in world coordinates; with ``color_fn`` its
        ``visual.vertex_colors`` are ``(V, 4)`` uint8 RGBA (alpha 255).

    Raises:
        ConfigError: if the field has no surface at ``threshold`` or an argument is invalid.
    """
    if not 0.0 <= min_component_fraction < 1.0:
        raise ConfigError(
            f"min_component_fraction must be in [0, 1), got {min_component_fraction!r}"
        )
    device = torch.device(device) if device is not None else _infer_device(density_fn)
    grid = sample_grid(density_fn, resolution, bound, chunk, device)
    if threshold is None:
        threshold = auto_threshold(grid)
    peak = float(grid.max())
    if not peak > threshold:
        raise ConfigError(
            f"field has no surface at threshold {threshold:g}; max density is {peak:g} "
            "(lower the threshold)"
        )
    vertices, faces = mcubes.marching_cubes(_pad_closed(grid, threshold), threshold)
    h = 2.0 * bound / resolution
    # Padded index p is grid index p - 1, whose centre is -bound + (p - 0.5) h.
    vertices = np.clip(-bound + (vertices - 0.5) * h, -bound, bound)
    mesh = trimesh.Trimesh(vertices, faces.astype(np.int64), process=True)
    mesh.update_faces(mesh.nondegenerate_faces())
    if min_component_fraction > 0.0:
        mesh.update_faces(_large_components(mesh, min_component_fraction))
    mesh.remove_unreferenced_vertices()
    if len(mesh.faces) == 0:
        raise ConfigError(
            f"field has no surface at threshold {threshold:g}; max density is {peak:g} "
            "(lower the threshold)"
        )
    # Marching cubes winds faces consistently; a negative total volume means inward normals.
    if mesh.volume < 0.0:
        mesh.invert()
    if color_fn is not None:
        mesh.visual.vertex_colors = vertex_colors(color_fn, mesh.vertices, chunk, device)
    mesh.metadata["threshold"] = float(threshold)
    return mesh


def _large_components(mesh: trimesh.Trimesh, fraction: float) -> np.ndarray:
    """``(F,)`` bool mask of faces in connected components with >= ``fraction`` of faces."""
    labels = trimesh.graph.connected_component_labels(
        mesh.face_adjacency, node_count=len(mesh.faces)
    )
    sizes = np.bincount(labels)
    return sizes[labels] >= fraction * len(mesh.faces)


def vertex_colors(
    color_fn: ColorFn, vertices: np.ndarray, chunk: int, device: torch.device
) -> np.ndarray:
    """``(V, 4)`` uint8 RGBA colours of ``color_fn`` at ``vertices (V, 3)`` (alpha 255)."""
    rgba = np.full((len(vertices), 4), 255, dtype=np.uint8)
    points = torch.as_tensor(np.asarray(vertices), dtype=torch.float32)
    with torch.no_grad():
        for start in range(0, len(points), chunk):
            rgb = color_fn(points[start : start + chunk].to(device))
            if rgb.shape != (min(chunk, len(points) - start), 3):
                raise ValueError(f"color_fn must return (N, 3), got {tuple(rgb.shape)}")
            byte = (rgb.float().clamp(0.0, 1.0) * 255.0).round().to("cpu", torch.uint8)
            rgba[start : start + chunk, :3] = byte.numpy()
    return rgba


def occupancy_grid(mesh: trimesh.Trimesh, resolution: int, bound: float) -> np.ndarray:
    """Which cell centres of the grid (module doc) lie inside a mesh, by ray parity.

    For every column ``(i_x, i_y)`` a ray along +z is intersected with all triangles
    (vectorised over the columns each triangle's xy bounding box covers); a cell centre is
    inside when an odd number of crossings lie below it. Rays through edges and vertices
    (common for marching-cubes meshes of the same grid) are resolved exactly: each edge
    function is computed once per undirected edge and negated for the opposite direction,
    and points on an edge count for one side only (the rasterisers' top-left rule), so
    every crossing of a watertight surface is counted exactly once.

    Args:
        mesh: a watertight triangle mesh (for open meshes the result is undefined).
        resolution: cells per axis.
        bound: half-size of the cube.

    Returns:
        ``(resolution, resolution, resolution)`` bool, indexed ``[x, y, z]``.
    """
    _check_grid_args(resolution, bound)
    h = 2.0 * bound / resolution
    tris = np.asarray(mesh.vertices, dtype=np.float64)[np.asarray(mesh.faces)]
    a, b, c = tris[:, 0], tris[:, 1], tris[:, 2]
    area2 = _orient(a, b, c)
    keep = area2 != 0.0  # triangles parallel to the rays cannot be crossed
    a, b, c, area2 = a[keep], b[keep], c[keep], area2[keep]
    # Counter-clockwise in the xy-plane: swap b and c where clockwise.
    clockwise = (area2 < 0.0)[:, None]
    b, c = np.where(clockwise, c, b), np.where(clockwise, b, c)

    lo = np.minimum(np.minimum(a, b), c)[:, :2]
    hi = np.maximum(np.maximum(a, b), c)[:, :2]
    # Columns whose centre may lie in the bounding box; rounded outwards, since a vertex
    # exactly on a column would otherwise be lost to rounding (the edge tests are exact).
    first = np.clip(np.floor((lo + bound) / h - 0.5), 0, resolution).astype(np.int64)
    last = np.clip(np.ceil((hi + bound) / h - 0.5), -1, resolution - 1).astype(np.int64)
    extent = np.maximum(last - first + 1, 0)
    counts = extent[:, 0] * extent[:, 1]

    crossings = np.zeros(resolution * resolution * (resolution + 1), dtype=np.int64)
    # Columns covered by each triangle, expanded into one candidate per (triangle, column),
    # in batches of triangles to bound memory.
    ends = np.cumsum(counts)
    batch = 1 << 22
    start = 0
    while start < len(counts):
        stop = max(int(np.searchsorted(ends, ends[start] - counts[start] + batch)), start + 1)
        stop = min(stop, len(counts))
        tri = np.repeat(np.arange(start, stop), counts[start:stop])
        if len(tri):
            offset = np.arange(len(tri)) - np.repeat(
                np.cumsum(counts[start:stop]) - counts[start:stop], counts[start:stop]
            )
            ix = first[tri, 0] + offset // extent[tri, 1]
            iy = first[tri, 1] + offset % extent[tri, 1]
            column, z = _column_crossings(a[tri], b[tri], c[tri], ix, iy, resolution, bound, h)
            k = np.clip(np.ceil((z + bound) / h - 0.5), 0, resolution).astype(np.int64)
            crossings += np.bincount(column * (resolution + 1) + k, minlength=crossings.size)
        start = stop
    parity = np.cumsum(crossings.reshape(resolution * resolution, resolution + 1), axis=1)
    return (parity[:, :resolution] % 2 == 1).reshape(resolution, resolution, resolution)


def _orient(p: np.ndarray, q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Twice the signed xy-area of triangles ``(p, q, r)`` (``(..., >=2)`` each)."""
    return (q[..., 0] - p[..., 0]) * (r[..., 1] - p[..., 1]) - (q[..., 1] - p[..., 1]) * (
        r[..., 0] - p[..., 0]
    )


def _edge_function(p: np.ndarray, q: np.ndarray, point: np.ndarray) -> np.ndarray:
    """``_orient(p, q, point)`` computed identically for ``(p, q)`` and ``(q, p)`` up to sign.

    The endpoints are put in lexicographic (x, y) order before the arithmetic, so the two
    triangles sharing an edge get exactly opposite values and never both (or neither)
    claim a point on it.
    """
    swap = (p[:, 0] > q[:, 0]) | ((p[:, 0] == q[:, 0]) & (p[:, 1] > q[:, 1]))
    u = np.where(swap[:, None], q, p)
    v = np.where(swap[:, None], p, q)
    value = _orient(u, v, point)
    return np.where(swap, -value, value)


def _claims(p: np.ndarray, q: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Whether a counter-clockwise triangle owns points with edge value ``w`` on edge p→q.

    Strictly inside (``w > 0``), or on the edge when it is a "top" or "left" edge: going
    down, or horizontal going left. The rule flips with the edge direction, so exactly
    one of two triangles on opposite sides of a shared edge owns the points on it.
    """
    dx = q[:, 0] - p[:, 0]
    dy = q[:, 1] - p[:, 1]
    top_left = (dy < 0.0) | ((dy == 0.0) & (dx < 0.0))
    return (w > 0.0) | ((w == 0.0) & top_left)


def _column_crossings(
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray,
    ix: np.ndarray,
    iy: np.ndarray,
    resolution: int,
    bound: float,
    h: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Crossings of counter-clockwise triangles ``(M, 3)`` with the rays of columns ``(M,)``.

    Returns:
        Flat column indices ``ix * resolution + iy`` and crossing heights z, both ``(K,)``
        for the ``K <= M`` candidates whose ray hits the triangle.
    """
    point = np.stack([-bound + (ix + 0.5) * h, -bound + (iy + 0.5) * h], axis=-1)
    w_a = _edge_function(b, c, point)  # weight of a: opposite edge b→c
    w_b = _edge_function(c, a, point)
    w_c = _edge_function(a, b, point)
    hit = _claims(b, c, w_a) & _claims(c, a, w_b) & _claims(a, b, w_c)
    total = w_a + w_b + w_c
    z = (w_a * a[:, 2] + w_b * b[:, 2] + w_c * c[:, 2])[hit] / total[hit]
    return (ix * resolution + iy)[hit], z


def volumetric_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean occupancy grids of the same shape.

    Two empty grids are identical, with IoU 1.

    Raises:
        ValueError: if the shapes differ.
    """
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"occupancy grids differ in shape: {a.shape} vs {b.shape}")
    union = np.count_nonzero(a | b)
    if union == 0:
        return 1.0
    return np.count_nonzero(a & b) / union
