import pytest
import torch

from cfd3d.errors import ConfigError
from cfd3d.scene.cameras import spherical_cameras
from cfd3d.scene.sampling import (
    VIEW_LABELS,
    CameraSamplerConfig,
    ViewLabelConfig,
    sample_cameras,
    view_labels,
)


def test_samples_lie_in_their_ranges_and_look_at_the_origin():
    config = CameraSamplerConfig(
        elevation_deg=(5.0, 35.0), azimuth_deg=(-60.0, 60.0), distance=(1.3, 1.5)
    )
    cams = sample_cameras(config, 512, torch.Generator().manual_seed(0))
    assert len(cams) == 512
    el, dist, fovy = cams.elevation, cams.distance, torch.rad2deg(cams.fovy)
    az = (cams.azimuth + 180.0) % 360.0 - 180.0  # back to (-180, 180]
    tol = 1e-3
    assert el.min() >= 5.0 - tol and el.max() <= 35.0 + tol
    assert az.min() >= -60.0 - tol and az.max() <= 60.0 + tol
    assert dist.min() >= 1.3 - 1e-5 and dist.max() <= 1.5 + 1e-5
    assert fovy.min() >= 40.0 - tol and fovy.max() <= 65.0 + tol
    # The ranges are actually covered, not collapsed to a point.
    assert el.max() - el.min() > 25.0 and az.max() - az.min() > 100.0
    # Every camera looks at the origin: its -z axis points from the eye to the origin.
    forward = -cams.c2w[:, :3, 2]
    to_origin = -cams.position / cams.distance[:, None]
    torch.testing.assert_close(forward, to_origin, atol=1e-5, rtol=0)


def test_default_ranges_are_the_papers_stage_one():
    config = CameraSamplerConfig()
    assert config.elevation_deg == (0.0, 40.0)
    assert config.azimuth_deg == (0.0, 360.0)
    assert config.distance == (1.3, 1.5)
    assert config.fovy_deg == (40.0, 65.0)


def test_sampling_is_reproducible_with_a_seeded_generator():
    a = sample_cameras(CameraSamplerConfig(), 8, torch.Generator().manual_seed(3))
    b = sample_cameras(CameraSamplerConfig(), 8, torch.Generator().manual_seed(3))
    c = sample_cameras(CameraSamplerConfig(), 8, torch.Generator().manual_seed(4))
    assert torch.equal(a.c2w, b.c2w) and torch.equal(a.fovy, b.fovy)
    assert not torch.equal(a.c2w, c.c2w)


def test_a_fixed_range_gives_that_value():
    config = CameraSamplerConfig(elevation_deg=(20.0, 20.0), distance=(1.4, 1.4))
    cams = sample_cameras(config, 4, torch.Generator().manual_seed(0))
    torch.testing.assert_close(cams.elevation, torch.full((4,), 20.0), atol=1e-3, rtol=0)
    torch.testing.assert_close(cams.distance, torch.full((4,), 1.4), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"elevation_deg": (40.0, 0.0)}, "min > max"),
        ({"elevation_deg": (-100.0, 10.0)}, "elevation_deg must lie in"),
        ({"azimuth_deg": (10.0, -10.0)}, "min > max"),
        ({"azimuth_deg": (0.0, 400.0)}, "more than 360"),
        ({"distance": (1.5, 1.3)}, "min > max"),
        ({"distance": (0.5, 1.5)}, "distance must lie in"),
        ({"distance": (1.0, 1.5)}, "distance must lie in"),
        ({"fovy_deg": (65.0, 40.0)}, "min > max"),
        ({"fovy_deg": (0.0, 40.0)}, "fovy_deg must lie in (0.0, 180.0)"),
        ({"fovy_deg": (40.0, 180.0)}, "fovy_deg must lie in (0.0, 180.0)"),
        ({"fovy_deg": (40.0, float("nan"))}, "finite"),
        ({"elevation_deg": (0.0, 10.0, 20.0)}, "(min, max) pair"),
        ({"bound": 0.0}, "bound"),
    ],
)
def test_invalid_ranges_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError) as info:
        CameraSamplerConfig(**kwargs)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_sampling_zero_cameras_is_an_error():
    with pytest.raises(ConfigError):
        sample_cameras(CameraSamplerConfig(), 0)


def _cams(azimuths, elevations):
    n = len(azimuths)
    return spherical_cameras(
        torch.tensor(azimuths, dtype=torch.float32),
        torch.tensor(elevations, dtype=torch.float32),
        torch.full((n,), 1.4),
        torch.full((n,), 50.0),
    )


