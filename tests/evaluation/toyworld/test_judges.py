"""cfd3d.evaluation.toyworld.judges: the pixel judges, on synthetic images and ground truth."""

from dataclasses import asdict

import torch

from cfd3d.evaluation.toyworld.classifier import probe_data
from cfd3d.evaluation.toyworld.judges import (
    FACE_SHARE,
    RELATION_SPECS,
    face_share,
    judge_relation,
    relation_prompt,
    render_heads,
    render_pairs,
    sector_cameras,
    segment,
)
from cfd3d.evaluation.toyworld.samples import single_prompts
from cfd3d.priors.embedded.prior import EmbeddedPrior
from cfd3d.priors.embedded.unet import TinyUNet, UNetConfig
from cfd3d.priors.embedded.weights import write_weights
from cfd3d.priors.embedded.world import BASIC_SHAPES, WorldConfig, vocabulary
from cfd3d.scene.sampling import CameraSamplerConfig
from cfd3d.scene.toy import COLORS, FACE_RGB

WORLD = WorldConfig()
DARK = (0.06, 0.06, 0.08)
OTHER_WORLD = WorldConfig(
    cameras=CameraSamplerConfig(
        elevation_deg=(-10.0, 90.0), distance=(1.4, 1.4), fovy_deg=(50.0, 50.0)
    ),
    face_rgb=DARK,
)
"""A world like the draft v2 one: other cameras (up to overhead), a dark face."""
TINY = UNetConfig(channels=(16, 32), text_width=32, vocab_size=len(vocabulary()) + 1)


def _blocks(*blocks: tuple[str, int, int, int, int]) -> torch.Tensor:
    """A white ``(1, 3, 32, 32)`` image with ``(colour, row0, row1, col0, col1)`` blocks."""
    image = torch.ones(1, 3, 32, 32)
    for name, r0, r1, c0, c1 in blocks:
        image[0, :, r0:r1, c0:c1] = 0.6 * torch.tensor(COLORS[name])[:, None, None]
    return image


def test_segment_recognises_shaded_colours_and_ignores_white():
    palette = torch.tensor(list(COLORS.values()))
    for k in (0.4, 0.7, 1.0):
        image = (k * palette).T[None, :, :, None].expand(1, 3, len(COLORS), 2)
        assert segment(image)[0, :, 0].tolist() == list(range(len(COLORS)))
    assert (segment(torch.ones(1, 3, 4, 4)) == -1).all()


def test_relation_judge_on_synthetic_blocks():
    stacked = _blocks(("red", 4, 12, 10, 20), ("blue", 14, 24, 10, 20))
    assert judge_relation(stacked, "red", "on", "blue").item()
    assert not judge_relation(stacked, "blue", "on", "red").item()
    assert not judge_relation(stacked, "red", "next_to", "blue").item()  # same column
    assert not judge_relation(stacked, "red", "on", "green").item()  # green is absent
    side = _blocks(("green", 10, 20, 2, 12), ("purple", 10, 20, 18, 28))
    assert judge_relation(side, "green", "next_to", "purple").item()
    assert not judge_relation(side, "purple", "next_to", "green").item()
    tiny = _blocks(("red", 4, 5, 10, 12), ("blue", 14, 24, 10, 20))  # 2 red pixels
    assert not judge_relation(tiny, "red", "on", "blue").item()


def test_relation_judge_on_ground_truth_renders():
    specs = (RELATION_SPECS[0], RELATION_SPECS[-1])
    truth = render_pairs(specs, views=3, seed=5, world=WORLD)
    for index, (ca, _, relation, cb, _) in enumerate(specs):
        views = truth[3 * index : 3 * index + 3]
        assert judge_relation(views, ca, relation, cb).all()
        assert not judge_relation(views, cb, relation, ca).any()


def test_face_judge_on_ground_truth_heads_and_on_a_ball_without_a_face():
    front, back = render_heads(("red", "blue"), views=4, seed=5, world=WORLD)
    shares = [
        face_share(front[i * 4 : i * 4 + 4], c, FACE_RGB) for i, c in enumerate(("red", "blue"))
    ]
    assert float((torch.cat(shares) >= FACE_SHARE).float().mean()) >= 0.75
    assert (face_share(back[:4], "red", FACE_RGB) == 0).all()
    assert (face_share(back[4:], "blue", FACE_RGB) == 0).all()
    # a plain ball on white: the background around it is not a face
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    disc = ((ys - 16) ** 2 + (xs - 16) ** 2 < 100).float()
    ball = 1.0 - disc * (1.0 - 0.7 * torch.tensor(COLORS["red"])[:, None, None])
    assert face_share(ball[None], "red", FACE_RGB).item() == 0.0
    # the same ball with a pale patch in its middle shows a face; a blue prompt sees no head
    faced = ball.clone()
    faced[:, 12:20, 12:20] = torch.tensor(FACE_RGB)[:, None, None]
    assert face_share(faced[None], "red", FACE_RGB).item() > 0.2
    assert face_share(faced[None], "blue", FACE_RGB).item() == 0.0


