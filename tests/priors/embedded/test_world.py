"""The toy world (captions, renders) and the embedded prior's commands, end to end."""

import json
from dataclasses import asdict, replace

import pytest
import torch

from cfd3d.cli import main
from cfd3d.errors import ConfigError
from cfd3d.priors.embedded.prior import EmbeddedPrior
from cfd3d.priors.embedded.tokenizer import WordTokenizer
from cfd3d.priors.embedded.training import TrainConfig
from cfd3d.priors.embedded.weights import load_weights
from cfd3d.priors.embedded.world import (
    VIEW_WORDS,
    WORLD_SHADING,
    Item,
    WorldConfig,
    caption,
    random_scene,
    render_world,
    vocabulary,
    world_from_dict,
)
from cfd3d.render.volume import RendererConfig, VolumeRenderer
from cfd3d.scene.cameras import spherical_cameras
from cfd3d.scene.sampling import CameraSamplerConfig
from cfd3d.scene.toy import FACE_RGB, RELATIONS, single


def _captions(config: WorldConfig, n: int, seed: int = 0) -> list[tuple[Item, str]]:
    """``n`` (item, caption) pairs without rendering: random scenes and view labels."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        item = Item(random_scene(config, gen), VIEW_WORDS[i % len(VIEW_WORDS)])
        out.append((item, caption(item, config, gen)))
    return out


def test_captions_use_the_vocabulary_and_fit_the_tokenizer():
    max_tokens = TrainConfig().unet.max_tokens
    tokenizer = WordTokenizer(vocabulary(), max_tokens)
    captions = [text for _, text in _captions(WorldConfig(), 2000)]
    assert not {w for text in captions for w in tokenizer.unknown_words(text)}
    assert max(len(tokenizer.split(text)) for text in captions) <= max_tokens
    ids = tokenizer.encode(captions)  # raises on unknown words or overlong prompts
    assert ids.shape == (len(captions), max_tokens)
    # the longest caption there is fits too
    longest = "a yellow cylinder on top of a yellow capsule, overhead view"
    assert len(tokenizer.split(longest)) <= max_tokens


def test_caption_options_follow_the_configured_probabilities():
    config = WorldConfig(
        p_head=0.1, p_pair=0.3, p_view=0.3, p_view_pair=0.9, p_no_shape=0.2, p_no_color=0.1
    )
    pairs = _captions(config, 6000, seed=1)
    with_view = [text.endswith(f", {item.view} view") for item, text in pairs]
    assert all(text.endswith(" view") == v for (_, text), v in zip(pairs, with_view, strict=True))
    two = [len(item.scene.primitives) == 2 for item, _ in pairs]
    share_single = sum(v for v, t in zip(with_view, two, strict=True) if not t) / two.count(False)
    share_pair = sum(v for v, t in zip(with_view, two, strict=True) if t) / two.count(True)
    assert share_single == pytest.approx(0.3, abs=0.03)
    assert share_pair == pytest.approx(0.9, abs=0.03)

    basic = [(item, text.split(",")[0]) for item, text in pairs]
    singles = [(i, t) for i, t in basic if len(i.scene.primitives) == 1]
    plain = [(i, t) for i, t in singles if i.scene.primitives[0].shape != "head"]
    heads = [(i, t) for i, t in singles if i.scene.primitives[0].shape == "head"]
    assert len(heads) / len(pairs) == pytest.approx(0.1, abs=0.03)
    assert 1 - len(singles) / len(pairs) == pytest.approx(0.3, abs=0.03)
    n = len(plain)
    no_color = sum(len(t.split()) == 2 for _, t in plain) / n
    no_shape = sum(t.endswith(" object") for _, t in plain) / n
    assert no_color == pytest.approx(0.1, abs=0.03)
    assert no_shape == pytest.approx(0.9 * 0.2, abs=0.03)  # only when the colour is kept
    for item, text in plain:
        prim = item.scene.primitives[0]
        assert text in (f"a {prim.color} {prim.shape}", f"a {prim.color} object", f"a {prim.shape}")
    assert heads and all(t.endswith("head") for _, t in heads)  # never "a red object"
    assert {t for _, t in heads if len(t.split()) == 2} == {"a head"}

    for item, text in basic:
        if len(item.scene.primitives) == 2:
            assert text == item.scene.caption()
            assert RELATIONS[item.scene.relation] in text


def test_head_face_is_seen_from_the_front_and_hidden_from_the_back():
    renderer = VolumeRenderer(RendererConfig(n_samples=64, shading=WORLD_SHADING))
    full = torch.ones(2)
    cameras = spherical_cameras(torch.tensor([0.0, 180.0]), 15.0 * full, 1.4 * full, 50.0 * full)
    with torch.no_grad():
        rgb = renderer(single("blue", "head"), cameras, 32, 32, shading="albedo").rgb
    face = ((rgb - torch.tensor(FACE_RGB)).abs().amax(dim=-1) < 0.05).sum(dim=(1, 2))
    body = ((rgb - torch.tensor([0.12, 0.30, 0.85])).abs().amax(dim=-1) < 0.05).sum(dim=(1, 2))
    front, back = face.tolist()
    assert front > 0.3 * body[0]  # the face fills the middle of the ball
    assert back == 0
    assert body[1] > 150  # the back view does show the ball


def test_the_worlds_face_colour_and_cameras_are_settings():
    dark = (0.06, 0.06, 0.08)
    point = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])  # the front and the back
    head = single("blue", "head", face_rgb=dark).primitives[0]
    assert torch.allclose(head.albedo(point)[0], torch.tensor(dark))
    assert torch.allclose(
        single("blue", "head").primitives[0].albedo(point)[0], torch.tensor(FACE_RGB)
    )
    assert torch.allclose(head.albedo(point)[1], torch.tensor([0.12, 0.30, 0.85]))
    overhead = CameraSamplerConfig(elevation_deg=(70.0, 80.0), fovy_deg=(50.0, 50.0))
    config = WorldConfig(n_samples=8, p_head=1.0, cameras=overhead, face_rgb=dark)
    images, items = render_world(config, 4, seed=3)
    assert {item.view for item in items} == {"overhead"}
    assert all(item.scene.primitives[0].face_rgb == dark for item in items)
    assert images.shape == (4, 3, 32, 32)


def test_a_world_reads_back_from_its_stored_dict(shipped_world):
    world = WorldConfig(
        p_pair=0.45,
        cameras=CameraSamplerConfig(elevation_deg=(-10.0, 90.0), fovy_deg=(50.0, 50.0)),
        face_rgb=(0.06, 0.06, 0.08),
    )
    stored = json.loads(json.dumps(asdict(world)))  # as the weights' metadata holds it
    assert world_from_dict(stored) == world
    first = {k: v for k, v in stored.items() if k not in ("cameras", "face_rgb")}
    assert world_from_dict({**first, "p_pair": 0.33}) == WorldConfig()  # the first prior's
    with pytest.raises(ConfigError, match="unknown world setting"):
        world_from_dict({"p_dragon": 0.5})
    assert EmbeddedPrior.load().world == shipped_world  # configs/embedded-prior.json's


def test_render_world_is_deterministic_for_a_seed():
    config = WorldConfig(n_samples=16)
    a, items_a = render_world(config, 6, seed=3)
    b, items_b = render_world(config, 6, seed=3)
    c, _ = render_world(config, 6, seed=4)
    assert a.dtype == torch.uint8 and a.shape == (6, 3, 32, 32)
    assert torch.equal(a, b) and items_a == items_b
    assert not torch.equal(a, c)


def test_pairs_can_be_seen_from_their_own_cameras():
    """``pair_cameras``: two-primitive scenes are seen only from those (here the front
    sector), single ones from the world's cameras; set to the world's cameras it draws the
    same random numbers, so a world without it renders as before."""
    front = CameraSamplerConfig(elevation_deg=(-10.0, 55.0), azimuth_deg=(-40.0, 40.0))
    every = CameraSamplerConfig(elevation_deg=(-10.0, 90.0))
    config = WorldConfig(n_samples=8, image_size=16, p_pair=0.5, cameras=every, pair_cameras=front)
    _, items = render_world(config, 160, seed=0)
    pairs = [item.view for item in items if len(item.scene.primitives) == 2]
    others = {item.view for item in items if len(item.scene.primitives) == 1}
    assert len(pairs) >= 40 and set(pairs) == {"front"}
    assert {"front", "side", "back", "overhead"} <= others
    same = WorldConfig(n_samples=8, image_size=16, p_pair=0.5)
    a, items_a = render_world(same, 24, seed=1)
    b, items_b = render_world(replace(same, pair_cameras=same.cameras), 24, seed=1)
    assert torch.equal(a, b) and items_a == items_b
    stored = json.loads(json.dumps(asdict(config)))
    assert world_from_dict(stored) == config


@pytest.fixture(scope="module")
def trained_weights(tmp_path_factory):
    """Weights from a 2-step ``cfd3d train-prior`` run on 16 images."""
    work = tmp_path_factory.mktemp("train")
    out = work / "w.safetensors"
    args = ["train-prior", "--steps", "2", "--dataset-size", "16", "--work", str(work)]
    assert main([*args, "--out", str(out)]) == 0
    return out


def test_train_prior_writes_weights_that_load(trained_weights):
    prior = EmbeddedPrior.load(trained_weights)
    assert prior.tokenizer.words == vocabulary()
    assert prior.input_shape == (3, 32, 32)
    assert (trained_weights.parent / "checkpoint.pt").is_file()
    # without --config the metadata is what it always was
    metadata = load_weights(trained_weights)[1]
    assert set(metadata) == {"vocabulary", "schedule", "train_config", "world_config", "command"}
    assert metadata["command"] == "cfd3d train-prior --seed 0 --steps 2"
    assert metadata["world_config"] == json.loads(json.dumps(asdict(WorldConfig())))


def test_sample_writes_a_grid(trained_weights, tmp_path):
    out = tmp_path / "s.png"
    args = ["sample", "a red cube", "-n", "2", "--steps", "2", "--out", str(out)]
    assert main([*args, "--weights", str(trained_weights)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("a red dragon", "'dragon'"),
        ("a red cube, left view", "'left'"),
        ("   ", "prompt is empty"),
        ("", "prompt is empty"),
    ],
)
def test_sample_rejects_bad_prompts_with_one_line(
    trained_weights, tmp_path, capsys, prompt, message
):
    out = tmp_path / "s.png"
    code = main(
        ["sample", prompt, "--steps", "1", "--out", str(out), "--weights", str(trained_weights)]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error:")
    assert message in err
    if "empty" not in message:
        assert "cfd3d prior-vocab" in err
    assert not out.exists()


def test_weights_say_their_world_and_the_toy_presets_distil_from_its_cameras(tmp_path):
    from cfd3d.errors import UserError
    from cfd3d.generate.config import preset_config
    from cfd3d.priors.embedded.unet import TinyUNet, UNetConfig
    from cfd3d.priors.embedded.weights import read_world, write_weights

    world = WorldConfig(
        cameras=CameraSamplerConfig(elevation_deg=(-10.0, 90.0), fovy_deg=(50.0, 50.0)),
        face_rgb=(0.06, 0.06, 0.08),
    )
    path = tmp_path / "embedded_prior.safetensors"
    config = UNetConfig(channels=(16, 32), text_width=32, vocab_size=len(vocabulary()) + 1)
    write_weights(TinyUNet(config), {"world_config": asdict(world)}, path)
    assert read_world(path) == world  # from the header alone
    shipped = EmbeddedPrior.load().world
    assert read_world() == shipped
    for preset in ("cpu-demo", "toy-gaussians"):
        assert preset_config(preset, "a red cube").cameras == shipped.cameras
    with pytest.raises(UserError, match="not found"):
        read_world(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="cannot read"):
        read_world(tmp_path / "junk.safetensors")
