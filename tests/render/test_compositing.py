import math

import torch

from cfd3d.render.compositing import (
    composite,
    composite_packed,
    compositing_weights,
    packed_columns,
    packed_compositing_weights,
)


def test_compositing_weights_gradcheck():
    gen = torch.Generator().manual_seed(0)
    density = torch.rand(3, 5, generator=gen, dtype=torch.float64) * 4.0
    deltas = torch.rand(3, 5, generator=gen, dtype=torch.float64) * 0.3 + 0.05
    density.requires_grad_(True)
    deltas.requires_grad_(True)
    assert torch.autograd.gradcheck(compositing_weights, (density, deltas))


def test_composite_gradcheck():
    gen = torch.Generator().manual_seed(1)
    density = (torch.rand(2, 4, generator=gen, dtype=torch.float64) * 5.0).requires_grad_(True)
    deltas = torch.full((2, 4), 0.2, dtype=torch.float64)
    t = torch.cumsum(deltas, dim=-1).requires_grad_(True)
    color = torch.rand(2, 4, 3, generator=gen, dtype=torch.float64).requires_grad_(True)
    normals = torch.nn.functional.normalize(
        torch.randn(2, 4, 3, generator=gen, dtype=torch.float64), dim=-1
    ).requires_grad_(True)

    def fn(density, t, color, normals):
        out = composite(compositing_weights(density, deltas), t, color, normals)
        return out.color, out.opacity, out.depth, out.normal

    assert torch.autograd.gradcheck(fn, (density, t, color, normals))


def test_weights_match_the_closed_form():
    density = torch.tensor([[0.0, 2.0, 1.0, 0.0]], dtype=torch.float64)
    deltas = torch.tensor([[0.5, 0.5, 0.25, 1.0]], dtype=torch.float64)
    w = compositing_weights(density, deltas)
    alpha = [
        1 - math.exp(-s * d)
        for s, d in zip([0.0, 2.0, 1.0, 0.0], [0.5, 0.5, 0.25, 1.0], strict=True)
    ]
    expected = [0.0, alpha[1], (1 - alpha[1]) * alpha[2], 0.0]
    torch.testing.assert_close(w, torch.tensor([expected], dtype=torch.float64))
    # Total opacity is 1 - exp(-optical depth).
    torch.testing.assert_close(w.sum(), torch.tensor(1 - math.exp(-1.25), dtype=torch.float64))


def test_an_opaque_sample_sets_colour_depth_and_normal():
    density = torch.tensor([[0.0, 1e4, 1.0]])
    deltas = torch.full((1, 3), 0.1)
    t = torch.tensor([[0.5, 0.7, 0.9]])
    color = torch.tensor([[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    normals = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])
    out = composite(compositing_weights(density, deltas), t, color, normals)
    torch.testing.assert_close(out.opacity, torch.ones(1, 1))
    torch.testing.assert_close(out.color, torch.tensor([[1.0, 0.0, 0.0]]))
    torch.testing.assert_close(out.depth, torch.tensor([[0.7]]))
    torch.testing.assert_close(out.normal, torch.tensor([[0.0, 0.0, 1.0]]))


def test_depth_is_conditional_and_empty_rays_are_zero():
    deltas = torch.full((2, 2), 0.1)
    t = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
    density = torch.tensor([[0.0, 1.0], [0.0, 0.0]])  # a faint layer, and nothing
    normals = torch.tensor([[[0.0, 0.0, 1.0]] * 2] * 2)
    out = composite(compositing_weights(density, deltas), t, torch.ones(2, 2, 3), normals)
    assert 0.09 < out.opacity[0, 0] < 0.1
    # Conditional on hitting, the faint layer is at distance 2, not at opacity * 2.
    torch.testing.assert_close(out.depth[0], torch.tensor([2.0]))
    torch.testing.assert_close(out.depth[1], torch.tensor([0.0]))
    torch.testing.assert_close(out.normal[0], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(out.normal[1], torch.zeros(3))


def _ragged(seed: int):
    """Five rays of up to 6 samples; a random subset kept (ray 2 keeps none), in float64."""
    gen = torch.Generator().manual_seed(seed)
    density = torch.rand(5, 6, generator=gen, dtype=torch.float64) * 6.0
    deltas = torch.rand(5, 6, generator=gen, dtype=torch.float64) * 0.3 + 0.05
    t = torch.cumsum(deltas, dim=-1)
    color = torch.rand(5, 6, 3, generator=gen, dtype=torch.float64)
    normals = torch.nn.functional.normalize(
        torch.randn(5, 6, 3, generator=gen, dtype=torch.float64), dim=-1
    )
    keep = torch.rand(5, 6, generator=gen) < 0.6
    keep[2] = False
    return density, deltas, t, color, normals, keep


def test_packed_columns():
    ray_index = torch.tensor([0, 0, 0, 2, 4, 4])
    column, width = packed_columns(ray_index, 6)
    assert column.tolist() == [0, 1, 2, 0, 0, 1] and width == 3
    column, width = packed_columns(torch.zeros(0, dtype=torch.long), 3)
    assert column.shape == (0,) and width == 0


def test_packed_compositing_equals_dense_with_dropped_samples_zeroed():
    """Packed samples composite exactly like the dense rows they come from, with the
    dropped samples' density set to zero; a ray without samples comes out zero."""
    density, deltas, t, color, normals, keep = _ragged(2)
    ray_index, _ = keep.nonzero(as_tuple=True)
    dense = composite(compositing_weights(density * keep, deltas), t, color, normals)
    weights = packed_compositing_weights(density[keep], deltas[keep], ray_index, density.shape[0])
    packed = composite_packed(
        weights, t[keep], color[keep], ray_index, density.shape[0], normals[keep]
    )
    for name in ("color", "opacity", "depth", "normal"):
        torch.testing.assert_close(getattr(packed, name), getattr(dense, name))
    assert torch.equal(packed.opacity[2], torch.zeros(1, dtype=torch.float64))


def test_packed_compositing_gradcheck():
    density, deltas, t, color, normals, keep = _ragged(3)
    ray_index, _ = keep.nonzero(as_tuple=True)
    n_rays = density.shape[0]

    def fn(density, deltas, t, color, normals):
        weights = packed_compositing_weights(density, deltas, ray_index, n_rays)
        out = composite_packed(weights, t, color, ray_index, n_rays, normals)
        return out.color, out.opacity, out.depth, out.normal

    inputs = tuple(x[keep].requires_grad_(True) for x in (density, deltas, t, color, normals))
    assert torch.autograd.gradcheck(fn, inputs)


def test_packed_weights_stay_accurate_in_a_long_chunk():
    """Many opaque rays in one chunk: a cumulative sum over the whole chunk minus per-ray
    offsets would lose the later rays' transmittance to float32 round-off (measured:
    weights off by 0.018 here)."""
    n_rays, n_samples = 4000, 64
    density = torch.rand(n_rays, n_samples, generator=torch.Generator().manual_seed(0)) * 60.0
    deltas = torch.full((n_rays, n_samples), 0.03)
    ray_index = torch.arange(n_rays).repeat_interleave(n_samples)
    packed = packed_compositing_weights(density.flatten(), deltas.flatten(), ray_index, n_rays)
    dense = compositing_weights(density, deltas)
    torch.testing.assert_close(packed.view(n_rays, n_samples), dense)
