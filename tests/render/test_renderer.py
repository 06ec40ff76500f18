"""The volume renderer: golden images, geometry, shading, backgrounds and gradients.

Golden images live in ``tests/render/golden``; ``pytest --regen-golden`` rewrites them.
They are compared as 8-bit images with a tolerance of 3/255 per pixel and 0.5/255 on
average: enough for float round-off between CPUs and BLAS builds (which can flip an
8-bit rounding), far below what any change of geometry, sampling or shading does (tens
of levels over many pixels).
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cfd3d.errors import ConfigError
from cfd3d.render.background import (
    EnvironmentMap,
    RandomColorBackground,
    SolidBackground,
)
from cfd3d.render.shading import ShadingConfig
from cfd3d.render.volume import RendererConfig, VolumeRenderer
from cfd3d.scene.cameras import Cameras, look_at, orbit, spherical_cameras
from cfd3d.scene.encoding import HashGridConfig
from cfd3d.scene.nerf import NeRFConfig, NeRFField
from cfd3d.scene.toy import Sphere, get_scene
from cfd3d.scene.voxel import VoxelGridConfig, VoxelGridField

GOLDEN = Path(__file__).parent / "golden"


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.detach().clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def _strip(images: list[torch.Tensor]) -> np.ndarray:
    """``(B, H, W, 3)`` images side by side, one row per entry of ``images``."""
    return np.concatenate([np.concatenate(list(_to_uint8(im)), axis=1) for im in images])


def _golden_difference(name: str, image: np.ndarray) -> np.ndarray:
    """``|golden - image|`` per pixel and channel, for images of the same size."""
    path = GOLDEN / name
    assert path.exists(), f"missing {path}; run pytest --regen-golden"
    golden = np.asarray(Image.open(path).convert("RGB"))
    assert golden.shape == image.shape, (golden.shape, image.shape)
    return np.abs(golden.astype(int) - image.astype(int))


def _within_tolerance(diff: np.ndarray) -> bool:
    return bool(diff.max() <= 3 and diff.mean() <= 0.5)


def _check_golden(name: str, image: np.ndarray, regen: bool) -> None:
    if regen:
        GOLDEN.mkdir(exist_ok=True)
        Image.fromarray(image).save(GOLDEN / name)
        return
    diff = _golden_difference(name, image)
    assert _within_tolerance(diff), (diff.max(), diff.mean())


def _toy_scene_maps(elevation_deg: float) -> np.ndarray:
    """Albedo, diffuse, textureless, normal and depth maps of the toy scene from three
    orbit cameras at ``elevation_deg``: the golden image's layout."""
    scene = get_scene("red_cube_on_blue_sphere")
    renderer = VolumeRenderer(RendererConfig(n_samples=48, normals=True))
    cams = orbit(3, elevation_deg=elevation_deg)
    albedo = renderer(scene, cams, 16, 16, shading="albedo")
    diffuse = renderer(scene, cams, 16, 16, shading="diffuse")
    textureless = renderer(scene, cams, 16, 16, shading="textureless")
    maps = [
        albedo.rgb,
        diffuse.rgb,
        textureless.rgb,
        albedo.normal * 0.5 + 0.5,
        (albedo.depth / 2.0).expand(-1, -1, -1, 3),
    ]
    return _strip(maps)


def test_golden_toy_scene(regen_golden):
    _check_golden("toy_red_cube_on_blue_sphere.png", _toy_scene_maps(20.0), regen_golden)


def test_golden_seeded_nerf(regen_golden):
    config = NeRFConfig(
        encoding=HashGridConfig(
            n_levels=4, log2_table_size=12, base_resolution=4, max_resolution=32, init_scale=1.0
        ),
        hidden_dim=16,
    )
    field = NeRFField(config, generator=torch.Generator().manual_seed(0))
    renderer = VolumeRenderer(RendererConfig(n_samples=32, n_importance=16))
    cams = orbit(3, elevation_deg=30.0)
    with torch.no_grad():
        out = renderer(field, cams, 16, 16, shading="diffuse")
        bg = renderer(field, cams, 16, 16, background=SolidBackground((0.2, 0.4, 0.6)))
    maps = [out.rgb, bg.rgb, out.opacity.expand(-1, -1, -1, 3)]
    _check_golden("seeded_nerf.png", _strip(maps), regen_golden)


def test_golden_images_catch_changes(regen_golden):
    """The comparison itself can fail: the same maps, same size, from cameras raised by 4
    degrees fall outside the tolerance (the size is checked first, so this is a failure of
    the pixels, not of the shape)."""
    if regen_golden:
        pytest.skip("regenerating")
    diff = _golden_difference("toy_red_cube_on_blue_sphere.png", _toy_scene_maps(24.0))
    assert not _within_tolerance(diff), (diff.max(), diff.mean())


def _front_camera(distance=2.0, fovy=30.0) -> Cameras:
    return spherical_cameras(
        torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([distance]), torch.tensor([fovy])
    )


