"""cfd3d.evaluation.toyworld.views: the measures on what the evaluation sees, and what it sees."""

from dataclasses import asdict

import numpy as np
import pytest
import torch

from cfd3d.evaluation.toyworld.setting import EVAL_SIZE, HOLE_MIN_PIXELS
from cfd3d.evaluation.toyworld.views import (
    WORLD_VIEWS,
    diversity,
    diversity_se,
    face_by_view,
    hole_pixels,
    look,
    mask_iou,
    mean_color,
    world_of,
    world_views,
    yaw_aligned_iou,
)
from cfd3d.export.mesh import volumetric_iou
from cfd3d.priors.embedded.prior import EmbeddedPrior
from cfd3d.priors.embedded.unet import TinyUNet, UNetConfig
from cfd3d.priors.embedded.weights import write_weights
from cfd3d.priors.embedded.world import WorldConfig, vocabulary
from cfd3d.scene.sampling import CameraSamplerConfig
from cfd3d.scene.toy import COLORS, FACE_RGB, single


def test_iou_colour_and_diversity_on_synthetic_views(flat_views):
    full = torch.zeros(2, 8, 8)
    full[:, 2:6, 2:6] = 1.0  # 32 pixels
    half = torch.zeros(2, 8, 8)
    half[:, 2:6, 2:4] = 0.8  # 16 of them, partly transparent
    red = torch.tensor(COLORS["red"])
    truth, guess = flat_views(full, red), flat_views(half, red)
    assert mask_iou(guess, truth) == pytest.approx(0.5)
    assert mask_iou(truth, truth) == 1.0
    assert torch.allclose(mean_color(guess), red, atol=1e-6)  # un-premultiplied
    assert mean_color(flat_views(torch.zeros(2, 8, 8), red)) is None
    assert diversity([truth]) == 0.0
    assert diversity([truth, truth]) == 0.0
    assert diversity([truth, guess]) > 0.0


def test_diversity_and_its_jackknife_error_against_a_direct_computation(flat_views):
    gen = torch.Generator().manual_seed(0)
    opacity = torch.ones(2, 8, 8)
    views = [flat_views(opacity, torch.rand(3, generator=gen)) for _ in range(6)]

    def direct(vs):  # every pair's RMS, averaged
        d = [
            float((a.albedo - b.albedo).square().mean().sqrt())
            for i, a in enumerate(vs)
            for b in vs[i + 1 :]
        ]
        return sum(d) / len(d)

    assert diversity(views) == pytest.approx(direct(views))
    left_out = np.array([direct(views[:i] + views[i + 1 :]) for i in range(6)])
    expected = np.sqrt(5 / 6 * ((left_out - left_out.mean()) ** 2).sum())
    assert diversity_se(views) == pytest.approx(expected)
    assert diversity_se(views) > 0.0
    assert diversity_se(views[:2]) is None  # no spread from one pair
    assert diversity_se([views[0]] * 4) == 0.0  # identical results: no spread
    # one result unlike the others makes the estimate depend on it: a larger error
    outlier = [*views[:5], flat_views(opacity, torch.tensor([0.0, 0.0, 0.0]))]
    alike = [flat_views(opacity, torch.full((3,), 0.5 + 0.01 * i)) for i in range(6)]
    assert diversity_se(outlier) > diversity_se(alike)


def test_world_views_are_drawn_like_the_worlds_images_and_fixed_by_the_seed(
    shipped_run, shipped_world
):
    run = shipped_run
    world = world_of(run.prior)
    assert world == shipped_world
    scene = single("red", "cube")
    a, b = world_views(run, scene, 100, world), world_views(run, scene, 100, world)
    c = world_views(run, scene, 101, world)
    assert a.shape == (WORLD_VIEWS, 3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a, c)  # another seed: other cameras
    assert torch.equal((a * 255).round() / 255, a)  # 8-bit, as the prior's samples
    # the object is in every view, on white, lit differently from view to view
    covered = (a < 0.98).any(dim=1).float().mean(dim=(1, 2))
    assert bool((covered > 0.05).all()) and bool((covered < 0.9).all())
    assert float(a.mean(dim=(1, 2, 3)).std()) > 0.0


