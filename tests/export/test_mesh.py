"""Marching-cubes extraction, occupancy grids and volumetric IoU on analytic shapes."""

import numpy as np
import pytest
import torch
import trimesh

from cfd3d.errors import ConfigError
from cfd3d.export import extract_mesh, occupancy_grid, volumetric_iou
from cfd3d.export.mesh import auto_threshold, cell_centres, sample_grid

CENTRE = torch.tensor([0.2, -0.1, 0.15])


def sphere_density(radius: float, centre: torch.Tensor = CENTRE, scale: float = 10.0):
    """``scale * (radius - |x - centre|)``: linear in the distance, positive inside."""
    return lambda p: scale * (radius - (p - centre.to(p)).norm(dim=-1))


def grid_points(resolution: int, bound: float) -> np.ndarray:
    c = cell_centres(resolution, bound)
    return np.stack(np.meshgrid(c, c, c, indexing="ij"), axis=-1)


@pytest.mark.parametrize("threshold", [0.0, 2.0])
def test_sphere_radius_and_volume(threshold):
    resolution, radius0 = 64, 0.5
    radius = radius0 - threshold / 10.0
    h = 2.0 / resolution
    mesh = extract_mesh(sphere_density(radius0), resolution=resolution, threshold=threshold)
    assert mesh.is_watertight and mesh.is_winding_consistent
    # Vertices interpolate |x - c| linearly along cell edges (length h). |x - c| is convex,
    # so they lie inside the sphere, by at most h²/8 times its second derivative along the
    # edge, which is <= 1/|x - c| <= 1/(r - h) there. The 1e-5 slack covers float32 sampling.
    dist = np.linalg.norm(mesh.vertices - CENTRE.numpy(), axis=1)
    assert dist.max() <= radius + 1e-5
    assert dist.min() >= radius - h**2 / (8 * (radius - h)) - 1e-5
    # The polyhedron is inscribed, so it is smaller. Faces lie within a cell, with
    # circumradius <= sqrt(2/3) h, sagging at most h²/(3r) below their vertices: a radial
    # deficit <= 11h²/(24r), hence a relative volume deficit <= 3 * that / r.
    true_volume = 4.0 / 3.0 * np.pi * radius**3
    deficit = 1.0 - mesh.volume / true_volume
    assert 0.0 < deficit <= 11 * h**2 / (8 * radius**2)


def test_normals_point_outwards():
    mesh = extract_mesh(sphere_density(0.5), resolution=32, threshold=0.0)
    outward = np.einsum("ij,ij->i", mesh.vertex_normals, mesh.vertices - CENTRE.numpy())
    assert (outward > 0).all()
    assert mesh.volume > 0


def test_vertex_colours_from_color_fn():
    mesh = extract_mesh(sphere_density(0.5), lambda p: 2.0 * p + 0.5, resolution=32, threshold=0.0)
    colors = mesh.visual.vertex_colors
    assert colors.dtype == np.uint8 and colors.shape == (len(mesh.vertices), 4)
    expected = np.round(np.clip(2.0 * mesh.vertices + 0.5, 0.0, 1.0) * 255.0)
    # color_fn sees float32 vertices: at most one step of rounding apart.
    assert np.abs(colors[:, :3].astype(float) - expected).max() <= 1.0
    assert (colors[:, 3] == 255).all()
    assert (colors[:, :3] == 0).any() and (colors[:, :3] == 255).any()  # clamped


def test_no_colours_without_color_fn():
    mesh = extract_mesh(sphere_density(0.5), resolution=16, threshold=0.0)
    assert mesh.visual.kind is None


def test_empty_level_set_is_a_config_error():
    with pytest.raises(ConfigError, match=r"no surface at threshold 20; max density is 3\.9"):
        extract_mesh(sphere_density(0.5, torch.zeros(3)), resolution=16, threshold=20.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"resolution": 1}, {"bound": 0.0}, {"chunk": 0}, {"min_component_fraction": 1.0}],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ConfigError):
        extract_mesh(sphere_density(0.5), **kwargs)