def test_depth_normals_and_silhouette_of_a_sphere():
    scene = get_scene("gray_sphere")
    radius = Sphere().radius
    renderer = VolumeRenderer(RendererConfig(n_samples=64, n_importance=64, normals=True))
    out = renderer(scene, _front_camera(), 33, 33)
    centre = out.depth[0, 16, 16, 0]
    assert abs(centre - (2.0 - radius)) < 5e-3
    torch.testing.assert_close(
        out.normal[0, 16, 16], torch.tensor([1.0, 0.0, 0.0]), atol=1e-3, rtol=0
    )
    # Silhouette vs the projected disc: pixels whose centre ray passes within the radius.
    # The toy density's soft edge (sharpness 0.005) still absorbs a little along grazing
    # rays a few sharpness widths outside, hence the margins.
    origins, dirs = _front_camera().rays(33, 33)
    closest = (origins - (origins * dirs).sum(-1, keepdim=True) * dirs).norm(dim=-1)
    inside = closest < radius - 0.01
    outside = closest > radius + 0.04
    assert (out.opacity[..., 0][inside] > 0.99).all()
    assert (out.opacity[..., 0][outside] < 0.02).all()
    assert (out.rgb[..., 0][outside] > 0.99).all()  # the white background


@pytest.mark.parametrize(
    "name", ["blue_cone", "yellow_torus", "green_cylinder_next_to_purple_cone"]
)
def test_rendered_silhouette_matches_projected_occupancy(name):
    scene = get_scene(name)
    cams = spherical_cameras(
        torch.tensor([35.0]), torch.tensor([25.0]), torch.tensor([1.4]), torch.tensor([50.0])
    )
    out = VolumeRenderer(RendererConfig(n_samples=64))(scene, cams, 48, 48)
    origins, dirs = cams.rays(48, 48)
    t = torch.linspace(0.4, 2.4, 400)
    hit = scene.contains((origins[..., None, :] + t[:, None] * dirs[..., None, :]).reshape(-1, 3))
    projected = hit.view(48, 48, 400).any(-1)
    rendered = out.opacity[0, ..., 0] > 0.5
    iou = (projected & rendered).sum() / (projected | rendered).sum()
    # The soft edge widens silhouettes by up to about half a pixel (grazing rays), so
    # about 0.9 is the best to expect at this size; a misplaced or mis-scaled object
    # scores far lower.
    assert iou > 0.85


def test_rays_that_miss_see_only_the_background():
    eye = torch.tensor([[3.0, 0.0, 0.0]])
    cams = Cameras(look_at(eye, torch.tensor([6.0, 0.0, 0.0])), torch.tensor([0.5]))
    out = VolumeRenderer()(get_scene("red_cube"), cams, 8, 8, background=SolidBackground((0, 1, 0)))
    assert out.opacity.abs().max() == 0 and out.depth.abs().max() == 0
    torch.testing.assert_close(out.rgb, torch.tensor([0.0, 1.0, 0.0]).expand(1, 8, 8, 3))


def test_shading_modes():
    scene = get_scene("red_sphere")
    renderer = VolumeRenderer(RendererConfig(n_samples=48))
    cam = _front_camera(fovy=40.0)
    albedo = renderer(scene, cam, 9, 9, shading="albedo")
    diffuse = renderer(scene, cam, 9, 9, shading="diffuse")
    textureless = renderer(scene, cam, 9, 9, shading="textureless")
    assert albedo.normal is None and diffuse.normal is not None
    centre = (0, 4, 4)
    torch.testing.assert_close(
        albedo.rgb[centre], torch.tensor(scene.primitives[0].rgb), atol=1e-3, rtol=0
    )
    # The eval headlight faces the centre pixel head-on: ambient + diffuse = 1.
    torch.testing.assert_close(diffuse.rgb[centre], albedo.rgb[centre], atol=2e-3, rtol=0)
    torch.testing.assert_close(textureless.rgb[centre], torch.ones(3), atol=2e-3, rtol=0)
    # Towards the rim the surface turns away from the light and darkens; textureless is grey.
    rim = (0, 4, 2)
    assert diffuse.rgb[rim][0] < albedo.rgb[rim][0] - 0.1
    grey = textureless.rgb[albedo.opacity[..., 0] > 0.99]
    torch.testing.assert_close(grey[:, 0], grey[:, 1])
    # A random light (training) differs from the headlight, reproducibly per seed.
    a = renderer(scene, cam, 9, 9, shading="diffuse", generator=torch.Generator().manual_seed(0))
    b = renderer(scene, cam, 9, 9, shading="diffuse", generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.rgb, b.rgb) and not torch.allclose(a.rgb, diffuse.rgb)
    # A full ShadingConfig overrides the light intensities.
    dark = renderer(
        scene, cam, 9, 9, shading=ShadingConfig(mode="diffuse", ambient=0.0, diffuse=0.5)
    )
    torch.testing.assert_close(dark.rgb[centre], 0.5 * albedo.rgb[centre], atol=2e-3, rtol=0)


