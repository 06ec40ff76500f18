"""The Gaussian field: config errors, initialisation, density, density control, resizing."""

from __future__ import annotations

import math

import pytest
import torch

from cfd3d.errors import ConfigError, UserError
from cfd3d.render.splat import SplatRenderer
from cfd3d.render.volume import VolumeRenderer
from cfd3d.scene.cameras import orbit
from cfd3d.scene.fields import FieldOutput
from cfd3d.scene.gaussians import (
    PARAMETER_NAMES,
    GaussianConfig,
    GaussianField,
    GaussianParameters,
    adaptive_density_control,
    covariances,
    gaussians_from_field,
    point_spacing,
    quaternion_to_rotation,
    sh_basis,
)
from cfd3d.scene.toy import get_scene


def make_field(count: int = 64, seed: int = 0, **overrides) -> GaussianField:
    config = GaussianConfig(count=count, max_count=max(count, 4 * count), **overrides)
    return GaussianField(config, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"count": 0}, "count must be a positive integer"),
        ({"count": -3}, "count must be a positive integer"),
        ({"densify_every": 0}, "densify_every must be a positive"),
        ({"opacity_reset_every": 0}, "opacity_reset_every must be a positive"),
        ({"densify_from": 50, "densify_until": 10}, "densify_from <= densify_until"),
        ({"lr_means": 0.0}, "learning rates must be positive"),
        ({"sh_degree": 4}, "sh_degree"),
        ({"init_opacity": 1.0}, "init_opacity"),
        ({"max_screen_size": 0.0}, "max_screen_size must be positive"),
        ({"count": 10, "max_count": 5}, "max_count"),
        ({"densify_every": -100}, "densify_every must be a positive"),
        ({"densify_every": 2.5}, "densify_every must be an integer"),
        ({"count": True}, "count must be an integer"),
        ({"densify_from": -1}, "densify_from <= densify_until"),
        ({"init": "ply"}, "init ply needs init_path"),
        ({"init": "ply", "init_path": " "}, "init ply needs init_path"),
        ({"init_path": "a.ply"}, "init_path applies to init ply only"),
        ({"init": "points"}, "unknown Gaussian init"),
    ],
)
def test_bad_configs_are_one_clear_line(overrides, needle):
    with pytest.raises(ConfigError, match=needle) as info:
        GaussianConfig(**overrides)
    assert "\n" not in str(info.value)


def test_initialisation_is_deterministic_and_inside_the_blob():
    a, b, c = make_field(seed=3), make_field(seed=3), make_field(seed=4)
    for name in PARAMETER_NAMES:
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.means, c.means)
    assert a.means.norm(dim=-1).max() <= a.config.init_radius + 1e-6
    assert torch.allclose(a.opacity, torch.full((64,), 0.1))
    assert torch.allclose(a.colors(), torch.full((64, 3), 0.5))


def test_rotation_and_covariance_follow_the_quaternion():
    quats = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    rotation = quaternion_to_rotation(quats)
    eye = torch.eye(3).expand(5, 3, 3)
    assert torch.allclose(rotation @ rotation.transpose(1, 2), eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(rotation), torch.ones(5), atol=1e-5)
    # 90° about z: (cos 45°, 0, 0, sin 45°) maps x to y
    quarter = torch.tensor([[math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)]])
    assert torch.allclose(
        quaternion_to_rotation(quarter)[0] @ torch.tensor([1.0, 0, 0]),
        torch.tensor([0.0, 1.0, 0.0]),
        atol=1e-6,
    )
    log_scales = torch.log(torch.tensor([[0.1, 0.2, 0.3]]))
    cov = covariances(log_scales, quarter)[0]
    assert torch.allclose(torch.diagonal(cov), torch.tensor([0.04, 0.01, 0.09]), atol=1e-6)


def test_density_is_the_cut_kernel_sum_everywhere():
    field = make_field(count=40, init_opacity=0.6)
    with torch.no_grad():
        field.log_scales.add_(0.3 * torch.randn(40, 3, generator=torch.Generator().manual_seed(1)))
        field.quats.copy_(torch.randn(40, 4, generator=torch.Generator().manual_seed(2)))
    points = 1.4 * (2 * torch.rand(500, 3, generator=torch.Generator().manual_seed(3)) - 1)
    offset = points[:, None] - field.means[None]
    inverse = torch.linalg.inv(field.covariances())
    mahalanobis = torch.einsum("pni,nij,pnj->pn", offset, inverse, offset)
    value = field.opacity * torch.exp(-0.5 * mahalanobis)
    expected = torch.where(value >= 1 / 255, value, 0.0).sum(-1)
    with torch.no_grad():
        got = field.density(points)
        out = field(points)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(out.density, got)
    assert out.albedo.shape == (500, 3) and bool((out.albedo - 0.5).abs().max() < 1e-5)


def _with_stats(field: GaussianField, grads: torch.Tensor) -> None:
    field.grad_accum.copy_(grads)
    field.grad_count.fill_(1.0)


