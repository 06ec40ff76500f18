"""benchmarks/toy_prior.py: its probe and relation judge, and a quick run on a tiny prior."""

import importlib.util
import json
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from cfd3d.priors.embedded.prior import EmbeddedPrior
from cfd3d.priors.embedded.unet import TinyUNet, UNetConfig
from cfd3d.priors.embedded.weights import write_weights
from cfd3d.priors.embedded.world import WorldConfig, vocabulary
from cfd3d.scene.sampling import CameraSamplerConfig
from cfd3d.scene.toy import COLORS, FACE_RGB

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "toy_prior.py"
_spec = importlib.util.spec_from_file_location("toy_prior_benchmark", SCRIPT)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses look their module up while it is created
_spec.loader.exec_module(bench)

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
        assert bench.segment(image)[0, :, 0].tolist() == list(range(len(COLORS)))
    assert (bench.segment(torch.ones(1, 3, 4, 4)) == -1).all()


def test_relation_judge_on_synthetic_blocks():
    stacked = _blocks(("red", 4, 12, 10, 20), ("blue", 14, 24, 10, 20))
    assert bench.judge_relation(stacked, "red", "on", "blue").item()
    assert not bench.judge_relation(stacked, "blue", "on", "red").item()
    assert not bench.judge_relation(stacked, "red", "next_to", "blue").item()  # same column
    assert not bench.judge_relation(stacked, "red", "on", "green").item()  # green is absent
    side = _blocks(("green", 10, 20, 2, 12), ("purple", 10, 20, 18, 28))
    assert bench.judge_relation(side, "green", "next_to", "purple").item()
    assert not bench.judge_relation(side, "purple", "next_to", "green").item()
    tiny = _blocks(("red", 4, 5, 10, 12), ("blue", 14, 24, 10, 20))  # 2 red pixels
    assert not bench.judge_relation(tiny, "red", "on", "blue").item()


def test_relation_judge_on_ground_truth_renders():
    specs = (bench.RELATION_SPECS[0], bench.RELATION_SPECS[-1])
    truth = bench.render_pairs(specs, views=3, seed=5, world=WORLD)
    for index, (ca, _, relation, cb, _) in enumerate(specs):
        views = truth[3 * index : 3 * index + 3]
        assert bench.judge_relation(views, ca, relation, cb).all()
        assert not bench.judge_relation(views, cb, relation, ca).any()


def test_face_judge_on_ground_truth_heads_and_on_a_ball_without_a_face():
    front, back = bench.render_heads(("red", "blue"), views=4, seed=5, world=WORLD)
    shares = [
        bench.face_share(front[i * 4 : i * 4 + 4], c, FACE_RGB)
        for i, c in enumerate(("red", "blue"))
    ]
    assert float((torch.cat(shares) >= bench.FACE_SHARE).float().mean()) >= 0.75
    assert (bench.face_share(back[:4], "red", FACE_RGB) == 0).all()
    assert (bench.face_share(back[4:], "blue", FACE_RGB) == 0).all()
    # a plain ball on white: the background around it is not a face
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    disc = ((ys - 16) ** 2 + (xs - 16) ** 2 < 100).float()
    ball = 1.0 - disc * (1.0 - 0.7 * torch.tensor(COLORS["red"])[:, None, None])
    assert bench.face_share(ball[None], "red", FACE_RGB).item() == 0.0
    # the same ball with a pale patch in its middle shows a face; a blue prompt sees no head
    faced = ball.clone()
    faced[:, 12:20, 12:20] = torch.tensor(FACE_RGB)[:, None, None]
    assert bench.face_share(faced[None], "red", FACE_RGB).item() > 0.2
    assert bench.face_share(faced[None], "blue", FACE_RGB).item() == 0.0


def test_prompts_cover_every_colour_and_shape():
    prompts = bench.single_prompts(16)
    assert len(set(prompts)) == 16
    assert {c for c, _ in prompts} == set(COLORS)
    assert {s for _, s in prompts} == set(bench.BASIC_SHAPES)
    kinds = [spec[2] for spec in bench.RELATION_SPECS]
    assert len(kinds) >= 8 and kinds.count("on") >= 4 and kinds.count("next_to") >= 4
    assert all(spec[0] != spec[3] for spec in bench.RELATION_SPECS)
    assert bench.relation_prompt(bench.RELATION_SPECS[-1], WORLD).endswith(", front view")
    assert bench.relation_prompt(bench.RELATION_SPECS[0], WORLD) == (
        "a red cube on top of a blue sphere"
    )