def test_backgrounds():
    renderer = VolumeRenderer(RendererConfig(n_samples=16))
    cams = orbit(2)
    scene = get_scene("red_cube")
    rand = RandomColorBackground(eval_color=(0.0, 0.0, 0.0))
    a = renderer(scene, cams, 8, 8, background=rand, generator=torch.Generator().manual_seed(0))
    corner = a.rgb[:, 0, 0]
    assert not torch.allclose(corner[0], corner[1])  # one colour per view
    torch.testing.assert_close(a.rgb[0, 0, 0], a.rgb[0, 0, 7])  # constant within a view
    evaluated = renderer(scene, cams, 8, 8, background=rand)
    torch.testing.assert_close(evaluated.rgb[:, 0, 0], torch.zeros(2, 3))
    env = EnvironmentMap()
    out = renderer(scene, cams, 8, 8, background=env)
    torch.testing.assert_close(out.rgb[:, 0, 0], torch.full((2, 3), 0.5), atol=0.05, rtol=0)
    out.rgb.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in env.parameters())
    with pytest.raises(ConfigError):
        SolidBackground((1.5, 0.0, 0.0))


def test_rendering_is_deterministic_and_chunking_changes_nothing():
    field = VoxelGridField(
        VoxelGridConfig(resolution=16, init_noise=0.5), torch.Generator().manual_seed(0)
    )
    cams = orbit(2, elevation_deg=30.0)
    big = VolumeRenderer(RendererConfig(n_samples=24, n_importance=8))
    small = VolumeRenderer(RendererConfig(n_samples=24, n_importance=8, chunk_rays=37))
    with torch.no_grad():
        a = big(field, cams, 12, 12, shading="diffuse")
        b = small(field, cams, 12, 12, shading="diffuse")
        c = big(field, cams, 12, 12, shading="diffuse")
    torch.testing.assert_close(a.rgb, b.rgb)
    torch.testing.assert_close(a.depth, b.depth)
    assert torch.equal(a.rgb, c.rgb)
    jittered = big(field, cams, 12, 12, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(jittered.rgb, big(field, cams, 12, 12).rgb)


@pytest.mark.parametrize("shading", ["albedo", "diffuse", "textureless"])
def test_gradients_reach_the_voxel_grid(shading):
    field = VoxelGridField(VoxelGridConfig(resolution=16))
    renderer = VolumeRenderer(RendererConfig(n_samples=16))
    out = renderer(
        field, orbit(2), 8, 8, shading=shading, generator=torch.Generator().manual_seed(0)
    )
    (out.rgb.square().sum() + out.opacity.sum()).backward()
    assert field.raw_density.grad.abs().sum() > 0
    if shading != "textureless":
        assert field.raw_color.grad.abs().sum() > 0


def test_nerf_renders_with_autograd_normals_and_gets_gradients():
    config = NeRFConfig(
        encoding=HashGridConfig(
            n_levels=3, log2_table_size=10, base_resolution=4, max_resolution=16
        ),
        hidden_dim=8,
        normal_method="autograd",
    )
    field = NeRFField(config, generator=torch.Generator().manual_seed(0))
    renderer = VolumeRenderer(RendererConfig(n_samples=12))
    out = renderer(
        field, orbit(1), 6, 6, shading="diffuse", generator=torch.Generator().manual_seed(1)
    )
    out.rgb.sum().backward()
    assert field.encoding.table.grad.abs().sum() > 0


def test_render_rays_needs_lights_for_lit_shading_and_bad_configs_fail():
    renderer = VolumeRenderer()
    origins, dirs = orbit(1).rays(2, 2)
    with pytest.raises(ValueError, match="light"):
        renderer.render_rays(
            get_scene("red_cube"), origins.view(-1, 3), dirs.view(-1, 3), shading="diffuse"
        )
    with pytest.raises(ConfigError):
        renderer(get_scene("red_cube"), orbit(1), 2, 2, shading="phong")
    for kwargs in (
        {"n_samples": 0},
        {"bound": -1.0},
        {"normal_method": "sobel"},
        {"chunk_rays": 0},
    ):
        with pytest.raises(ConfigError):
            RendererConfig(**kwargs)
    with pytest.raises(ConfigError):
        ShadingConfig(mode="phong")
    with pytest.raises(ConfigError):
        ShadingConfig(light_distance=(2.0, 1.0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    field = VoxelGridField(
        VoxelGridConfig(resolution=16, init_noise=0.5), torch.Generator().manual_seed(0)
    )
    cams = orbit(2)
    renderer = VolumeRenderer(RendererConfig(n_samples=16))
    with torch.no_grad():
        cpu = renderer(field, cams, 8, 8, shading="diffuse")
        gpu = renderer(field.cuda(), cams.to("cuda"), 8, 8, shading="diffuse")
    torch.testing.assert_close(gpu.rgb.cpu(), cpu.rgb, atol=1e-4, rtol=0)
