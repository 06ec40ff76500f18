"""The ablations on the noise interface: fresh (SDS), fixed, panorama (FSD); the registry."""

import pytest
import torch
from scipy import stats

from cfd3d.errors import ConfigError
from cfd3d.noise import (
    NOISE_SOURCES,
    FixedNoise,
    FreshNoise,
    NoiseConfig,
    PanoramaNoise,
    PanoramaNoiseConfig,
    make_noise,
)
from cfd3d.noise.config import NOISE_KINDS
from cfd3d.render.types import RenderOutput
from cfd3d.scene.cameras import Cameras, spherical_cameras

SHAPE = (4, 16, 16)


def views(azimuth, elevation) -> tuple[RenderOutput, Cameras]:
    azimuth = torch.as_tensor(azimuth, dtype=torch.float32)
    elevation = torch.as_tensor(elevation, dtype=torch.float32)
    full = torch.ones_like(azimuth)
    cams = spherical_cameras(azimuth, elevation, 1.4 * full, 50 * full)
    n = len(cams)
    rgb = torch.zeros(n, 32, 32, 3)
    return RenderOutput(rgb=rgb, opacity=torch.zeros(n, 32, 32, 1), depth=None), cams


def gaussian(values: torch.Tensor) -> bool:
    values = values.flatten().double()
    return (
        abs(float(values.mean())) < 0.05
        and 0.9 < float(values.var()) < 1.1
        and stats.kstest(values.numpy(), "norm").pvalue > 1e-3
    )


def test_registry_matches_the_config_kinds():
    assert tuple(NOISE_SOURCES) == NOISE_KINDS
    for kind, cls in NOISE_SOURCES.items():
        assert cls.kind == kind
        assert isinstance(make_noise(NoiseConfig(kind=kind), SHAPE), cls)


def test_fresh_noise_is_new_every_call_and_reproducible():
    render, cams = views([0.0, 90.0], [10.0, 10.0])
    noise = make_noise(NoiseConfig(kind="fresh"), SHAPE)
    assert isinstance(noise, FreshNoise)
    a, b, c = noise(render, cams, 0), noise(render, cams, 0), noise(render, cams, 1)
    assert a.shape == (2, *SHAPE)
    assert not torch.equal(a, b) and not torch.equal(b, c) and not torch.equal(a[0], a[1])
    assert gaussian(torch.cat([a, b, c]))
    again = make_noise(NoiseConfig(kind="fresh"), SHAPE)
    assert torch.equal(again(render, cams, 0), a)  # keyed by (seed, step, call in step)
    noise.refresh(0.5)  # nothing to refresh, still validated
    with pytest.raises(ConfigError):
        noise.refresh(2.0)


def test_fixed_noise_ignores_views_and_follows_the_refresh():
    render, cams = views([0.0, 90.0, 200.0], [0.0, 30.0, 10.0])
    noise = make_noise(NoiseConfig(kind="fixed"), SHAPE)
    assert isinstance(noise, FixedNoise)
    a = noise(render, cams, 0)
    assert torch.equal(a[0], a[1]) and torch.equal(a[0], a[2])
    assert torch.equal(noise(render, cams, 1), a)
    assert gaussian(a[0])
    noise.refresh(0.75)
    b = noise(render, cams, 2)
    corr = torch.corrcoef(torch.stack([a[0].flatten(), b[0].flatten()]))[0, 1]
    assert float(corr) == pytest.approx(0.5, abs=0.1)


def test_panorama_crop_moves_with_the_camera_angle():
    config = NoiseConfig(kind="panorama", panorama=PanoramaNoiseConfig(fovy_deg=48.0))
    noise = make_noise(config, SHAPE)
    assert isinstance(noise, PanoramaNoise)
    step = 48.0 / SHAPE[1]  # degrees per panorama pixel
    render, cams = views([30.0, 30.0 + 5 * step, 30.0, 359.0], [10.0, 10.0, 10.0 + 3 * step, 10.0])
    out = noise(render, cams, 0)
    # Turning left (larger azimuth) by 5 pixels shifts the crop by 5 columns.
    assert torch.equal(out[1][..., :-5], out[0][..., 5:])
    # Looking from 3 pixels higher shifts it by 3 rows.
    assert torch.equal(out[2][:, 3:], out[0][:, :-3])
    assert not torch.equal(out[3], out[0])
    assert gaussian(out[3])
    # Azimuth wraps around.
    one_view, wrapped = views([-1.0], [10.0])
    assert torch.equal(noise(one_view, wrapped, 1)[0], out[3])


def test_non_dividing_resolution_is_a_config_error():
    render, cams = views([0.0], [0.0])
    for kind in NOISE_KINDS:
        with pytest.raises(ConfigError, match="must divide"):
            make_noise(NoiseConfig(kind=kind), (4, 24, 24))(render, cams, 0)
    with pytest.raises(ConfigError, match="fovy_deg"):
        PanoramaNoiseConfig(fovy_deg=0.0)
