import dataclasses
import math

import pytest
import torch

from cfd3d.errors import ConfigError
from cfd3d.scene.cameras import spherical_cameras
from cfd3d.scene.toy import (
    COLORS,
    NEXT_TO_GAP,
    RELATIONS,
    SHAPES,
    Box,
    Capsule,
    Cone,
    Cylinder,
    Sphere,
    Torus,
    ToyScene,
    bounding_radius,
    get_scene,
    pair,
    scene_names,
    single,
    softened,
)


def analytic_volume(shape) -> float:
    if isinstance(shape, Sphere):
        return 4.0 / 3.0 * math.pi * shape.radius**3
    if isinstance(shape, Box):
        return 8.0 * math.prod(shape.half_size)
    if isinstance(shape, Cylinder):
        return math.pi * shape.radius**2 * 2.0 * shape.half_height
    if isinstance(shape, Cone):
        return math.pi * shape.radius**2 * 2.0 * shape.half_height / 3.0
    if isinstance(shape, Torus):
        return 2.0 * math.pi**2 * shape.major_radius * shape.minor_radius**2
    if isinstance(shape, Capsule):
        r = shape.radius
        return math.pi * r**2 * 2.0 * shape.half_length + 4.0 / 3.0 * math.pi * r**3
    raise AssertionError(shape)


@pytest.mark.parametrize("name", list(SHAPES))
def test_contains_and_mesh_agree_with_the_analytic_volume(name):
    scene = get_scene(f"red_{name}")
    exact = analytic_volume(SHAPES[name])
    # Monte-Carlo volume of `contains` in the bounding cube [-0.5, 0.5]³ (volume 1):
    # the standard error is sqrt(v (1 - v) / n) <= 0.0016 for n = 10⁵.
    points = torch.rand(100_000, 3, generator=torch.Generator().manual_seed(0)) - 0.5
    mc = scene.contains(points).double().mean().item()
    assert abs(mc - exact) < 5 * math.sqrt(exact * (1 - exact) / 100_000)
    mesh = scene.to_mesh()
    assert mesh.is_watertight
    # Tessellated curved surfaces lose a little volume (an icosphere level 4 about 0.3 %).
    assert mesh.volume == pytest.approx(exact, rel=0.015)
    assert mesh.visual.vertex_colors[0, :3].tolist() == [round(255 * c) for c in COLORS["red"]]