def test_a_prior_of_another_world_is_seen_from_its_cameras(tmp_path, shipped_run):
    overhead = WorldConfig(
        cameras=CameraSamplerConfig(elevation_deg=(80.0, 90.0), fovy_deg=(50.0, 50.0)),
        p_albedo=1.0,
    )
    torch.manual_seed(0)
    config = UNetConfig(channels=(16, 32), text_width=32, vocab_size=len(vocabulary()) + 1)
    path = tmp_path / "embedded_prior.safetensors"
    metadata = {"vocabulary": list(vocabulary()), "world_config": asdict(overhead)}
    write_weights(TinyUNet(config), metadata, path)
    prior = EmbeddedPrior.load(path)
    assert world_of(prior) == overhead
    scene = single("red", "cylinder")
    seen = world_views(shipped_run, scene, 100, world_of(prior))
    first = world_views(shipped_run, scene, 100, WorldConfig())
    assert not torch.equal(seen, first)
    # from above a cylinder is a disc: a square's worth of its bounding box is covered
    mask = (seen < 0.9).any(dim=1)
    rows, cols = mask.any(dim=2).sum(dim=1).float(), mask.any(dim=1).sum(dim=1).float()
    assert bool(((rows - cols).abs() <= 2).all())
    # flat albedo in all of this world's views: one colour, no shading
    red = torch.tensor(COLORS["red"])[None, :, None]
    inside = seen.flatten(2)[:, :, mask.flatten(1)[0]]
    assert bool(((inside - red).abs() < 0.02).float().mean() > 0.8)


def test_face_share_counts_face_coloured_object_pixels_only():
    face, red = torch.tensor(FACE_RGB), torch.tensor(COLORS["red"])
    albedo = torch.ones(2, 4, 4, 3)  # white background
    opacity = torch.zeros(2, 4, 4)
    opacity[:, :2] = 1.0  # 8 object pixels per view
    albedo[0, :2] = red
    albedo[0, 0, :2] = face  # view 0: 2 of its 8 object pixels show the face
    albedo[1, :2] = red  # view 1: no face
    assert face_by_view(albedo, opacity, "red", FACE_RGB) == pytest.approx([0.25, 0.0])
    assert face_by_view(albedo, opacity, "red", (0.06, 0.06, 0.08)) == [0.0, 0.0]


def test_hole_pixels_count_only_background_the_object_encloses():
    ring = torch.zeros(9, 9)
    ring[2:7, 2:7] = 1.0
    ring[4, 4] = 0.3  # one enclosed background pixel
    assert hole_pixels(ring) == 1
    ring[4, 2] = 0.0  # a notch in the wall that does not reach the inside
    assert hole_pixels(ring) == 1
    ring[4, 3] = 0.0
    assert hole_pixels(ring) == 0
    spiral = torch.ones(7, 7)
    spiral[1, 1:6] = spiral[1:6, 5] = spiral[5, 1:5] = spiral[3:5, 1] = spiral[3, 2:4] = 0.0
    assert hole_pixels(spiral) == 17  # a winding pocket with no way out
    spiral[0, 1] = 0.0  # now it opens onto the border
    assert hole_pixels(spiral) == 0
    assert hole_pixels(torch.zeros(5, 5)) == 0


def test_a_true_torus_shows_its_hole_from_above_and_solids_do_not(shipped_run, shipped_world):
    holes = {}
    for shape in ("torus", "cylinder", "cube", "sphere"):
        views = look(shipped_run, single("yellow", shape), EVAL_SIZE, 100, shipped_world)
        holes[shape] = hole_pixels(views.overhead)
    assert holes["torus"] >= 3 * HOLE_MIN_PIXELS  # the threshold is a fraction of the truth's
    assert holes["cylinder"] == holes["cube"] == holes["sphere"] == 0


def test_mesh_iou_forgives_only_the_turns_the_prior_cannot_tell_apart():
    cube = single("red", "cube")
    turned = cube.occupancy(48, 1.0, 57.0)
    placed = volumetric_iou(turned, cube.occupancy(48, 1.0))
    assert placed < 0.8
    best, yaw = yaw_aligned_iou(turned, cube, 1.0)
    assert best == 1.0
    assert yaw == pytest.approx(57.0, abs=2.0)  # 48 cells cannot tell a degree apart
    # Nothing else is forgiven: a cone is no cube at any yaw, and a cube moved sideways
    # stays moved.
    cone = single("red", "cone").occupancy(48, 1.0)
    assert yaw_aligned_iou(cone, cube, 1.0)[0] < 0.4
    moved = np.roll(cube.occupancy(48, 1.0), 6, axis=0)
    best, _ = yaw_aligned_iou(moved, cube, 1.0)
    assert best == pytest.approx(volumetric_iou(moved, cube.occupancy(48, 1.0)), abs=0.02)