def test_field_touching_the_box_closes_on_its_faces():
    bound, resolution = 0.7, 8
    mesh = extract_mesh(
        lambda p: torch.ones(len(p)), resolution=resolution, bound=bound, threshold=0.5
    )
    assert mesh.is_watertight and mesh.volume > 0
    # Every vertex lies on a face of the box; its 12 edges are chamfered by right
    # triangles with legs h/2, removing about 12 * 2b * h²/8 = 3bh² of volume.
    np.testing.assert_allclose(np.abs(mesh.vertices).max(axis=1), bound, atol=1e-12)
    h = 2 * bound / resolution
    assert 8 * bound**3 - 3 * bound * h**2 <= mesh.volume < 8 * bound**3 - 2 * bound * h**2


def test_min_component_fraction_drops_floaters():
    big = sphere_density(0.5, torch.tensor([-0.3, 0.0, 0.0]))
    small = sphere_density(0.1, torch.tensor([0.7, 0.0, 0.0]))

    def density(p):
        return torch.maximum(big(p), small(p))

    both = extract_mesh(density, resolution=48, threshold=0.0)
    assert both.body_count == 2
    kept = extract_mesh(density, resolution=48, threshold=0.0, min_component_fraction=0.1)
    assert kept.body_count == 1
    assert kept.vertices[:, 0].max() < 0.25


class RecordingField(torch.nn.Module):
    """A sphere density with a learnable radius that records how it is called."""

    def __init__(self):
        super().__init__()
        self.radius = torch.nn.Parameter(torch.tensor(0.5))
        self.calls: list[tuple[int, bool, torch.device]] = []

    def forward(self, points):
        self.calls.append((len(points), torch.is_grad_enabled(), points.device))
        return 10.0 * (self.radius - points.norm(dim=-1))


def test_chunks_without_grad_on_the_fields_device():
    field = RecordingField()
    mesh = extract_mesh(field, resolution=20, threshold=0.0, chunk=1000)
    sizes = [n for n, _, _ in field.calls]
    assert sum(sizes) == 20**3 and max(sizes) == 1000
    assert not any(grad for _, grad, _ in field.calls)
    assert {device for _, _, device in field.calls} == {field.radius.device}
    assert field.radius.grad is None and len(mesh.faces) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_points_are_created_on_the_fields_cuda_device():
    field = RecordingField().cuda()
    mesh = extract_mesh(field, lambda p: p.abs(), resolution=16, threshold=0.0)
    assert {device.type for _, _, device in field.calls} == {"cuda"}
    cpu = extract_mesh(RecordingField(), lambda p: p.abs(), resolution=16, threshold=0.0)
    np.testing.assert_allclose(mesh.vertices, cpu.vertices, atol=1e-5)


def test_grid_is_indexed_x_first():
    grid = sample_grid(lambda p: p[:, 0] + 10 * p[:, 1] + 100 * p[:, 2], 4, 1.0)
    c = cell_centres(4, 1.0)
    np.testing.assert_allclose(grid[3, 1, 2], c[3] + 10 * c[1] + 100 * c[2], rtol=1e-6)


