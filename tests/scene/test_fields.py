import pytest
import torch
import torch.nn.functional as F

from cfd3d.errors import ConfigError
from cfd3d.evaluation.memory import SavedTensorsMeter
from cfd3d.scene.encoding import HashGridConfig
from cfd3d.scene.fields import FieldOutput, NormalField, density_gradient, field_normals
from cfd3d.scene.nerf import NeRFConfig, NeRFField
from cfd3d.scene.voxel import VoxelGridConfig, VoxelGridField

SMALL_GRID = HashGridConfig(n_levels=4, log2_table_size=12, base_resolution=4, max_resolution=32)


class GaussianBlob:
    """An analytic field: density exp(-|x|² / 0.1), its normals point radially out."""

    def __call__(self, points: torch.Tensor) -> FieldOutput:
        density = torch.exp(-points.square().sum(-1) / 0.1)
        return FieldOutput(density=density, albedo=torch.full_like(points, 0.5))


def _points_on_shell(n: int, radius: float, seed: int = 0) -> torch.Tensor:
    dirs = F.normalize(torch.randn(n, 3, generator=torch.Generator().manual_seed(seed)), dim=-1)
    return radius * dirs


@pytest.mark.parametrize("method", ["central", "autograd"])
def test_numerical_normals_of_an_analytic_field_point_outwards(method):
    points = _points_on_shell(64, 0.3)
    normals = field_normals(GaussianBlob(), points, method=method, eps=1e-3)
    torch.testing.assert_close(normals, points / 0.3, atol=1e-4, rtol=0)


def test_autograd_density_gradient_is_differentiable_in_the_parameters():
    field = NeRFField(NeRFConfig(encoding=SMALL_GRID), generator=torch.Generator().manual_seed(0))
    points = _points_on_shell(16, 0.4)
    grad = density_gradient(field.density, points, method="autograd")
    grad.square().sum().backward()
    assert field.encoding.table.grad is not None
    assert field.encoding.table.grad.abs().sum() > 0


def test_nerf_outputs_shapes_ranges_and_blob_initialisation():
    field = NeRFField(NeRFConfig(encoding=SMALL_GRID), generator=torch.Generator().manual_seed(0))
    points = torch.rand(200, 3) * 2.0 - 1.0
    out = field(points)
    assert out.density.shape == (200,) and out.albedo.shape == (200, 3)
    assert (out.density >= 0).all()
    assert (out.albedo > 0).all() and (out.albedo < 1).all()
    centre, far = field.density(torch.zeros(1, 3)), field.density(torch.tensor([[0.9, 0.0, 0.0]]))
    assert centre.item() > 5.0 > 0.1 > far.item()
    torch.testing.assert_close(field.density(points), out.density)


def test_nerf_is_reproducible_from_a_seeded_generator_and_trains():
    config = NeRFConfig(encoding=SMALL_GRID)
    a = NeRFField(config, generator=torch.Generator().manual_seed(5))
    b = NeRFField(config, generator=torch.Generator().manual_seed(5))
    c = NeRFField(config, generator=torch.Generator().manual_seed(6))
    points = torch.rand(50, 3) - 0.5
    torch.testing.assert_close(a(points).albedo, b(points).albedo, rtol=0, atol=0)
    assert not torch.equal(a(points).albedo, c(points).albedo)
    out = a(points)
    (out.density.sum() + out.albedo.sum()).backward()
    grads = [p.grad for p in [*a.grid_parameters(), *a.mlp_parameters()]]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_nerf_provides_its_own_normals():
    field = NeRFField(NeRFConfig(encoding=SMALL_GRID), generator=torch.Generator().manual_seed(0))
    assert isinstance(field, NormalField)
    points = _points_on_shell(32, 0.3)
    normals = field.normals(points)
    torch.testing.assert_close(normals.norm(dim=-1), torch.ones(32))
    # At initialisation the blob dominates, so normals point away from the centre.
    assert ((normals * points).sum(-1) / 0.3 > 0.9).all()


def test_voxel_grid_blob_initialisation_and_normals():
    field = VoxelGridField(VoxelGridConfig(resolution=24))
    assert isinstance(field, NormalField)
    out = field(torch.tensor([[0.0, 0.0, 0.0], [0.95, 0.0, 0.0]]))
    assert out.density[0] > 5.0 and out.density[1] < 0.1
    torch.testing.assert_close(out.albedo, torch.full((2, 3), 0.5))
    points = _points_on_shell(32, 0.4)
    normals = field.normals(points)
    assert ((normals * points).sum(-1) / 0.4 > 0.98).all()
    torch.testing.assert_close(field.density(points), field(points).density)


