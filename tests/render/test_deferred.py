"""Deferred back-propagation equals one-pass back-propagation (forward and gradients).

Tolerance: relative error of the flattened gradient ≤ 1e-4 (issue 12). Both sides compute
the same float32 terms; only the order of the sums over pixels differs (per chunk instead
of over the whole image), which moves float32 results by ~1e-7 relative.
"""

import pytest
import torch

from cfd3d.render.background import EnvironmentMap, RandomColorBackground
from cfd3d.render.deferred import render_deferred
from cfd3d.render.shading import ShadingConfig
from cfd3d.render.volume import RendererConfig, VolumeRenderer
from cfd3d.scene.cameras import orbit
from cfd3d.scene.encoding import HashGridConfig
from cfd3d.scene.nerf import NeRFConfig, NeRFField
from cfd3d.scene.voxel import VoxelGridConfig, VoxelGridField


def _nerf() -> NeRFField:
    config = NeRFConfig(
        encoding=HashGridConfig(
            n_levels=4, log2_table_size=10, base_resolution=4, max_resolution=32, init_scale=0.5
        ),
        hidden_dim=16,
        blob_radius=0.4,
    )
    return NeRFField(config, generator=torch.Generator().manual_seed(0))


def _voxel() -> VoxelGridField:
    config = VoxelGridConfig(resolution=12, blob_radius=0.4, init_noise=0.5)
    return VoxelGridField(config, generator=torch.Generator().manual_seed(1))


def _grads(*modules: torch.nn.Module) -> torch.Tensor:
    flat = [p.grad.flatten() for m in modules for p in m.parameters() if p.grad is not None]
    return torch.cat(flat)


def _zero(*modules: torch.nn.Module) -> None:
    for m in modules:
        m.zero_grad(set_to_none=True)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("chunk_rays", [37, 256])
