import pytest
import torch
import torch.nn.functional as F

from cfd3d.errors import ConfigError
from cfd3d.evaluation.memory import SavedTensorsMeter
from cfd3d.scene.encoding import (
    HashGridConfig,
    HashGridEncoding,
    hash_grid_encode,
    lattice_rows_and_weights,
    trilinear_interpolate,
)

# Grids for the twin tests: dense and hashed levels mixed, hashed only, dense only, and
# three features per level.
TWIN_GRIDS = {
    "mixed": HashGridConfig(n_levels=4, log2_table_size=12, base_resolution=4, max_resolution=40),
    "hashed": HashGridConfig(n_levels=3, log2_table_size=6, base_resolution=8, max_resolution=30),
    "dense": HashGridConfig(n_levels=2, log2_table_size=16, base_resolution=3, max_resolution=9),
    "three_features": HashGridConfig(
        n_levels=3, features_per_level=3, log2_table_size=8, base_resolution=2, max_resolution=12
    ),
}


def _grid_sample_reference(grid_xyz: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """PyTorch's own trilinear interpolation of a ``(V, V, V, C)`` x-first vertex grid."""
    volume = grid_xyz.permute(3, 2, 1, 0)[None]  # (1, C, D=z, H=y, W=x)
    coords = (2.0 * points - 1.0).view(1, -1, 1, 1, 3)  # grid_sample wants (x, y, z)
    out = F.grid_sample(volume, coords, mode="bilinear", align_corners=True)
    return out.view(grid_xyz.shape[-1], -1).t()


def test_trilinear_interpolate_equals_grid_sample():
    gen = torch.Generator().manual_seed(0)
    grid = torch.randn(7, 7, 7, 3, generator=gen, dtype=torch.float64)
    points = torch.rand(500, 3, generator=gen, dtype=torch.float64)
    points[:4] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.5], [0.5, 1.0, 0.0]])
    torch.testing.assert_close(
        trilinear_interpolate(grid, points), _grid_sample_reference(grid, points)
    )


def test_trilinear_interpolate_hits_vertex_values():
    grid = torch.arange(27.0).view(3, 3, 3, 1)
    vertices = torch.tensor([[0.0, 0.0, 0.0], [0.5, 1.0, 0.0], [1.0, 0.5, 0.5]])
    expected = torch.tensor([[0.0], [grid[1, 2, 0, 0]], [grid[2, 1, 1, 0]]])
    torch.testing.assert_close(trilinear_interpolate(grid, vertices), expected)