def test_voxel_grid_interpolates_its_vertices_and_gets_gradients():
    config = VoxelGridConfig(resolution=5, bound=1.0, init_noise=0.1)
    field = VoxelGridField(config, generator=torch.Generator().manual_seed(0))
    vertex = torch.tensor([[-0.5, 0.0, 1.0]])  # grid index (1, 2, 4)
    expected = F.softplus(field.raw_density[1, 2, 4] + config.density_shift)
    torch.testing.assert_close(field(vertex).density, expected[None])
    torch.testing.assert_close(field(vertex).albedo, torch.sigmoid(field.raw_color[1, 2, 4])[None])
    field(torch.rand(10, 3) - 0.5).albedo.sum().backward()
    assert field.raw_color.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("factory", "kwargs"),
    [
        (NeRFConfig, {"bound": 0.0}),
        (NeRFConfig, {"normal_method": "sobel"}),
        (NeRFConfig, {"blob_radius": 0.0}),
        (VoxelGridConfig, {"resolution": 1}),
        (VoxelGridConfig, {"init_noise": -1.0}),
    ],
)
def test_invalid_field_configs_are_config_errors(factory, kwargs):
    with pytest.raises(ConfigError):
        factory(**kwargs)


def test_voxel_grid_sample_path_equals_the_pure_trilinear_twin():
    gen = torch.Generator().manual_seed(3)
    fast = VoxelGridField(VoxelGridConfig(resolution=9, init_noise=0.5), generator=gen)
    slow = VoxelGridField(VoxelGridConfig(resolution=9))
    slow.load_state_dict(fast.state_dict())
    slow.fast_interpolation = False
    points = torch.rand(500, 3, generator=gen) * 2.4 - 1.2  # some outside the box
    a, b = fast(points), slow(points)
    torch.testing.assert_close(a.density, b.density, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.albedo, b.albedo, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.normals(points), slow.normals(points), atol=1e-4, rtol=1e-4)
    a.density.sum().backward()
    b.density.sum().backward()
    torch.testing.assert_close(fast.raw_density.grad, slow.raw_density.grad, atol=1e-5, rtol=1e-5)


def _nerf_twins(normal_method: str) -> tuple[NeRFField, NeRFField]:
    """A float64 NeRF (small grid, random table) and its reference twin (``lean=False``)."""
    grid = HashGridConfig(
        n_levels=4, log2_table_size=12, base_resolution=4, max_resolution=32, init_scale=1.0
    )
    config = NeRFConfig(encoding=grid, normal_method=normal_method)
    lean = NeRFField(config, generator=torch.Generator().manual_seed(0)).double()
    reference = NeRFField(config).double()
    reference.load_state_dict(lean.state_dict())
    reference.lean = False
    return lean, reference


@pytest.mark.parametrize("normal_method", ["central", "autograd"])
def test_lean_nerf_equals_its_reference_twin_values_and_parameter_gradients(normal_method):
    points = (torch.rand(300, 3, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8).double()
    weights = torch.randn(300, 7, generator=torch.Generator().manual_seed(2)).double()
    results = []
    for field in _nerf_twins(normal_method):
        out = field(points)
        normals = field.normals(points)
        values = torch.cat([out.density[:, None], out.albedo, normals], dim=-1)
        grads = torch.autograd.grad((values * weights).sum(), list(field.parameters()))
        results.append((values, *grads))
    # float64: the twins differ only in the order of the encoding's 8-corner sums.
    for lean, ref in zip(*results, strict=True):
        torch.testing.assert_close(lean, ref, rtol=1e-9, atol=1e-9)


def test_lean_nerf_keeps_only_the_points_for_backward():
    lean, reference = _nerf_twins("central")
    points = torch.rand(200, 3, dtype=torch.float64) - 0.5
    kept = {}
    for name, field in (("lean", lean), ("reference", reference)):
        with SavedTensorsMeter(exclude=field.parameters()) as meter:
            field(points)
            field.normals(points)
        kept[name] = meter.nbytes
    assert kept["lean"] == points.nbytes
    assert kept["reference"] > 100 * points.nbytes
