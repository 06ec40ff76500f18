"""Empty-space skipping: the occupancy grid, and the skipping marcher against its dense twin.

The twins are compared on fields derived from toy scenes, whose empty space is empty to
below 1e-5 in density (checked, so the grid is conservative): a voxel grid whose raw
density is set from the scene's signed distance, and a small hash-grid NeRF regressed to
the scene's log-density. There, the skipping marcher drops only samples of negligible
density and samples behind the point where the transmittance falls below
``termination`` = 1e-4, whose weights sum to at most 1e-4 per ray; hence the 1e-3
tolerance on rgb, opacity, depth (distances up to 3, so ≤ 3e-4 from termination) and
normals.
"""

import io

import pytest
import torch

from cfd3d.errors import ConfigError
from cfd3d.render.occupancy import OccupancyConfig, OccupancyGrid
from cfd3d.render.volume import RendererConfig, VolumeRenderer
from cfd3d.scene.cameras import orbit
from cfd3d.scene.encoding import HashGridConfig
from cfd3d.scene.fields import FieldOutput
from cfd3d.scene.nerf import NeRFConfig, NeRFField
from cfd3d.scene.toy import get_scene
from cfd3d.scene.voxel import VoxelGridConfig, VoxelGridField

GRID = OccupancyConfig(resolution=32, update_every=16, warmup_steps=64)


def _voxel_from_scene(name: str, resolution: int = 32) -> VoxelGridField:
    """A voxel field whose raw density is a clamped ramp of the scene's signed distance
    (about two cells wide) and whose albedo is the scene's."""
    scene = get_scene(name)
    field = VoxelGridField(VoxelGridConfig(resolution=resolution, blob_density=0.0))
    axis = torch.linspace(-1.0, 1.0, resolution)
    vertices = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).view(-1, 3)
    with torch.no_grad():
        raw = (-scene.sdf(vertices) * 1000.0).clamp(-30.0, 50.0)
        field.raw_density.copy_(raw.view(field.raw_density.shape))
        albedo = scene(vertices).albedo.clamp(0.02, 0.98)
        field.raw_color.copy_(torch.logit(albedo).view(field.raw_color.shape))
    return field