def test_hash_grid_dense_levels_equal_trilinear_interpolation_of_a_dense_grid():
    config = HashGridConfig(n_levels=4, log2_table_size=12, base_resolution=4, max_resolution=40)
    enc = HashGridEncoding(config, generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        enc.table.normal_()
    cells = config.resolutions()
    assert cells == [4, 8, 18, 40]
    assert enc.n_dense == 2  # 5³ and 9³ fit in 4096 entries; 19³ and 41³ do not
    points = torch.rand(300, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    features = enc(points)
    assert features.shape == (300, 4 * config.features_per_level)
    sizes = enc.level_sizes()
    assert sizes[:2] == [5**3, 9**3] and sizes[2:] == [4096, 4096]
    for level in range(enc.n_dense):
        start = int(enc.offsets[level])
        n = cells[level] + 1
        grid = enc.table[start : start + n**3].view(n, n, n, -1)
        fpl = config.features_per_level
        torch.testing.assert_close(
            features[:, level * fpl : (level + 1) * fpl], _grid_sample_reference(grid, points)
        )


def test_hashed_levels_stay_inside_their_table_segment():
    config = HashGridConfig(n_levels=3, log2_table_size=10, base_resolution=16, max_resolution=64)
    enc = HashGridEncoding(config)
    assert enc.n_dense == 0
    rows, weights = enc.indices_and_weights(torch.rand(1000, 3))
    for level in range(3):
        lo = level * 1024
        assert rows[:, level].min() >= lo and rows[:, level].max() < lo + 1024
    torch.testing.assert_close(weights.sum(-1), torch.ones(1000, 3))
    # Points are clamped to the unit cube: outside points encode like the boundary.
    edge = torch.tensor([[1.0, 0.5, 0.0]])
    torch.testing.assert_close(enc(torch.tensor([[1.5, 0.5, -0.3]])), enc(edge))


def test_hash_grid_gradients_flow_to_the_table_and_the_points():
    config = HashGridConfig(n_levels=3, log2_table_size=8, base_resolution=2, max_resolution=12)
    enc = HashGridEncoding(config, generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        enc.table.normal_()
    points = torch.tensor([[0.31, 0.52, 0.77], [0.13, 0.91, 0.44]], dtype=torch.float64)
    points.requires_grad_(True)
    # Away from cell boundaries the encoding is smooth in the points.
    assert torch.autograd.gradcheck(enc, (points,))
    enc(points).sum().backward()
    touched = enc.table.grad.abs().sum(-1) > 0
    # Each point touches at most 8 rows per level, and at least one.
    assert 1 <= int(touched.sum()) <= 2 * 8 * config.n_levels


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_levels": 0},
        {"log2_table_size": 30},
        {"base_resolution": 64, "max_resolution": 32},
        {"init_scale": -1.0},
    ],
)
def test_invalid_hash_grid_configs_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        HashGridConfig(**kwargs)


def _twin(name: str, dtype: torch.dtype = torch.float64) -> HashGridEncoding:
    enc = HashGridEncoding(TWIN_GRIDS[name], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        enc.table.normal_(generator=torch.Generator().manual_seed(1))
    return enc.to(dtype)


def _twin_points(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``n`` points in [-0.1, 1.1]³ (some outside the cube, where the encoding clamps), the
    first ones on the cube's corners and faces and on level vertices."""
    points = torch.rand(n, 3, generator=torch.Generator().manual_seed(2), dtype=dtype)
    points = points * 1.2 - 0.1
    special = torch.tensor(
        [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.5], [0.25, 0.5, 0.75], [0.5, 1.0, 0.0]],
        dtype=dtype,
    )
    points[: min(n, 5)] = special[: min(n, 5)]
    return points


def test_hash_grid_grids_cover_dense_and_hashed_levels():
    assert [_twin(name).n_dense for name in TWIN_GRIDS] == [2, 0, 2, 2]


@pytest.mark.parametrize("name", list(TWIN_GRIDS))
def test_lattice_rows_and_weights_equal_the_reference(name):
    enc = _twin(name, torch.float32)
    points = _twin_points(300, torch.float32).clamp(0.0, 1.0)
    rows, axis_weights = lattice_rows_and_weights(points, enc.lattice())
    ref_rows, ref_weights = enc.indices_and_weights(points)
    assert rows.dtype == torch.int32
    torch.testing.assert_close(rows.permute(2, 0, 1).long(), ref_rows, rtol=0, atol=0)
    wx, wy, wz = axis_weights.unbind(dim=1)
    weights = (wx[:, :, None, None] * wy[:, None, :, None] * wz[:, None, None, :]).flatten(1, 3)
    torch.testing.assert_close(weights.permute(2, 0, 1), ref_weights, rtol=0, atol=0)


# 2**14 + 3 points span two blocks of the CPU path.
@pytest.mark.parametrize("n", [1, 37, 2**14 + 3])
@pytest.mark.parametrize("name", list(TWIN_GRIDS))
def test_lean_hash_grid_equals_the_reference_forward_and_backward(name, n):
    enc = _twin(name)
    points = _twin_points(n).requires_grad_(True)
    upstream = torch.randn(n, enc.output_dim, generator=torch.Generator().manual_seed(3))
    upstream = upstream.to(torch.float64)
    results = []
    for encode in (enc.forward, enc.reference):
        features = encode(points)
        grads = torch.autograd.grad((features * upstream).sum(), [points, enc.table])
        results.append((features, *grads))
    # float64 throughout: the twins differ only in the order of the 8-corner sums.
    for lean, ref in zip(*results, strict=True):
        torch.testing.assert_close(lean, ref, rtol=1e-12, atol=1e-12)


def test_lean_hash_grid_in_float32_matches_the_reference_to_rounding():
    enc = _twin("mixed", torch.float32)
    points = _twin_points(500, torch.float32)
    upstream = torch.randn(500, enc.output_dim, generator=torch.Generator().manual_seed(3))
    lean = enc(points)
    (lean_grad,) = torch.autograd.grad((lean * upstream).sum(), enc.table)
    ref = enc.reference(points)
    (ref_grad,) = torch.autograd.grad((ref * upstream).sum(), enc.table)
    # Float32 sums of 8 (forward) or up to a few hundred (table rows) products in another
    # order: a few ulps of the largest terms.
    torch.testing.assert_close(lean, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lean_grad, ref_grad, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", ["mixed", "hashed"])
def test_lean_hash_grid_double_backward_equals_the_reference(name):
    """What autograd normals need: the gradient in the points, differentiated again."""
    enc = _twin(name)
    points = _twin_points(64).requires_grad_(True)
    weights = torch.randn(enc.output_dim, generator=torch.Generator().manual_seed(4))
    direction = torch.randn(64, 3, generator=torch.Generator().manual_seed(5))
    results = []
    for encode in (enc.forward, enc.reference):
        value = (encode(points) * weights.to(torch.float64)).sum()
        (slope,) = torch.autograd.grad(value, points, create_graph=True)
        second = (slope * direction.to(torch.float64)).sum()
        results.append((slope, *torch.autograd.grad(second, [enc.table, points])))
    for lean, ref in zip(*results, strict=True):
        torch.testing.assert_close(lean, ref, rtol=1e-12, atol=1e-12)


def test_lean_hash_grid_passes_gradcheck_and_gradgradcheck():
    # One dense level (2³ vertices) and one hashed (4³ vertices into 16 rows): 48 entries.
    config = HashGridConfig(n_levels=2, log2_table_size=4, base_resolution=1, max_resolution=3)
    enc = HashGridEncoding(config).double()
    assert enc.n_dense == 1 and enc.table.shape == (24, 2)
    lattice = enc.lattice()
    # Away from cell boundaries the encoding is smooth in the points.
    points = torch.tensor([[0.31, 0.52, 0.77], [0.13, 0.91, 0.44]], dtype=torch.float64)
    points.requires_grad_(True)
    table = torch.randn(24, 2, dtype=torch.float64, requires_grad=True)

    def encode(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return hash_grid_encode(p, t, lattice)

    assert torch.autograd.gradcheck(encode, (points, table))
    assert torch.autograd.gradgradcheck(encode, (points, table))


def test_lean_hash_grid_keeps_only_the_points_for_backward():
    enc = HashGridEncoding(HashGridConfig())
    points = torch.rand(1000, 3)
    with SavedTensorsMeter(exclude=enc.parameters()) as meter:
        enc(points)
    assert meter.nbytes == 12 * 1000  # the float32 points, nothing else
    with SavedTensorsMeter(exclude=enc.parameters()) as meter:
        enc.reference(points)
    assert meter.nbytes == 96 * enc.config.n_levels * 1000  # int64 rows + float32 weights


def test_lean_hash_grid_takes_no_points():
    enc = _twin("mixed")
    points = torch.zeros(0, 3, dtype=torch.float64, requires_grad=True)
    features = enc(points)
    assert features.shape == (0, enc.output_dim)
    features.sum().backward()
    assert points.grad.shape == (0, 3)
    assert enc.table.grad.abs().sum() == 0
