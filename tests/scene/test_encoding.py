import pytest
import torch
import torch.nn.functional as F

from cfd3d.errors import ConfigError
from cfd3d.scene.encoding import HashGridConfig, HashGridEncoding, trilinear_interpolate


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