@pytest.mark.parametrize("name", list(SHAPES))
def test_sdf_is_a_distance_and_mesh_vertices_lie_on_its_zero_set(name):
    scene = get_scene(f"blue_{name}")
    points = torch.rand(4000, 3, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8
    points.requires_grad_(True)
    (grad,) = torch.autograd.grad(scene.sdf(points).sum(), points)
    # Eikonal property |∇sdf| = 1 almost everywhere (exact SDFs, not bounds).
    ok = (grad.norm(dim=-1) - 1.0).abs() < 1e-4
    assert ok.float().mean() > 0.995
    vertices = torch.as_tensor(scene.to_mesh().vertices, dtype=torch.float32)
    assert scene.sdf(vertices).abs().max() < 2e-3  # polygonal caps are exactly on the surface


@pytest.mark.parametrize(
    "name",
    ["green_cylinder_next_to_purple_cone", "red_cube_on_blue_sphere", "red_torus_on_red_cube"],
)
def test_pairs_do_not_overlap_and_their_mesh_holds_both(name):
    scene = get_scene(name)
    a, b = scene.primitives
    exact = sum(analytic_volume(SHAPES[p.shape]) * p.scale**3 for p in scene.primitives)
    n = 200_000
    points = torch.rand(n, 3, generator=torch.Generator().manual_seed(2)) * 1.6 - 0.8
    both = (a.sdf(points) <= 0) & (b.sdf(points) <= 0)
    assert not both.any()  # the primitives touch at most
    mc = scene.contains(points).double().mean().item() * 1.6**3
    assert mc == pytest.approx(exact, rel=0.05)
    mesh = scene.to_mesh()
    assert mesh.volume == pytest.approx(exact, rel=0.015)
    colours = {tuple(c[:3]) for c in mesh.visual.vertex_colors.tolist()}
    assert colours == {tuple(round(255 * c) for c in p.rgb) for p in scene.primitives}


def test_field_density_and_albedo_follow_the_sdf_and_colours():
    scene = get_scene("red_cube_on_blue_sphere")
    top, bottom = scene.primitives
    inside_top = torch.tensor([top.center])
    inside_bottom = torch.tensor([bottom.center])
    outside = torch.tensor([[0.0, 0.0, 0.9]])
    out = scene(torch.cat([inside_top, inside_bottom, outside]))
    interior = 1.0 / scene.field_config.sharpness
    assert out.density[0] > 0.99 * interior and out.density[1] > 0.99 * interior
    assert out.density[2] < 1e-6 * interior
    torch.testing.assert_close(out.albedo[:2], torch.tensor([COLORS["red"], COLORS["blue"]]))
    # Exact normals: the top face of the cube points up.
    top_face = torch.tensor([[0.0, 0.0, top.center[2] + top.half_extents()[2]]])
    torch.testing.assert_close(scene.normals(top_face), torch.tensor([[0.0, 0.0, 1.0]]))


def test_relations_place_the_primitives():
    on = get_scene("red_cube_on_blue_sphere")
    cube, sphere = on.primitives
    cube_bottom = cube.center[2] - cube.half_extents()[2]
    sphere_top = sphere.center[2] + sphere.half_extents()[2]
    assert cube_bottom == pytest.approx(sphere_top)
    assert cube.center[2] > sphere.center[2]
    # The stack is centred vertically.
    assert cube.center[2] + cube.half_extents()[2] == pytest.approx(
        -(sphere.center[2] - sphere.half_extents()[2])
    )

    nxt = get_scene("green_cylinder_next_to_purple_cone")
    left, right = nxt.primitives
    assert left.center[1] < right.center[1]  # left as seen from the front (+x)
    gap = (right.center[1] - right.half_extents()[1]) - (left.center[1] + left.half_extents()[1])
    assert gap == pytest.approx(NEXT_TO_GAP)
    floor = [p.center[2] - p.half_extents()[2] for p in nxt.primitives]
    assert floor[0] == pytest.approx(floor[1])


def test_names_parse_round_trip_and_caption():
    assert get_scene("red_cube").name == "red_cube"
    assert get_scene("Blue Cone").name == "blue_cone"
    assert get_scene("red_cube_on_top_of_blue_sphere").name == "red_cube_on_blue_sphere"
    pair = get_scene("green-cylinder-next-to-purple-cone")
    assert pair.name == "green_cylinder_next_to_purple_cone"
    assert pair.caption() == "a green cylinder next to a purple cone"
    assert get_scene("red_cube_on_blue_sphere").caption() == "a red cube on top of a blue sphere"
    prim = get_scene("yellow_torus").primitives[0]
    assert (prim.shape, prim.color, prim.rgb, prim.center, prim.scale) == (
        "torus",
        "yellow",
        COLORS["yellow"],
        (0.0, 0.0, 0.0),
        1.0,
    )
    singles = scene_names()
    assert len(singles) == len(COLORS) * len(SHAPES)
    assert all(get_scene(n).name == n for n in singles)
    assert len(scene_names(relations=True)) == len(singles) * (len(singles) - 1) * len(RELATIONS)


@pytest.mark.parametrize(
    "name",
    [
        "magenta_cube",
        "red_dodecahedron",
        "red_cube_under_blue_sphere",
        "red_cube_on_blue",
        "red",
        "",
        "cube_red",
        "red_cube_on_white_sphere",
    ],
)
def test_unknown_names_are_config_errors_listing_the_valid_words(name):
    with pytest.raises(ConfigError) as info:
        get_scene(name)
    message = str(info.value)
    assert "\n" not in message
    for word in ["red", "gray", "sphere", "capsule", "on", "next_to"]:
        assert word in message


def test_colours_are_distinct_and_not_white():
    assert len(COLORS) >= 8
    rgb = torch.tensor(list(COLORS.values()))
    assert (rgb.min(dim=-1).values < 0.6).all()  # every colour is far from white
    distances = torch.cdist(rgb, rgb) + 10 * torch.eye(len(rgb))
    assert distances.min() > 0.2


def test_every_scene_fits_the_bound_and_fills_the_view():
    names = [f"red_{s}" for s in SHAPES] + [
        "red_torus_next_to_blue_torus",
        "red_capsule_on_blue_cylinder",
        "red_cone_on_blue_cube",
    ]
    for name in names:
        assert bounding_radius(get_scene(name)) < 0.8, name
    # Projected occupancy (the exact `contains` along each pixel's ray): every scene covers
    # a fair part of the widest training view and is not cut off by middle ones; the
    # tightest views (fovy 40° at distance 1.3) may crop a corner but still show the
    # object with room around it.
    views = [(65.0, 1.5, 20.0), (52.0, 1.4, 0.0), (52.0, 1.4, 40.0), (40.0, 1.3, 20.0)]
    for fovy, distance, elevation in views:
        cams = spherical_cameras(
            torch.tensor([30.0]),
            torch.tensor([elevation]),
            torch.tensor([distance]),
            torch.tensor([fovy]),
        )
        origins, dirs = cams.rays(24, 24)
        t = torch.linspace(0.3, 2.7, 200)
        points = origins[..., None, :] + t[:, None] * dirs[..., None, :]
        for name in names:
            hit = get_scene(name).contains(points.reshape(-1, 3)).view(24, 24, 200).any(-1)
            border = torch.cat([hit[0], hit[-1], hit[:, 0], hit[:, -1]])
            if fovy == 65.0:
                assert hit.float().mean() > 0.04, name
            if fovy == 52.0:
                assert not border.any(), (name, elevation)
            assert hit.float().mean() < 0.6 and border.float().mean() < 0.2, (name, fovy)


def test_occupancy_turned_about_the_vertical_axis():
    cube = single("red", "cube")
    placed = cube.occupancy(48, 1.0)
    assert (cube.occupancy(48, 1.0, 90.0) == placed).all()  # a cube's quarter turn
    half = cube.occupancy(48, 1.0, 45.0)
    iou = (placed & half).sum() / (placed | half).sum()
    # A square and its 45° turn overlap in a regular octagon: IoU (2√2 - 2) / (4 - 2√2).
    assert iou == pytest.approx((2 * math.sqrt(2) - 2) / (4 - 2 * math.sqrt(2)), abs=0.02)
    # Counter-clockwise seen from above: a ball at +x turns a quarter to +y.
    ball = dataclasses.replace(single("red", "sphere").primitives[0], center=(0.5, 0.0, 0.2))
    turned = ToyScene((ball,)).occupancy(48, 1.0, 90.0)
    axis = (torch.arange(48, dtype=torch.float64) + 0.5) / 24 - 1.0
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)
    centre = grid[torch.as_tensor(turned)].mean(0)
    assert centre.tolist() == pytest.approx([0.0, 0.5, 0.2], abs=0.01)  # cells 0.04


def test_a_softened_scene_keeps_its_shapes_with_a_softer_surface_drawn_log_uniformly():
    scene = pair("red", "cube", "on", "blue", "sphere")
    gen = torch.Generator().manual_seed(0)
    values = []
    for _ in range(400):
        soft = softened(scene, (0.005, 0.04), gen)
        assert soft.primitives == scene.primitives and soft.relation == scene.relation
        values.append(soft.field_config.sharpness)
    values = torch.tensor(values)
    assert float(values.min()) >= 0.005 and float(values.max()) <= 0.04
    # log-uniform: the geometric middle splits the draws in half
    below = float((values < (0.005 * 0.04) ** 0.5).float().mean())
    assert 0.4 < below < 0.6
    points = torch.tensor([[0.0, 0.0, 0.3]])  # near the cube's surface: softer is less dense
    crisp = softened(scene, (0.005, 0.005), gen)(points).density
    blurry = softened(scene, (0.04, 0.04), gen)(points).density
    assert float(crisp) != float(blurry)
    with pytest.raises(ConfigError, match="sharpness range"):
        softened(scene, (0.0, 0.01), gen)
