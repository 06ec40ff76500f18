import torch

from cfd3d.render.rays import (
    importance_samples,
    intersect_sphere,
    interval_edges,
    stratified_samples,
)


def test_sphere_intersection():
    origins = torch.tensor([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    dirs = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    near, far, hit = intersect_sphere(origins, dirs, 1.0)
    assert hit.tolist() == [True, False, True, False]  # through, miss, inside, pointing away
    torch.testing.assert_close(near[[0, 2]], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(far[[0, 2]], torch.tensor([3.0, 1.0]))
    # A chord off-centre: distance 0.6 from the centre, half-length 0.8.
    near, far, hit = intersect_sphere(torch.tensor([[2.0, 0.6, 0.0]]), dirs[:1], 1.0)
    torch.testing.assert_close(torch.cat([near, far]), torch.tensor([1.2, 2.8]))


def test_stratified_samples_midpoints_and_jitter():
    near, far = torch.tensor([1.0, 0.0]), torch.tensor([2.0, 4.0])
    mid = stratified_samples(near, far, 4, None)
    torch.testing.assert_close(mid[0], torch.tensor([1.125, 1.375, 1.625, 1.875]))
    a = stratified_samples(near, far, 4, torch.Generator().manual_seed(0))
    b = stratified_samples(near, far, 4, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, mid)
    bins = torch.floor((a - near[:, None]) / (far - near)[:, None] * 4)
    assert torch.equal(bins, torch.arange(4.0).expand(2, 4))  # one sample per bin


def test_interval_edges_tile_the_segment():
    t = torch.tensor([[1.2, 1.5, 1.6, 2.5]])
    edges = interval_edges(t, torch.tensor([1.0]), torch.tensor([3.0]))
    torch.testing.assert_close(edges, torch.tensor([[1.0, 1.35, 1.55, 2.05, 3.0]]))
    torch.testing.assert_close(edges.diff(dim=-1).sum(), torch.tensor(2.0))


def test_importance_samples_follow_the_weights():
    edges = torch.linspace(0.0, 1.0, 11).expand(2, 11)
    weights = torch.zeros(2, 10)
    weights[0, 3] = 1.0  # all mass in [0.3, 0.4]
    weights[1, 7:9] = 1.0  # in [0.7, 0.9]
    fixed = importance_samples(edges, weights, 16, None)
    assert (fixed[0] >= 0.3).all() and (fixed[0] <= 0.4).all()
    assert (fixed[1] >= 0.7).all() and (fixed[1] <= 0.9).all()
    assert (fixed.diff(dim=-1) >= 0).all()
    rand = importance_samples(edges, weights, 1000, torch.Generator().manual_seed(0))
    inside = ((rand[0] >= 0.3) & (rand[0] <= 0.4)).float().mean()
    assert inside > 0.98  # the 1e-5 floor leaves a tiny chance elsewhere
    # Uniform weights give uniform samples.
    uniform = importance_samples(edges, torch.ones(2, 10), 10_000, torch.Generator().manual_seed(1))
    assert abs(uniform.mean() - 0.5) < 0.01