def test_occupancy_of_marching_cubes_mesh_matches_the_sampled_grid():
    """Marching cubes separates every grid point above the level from those below, so the
    mesh's inside, tested at the same cell centres, is exactly ``grid > threshold``. The
    rays then pass exactly through mesh vertices and along edges: the degenerate cases."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.rand(6, 3, generator=gen) * 1.2 - 0.6
    widths = torch.rand(6, generator=gen) * 0.15 + 0.1

    def density(p):
        d2 = ((p[:, None, :] - centres) ** 2).sum(-1)
        return torch.exp(-d2 / (2 * widths**2)).sum(-1)

    resolution, threshold = 40, 0.5
    mesh = extract_mesh(density, resolution=resolution, threshold=threshold)
    assert mesh.is_watertight
    expected = sample_grid(density, resolution, 1.0) > threshold
    occupancy = occupancy_grid(mesh, resolution, 1.0)
    assert occupancy.dtype == bool and occupancy.shape == (resolution,) * 3
    assert np.array_equal(occupancy, expected)


def split_prism(quad: np.ndarray, low: float, high: float) -> trimesh.Trimesh:
    """A closed prism over a convex quad ``(4, 2)``: its top split along diagonal 0-2,
    its bottom along 1-3, its sides vertical (parallel to the rays)."""
    vertices = np.concatenate([np.c_[quad, np.full(4, high)], np.c_[quad, np.full(4, low)]], axis=0)
    faces = [[0, 1, 2], [0, 2, 3], [5, 4, 7], [5, 7, 6]]
    for k in range(4):
        faces += [[k, k + 4, (k + 1) % 4 + 4], [k, (k + 1) % 4 + 4, (k + 1) % 4]]
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def test_occupancy_with_a_shared_edge_through_column_centres():
    """The top diagonal passes (up to rounding) through several column centres, where the
    two triangles sharing it must claim each column exactly once. Evaluating the edge
    function separately per triangle (not antisymmetric in floating point) fails here."""
    resolution, rng = 64, np.random.default_rng(1)
    h, c = 2.0 / resolution, cell_centres(64, 1.0)
    inside_z = np.abs(c) < 0.5
    for _ in range(10):
        (i0, j0), (di, dj) = rng.integers(5, 20, 2), rng.integers(1, 5, 2)
        n = int(rng.integers(6, 10))
        start = np.array([c[i0], c[j0]]) - rng.uniform(0.1, 0.9) * h * np.array([di, dj])
        end = np.array([c[i0 + n * di], c[j0 + n * dj]]) + rng.uniform(0.1, 0.9) * h * np.array(
            [di, dj]
        )
        mid, normal = (start + end) / 2, np.array([start[1] - end[1], end[0] - start[0]])
        quad = np.stack([start, mid - 0.3 * normal, end, mid + 0.4 * normal])
        mesh = split_prism(quad, -0.5, 0.5 + 0.01 * rng.uniform())
        occupancy = occupancy_grid(mesh, resolution, 1.0)
        columns = occupancy[:, :, inside_z]
        assert np.array_equal(columns.any(axis=-1), columns.all(axis=-1))  # no parity slips
        assert not occupancy[:, :, ~inside_z].any()
        assert columns[..., 0].sum() > n  # the columns along the diagonal are inside


def test_occupancy_of_a_convex_polyhedron_is_exact():
    """A rotated icosphere: inside means behind every face plane."""
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.8)
    mesh.apply_transform(trimesh.transformations.random_rotation_matrix(np.random.rand(3)))
    mesh.apply_translation([0.1, -0.05, 0.02])
    points = grid_points(48, 1.0).reshape(-1, 3)
    offsets = np.einsum("fj,fj->f", mesh.face_normals, mesh.triangles[:, 0])
    signed = points @ mesh.face_normals.T - offsets  # (P, F), < 0 behind a face
    clear = np.abs(signed).min(axis=1) > 1e-9  # ignore points on the surface
    expected = (signed < 0).all(axis=1)
    occupancy = occupancy_grid(mesh, 48, 1.0).reshape(-1)
    assert clear.mean() > 0.99
    assert np.array_equal(occupancy[clear], expected[clear])


def test_occupancy_of_a_box_with_faces_through_cell_centres():
    """Faces lie exactly on cell-centre planes and the rays run along the vertical faces;
    the grid is symmetric, so a consistent tie rule still gives the volume of the box."""
    resolution = 16
    c = cell_centres(resolution, 1.0)
    low, high = c[3], c[11]
    mesh = trimesh.creation.box(bounds=[[low, low, low], [high, high, high]])
    occupancy = occupancy_grid(mesh, resolution, 1.0)
    inside = occupancy[4:11, 4:11, 4:11]
    assert inside.all()
    # Points on the surface may go either way, but never beyond the box.
    assert not occupancy[:3].any() and not occupancy[12:].any()
    assert not occupancy[:, :3].any() and not occupancy[:, :, 12:].any()


def test_occupancy_of_a_hollow_shell_and_two_bodies():
    outer = trimesh.creation.icosphere(subdivisions=3, radius=0.6)
    inner = trimesh.creation.icosphere(subdivisions=3, radius=0.3)
    inner.invert()
    far = trimesh.creation.box(extents=[0.2, 0.2, 0.2])
    far.apply_translation([0.8, 0.8, 0.8])
    mesh = trimesh.util.concatenate([outer, inner, far])
    points = grid_points(32, 1.0)
    r = np.linalg.norm(points, axis=-1)
    in_far = np.abs(points - 0.8).max(axis=-1) < 0.09
    occupancy = occupancy_grid(mesh, 32, 1.0)
    assert not occupancy[r < 0.28].any()
    assert occupancy[(r > 0.32) & (r < 0.57)].all()
    assert in_far.sum() == 27 and occupancy[in_far].all()
    assert not occupancy[(r > 0.61) & ~in_far].any()


def test_occupancy_agrees_with_analytic_ball_and_trimesh_volume():
    resolution, radius = 64, 0.6
    mesh = trimesh.creation.icosphere(subdivisions=5, radius=radius)
    occupancy = occupancy_grid(mesh, resolution, 1.0)
    ball = np.linalg.norm(grid_points(resolution, 1.0), axis=-1) < radius
    # Only boundary cells can differ: the icosphere's faces sag by at most
    # r(1 - cos(edge angle / 2)) ≈ 5e-4 here, a small fraction of a cell (h = 0.031).
    assert volumetric_iou(occupancy, ball) > 0.995
    h = 2.0 / resolution
    assert occupancy.sum() * h**3 == pytest.approx(mesh.volume, rel=0.01)


def test_occupancy_rejects_bad_grids():
    mesh = trimesh.creation.box()
    with pytest.raises(ConfigError):
        occupancy_grid(mesh, 0, 1.0)


def test_volumetric_iou():
    a = np.zeros((4, 4, 4), dtype=bool)
    b = np.zeros((4, 4, 4), dtype=bool)
    assert volumetric_iou(a, b) == 1.0
    a[:2] = True
    b[:1] = True
    assert volumetric_iou(a, b) == pytest.approx(0.5)
    assert volumetric_iou(a, ~a) == 0.0
    with pytest.raises(ValueError, match="shape"):
        volumetric_iou(a, b[:3])


def soft_ball(radius: float, interior: float, width: float = 0.02):
    """Density rising smoothly from 0 outside to ``interior`` inside a ball at CENTRE."""
    return lambda p: interior * torch.sigmoid((radius - (p - CENTRE.to(p)).norm(dim=-1)) / width)


@pytest.mark.parametrize("interior", [3.0, 8.0, 300.0])
def test_auto_threshold_finds_the_surface_whatever_the_interior_density(interior):
    # Distilled fields saturate at arbitrary densities; a fixed level of 10 misses a field
    # that saturates at 8 (or lands on a sliver of it), the automatic one finds the ball.
    mesh = extract_mesh(soft_ball(0.4, interior), resolution=48, threshold=None)
    threshold = mesh.metadata["threshold"]
    assert 0.3 * interior < threshold < 0.6 * interior
    dist = np.linalg.norm(mesh.vertices - CENTRE.numpy(), axis=1)
    assert abs(float(np.median(dist)) - 0.4) < 0.03
    assert mesh.is_watertight


def test_auto_threshold_is_independent_of_the_objects_size():
    small = extract_mesh(soft_ball(0.15, 8.0), resolution=48, threshold=None)
    large = extract_mesh(soft_ball(0.6, 8.0), resolution=48, threshold=None)
    assert small.metadata["threshold"] == pytest.approx(large.metadata["threshold"], rel=0.25)


def test_auto_threshold_of_an_empty_field_is_a_config_error():
    with pytest.raises(ConfigError, match="empty"):
        auto_threshold(np.zeros((4, 4, 4)))
    with pytest.raises(ConfigError, match="empty"):
        extract_mesh(lambda p: torch.zeros(len(p)), resolution=8, threshold=None)
