"""The reference Gaussian rasteriser: exact values, compositing rules, gradients, tiles,
the RenderOutput contract and integral noise on its renders."""

from __future__ import annotations

import math

import pytest
import torch

from cfd3d.errors import ConfigError
from cfd3d.noise import IntegralNoiseConfig, NoiseConfig, make_noise
from cfd3d.render.background import RandomColorBackground, SolidBackground
from cfd3d.render.splat import SplatConfig, SplatRenderer, project_gaussians, rasterize
from cfd3d.scene.cameras import Cameras, orbit, spherical_cameras
from cfd3d.scene.gaussians import GaussianConfig, GaussianField, covariances, rgb_to_sh_dc


def field_of(means, scales, opacity, rgb, quats=None) -> GaussianField:
    """A field holding exactly the given Gaussians (``(N, 3)``, ``(N, 3)``, ``(N,)``,
    ``(N, 3)``)."""
    means = torch.as_tensor(means, dtype=torch.float32)
    n = means.shape[0]
    field = GaussianField(GaussianConfig(count=n))
    with torch.no_grad():
        field.means.copy_(means)
        field.log_scales.copy_(torch.log(torch.as_tensor(scales, dtype=torch.float32)))
        opacity = torch.as_tensor(opacity, dtype=torch.float32)
        field.opacity_logits.copy_(torch.log(opacity / (1 - opacity)))
        field.sh[:, 0].copy_(rgb_to_sh_dc(torch.as_tensor(rgb, dtype=torch.float32)))
        if quats is not None:
            field.quats.copy_(torch.as_tensor(quats, dtype=torch.float32))
    return field


def front_camera(distance: float = 2.0, fovy: float = 40.0) -> Cameras:
    one = torch.ones(1)
    return spherical_cameras(0 * one, 0 * one, distance * one, fovy * one)


def test_one_gaussian_matches_the_ewa_formula():
    cams = front_camera()
    size = 9  # odd: the centre pixel's centre is on the optical axis
    field = field_of([[0.0, 0.0, 0.0]], [[0.05, 0.05, 0.05]], [0.7], [[1.0, 0.0, 0.0]])
    with torch.no_grad():
        out = SplatRenderer()(field, cams, size, size, background=SolidBackground((0, 0, 1)))
    focal = float(cams.focal(size)[0])
    var = (focal * 0.05 / 2.0) ** 2 + 0.3
    for row, col in [(4, 4), (4, 5), (3, 5), (4, 7)]:
        r2 = (row - 4) ** 2 + (col - 4) ** 2
        alpha = 0.7 * math.exp(-0.5 * r2 / var)
        alpha = alpha if alpha >= 1 / 255 else 0.0
        assert float(out.opacity[0, row, col, 0]) == pytest.approx(alpha, abs=1e-5)
        assert out.rgb[0, row, col].tolist() == pytest.approx([alpha, 0.0, 1 - alpha], abs=1e-5)
    assert float(out.depth[0, 4, 4, 0]) == pytest.approx(2.0, abs=1e-5)
    # off-axis pixels: distance along the unit ray to the centre's depth plane
    direction = cams.pixel_directions(size, size)[0, 4, 5]
    assert float(out.depth[0, 4, 5, 0]) == pytest.approx(2.0 * float(direction.norm()), abs=1e-5)


def test_front_to_back_order_and_the_transmittance_stop():
    cams = front_camera()
    means = [[0.4, 0.0, 0.0], [0.0, 0.0, 0.0], [-0.4, 0.0, 0.0]]  # front, middle, back
    rgb = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    scales = [[0.3, 0.3, 0.3]] * 3
    renderer = SplatRenderer(SplatConfig(dilation=0.0))
    with torch.no_grad():
        out = renderer(field_of(means, scales, [0.5, 0.5, 0.5], rgb), cams, 9, 9)
        swapped = renderer(field_of(means[::-1], scales, [0.5] * 3, rgb[::-1]), cams, 9, 9)
        # alpha 0.98 each: T = 0.02, 4e-4, then 8e-6 < 1e-4 -> the third never counts
        stopped = renderer(field_of(means, scales, [0.98, 0.98, 0.98], rgb), cams, 9, 9)
    centre = out.rgb[0, 4, 4] - (1 - out.opacity[0, 4, 4])  # minus the white background
    assert centre.tolist() == pytest.approx([0.5, 0.25, 0.125], abs=1e-5)
    assert torch.allclose(out.rgb, swapped.rgb)
    assert float(stopped.opacity[0, 4, 4, 0]) == pytest.approx(1 - 0.02**2, abs=1e-6)
    assert float(stopped.rgb[0, 4, 4, 2]) == pytest.approx(0.02**2, abs=1e-6)  # white only