def _nerf_from_scene(name: str, steps: int = 200) -> NeRFField:
    """A small NeRF (exp density) regressed to the scene's clamped log-density and albedo
    at random points."""
    scene = get_scene(name)
    config = NeRFConfig(
        encoding=HashGridConfig(
            n_levels=4, log2_table_size=12, base_resolution=4, max_resolution=32, init_scale=0.1
        ),
        hidden_dim=16,
        density_activation="exp",
        density_shift=0.0,
        blob_density=0.0,
    )
    gen = torch.Generator().manual_seed(0)
    field = NeRFField(config, generator=gen)
    optimizer = torch.optim.Adam(field.parameters(), lr=3e-2)
    for _ in range(steps):
        points = torch.rand(2048, 3, generator=gen) * 2.0 - 1.0
        with torch.no_grad():
            log_density = (-scene.sdf(points) * 300.0).clamp(-20.0, 6.0)
            albedo = scene(points).albedo
        out = field(points)
        loss = ((out.density.log() - log_density) ** 2).mean()
        loss = loss + ((out.albedo - albedo) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return field


@pytest.fixture(scope="module")
def fields() -> dict[str, torch.nn.Module]:
    return {"voxel": _voxel_from_scene("blue_cone"), "nerf": _nerf_from_scene("red_cube")}


def _grid(field, config: OccupancyConfig = GRID, last_step: int = 48) -> OccupancyGrid:
    grid = OccupancyGrid(config, bound=1.0)
    for step in range(last_step + 1):
        grid.update(field.density, step)
    return grid


class CountingField:
    """Wraps a field and counts the points it is queried at (any method)."""

    def __init__(self, field):
        self.field = field
        self.points = 0

    def __call__(self, points: torch.Tensor) -> FieldOutput:
        self.points += points.shape[0]
        return self.field(points)

    def density(self, points: torch.Tensor) -> torch.Tensor:
        self.points += points.shape[0]
        return self.field.density(points)

    def normals(self, points: torch.Tensor) -> torch.Tensor:
        self.points += points.shape[0]
        return self.field.normals(points)


def _assert_conservative(field, grid: OccupancyGrid) -> None:
    """Precondition of the twin tests: the field is empty (density < 1e-5) in every cell
    the grid skips, probed at 8 random points per empty cell; a ray (length ≤ 2) then
    loses at most 2e-5 of optical depth to skipping."""
    empty = (~grid.mask).view(-1).nonzero()[:, 0].repeat(8)
    jitter = torch.rand(empty.shape[0], 3, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        density = field.density(grid.cell_points(empty, jitter))
    assert density.max() < 1e-5


def _render(renderer, field, shading, occupancy=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cams = orbit(2, elevation_deg=20.0, distance=1.6)
    return renderer(field, cams, 24, 24, shading=shading, generator=gen, occupancy=occupancy)


@pytest.mark.parametrize("kind", ["voxel", "nerf"])
@pytest.mark.parametrize("shading", ["albedo", "diffuse"])
def test_skipping_matches_dense_with_fewer_evaluations(fields, kind, shading):
    field = fields[kind]
    grid = _grid(field)
    _assert_conservative(field, grid)
    assert grid.occupied_fraction() < 0.2
    renderer = VolumeRenderer(RendererConfig(n_samples=64, normals=True))
    counted = CountingField(field)
    with torch.no_grad():
        dense = _render(renderer, counted, shading)
        dense_points, counted.points = counted.points, 0
        skip = _render(renderer, counted, shading, occupancy=grid)
    # The object is in view and so is empty space: the comparison covers both.
    assert dense.opacity.max() > 0.99 and dense.opacity.min() < 1e-3
    for name in ("rgb", "opacity", "depth", "normal"):
        diff = (getattr(dense, name) - getattr(skip, name)).abs().max()
        assert diff <= 1e-3, (name, float(diff))
    assert dense_points >= 4 * counted.points, (dense_points, counted.points)


@pytest.mark.parametrize("kind", ["voxel", "nerf"])
def test_skipping_gradients_match_dense(fields, kind):
    """Parameter gradients of a random linear loss on all four maps. With the default
    termination the dropped samples weigh at most 1e-4 per ray, so the gradient may
    differ by about that much relative to its norm (measured: 3e-4 NeRF); with a
    termination of 1e-9 only the (empty) skipped space and float round-off remain."""
    field = fields[kind]
    grid = _grid(field)

    def gradient(occupancy, termination):
        renderer = VolumeRenderer(
            RendererConfig(n_samples=64, normals=True, termination=termination)
        )
        out = _render(renderer, field, "diffuse", occupancy)
        gen = torch.Generator().manual_seed(5)
        loss = sum(
            (value * torch.randn(value.shape, generator=gen)).sum()
            for value in (out.rgb, out.opacity, out.depth, out.normal)
        )
        field.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in field.parameters()])

    dense = gradient(None, 1e-4)
    assert dense.norm() > 0.0
    for termination, tolerance in ((1e-4, 1e-3), (1e-9, 1e-4)):
        skip = gradient(grid, termination)
        error = float((skip - dense).norm() / dense.norm())
        assert error <= tolerance, (termination, error)


def test_importance_samples_match_dense(fields):
    """With importance sampling the coarse weights of skipped (empty) candidates are zero
    instead of below 1e-5·δ, which moves the fine samples negligibly."""
    field = fields["voxel"]
    grid = _grid(field)
    renderer = VolumeRenderer(RendererConfig(n_samples=32, n_importance=32, normals=True))
    with torch.no_grad():
        dense = _render(renderer, field, "diffuse")
        skip = _render(renderer, field, "diffuse", occupancy=grid)
    for name in ("rgb", "opacity", "depth", "normal"):
        diff = (getattr(dense, name) - getattr(skip, name)).abs().max()
        assert diff <= 1e-3, (name, float(diff))


def _rays_through_the_middle(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` rays from radius 2 towards random points within 0.5 of the origin: all
    meet the unit sphere."""
    gen = torch.Generator().manual_seed(seed)
    origins = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1) * 2.0
    targets = (torch.rand(n, 3, generator=gen) - 0.5) * 0.5
    return origins, torch.nn.functional.normalize(targets - origins, dim=-1)


def test_render_rays_replays_chunk_by_chunk(fields):
    """Deferred back-propagation replays a render chunk by chunk with a cloned generator:
    successive ``render_rays`` calls on ray chunks give what one call gives, bit for bit,
    and the skipping marcher draws from the generator exactly what the dense one draws."""
    field = fields["voxel"]
    grid = _grid(field)
    origins, directions = _rays_through_the_middle(90, seed=3)
    renderer = VolumeRenderer(RendererConfig(n_samples=48, n_importance=16, chunk_rays=32))
    gen = torch.Generator().manual_seed(11)
    start = gen.get_state()
    whole = renderer.render_rays(field, origins, directions, generator=gen, occupancy=grid)
    after_skipping = gen.get_state()
    gen.set_state(start)
    parts = [
        renderer.render_rays(field, o, d, generator=gen, occupancy=grid)
        for o, d in zip(origins.split(32), directions.split(32), strict=True)
    ]
    assert torch.equal(whole.color, torch.cat([p.color for p in parts]))
    assert torch.equal(whole.depth, torch.cat([p.depth for p in parts]))
    gen.set_state(start)
    renderer.render_rays(field, origins, directions, generator=gen)
    assert torch.equal(gen.get_state(), after_skipping)


def test_empty_grid_renders_nothing_but_keeps_the_graph(fields):
    field = fields["nerf"]
    grid = OccupancyGrid(OccupancyConfig(resolution=8), bound=1.0)
    grid.update(lambda points: torch.zeros(points.shape[0]), 0)
    assert grid.occupied_fraction() == 0.0
    counted = CountingField(field)
    renderer = VolumeRenderer(RendererConfig(n_samples=16))
    out = _render(renderer, counted, "diffuse", occupancy=grid)
    assert counted.points == 2  # one zero-length sample: its field query and its normal
    assert torch.equal(out.opacity, torch.zeros_like(out.opacity))
    field.zero_grad()
    out.rgb.sum().backward()
    assert all(float(p.grad.abs().max()) == 0.0 for p in field.parameters())


def test_grid_updates_are_deterministic_and_survive_a_checkpoint(fields):
    field = fields["voxel"]
    config = OccupancyConfig(resolution=24, update_every=4, warmup_steps=8)

    def run(grid, steps):
        for step in steps:
            grid.update(field.density, step)
        return grid

    one = run(OccupancyGrid(config), range(24))
    two = run(OccupancyGrid(config), range(24))
    assert torch.equal(one.density_max, two.density_max) and torch.equal(one.mask, two.mask)
    buffer = io.BytesIO()
    torch.save(run(OccupancyGrid(config), range(13)).state_dict(), buffer)
    buffer.seek(0)
    resumed = OccupancyGrid(config)
    resumed.load_state_dict(torch.load(buffer))
    run(resumed, range(13, 24))
    assert torch.equal(resumed.density_max, one.density_max)
    assert torch.equal(resumed.mask, one.mask)
    # Updates past the warm-up visit random cells: another generator gives another grid.
    other = run(OccupancyGrid(config), range(12))
    other.update(field.density, 12, generator=torch.Generator().manual_seed(99))
    reference = run(OccupancyGrid(config), range(13))
    assert not torch.equal(other.density_max, reference.density_max)


def test_update_only_on_multiples_of_update_every():
    grid = OccupancyGrid(OccupancyConfig(resolution=4, update_every=16, dilation=0))
    assert grid.mask.all()  # nothing is skipped before the first update
    ones = lambda points: torch.ones(points.shape[0])  # noqa: E731
    assert not grid.update(ones, 15)
    assert torch.equal(grid.density_max, torch.zeros(4, 4, 4))
    assert grid.update(ones, 32)
    assert torch.equal(grid.density_max, torch.ones(4, 4, 4))


def _blob(centre: torch.Tensor, radius: float, value: float = 1.0):
    return lambda points: value * ((points - centre).norm(dim=-1) < radius).float()


def test_threshold_dilation_and_decay():
    centre = torch.tensor([0.3, -0.3, 0.3])
    # Cells of 0.25; a blob of radius 0.1 around a cell centre is hit by few visit points,
    # so decay 1 keeps the maximum over several warm-up updates.
    config = OccupancyConfig(resolution=8, update_every=1, dilation=0, ema_decay=1.0)
    grid = OccupancyGrid(config)
    for step in range(40):
        grid.update(_blob(torch.tensor([0.375, -0.375, 0.375]), 0.12), step)
    assert grid.mask.sum() == 1 and grid.occupied(centre[None]).all()
    dilated = OccupancyGrid(OccupancyConfig(resolution=8, update_every=1, dilation=1))
    dilated.density_max.copy_(grid.density_max)
    dilated.update(lambda points: torch.zeros(points.shape[0]), 1000)  # explores, decays
    assert dilated.mask.sum() == 27
    # Below the threshold counts as empty.
    faint = OccupancyGrid(OccupancyConfig(resolution=8, dilation=0, density_threshold=0.5))
    faint.update(lambda points: torch.full((points.shape[0],), 0.4), 0)
    assert not faint.mask.any()
    # Once the field empties, each visit multiplies the running maximum by ema_decay.
    decaying = OccupancyGrid(OccupancyConfig(resolution=4, update_every=1, ema_decay=0.5))
    decaying.update(lambda points: torch.full((points.shape[0],), 8.0), 0)
    for step in range(1, 4):
        decaying.update(lambda points: torch.zeros(points.shape[0]), step)
    torch.testing.assert_close(decaying.density_max, torch.ones(4, 4, 4))


def test_after_warmup_only_occupied_and_explored_cells_are_visited():
    config = OccupancyConfig(resolution=8, update_every=1, warmup_steps=1, dilation=0)
    visited = []

    def record(points):
        visited.append(points.shape[0])
        return _blob(torch.zeros(3), 0.3, 5.0)(points)

    grid = OccupancyGrid(config)
    grid.update(record, 0)  # warm-up: every cell
    occupied = int(grid.mask.sum())
    assert visited == [512] and 0 < occupied < 512
    grid.update(record, 1)
    assert occupied < visited[1] < 512  # the occupied cells and a random quarter of the rest
    lazy = OccupancyGrid(OccupancyConfig(resolution=8, warmup_steps=0, explore_fraction=0.0))
    lazy.mask.zero_()
    lazy.update(_blob(torch.zeros(3), 0.3, 5.0), 0)
    assert not lazy.mask.any()  # never explores: a grown object would be missed
    eager = OccupancyGrid(OccupancyConfig(resolution=8, warmup_steps=0, explore_fraction=1.0))
    eager.mask.zero_()
    eager.update(_blob(torch.zeros(3), 0.3, 5.0), 0)
    assert eager.mask.any()


def test_points_outside_the_cube_count_as_occupied():
    grid = OccupancyGrid(OccupancyConfig(resolution=4, dilation=0), bound=0.5)
    grid.update(lambda points: torch.zeros(points.shape[0]), 0)
    points = torch.tensor([[0.0, 0.0, 0.0], [0.49, -0.49, 0.49], [0.6, 0.0, 0.0]])
    assert grid.occupied(points).tolist() == [False, False, True]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"resolution": 0},
        {"resolution": 2.5},
        {"resolution": True},
        {"update_every": 0},
        {"warmup_steps": -1},
        {"ema_decay": 1.5},
        {"density_threshold": -0.1},
        {"density_threshold": float("nan")},
        {"dilation": -1},
        {"explore_fraction": 2.0},
        {"chunk_points": 0},
    ],
)
def test_bad_occupancy_config_raises(kwargs):
    with pytest.raises(ConfigError):
        OccupancyConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"termination": 0.0}, {"termination": 1.0}, {"termination": -1e-4}, {"chunk_rays": 2.5}],
)
def test_bad_renderer_config_raises(kwargs):
    with pytest.raises(ConfigError):
        RendererConfig(**kwargs)


def test_bad_grid_bound_raises():
    with pytest.raises(ConfigError):
        OccupancyGrid(bound=0.0)
