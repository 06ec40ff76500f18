"""The texel-to-pixel partition: scanline spans against a brute-force point-in-quad oracle."""

import pytest
import torch

from cfd3d.noise.raster import (
    EDGE_EPS,
    Spans,
    ragged_arange,
    rasterize_quads,
    remove_overlaps,
)

SIZE = 64
MARGIN = 1e-2  # texel centres closer than this to an edge may go either way


def texels_of(spans: Spans) -> torch.Tensor:
    """``(T, 3)`` rows ``(owner, row, col)`` of every texel of the spans."""
    group, offset = ragged_arange(spans.count)
    return torch.stack([spans.owner[group], spans.row[group], spans.start[group] + offset], dim=1)


def edge_distances(quads: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``(M, T, 4)`` signed distances of ``(T, 2)`` points to the edges of ``(M, 4, 2)``
    quads, positive inside (for either orientation)."""
    a = quads.double()
    b = a.roll(-1, dims=1)
    edge = b - a
    rel = points.double()[None, :, None, :] - a[:, None]
    cross = edge[:, None, :, 0] * rel[..., 1] - edge[:, None, :, 1] * rel[..., 0]
    area = (a[..., 0] * b[..., 1] - b[..., 0] * a[..., 1]).sum(-1)
    return cross * area.sign()[:, None, None] / edge.norm(dim=-1)[:, None]


def grid_points() -> torch.Tensor:
    r, c = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    return torch.stack([c.flatten(), r.flatten()], dim=1)


def perturbed_grid(n: int, cell: float, generator: torch.Generator) -> torch.Tensor:
    """``(n * n, 4, 2)`` quads of a jittered ``(n+1)^2`` corner grid (shared corners)."""
    r, c = torch.meshgrid(torch.arange(n + 1.0), torch.arange(n + 1.0), indexing="ij")
    corners = torch.stack([c, r], dim=-1) * cell + 3.3
    corners = corners + 0.2 * cell * (torch.rand(corners.shape, generator=generator) - 0.5)
    return torch.stack(
        [corners[:-1, :-1], corners[:-1, 1:], corners[1:, 1:], corners[1:, :-1]], dim=2
    ).reshape(-1, 4, 2)


def test_ragged_arange():
    group, offset = ragged_arange(torch.tensor([2, 0, 3]))
    assert group.tolist() == [0, 0, 2, 2, 2]
    assert offset.tolist() == [0, 1, 0, 1, 2]


@pytest.mark.parametrize("seed", range(4))
def test_spans_match_point_in_quad(seed):
    g = torch.Generator().manual_seed(seed)
    # Random convex quads: jittered rotated rectangles of random size and orientation.
    m = 40
    centre = 8 + 48 * torch.rand(m, 2, generator=g)
    half = 1 + 7 * torch.rand(m, 2, generator=g)
    angle = 6.3 * torch.rand(m, generator=g)
    box = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    if seed % 2:
        box = box.flip(0)  # the other orientation
    local = box[None] * half[:, None] + 0.3 * torch.rand(m, 4, 2, generator=g)
    rot = torch.stack(
        [torch.cos(angle), -torch.sin(angle), torch.sin(angle), torch.cos(angle)], -1
    ).view(m, 2, 2)
    quads = torch.einsum("mij,mkj->mki", rot, local) + centre[:, None]
    spans = rasterize_quads(quads.float(), torch.zeros(m, dtype=torch.int64), SIZE)
    covered = torch.zeros(m, SIZE * SIZE, dtype=torch.bool)
    t = texels_of(spans)
    covered[t[:, 0], t[:, 1] * SIZE + t[:, 2]] = True
    distance = edge_distances(quads, grid_points()).min(dim=-1).values
    assert covered[distance > MARGIN].all(), "a texel centre inside a quad was missed"
    assert (distance[covered] > -MARGIN).all(), "a texel centre outside a quad was taken"


def test_shared_edges_partition_exactly():
    g = torch.Generator().manual_seed(0)
    quads = perturbed_grid(12, 4.7, g)
    owners = torch.arange(quads.shape[0])
    spans = rasterize_quads(quads.float(), torch.zeros_like(owners), SIZE)
    spans = remove_overlaps(spans, torch.zeros_like(spans.owner), SIZE, SIZE)
    t = texels_of(spans)
    index = t[:, 1] * SIZE + t[:, 2]
    assert index.unique().numel() == index.numel(), "a texel went to two pixels"
    # Every texel centre inside the mesh (away from its outer border) is assigned, to the
    # quad that contains it.
    distance = edge_distances(quads, grid_points())
    inside = distance.min(dim=-1).values
    best, which = inside.max(dim=0)
    assigned = torch.full((SIZE * SIZE,), -1)
    assigned[index] = t[:, 0]
    clear = best > MARGIN
    assert (assigned[clear] == which[clear]).all()
    union = (distance.min(-1).values > -MARGIN).any(0)
    assert (assigned[~union] == -1).all()
    assert (assigned[clear] >= 0).all()


def test_overlaps_are_resolved_once_per_group():
    # Two overlapping squares (a fold) in one group, and a copy in a second group.
    square = torch.tensor([[10.2, 10.2], [30.2, 10.2], [30.2, 30.2], [10.2, 30.2]])
    quads = torch.stack([square, square + 7.0, square]).float()
    spans = rasterize_quads(quads, torch.zeros(3, dtype=torch.int64), SIZE)
    group = torch.tensor([0, 0, 1])[spans.owner]
    before = spans.count.sum()
    spans = remove_overlaps(spans, group, SIZE, SIZE)
    t = texels_of(spans)
    key = torch.tensor([0, 0, 1])[t[:, 0]] * SIZE * SIZE + t[:, 1] * SIZE + t[:, 2]
    assert key.unique().numel() == key.numel()
    assert spans.count.sum() == 400 + 400 - 13 * 13 + 400
    assert before > spans.count.sum()
    assert (spans.count > 0).all()


def test_degenerate_and_clipped_quads():
    flat = torch.tensor([[[5.0, 5.0], [9.0, 5.0], [9.0, 5.0], [5.0, 5.0]]])
    spans = rasterize_quads(flat, torch.zeros(1, dtype=torch.int64), SIZE)
    assert spans.count.sum() == 0
    outside = torch.tensor([[[-10.0, -10.0], [5.5, -10.0], [5.5, 3.5], [-10.0, 3.5]]])
    spans = rasterize_quads(outside, torch.zeros(1, dtype=torch.int64), SIZE)
    assert spans.count.sum() == 6 * 4  # columns 0..5, rows 0..3
    assert EDGE_EPS < MARGIN
