"""Integral noise: statistics, exact partition, correspondences, SDE refresh, state, errors."""

import io
import math
from dataclasses import replace

import pytest
import torch
from scipy import stats

from cfd3d.errors import ConfigError
from cfd3d.noise import IntegralNoise, IntegralNoiseConfig, NoiseConfig, make_noise
from cfd3d.noise.integral import assign_texels
from cfd3d.noise.raster import ragged_arange
from cfd3d.render.types import RenderOutput
from cfd3d.scene.cameras import Cameras, spherical_cameras

SHAPE = (3, 32, 32)


def cameras(azimuth, elevation=20.0, distance=1.4, fovy=50.0) -> Cameras:
    azimuth = torch.as_tensor(azimuth, dtype=torch.float32).flatten()
    full = torch.ones_like(azimuth)
    return spherical_cameras(azimuth, elevation * full, distance * full, fovy * full)


def random_cameras(n: int, seed: int) -> Cameras:
    g = torch.Generator().manual_seed(seed)
    return spherical_cameras(
        360 * torch.rand(n, generator=g),
        40 * torch.rand(n, generator=g),
        1.3 + 0.2 * torch.rand(n, generator=g),
        40 + 25 * torch.rand(n, generator=g),
    )


def integral(**overrides) -> NoiseConfig:
    return NoiseConfig(kind="integral", integral=IntegralNoiseConfig(**overrides))


def fg_mask(noise: IntegralNoise, render: RenderOutput, cams: Cameras) -> torch.Tensor:
    return noise.texel_counts(render, cams) >= noise.config.integral.min_texels


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


@pytest.mark.parametrize("scene", ["sphere", "box"])
def test_marginals_and_independence(scenes, scene):
    cams = random_cameras(12, seed=1)
    render = getattr(scenes, scene)(cams, 64)
    noise = make_noise(integral(), SHAPE)
    out = noise(render, cams, 0)
    assert out.shape == (12, *SHAPE) and out.dtype == torch.float32
    mask = fg_mask(noise, render, cams)
    assert 0.2 < float(mask.float().mean()) < 0.7
    for values in (out.permute(1, 0, 2, 3)[:, mask], out.permute(1, 0, 2, 3)[:, ~mask]):
        values = values.flatten().double()
        assert abs(float(values.mean())) < 0.03
        assert 0.95 < float(values.var()) < 1.05
        assert stats.kstest(values[::7].numpy(), "norm").pvalue > 1e-3
    pair = mask[:, :, 1:] & mask[:, :, :-1]
    assert (
        abs(
            corr(
                out[..., 1:].permute(1, 0, 2, 3)[:, pair],
                out[..., :-1].permute(1, 0, 2, 3)[:, pair],
            )
        )
        < 0.05
    )
    fg = out.permute(1, 0, 2, 3)[:, mask]
    assert abs(corr(fg[0], fg[1])) < 0.05