def test_densify_clones_small_splits_large_and_prunes_transparent():
    field = make_field(count=6, init_scale=0.01, densify_grad_threshold=1e-3, dense_scale=0.02)
    with torch.no_grad():
        field.log_scales[3:5] = math.log(0.1)  # large: split
        field.opacity_logits[5] = -10.0  # transparent: pruned
    _with_stats(field, torch.tensor([5e-3, 0.0, 2e-3, 4e-3, 0.0, 9e-3]))
    old = {name: getattr(field, name).detach().clone() for name in PARAMETER_NAMES}
    source = field.densify_and_prune(torch.Generator().manual_seed(0))
    # kept: 0, 1, 2, 4 (3 split, 5 pruned); clones of 0, 2; two children of 3
    assert field.count == 8
    assert source.tolist() == [0, 1, 2, 4, -1, -1, -1, -1]
    assert torch.equal(field.means[:4], old["means"][[0, 1, 2, 4]])
    assert torch.equal(field.means[4:6], old["means"][[0, 2]])
    assert torch.allclose(field.scales[6:], torch.full((2, 3), 0.1 / 1.6))
    assert torch.equal(field.quats[6:], old["quats"][[3, 3]])
    assert not torch.equal(field.means[6], field.means[7])
    assert (field.means[6:] - old["means"][3]).norm(dim=-1).max() < 0.6
    assert torch.equal(field.grad_accum, torch.zeros(8))


def test_densify_is_deterministic_and_respects_max_count():
    def run(seed: int) -> GaussianField:
        field = make_field(count=20, densify_grad_threshold=1e-3)
        field.config = GaussianConfig(**{**vars(field.config), "max_count": 25})
        with torch.no_grad():
            field.log_scales[::2] = math.log(0.1)
        _with_stats(field, torch.linspace(2e-3, 4e-3, 20))
        field.densify_and_prune(torch.Generator().manual_seed(seed))
        return field

    a, b = run(0), run(0)
    assert a.count == 25
    for name in PARAMETER_NAMES:
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.means, run(1).means)


def test_density_control_keeps_adam_moments_of_survivors_and_moves_the_optimiser():
    field = make_field(
        count=8,
        densify_from=0,
        densify_until=10,
        densify_every=5,
        densify_grad_threshold=1e-3,
        init_scale=0.01,
    )
    optimizer = torch.optim.Adam(field.parameter_groups(), eps=1e-15)
    field.means.sum().backward()
    field.sh.sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    moments = optimizer.state[field.means]["exp_avg"].clone()
    params = [getattr(field, name) for name in PARAMETER_NAMES]
    with torch.no_grad():
        field.opacity_logits[1] = -10.0
    _with_stats(field, torch.tensor([2e-3, 0, 0, 0, 0, 0, 0, 0.0]))
    assert adaptive_density_control(field, optimizer, 4).count_after == 8  # not due
    alive = field.sh[:, 0] * field.means  # a graph of the old parameters lives on
    report = adaptive_density_control(field, optimizer, 5, torch.Generator().manual_seed(0))
    assert (report.count_before, report.count_after, report.densified) == (8, 8, True)
    new = [getattr(field, name) for name in PARAMETER_NAMES]
    assert [group["params"][0] for group in optimizer.param_groups] == new
    assert all(p not in optimizer.state for p in params)
    state = optimizer.state[field.means]
    assert torch.equal(state["exp_avg"][:7], moments[[0, 2, 3, 4, 5, 6, 7]])
    assert torch.equal(state["exp_avg"][7], torch.zeros(3))
    assert state["exp_avg_sq"].shape == (8, 3)
    (field.means.sum() + field.sh.sum()).backward()
    optimizer.step()  # the resized state works with the resized parameters
    assert alive.grad_fn is not None


def test_opacity_reset_caps_opacity_and_zeroes_its_moments():
    field = make_field(
        count=4, init_opacity=0.5, opacity_reset_every=3, densify_from=0, densify_until=10
    )
    optimizer = torch.optim.Adam(field.parameter_groups())
    field.opacity_logits.sum().backward()
    optimizer.step()
    report = adaptive_density_control(field, optimizer, 3)
    assert report.opacity_reset and not report.densified
    assert torch.allclose(field.opacity, torch.full((4,), 0.01))
    assert torch.equal(optimizer.state[field.opacity_logits]["exp_avg"], torch.zeros(4))


def test_state_dict_holds_the_count_and_loading_resizes():
    field = make_field(count=10, densify_grad_threshold=1e-3, init_scale=0.01)
    _with_stats(field, torch.full((10,), 5e-3))
    field.densify_and_prune(torch.Generator().manual_seed(0))
    field.grad_accum.fill_(0.25)
    assert field.count == 20
    fresh = make_field(count=10, seed=7)
    optimizer = torch.optim.Adam(fresh.parameter_groups())
    fresh.load_state_dict(field.state_dict())
    assert fresh.count == 20
    for name, value in field.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    assert optimizer.param_groups[0]["params"][0] is fresh.means