def test_deferred_equals_one_pass_nerf_diffuse_environment(chunk_rays):
    field = _nerf()
    background = EnvironmentMap()
    renderer = VolumeRenderer(RendererConfig(n_samples=24, chunk_rays=100))
    cams = orbit(2, elevation_deg=20.0, distance=1.4)
    shading = ShadingConfig(mode="diffuse")
    grad = torch.randn(2, 12, 12, 3, generator=torch.Generator().manual_seed(2))

    out = renderer(field, cams, 12, 12, shading=shading, background=background)
    (out.rgb * grad).sum().backward()
    expected = _grads(field, background)
    _zero(field, background)

    deferred = render_deferred(
        renderer,
        field,
        cams,
        12,
        12,
        shading=shading,
        background=background,
        chunk_rays=chunk_rays,
    )
    assert not deferred.output.rgb.requires_grad
    torch.testing.assert_close(deferred.output.rgb, out.rgb.detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(deferred.output.depth, out.depth.detach(), atol=1e-5, rtol=0)
    deferred.backward(grad)
    got = _grads(field, background)
    assert got.shape == expected.shape and expected.norm() > 0
    assert _rel(got, expected) <= 1e-4


def test_deferred_takes_a_gradient_on_opacity_too():
    """A regulariser's gradient on the opacity (``sparsity``) is back-propagated with the
    colour's: the same parameter gradients as one pass."""
    field, background = _voxel(), RandomColorBackground()
    renderer = VolumeRenderer(RendererConfig(n_samples=24))
    cams = orbit(2, elevation_deg=30.0, distance=1.4)
    gen = torch.Generator().manual_seed(3)
    grad = torch.randn(2, 10, 10, 3, generator=gen)
    grad_opacity = torch.rand(2, 10, 10, 1, generator=gen)
    kwargs = {"shading": ShadingConfig(mode="diffuse"), "background": background}

    def deferred_grads(*grads: torch.Tensor):
        _zero(field)
        deferred = render_deferred(
            renderer,
            field,
            cams,
            10,
            10,
            generator=torch.Generator().manual_seed(4),
            chunk_rays=33,
            **kwargs,
        )
        deferred.backward(*grads)
        return _grads(field), deferred

    out = renderer(field, cams, 10, 10, generator=torch.Generator().manual_seed(4), **kwargs)
    ((out.rgb * grad).sum() + (out.opacity * grad_opacity).sum()).backward()
    expected = _grads(field)
    colour_only, _ = deferred_grads(grad)
    got, deferred = deferred_grads(grad, grad_opacity)
    assert _rel(got, expected) <= 1e-4
    assert _rel(colour_only, expected) > 1e-2  # the opacity term is not negligible here
    with pytest.raises(ValueError, match="grad_opacity"):
        deferred.backward(grad, torch.zeros(2, 10, 10, 3))


def test_deferred_replays_the_random_draws():
    """Jittered samples, random lights and random background colours come back identical
    in the re-render, so the gradient matches a one-pass render with the same draws."""
    field = _voxel()
    background = RandomColorBackground()
    renderer = VolumeRenderer(RendererConfig(n_samples=16))
    cams = orbit(3, elevation_deg=10.0, distance=1.4)
    shading = ShadingConfig(mode="diffuse", light_jitter=0.5)
    grad = torch.randn(3, 10, 10, 3, generator=torch.Generator().manual_seed(3))

    out = renderer(
        field,
        cams,
        10,
        10,
        shading=shading,
        background=background,
        generator=torch.Generator().manual_seed(7),
    )
    (out.rgb * grad).sum().backward()
    expected = _grads(field)
    _zero(field)

    # One chunk of all rays walks the generator exactly as the renderer does.
    gen = torch.Generator().manual_seed(7)
    deferred = render_deferred(
        renderer,
        field,
        cams,
        10,
        10,
        shading=shading,
        background=background,
        generator=gen,
        chunk_rays=300,
    )
    torch.testing.assert_close(deferred.output.rgb, out.rgb.detach(), atol=1e-6, rtol=0)
    # The generator advanced as far as the one-pass render advanced its own.
    reference = torch.Generator().manual_seed(7)
    renderer(field, cams, 10, 10, shading=shading, background=background, generator=reference)
    assert torch.equal(gen.get_state(), reference.get_state())
    deferred.backward(grad)
    assert _rel(_grads(field), expected) <= 1e-4


def test_deferred_small_chunks_with_random_draws_match_a_graph_walk():
    """Small chunks with a generator: the backward walk equals back-propagating a render of
    the same chunks built with graph."""
    field = _voxel()
    renderer = VolumeRenderer(RendererConfig(n_samples=16))
    cams = orbit(2, elevation_deg=30.0, distance=1.4)
    shading = ShadingConfig(mode="diffuse")
    grad = torch.randn(2, 9, 9, 3, generator=torch.Generator().manual_seed(4))
    deferred = render_deferred(
        renderer,
        field,
        cams,
        9,
        9,
        shading=shading,
        background=RandomColorBackground(),
        generator=torch.Generator().manual_seed(5),
        chunk_rays=20,
    )
    deferred.backward(grad)
    got = _grads(field)
    _zero(field)
    with torch.enable_grad():
        graph = deferred._render(torch.Generator().manual_seed(5), grad_rgb=None)
    torch.testing.assert_close(graph.rgb.detach(), deferred.output.rgb, atol=1e-6, rtol=0)
    (graph.rgb * grad).sum().backward()
    assert _rel(got, _grads(field)) <= 1e-4


def test_deferred_rejects_a_wrong_gradient_shape():
    field = _voxel()
    deferred = render_deferred(
        VolumeRenderer(RendererConfig(n_samples=8)),
        field,
        orbit(1),
        4,
        4,
        shading=ShadingConfig(mode="albedo"),
    )
    with pytest.raises(ValueError, match="grad_rgb"):
        deferred.backward(torch.zeros(1, 4, 5, 3))