def test_probe_learns_colours_from_a_few_renders():
    data = bench.probe_data(48, seed=7, world=WORLD)
    assert data.images.shape == (48, 3, 32, 32) and data.images.max() <= 1.0
    probe = bench.train_probe(data, epochs=12, seed=0, batch=16)
    color_acc, _ = bench.probe_accuracy(probe, data)
    assert color_acc >= 0.8


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A ``cfd3d train-prior``-style checkpoint of a small random 32x32 UNet."""
    torch.manual_seed(0)
    path = tmp_path / "checkpoint.pt"
    state = {"ema": TinyUNet(TINY).state_dict(), "config": {"unet": asdict(TINY)}, "step": 7}
    torch.save(state, path)
    return path


def test_quick_run_prints_one_json_line(tiny_checkpoint, capsys):
    assert bench.main(["--quick", "--checkpoint", str(tiny_checkpoint)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["checkpoint_step"] == 7
    assert result["world"] == json.loads(json.dumps(asdict(WORLD)))  # the checkpoint's: none
    assert set(result["by_guidance"]) == {"1", "3", "7.5"}
    assert result["relation_judge_acc_gt"] == 1.0 and result["relation_judge_swapped_gt"] == 0.0
    for key in ("probe_acc", "color_acc", "shape_acc", "relation_acc", "face_acc"):
        assert 0.0 <= result[key] <= 1.0
    assert result["sample_s"] > 0 and result["weights_mb"] > 0
    assert isinstance(result["targets_met"], bool)


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--checkpoint", "nope.pt"], "nope.pt"), (["--samples", "0"], "--samples must be positive")],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, extra, message):
    assert bench.main(["--quick", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and message in err


def test_the_default_worlds_view_cameras_are_the_first_benchmarks():
    assert bench.sector_cameras(WORLD, "front") == CameraSamplerConfig(azimuth_deg=(-45.0, 45.0))
    assert bench.sector_cameras(WORLD, "back") == CameraSamplerConfig(azimuth_deg=(135.0, 225.0))
    front = bench.sector_cameras(OTHER_WORLD, "front")
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
    front, back = bench.render_heads(("red",), views=4, seed=5, world=world)
    default_front, _ = bench.render_heads(("red",), views=4, seed=5, world=WORLD)
    assert not torch.equal(front, default_front)
    assert float((bench.face_share(front, "red", DARK) >= bench.FACE_SHARE).float().mean()) >= 0.75
    assert (bench.face_share(front, "red", FACE_RGB) == 0).all()  # not the first world's face
    assert (bench.face_share(back, "red", DARK) == 0).all()
    # compositions and the probe's data come from the world's cameras
    spec = bench.RELATION_SPECS[0]
    assert bench.relation_prompt(spec, world).endswith(", front view")  # it has overhead views
    pairs = bench.render_pairs((spec,), views=3, seed=5, world=world)
    assert not torch.equal(pairs, bench.render_pairs((spec,), views=3, seed=5, world=WORLD))
    assert bench.judge_relation(pairs, "red", "on", "blue").all()
    assert not bench.judge_relation(pairs, "blue", "on", "red").any()
    assert not torch.equal(
        bench.probe_data(4, seed=7, world=world).images,
        bench.probe_data(4, seed=7, world=WORLD).images,
    )


def test_a_checkpoint_says_which_world_it_learns(tmp_path):
    path = tmp_path / "checkpoint.pt"
    data = {"world": asdict(OTHER_WORLD), "n": 8, "seed": 0}
    state = {"ema": TinyUNet(TINY).state_dict(), "config": {"unet": asdict(TINY)}, "step": 3}
    torch.save({**state, "data": data}, path)
    prior, step = bench.prior_from_checkpoint(path)
    assert prior.world == OTHER_WORLD and step == 3