def test_exact_partition_and_texel_counts(scenes):
    cams = random_cameras(3, seed=2)
    render = scenes.box(cams, 64)
    noise = make_noise(integral(), SHAPE)
    footprints = noise.footprints(render, cams)
    assignment = assign_texels(footprints, noise.layout)
    spans = assignment.spans
    group, offset = ragged_arange(spans.count)
    view = (footprints.pixel // footprints.pixels_per_view)[spans.owner[group]]
    texel = spans.row[group] * noise.layout.size + spans.start[group] + offset
    key = view * noise.layout.num_rows * noise.layout.size + texel
    assert key.unique().numel() == key.numel(), "a texel was given to two pixels of a view"
    counts = noise.texel_counts(render, cams)
    assert counts.flatten()[footprints.pixel].sum() == key.numel()
    assert (counts.flatten()[footprints.pixel] == assignment.count).all()
    # Hundreds of texels per noise pixel at the default density.
    assert float(assignment.count.double().mean()) > 150


def test_every_covered_texel_goes_to_the_quad_containing_it(scenes):
    # Brute force on one coarse view: texel centres clearly inside a footprint quad (in its
    # chart) belong to that quad's pixel.
    cams = cameras([30.0])
    render = scenes.sphere(cams, 32)
    noise = make_noise(integral(texel_size=0.01), (1, 16, 16))
    footprints = noise.footprints(render, cams)
    layout = noise.layout
    c = footprints.corners
    normal = torch.linalg.cross(c[:, 3] - c[:, 1], c[:, 2] - c[:, 0])
    chart, axis = layout.charts(normal, footprints.centre)
    quads = layout.texel_coordinates(c, axis).double()
    spans = assign_texels(footprints, layout).spans
    group, offset = ragged_arange(spans.count)
    owner_of = {}
    for o, r, col in zip(
        spans.owner[group].tolist(),
        spans.row[group].tolist(),
        (spans.start[group] + offset).tolist(),
        strict=True,
    ):
        owner_of[(r, col)] = o
    checked = 0
    for q in range(quads.shape[0]):
        quad = quads[q]
        lo, hi = quad.min(0).values.floor().long(), quad.max(0).values.ceil().long()
        cols, rows = torch.meshgrid(
            torch.arange(lo[0], hi[0] + 1), torch.arange(lo[1], hi[1] + 1), indexing="ij"
        )
        points = torch.stack([cols.flatten(), rows.flatten()], 1).double()
        a, b = quad, quad.roll(-1, 0)
        cross = (b - a)[None, :, 0] * (points[:, None, 1] - a[None, :, 1]) - (b - a)[None, :, 1] * (
            points[:, None, 0] - a[None, :, 0]
        )
        area = float((a[:, 0] * b[:, 1] - b[:, 0] * a[:, 1]).sum())
        inside = (cross * math.copysign(1.0, area) / (b - a).norm(dim=1) > 1e-2).all(1)
        for col, row in points[inside].long().tolist():
            assert owner_of.get((int(chart[q]) * layout.size + row, col)) == q
            checked += 1
    assert checked > 2000


def square_views() -> Cameras:
    """A camera facing the square, the same shifted right by 3 noise pixels at the square's
    depth, and the same rolled by 90 degrees."""
    base = cameras([0.0], elevation=0.0)
    h = SHAPE[1]
    pixel = 2 * (1.4 - 0.1) * math.tan(math.radians(25.0)) / h
    shifted = base.c2w.clone()
    shifted[:, :3, 3] += 3 * pixel * base.c2w[:, :3, 0]
    rolled = base.c2w.clone()
    rolled[:, :3, 0], rolled[:, :3, 1] = base.c2w[:, :3, 1], -base.c2w[:, :3, 0]
    return Cameras(torch.cat([base.c2w, shifted, rolled]), base.fovy.repeat(3))


def test_shift_and_roll_on_a_flat_square(scenes):
    cams = square_views()
    render = scenes.square(cams, 64)
    noise = make_noise(integral(), SHAPE)
    out = noise(render, cams, 0)
    mask = fg_mask(noise, render, cams)
    both = mask[0][:, 3:] & mask[1][:, :-3]
    assert int(both.sum()) > 500
    assert corr(out[0][:, :, 3:][:, both], out[1][:, :, :-3][:, both]) > 0.99
    back = torch.rot90(out[2], 1, dims=(1, 2))
    both = mask[0] & torch.rot90(mask[2], 1, dims=(0, 1))
    assert corr(out[0][:, both], back[:, both]) > 0.99


def test_refinement_sums_to_the_coarse_noise(scenes):
    cams = random_cameras(4, seed=3)
    render = scenes.box(cams, 64)
    config = integral(texel_size=0.003)
    coarse_noise = make_noise(config, (2, 32, 32))
    fine_noise = make_noise(config, (2, 64, 64))
    coarse = coarse_noise(render, cams, 0)
    fine = fine_noise(render, cams, 0)
    summed = torch.nn.functional.avg_pool2d(fine, 2) * 2
    fine_ok = torch.nn.functional.avg_pool2d(fg_mask(fine_noise, render, cams)[:, None].float(), 2)
    mask = fg_mask(coarse_noise, render, cams) & (fine_ok[:, 0] == 1)
    assert int(mask.sum()) > 500
    assert corr(coarse.permute(1, 0, 2, 3)[:, mask], summed.permute(1, 0, 2, 3)[:, mask]) > 0.9


def test_small_orbit_steps_keep_the_noise(scenes):
    cams = cameras([10.0, 12.0, 40.0])
    render = scenes.box(cams, 64)
    noise = make_noise(integral(), SHAPE)
    out = noise(render, cams, 0)
    mask = fg_mask(noise, render, cams)
    # Same pixel in views 2 degrees apart (no alignment) is already strongly correlated;
    # views 30 degrees apart are not, pixel for pixel.
    both = mask[0] & mask[1]
    assert corr(out[0][:, both], out[1][:, both]) > 0.2
    both = mask[0] & mask[2]
    assert abs(corr(out[0][:, both], out[2][:, both])) < 0.1


def test_background_fixed_or_fresh(scenes):
    cams = random_cameras(3, seed=4)
    render = scenes.sphere(cams, 64, radius=0.0)  # nothing: all background
    fixed = make_noise(integral(), SHAPE)
    a, b = fixed(render, cams, 0), fixed(render, cams, 1)
    assert torch.equal(a, b) and torch.equal(a[0], a[1])
    fresh = make_noise(integral(background="fresh"), SHAPE)
    a, b = fresh(render, cams, 0), fresh(render, cams, 1)
    assert not torch.equal(a, b) and not torch.equal(a[0], a[1])
    assert abs(corr(a, b)) < 0.05
    assert 0.9 < float(a.var()) < 1.1


def test_sde_refresh_keeps_marginals_and_decorrelates(scenes):
    # 64x64x4 so that the one background map alone has 16k values.
    cams = random_cameras(4, seed=5)
    render = scenes.box(cams, 64)
    noise = make_noise(integral(), (4, 64, 64))
    start = noise(render, cams, 0)
    mask = fg_mask(noise, render, cams)[:, None].expand_as(start)
    gamma = 0.01
    for _ in range(100):
        noise.refresh(gamma)
    after = noise(render, cams, 100)
    expected = (1 - gamma) ** 50
    assert corr(start[mask], after[mask]) == pytest.approx(expected, abs=0.05)
    assert corr(start[~mask], after[~mask]) == pytest.approx(expected, abs=0.05)
    for _ in range(900):
        noise.refresh(gamma)
    after = noise(render, cams, 1000)
    assert abs(corr(start[mask], after[mask])) < 0.05
    for values in (after[mask], after[~mask]):
        assert abs(float(values.mean())) < 0.04
        assert 0.95 < float(values.var()) < 1.05
    noise.refresh(0.0)
    assert torch.equal(noise(render, cams, 1001), after)


def test_state_dict_round_trip_is_bit_exact(scenes):
    cams = random_cameras(2, seed=6)
    render = scenes.sphere(cams, 64)
    config = integral(background="fresh")
    noise = make_noise(config, SHAPE)
    for step in range(3):
        noise(render, cams, step)
        noise.refresh(0.05)
    buffer = io.BytesIO()
    torch.save(noise.state_dict(), buffer)
    buffer.seek(0)
    resumed = make_noise(config, SHAPE)
    resumed.load_state_dict(torch.load(buffer))
    for step in range(3, 6):
        assert torch.equal(noise(render, cams, step), resumed(render, cams, step))
        noise.refresh(0.05)
        resumed.refresh(0.05)
    # A pristine (ODE) source saves no tiles and still resumes exactly.
    ode = make_noise(integral(), SHAPE)
    ode(render, cams, 0)
    state = ode.state_dict()
    assert state["extra"]["field"]["tile_ids"].numel() == 0
    again = make_noise(integral(), SHAPE)
    again.load_state_dict(state)
    assert torch.equal(ode(render, cams, 1), again(render, cams, 1))
    with pytest.raises(ConfigError, match="noise state is for integral"):
        make_noise(replace(config, kind="fixed"), SHAPE).load_state_dict(state)


def test_seeded_and_keyed_by_step(scenes):
    cams = random_cameras(2, seed=7)
    render = scenes.sphere(cams, 64)
    a = make_noise(NoiseConfig(seed=3), SHAPE)(render, cams, 0)
    b = make_noise(NoiseConfig(seed=3), SHAPE)(render, cams, 0)
    c = make_noise(NoiseConfig(seed=4), SHAPE)(render, cams, 0)
    assert torch.equal(a, b) and not torch.equal(a, c)
    noise = make_noise(NoiseConfig(), SHAPE)
    noise(render, cams, 5)
    with pytest.raises(ValueError, match="steps must not go back"):
        noise(render, cams, 4)


def test_float64_render_and_default_texel_size(scenes):
    cams = random_cameras(1, seed=8)
    render = scenes.sphere(cams, 128)
    render64 = RenderOutput(render.rgb.double(), render.opacity.double(), render.depth.double())
    noise = make_noise(integral(), (4, 64, 64))
    assert noise.layout.texel_size == pytest.approx(0.1 / 64)
    out = noise(render64, Cameras(cams.c2w.double(), cams.fovy.double()), 0)
    assert out.dtype == torch.float32 and out.shape == (1, 4, 64, 64)


def test_bad_inputs_raise_config_errors(scenes):
    cams = random_cameras(1, seed=9)
    render = scenes.sphere(cams, 64)
    noise = make_noise(integral(), SHAPE)
    with pytest.raises(ConfigError, match="needs the render's depth"):
        noise(RenderOutput(render.rgb, render.opacity, None), cams, 0)
    with pytest.raises(ConfigError, match="needs the render's opacity"):
        noise(RenderOutput(render.rgb, None, render.depth), cams, 0)
    with pytest.raises(ConfigError, match="render depth must have shape"):
        noise(RenderOutput(render.rgb, render.opacity, render.depth[..., 0]), cams, 0)
    with pytest.raises(ConfigError, match="must divide the render resolution"):
        make_noise(integral(), (3, 24, 24))(render, cams, 0)
    for gamma in (-0.1, 1.5, math.nan):
        with pytest.raises(ConfigError, match=r"gamma must be in \[0, 1\]"):
            noise.refresh(gamma)
    with pytest.raises(ConfigError, match="shape"):
        make_noise(integral(), (0, 32, 32))


@pytest.mark.parametrize(
    "field, value",
    [
        ("texel_size", 0.0),
        ("num_layers", 0),
        ("bound", -1.0),
        ("tile_rows", 6),
        ("tile_cols", 0),
        ("opacity_threshold", 0.0),
        ("min_texels", 0),
        ("max_depth_jump", 0.0),
        ("background", "noise"),
    ],
)
def test_invalid_config_values(field, value):
    with pytest.raises(ConfigError, match=f"integral noise: {field}"):
        IntegralNoiseConfig(**{field: value})
    with pytest.raises(ConfigError, match="unknown noise kind"):
        NoiseConfig(kind="pink")


def test_split_at_tiles_keeps_every_texel_once():
    from cfd3d.noise.integral import split_at_tiles
    from cfd3d.noise.raster import Spans

    spans = Spans(
        owner=torch.tensor([0, 1, 2, 3]),
        row=torch.tensor([5, 5, 6, 7]),
        start=torch.tensor([0, 3, 7, 9]),
        end=torch.tensor([3, 17, 8, 10]),
    )
    pieces = split_at_tiles(spans, col_shift=2)  # tiles of 4 columns
    assert ((pieces.start >> 2) == ((pieces.end - 1) >> 2)).all()
    texels = sorted(
        (o, r, c)
        for o, r, s, e in zip(*(f.tolist() for f in pieces.fields()), strict=True)
        for c in range(s, e)
    )
    expected = sorted(
        (o, r, c)
        for o, r, s, e in zip(*(f.tolist() for f in spans.fields()), strict=True)
        for c in range(s, e)
    )
    assert texels == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(scenes):
    cams = random_cameras(3, seed=10)
    render = scenes.box(cams, 64)
    cpu = make_noise(integral(), SHAPE)(render, cams, 0)
    gpu_render = RenderOutput(render.rgb.cuda(), render.opacity.cuda(), render.depth.cuda())
    gpu = make_noise(integral(), SHAPE)(gpu_render, cams.to("cuda"), 0)
    assert gpu.device.type == "cuda"
    # Texel values are seeded on the CPU; only float rounding on footprint edges differs.
    assert corr(cpu, gpu.cpu()) > 0.99


def test_noise_carries_no_gradient(scenes):
    cams = random_cameras(1, seed=11)
    render = scenes.sphere(cams, 64)
    depth = render.depth.clone().requires_grad_(True)
    out = make_noise(integral(), SHAPE)(RenderOutput(render.rgb, render.opacity, depth), cams, 0)
    assert not out.requires_grad