def random_field(n: int, seed: int, dtype=torch.float32) -> GaussianField:
    g = torch.Generator().manual_seed(seed)
    field = GaussianField(GaussianConfig(count=n, init_radius=0.5, init_opacity=0.6), g)
    with torch.no_grad():
        field.log_scales.add_(0.4 * torch.randn(n, 3, generator=g))
        field.quats.copy_(torch.randn(n, 4, generator=g))
        field.sh.copy_(torch.randn(field.sh.shape, generator=g))
        field.opacity_logits.add_(torch.randn(n, generator=g))
    return field.to(dtype)


def test_tiles_do_not_change_the_image():
    field, cams = random_field(300, 0), orbit(2)
    renders = []
    for tile in (5, 16, 64):
        with torch.no_grad():
            out = SplatRenderer(SplatConfig(tile_size=tile, normals=True))(field, cams, 32, 32)
        renders.append(out)
    for out in renders[1:]:
        for name in ("rgb", "opacity", "depth", "normal"):
            assert torch.allclose(getattr(out, name), getattr(renders[0], name), atol=1e-5)


def test_gradients_match_finite_differences_in_float64():
    field = random_field(4, 1, torch.float64)
    field.means.data.mul_(0.3)
    field.log_scales.data.clamp_(-2.0, -1.2)
    cams = orbit(1, distance=2.0)
    cams = Cameras(cams.c2w.double(), cams.fovy.double())
    config = SplatConfig(tile_size=4)
    dc = field.sh.detach()[:, 0].clone()

    def render(means, log_scales, quats, logits, colors):
        opacity = torch.sigmoid(logits)
        proj = project_gaussians(means, covariances(log_scales, quats), opacity, cams, 8, 8)
        features = torch.cat([colors, proj.depths[0][:, None]], -1)[None]
        image, alpha, _ = rasterize(proj, opacity, features, 8, 8, config.tile_size)
        return image, alpha

    inputs = tuple(
        t.detach().clone().requires_grad_(True)
        for t in (field.means, field.log_scales, field.quats, field.opacity_logits, dc)
    )
    with torch.no_grad():
        _, alpha = render(*inputs)
    assert float(alpha.max()) > 0.3  # the Gaussians are in view
    assert torch.autograd.gradcheck(render, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("mode", ["albedo", "diffuse", "textureless"])
@pytest.mark.parametrize("source", ["axes", "depth"])
def test_the_render_output_contract(mode, source):
    field, cams = random_field(200, 2), orbit(2)
    renderer = SplatRenderer(SplatConfig(normal_source=source))
    gen = torch.Generator().manual_seed(0)
    out, info = renderer.render_with_info(
        field, cams, 16, 16, shading=mode, background=RandomColorBackground(), generator=gen
    )
    assert out.rgb.shape == (2, 16, 16, 3) and out.opacity.shape == (2, 16, 16, 1)
    assert out.depth.shape == (2, 16, 16, 1)
    assert bool((out.rgb >= 0).all() and (out.rgb <= 1 + 1e-6).all())
    assert bool((out.opacity >= 0).all() and (out.opacity < 1).all())
    assert (out.normal is None) == (mode == "albedo")
    if out.normal is not None:
        opaque = out.opacity[..., 0] > 0.9
        assert torch.allclose(out.normal[opaque].norm(dim=-1), torch.ones(int(opaque.sum())))
    out.rgb.mean().backward()
    assert field.means.grad is not None and bool(field.means.grad.abs().sum() > 0)
    assert info.ndc_grad().shape == (2, 200, 2) and bool(info.ndc_grad().abs().sum() > 0)
    assert bool(info.visible.any())


def test_empty_views_and_bad_configs():
    field = field_of([[0.0, 0.0, 5.0]], [[0.1] * 3], [0.9], [[1.0, 0.0, 0.0]])  # above
    with torch.no_grad():
        out = SplatRenderer()(field, front_camera(), 8, 8)
    assert torch.equal(out.rgb, torch.ones(1, 8, 8, 3)) and float(out.opacity.max()) == 0.0
    out = SplatRenderer()(field, front_camera(), 8, 8, shading="diffuse")
    out.rgb.sum().backward()  # a step that sees nothing still back-propagates (zeros)
    assert torch.equal(field.means.grad, torch.zeros(1, 3))
    with pytest.raises(ConfigError, match="normal_source"):
        SplatConfig(normal_source="mesh")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="tile_size"):
        SplatConfig(tile_size=0)


def shell(n: int = 1500, radius: float = 0.38) -> GaussianField:
    """Isotropic Gaussians on a Fibonacci sphere: an opaque ball."""
    k = torch.arange(n, dtype=torch.float32) + 0.5
    z = 1 - 2 * k / n
    phi = math.pi * (1 + 5**0.5) * k
    r = torch.sqrt(1 - z * z)
    points = radius * torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)
    return field_of(points, torch.full((n, 3), 0.03), torch.full((n,), 0.9), torch.ones(n, 3))