def test_a_dark_face_counts_where_it_reaches_the_silhouette():
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    disc = ((ys - 16) ** 2 + (xs - 16) ** 2 < 100).float()
    ball = 1.0 - disc * (1.0 - 0.7 * torch.tensor(COLORS["red"])[:, None, None])
    # seen from above, the face fills the lower part of the ball, up to its outline
    lower = disc * (ys > 18).float()
    dark = torch.where(lower.bool(), torch.tensor(DARK)[:, None, None], ball)
    share = face_share(dark[None], "red", DARK).item()
    assert abs(share - float(lower.sum() / disc.sum())) < 1e-6
    # a pale face there could be background seen past the ball: it does not count
    pale = torch.where(lower.bool(), torch.tensor(FACE_RGB)[:, None, None], ball)
    assert face_share(pale[None], "red", FACE_RGB).item() == 0.0
    # every ground-truth front view of the dark-faced world shows its face
    front, back = render_heads(("red", "green"), views=8, seed=3, world=OTHER_WORLD)
    shares = torch.cat([face_share(front[:8], "red", DARK), face_share(front[8:], "green", DARK)])
    assert (shares >= FACE_SHARE).all()
    assert (face_share(back[:8], "red", DARK) < FACE_SHARE).all()


def test_prompts_cover_every_colour_and_shape():
    prompts = single_prompts(16)
    assert len(set(prompts)) == 16
    assert {c for c, _ in prompts} == set(COLORS)
    assert {s for _, s in prompts} == set(BASIC_SHAPES)
    kinds = [spec[2] for spec in RELATION_SPECS]
    assert len(kinds) >= 8 and kinds.count("on") >= 4 and kinds.count("next_to") >= 4
    assert all(spec[0] != spec[3] for spec in RELATION_SPECS)
    assert relation_prompt(RELATION_SPECS[-1], WORLD).endswith(", front view")
    assert relation_prompt(RELATION_SPECS[0], WORLD) == ("a red cube on top of a blue sphere")


def test_the_default_worlds_view_cameras_are_the_first_benchmarks():
    assert sector_cameras(WORLD, "front") == CameraSamplerConfig(azimuth_deg=(-45.0, 45.0))
    assert sector_cameras(WORLD, "back") == CameraSamplerConfig(azimuth_deg=(135.0, 225.0))
    front = sector_cameras(OTHER_WORLD, "front")
    assert front.elevation_deg == (-10.0, 60.0)  # "front view" is never an overhead view
    assert front.fovy_deg == (50.0, 50.0) and front.distance == (1.4, 1.4)


def test_a_prior_of_another_world_is_judged_on_its_cameras_and_face(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "embedded_prior.safetensors"
    metadata = {"vocabulary": list(vocabulary()), "world_config": asdict(OTHER_WORLD)}
    write_weights(TinyUNet(TINY), metadata, path)
    world = EmbeddedPrior.load(path).world
    assert world == OTHER_WORLD
    # the heads wear the world's dark face, which the judge finds with the world's colour
    front, back = render_heads(("red",), views=4, seed=5, world=world)
    default_front, _ = render_heads(("red",), views=4, seed=5, world=WORLD)
    assert not torch.equal(front, default_front)
    assert float((face_share(front, "red", DARK) >= FACE_SHARE).float().mean()) >= 0.75
    assert (face_share(front, "red", FACE_RGB) == 0).all()  # not the first world's face
    assert (face_share(back, "red", DARK) == 0).all()
    # compositions and the probe's data come from the world's cameras
    spec = RELATION_SPECS[0]
    assert relation_prompt(spec, world).endswith(", front view")  # it has overhead views
    pairs = render_pairs((spec,), views=3, seed=5, world=world)
    assert not torch.equal(pairs, render_pairs((spec,), views=3, seed=5, world=WORLD))
    assert judge_relation(pairs, "red", "on", "blue").all()
    assert not judge_relation(pairs, "blue", "on", "red").any()
    assert not torch.equal(
        probe_data(4, seed=7, world=world).images,
        probe_data(4, seed=7, world=WORLD).images,
    )