def test_view_labels_follow_dreamfusion():
    cams = _cams(
        [0.0, 30.0, 330.0, 50.0, 90.0, 140.0, 180.0, 200.0, 270.0, 0.0, 180.0],
        [10.0, 10.0, 10.0, 10.0, 30.0, 10.0, 10.0, 40.0, 10.0, 70.0, 61.0],
    )
    assert view_labels(cams) == [
        "front",
        "front",
        "front",
        "side",
        "side",
        "back",
        "back",
        "back",
        "side",
        "overhead",
        "overhead",
    ]
    assert set(view_labels(cams)) <= set(VIEW_LABELS)


def test_view_label_thresholds_are_configurable():
    cams = _cams([30.0, 160.0, 0.0], [10.0, 10.0, 50.0])
    assert view_labels(cams) == ["front", "back", "front"]
    narrow = ViewLabelConfig(front_deg=20.0, back_deg=10.0, overhead_deg=45.0)
    assert view_labels(cams, narrow) == ["side", "side", "overhead"]


@pytest.mark.parametrize(
    "kwargs",
    [{"front_deg": 100.0, "back_deg": 100.0}, {"front_deg": -1.0}, {"overhead_deg": 95.0}],
)
def test_invalid_view_label_thresholds_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        ViewLabelConfig(**kwargs)


def test_groups_share_elevation_distance_and_fov_with_azimuths_evenly_apart():
    config = CameraSamplerConfig(views_per_group=4)
    cams = sample_cameras(config, 12, torch.Generator().manual_seed(0))
    assert len(cams) == 12
    el = cams.elevation.view(3, 4)
    dist = cams.distance.view(3, 4)
    fovy = cams.fovy.view(3, 4)
    az = cams.azimuth.double().view(3, 4)
    for values, atol in ((el, 1e-3), (dist, 1e-5), (fovy, 0.0)):
        torch.testing.assert_close(values, values[:, :1].expand(3, 4), atol=atol, rtol=0)
    # Consecutive views of a group are 90 degrees apart (mod 360).
    gaps = (az[:, 1:] - az[:, :-1]) % 360.0
    torch.testing.assert_close(
        gaps, torch.full((3, 3), 90.0, dtype=torch.float64), atol=1e-3, rtol=0
    )
    # Groups differ from each other (independent draws per group).
    assert el[:, 0].unique().numel() == 3 and az[:, 0].unique().numel() == 3
    forward = -cams.c2w[:, :3, 2]
    torch.testing.assert_close(forward, -cams.position / cams.distance[:, None], atol=1e-5, rtol=0)


def test_group_first_azimuth_is_drawn_from_the_azimuth_range():
    config = CameraSamplerConfig(azimuth_deg=(10.0, 20.0), views_per_group=2)
    cams = sample_cameras(config, 200, torch.Generator().manual_seed(1))
    az = cams.azimuth.view(100, 2)
    assert az[:, 0].min() >= 10.0 - 1e-3 and az[:, 0].max() <= 20.0 + 1e-3
    assert az[:, 1].min() >= 190.0 - 1e-3 and az[:, 1].max() <= 200.0 + 1e-3
    assert az[:, 0].max() - az[:, 0].min() > 8.0


def test_one_view_per_group_draws_each_camera_independently():
    # Pins the ungrouped stream of draws (azimuth, elevation, distance, fovy rows of one
    # (4, n) uniform tensor), so seeded runs from before grouping existed stay reproducible.
    config = CameraSamplerConfig()
    assert config.views_per_group == 1
    cams = sample_cameras(config, 8, torch.Generator().manual_seed(5))
    u = torch.rand(4, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = spherical_cameras(
        (360.0 * u[0]).float(),
        (40.0 * u[1]).float(),
        (1.3 + 0.2 * u[2]).float(),
        (40.0 + 25.0 * u[3]).float(),
    )
    torch.testing.assert_close(cams.c2w, expected.c2w, atol=1e-6, rtol=0)
    torch.testing.assert_close(cams.fovy, expected.fovy, atol=1e-7, rtol=0)


def test_cameras_not_a_multiple_of_the_group_size_are_an_error():
    with pytest.raises(ConfigError) as info:
        sample_cameras(CameraSamplerConfig(views_per_group=4), 6)
    assert "multiple of 4" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("value", [0, -4, 2.0, True])
def test_invalid_group_sizes_are_config_errors(value):
    with pytest.raises(ConfigError, match="views_per_group"):
        CameraSamplerConfig(views_per_group=value)