def test_density_control_while_a_graph_of_the_old_parameters_is_alive():
    # e.g. the previous step's render, still referenced while the next one is built
    field = make_field(
        count=6,
        densify_from=0,
        densify_until=10,
        densify_every=1,
        densify_grad_threshold=1e-3,
        init_scale=0.01,
    )
    optimizer = torch.optim.Adam(field.parameter_groups())
    alive = (field.sh[:, 0] * field.means).sum()
    alive.backward(retain_graph=True)
    optimizer.step()
    _with_stats(field, torch.full((6,), 5e-3))
    assert adaptive_density_control(field, optimizer, 1).count_after == 12
    (field.sh[:, 0] * field.means).sum().backward()
    optimizer.step()
    assert alive.grad_fn is not None and field.means.grad.shape == (12, 3)


def test_spherical_harmonics_are_orthonormal_and_colour_views():
    n = 20000
    k = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * k / n
    phi = math.pi * (1 + 5**0.5) * k
    r = torch.sqrt(1 - z * z)
    directions = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)
    basis = sh_basis(directions, 3)
    gram = basis.T @ basis * (4 * math.pi / n)  # quadrature of ∫ Y_i Y_j over the sphere
    assert torch.allclose(gram, torch.eye(16, dtype=torch.float64), atol=2e-3)
    field = make_field(count=3, sh_degree=1)
    with torch.no_grad():
        field.sh[:, 3, 0] = 0.5  # red varies along -x (Y_3 = -c x)
    seen = field.colors(torch.tensor([[-1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]]))
    c1 = 0.4886025119029199
    assert seen[:, 0].tolist() == pytest.approx([0.5 + 0.5 * c1, 0.5 - 0.5 * c1, 0.5])


# ------------------------------------------------------------- other initialisations


def test_set_parameters_resizes_in_place_and_checks_shapes():
    field = make_field(count=10)
    means = field.means
    optimizer = torch.optim.Adam(field.parameter_groups())
    values = GaussianParameters(
        means=torch.randn(25, 3),
        log_scales=torch.full((25, 3), -3.0),
        quats=torch.randn(25, 4),
        opacity_logits=torch.zeros(25),
        sh=torch.randn(25, 1, 3),
    )
    field.grad_count += 1.0
    field.set_parameters(values)
    assert field.count == 25 and field.means is means
    assert optimizer.param_groups[0]["params"][0] is field.means
    assert torch.equal(field.means, values.means) and not field.grad_count.any()
    bad = GaussianParameters(**{**vars(values), "sh": torch.zeros(25, 4, 3)})
    with pytest.raises(ValueError, match="sh has shape"):
        field.set_parameters(bad)


def test_point_spacing_is_the_distance_to_the_nearest_neighbours():
    axis = torch.arange(5, dtype=torch.float32) * 0.1
    lattice = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    spacing = point_spacing(lattice, chunk=7)  # chunks must not change the result
    assert torch.allclose(spacing[62], torch.tensor(0.1))  # the centre: six at 0.1
    assert torch.allclose(spacing, torch.full((125,), 0.1), atol=1e-6)
    assert torch.equal(point_spacing(lattice[:1]), torch.zeros(1))


def test_gaussians_sampled_from_a_field_render_its_silhouette_and_colour():
    scene = get_scene("red_cube")
    config = GaussianConfig(count=2048, max_count=2048, init_opacity=0.5)
    values = gaussians_from_field(scene, 1.0, config, torch.Generator().manual_seed(0))
    again = gaussians_from_field(scene, 1.0, config, torch.Generator().manual_seed(0))
    assert torch.equal(values.means, again.means)
    with torch.no_grad():
        inside = scene(values.means).density
    assert (inside > 0.5 * inside.max()).float().mean() > 0.95  # centres inside the cube
    field = GaussianField(config)
    field.set_parameters(values)
    cameras = orbit(4, elevation_deg=20.0)
    with torch.no_grad():
        splats = SplatRenderer()(field, cameras, 32, 32, shading="albedo")
        volume = VolumeRenderer()(scene, cameras, 32, 32, shading="albedo")
    a, b = splats.opacity[..., 0] > 0.5, volume.opacity[..., 0] > 0.5
    assert float((a & b).sum() / (a | b).sum()) > 0.9
    red = splats.rgb[a].mean(0)
    assert red[0] > 0.8 and red[1] < 0.25 and red[2] < 0.25


def test_an_empty_field_has_nothing_to_hand_over():
    def empty(points: torch.Tensor) -> FieldOutput:
        return FieldOutput(torch.zeros(len(points)), torch.zeros(len(points), 3))

    with pytest.raises(UserError, match="holds no density"):
        gaussians_from_field(empty, 1.0, GaussianConfig(count=4), resolution=8)
