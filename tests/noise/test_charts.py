"""Triplanar charts: normal families, slabs and the affine texel map."""

import torch

from cfd3d.noise.charts import LAYER_PHASE, ChartLayout


def layout() -> ChartLayout:
    return ChartLayout.build(bound=1.0, texel_size=0.01, num_layers=4, tile_rows=8, tile_cols=32)


def test_sizes_are_multiples_of_the_tiles():
    lay = layout()
    assert lay.size % 32 == 0 and lay.size >= 200
    assert lay.num_charts == 24
    assert lay.num_tiles == 24 * (lay.size // 8) * (lay.size // 32)
    # Tiles are numbered row-major inside a chart, charts one after the other.
    row = torch.tensor([0, 7, 8, lay.size, 2 * lay.size + 9])
    col = torch.tensor([0, 31, 32, 0, 64])
    expected = [0, 0, lay.size // 32 + 1, lay.tiles_per_chart, 2 * lay.tiles_per_chart + 9]
    assert lay.tile_id(row, col).tolist() == expected


def test_family_follows_the_dominant_normal_axis_and_sign():
    lay = layout()
    normal = torch.tensor([[0.9, 0.3, -0.2], [0.1, -0.8, 0.5], [0.2, 0.3, -0.6]])
    centre = torch.zeros(3, 3)
    chart, axis = lay.charts(normal, centre)
    assert axis.tolist() == [0, 1, 2]
    assert (chart // lay.num_layers).tolist() == [0, 3, 5]


def test_layers_split_depth_along_the_axis_with_a_phase():
    lay = layout()
    height = torch.tensor([-0.99, -0.5, 0.0, 0.5, 0.99])
    centre = torch.stack([height, torch.zeros(5), torch.zeros(5)], dim=1)
    normal = torch.tensor([[1.0, 0.0, 0.0]]).expand(5, 3)
    chart, _ = lay.charts(normal, centre)
    expected = torch.floor((height + 1.0) * 2.0 + LAYER_PHASE).clamp(0, 3)
    assert chart.tolist() == expected.long().tolist()
    # No boundary at the symmetric planes 0 and +-0.5.
    for h in (0.0, 0.5, -0.5):
        near = torch.tensor([[h - 1e-4, 0, 0], [h + 1e-4, 0, 0]])
        c, _ = lay.charts(torch.tensor([[1.0, 0, 0], [1.0, 0, 0]]), near)
        assert c[0] == c[1]


def test_texel_coordinates_are_an_orthogonal_projection():
    lay = layout()
    points = torch.tensor([[[0.3, -1.0 + 0.005, 1.0 - 0.005]]])
    coords = lay.texel_coordinates(points, torch.tensor([0]))
    assert torch.allclose(coords, torch.tensor([[[0.0, 199.0]]]), atol=1e-4)
    # Moving along the projection axis does not change the coordinates.
    moved = points + torch.tensor([0.4, 0.0, 0.0])
    assert torch.equal(lay.texel_coordinates(moved, torch.tensor([0])), coords)
    # For axis z the columns come from x and the rows from y.
    coords_z = lay.texel_coordinates(points, torch.tensor([2]))
    assert torch.allclose(coords_z, (torch.tensor([[[0.3, -0.995]]]) + 1.0) / 0.01 - 0.5)