def exact_sphere_depth(cams: Cameras, size: int, radius: float = 0.38) -> torch.Tensor:
    origin, direction = cams.rays(size, size)
    b = (origin * direction).sum(-1)
    disc = b * b - ((origin * origin).sum(-1) - radius**2)
    return (-b - torch.sqrt(disc.clamp_min(0)))[..., None], (disc > 0)[..., None]


def test_integral_noise_works_unchanged_on_splat_renders():
    field = shell()
    cams = orbit(2, distance=1.4, fovy_deg=50.0)
    with torch.no_grad():
        out = SplatRenderer()(field, cams, 32, 32)
    depth, hit = exact_sphere_depth(cams, 32)
    inner = hit & (out.opacity > 0.99)
    assert int(inner.sum()) > 200
    # centre depths: exact facing the camera, nearer towards the rim (a tilted layer of
    # round splats is seen first by its nearer half)
    error = (out.depth - depth)[inner].abs()
    assert float(error.median()) < 0.03 and float(error.max()) < 0.15
    config = NoiseConfig(kind="integral", seed=0, integral=IntegralNoiseConfig())
    noise = make_noise(config, (3, 16, 16))
    eps = noise(out, cams, 0)
    assert eps.shape == (2, 3, 16, 16) and bool(torch.isfinite(eps).all())
    assert abs(float(eps.mean())) < 0.15 and 0.8 < float(eps.var()) < 1.2
    # the same noise as the exact sphere's where the splats are opaque
    from cfd3d.render.types import RenderOutput

    exact = RenderOutput(rgb=out.rgb, opacity=hit.float(), depth=torch.where(hit, depth, 0.0))
    reference = make_noise(config, (3, 16, 16))(exact, cams, 0)
    close = inner & ((out.depth - depth).abs() < 0.01)
    pool = torch.nn.functional.avg_pool2d
    for where, least in ((inner, 0.5), (close, 0.9)):
        mask = (pool(where.float().permute(0, 3, 1, 2), 2) == 1).expand_as(eps)
        a, b = eps[mask].double(), reference[mask].double()
        assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > least


def test_tiles_keep_memory_below_one_dense_pixel_by_gaussian_matrix():
    from cfd3d.evaluation.memory import SavedTensorsMeter

    n, size = 3000, 64
    gen = torch.Generator().manual_seed(0)
    field = GaussianField(GaussianConfig(count=n, init_radius=0.4, init_opacity=0.5), gen)
    with SavedTensorsMeter(exclude=field.parameters()) as meter:
        out = SplatRenderer()(field, orbit(1), size, size, shading="diffuse", generator=gen)
    out.rgb.sum().backward()
    # an untiled rasteriser saves about eight (pixels x Gaussians) float32 matrices
    assert meter.nbytes < size * size * n * 4


def test_ewa_projection_matches_projected_samples_of_an_anisotropic_gaussian():
    gen = torch.Generator().manual_seed(0)
    cams = spherical_cameras(
        torch.tensor([30.0]), torch.tensor([25.0]), torch.tensor([1.5]), torch.tensor([50.0])
    )
    cams = Cameras(cams.c2w.double(), cams.fovy.double())
    mean = torch.tensor([[0.15, -0.1, 0.2]], dtype=torch.float64)
    log_scales = torch.log(torch.tensor([[0.004, 0.012, 0.008]], dtype=torch.float64))
    quats = torch.randn(1, 4, generator=gen, dtype=torch.float64)
    cov = covariances(log_scales, quats)
    proj = project_gaussians(
        mean, cov, torch.ones(1, dtype=torch.float64), cams, 64, 64, dilation=0.0
    )
    # the ray through the projected centre passes through the centre (cameras' convention)
    u, v = proj.means2d[0, 0].tolist()
    focal = float(cams.focal(64)[0])
    ray_cam = torch.tensor([(u - 32) / focal, -(v - 32) / focal, -1.0], dtype=torch.float64)
    ray = cams.c2w[0, :3, :3] @ ray_cam
    to_centre = mean[0] - cams.position[0]
    assert torch.allclose(
        torch.linalg.cross(ray, to_centre), torch.zeros(3, dtype=torch.float64), atol=1e-6
    )
    # the image covariance is that of the projected samples (the linearisation is tight)
    samples = (
        mean
        + torch.randn(200000, 3, generator=gen, dtype=torch.float64)
        @ torch.linalg.cholesky(cov[0]).T
    )
    p_cam = (samples - cams.position[0]) @ cams.c2w[0, :3, :3]
    pixels = torch.stack(
        [focal * p_cam[:, 0] / -p_cam[:, 2], -focal * p_cam[:, 1] / -p_cam[:, 2]], -1
    )
    a, b, c = proj.conics[0, 0]
    expected = torch.linalg.inv(torch.stack([torch.stack([a, b]), torch.stack([b, c])]))
    assert torch.allclose(torch.cov(pixels.T), expected, rtol=0.02, atol=1e-4)
