"""``cfd3d train-prior --config``: the defaults it merges over, what it refuses, what it records."""

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from cfd3d.cli import main
from cfd3d.errors import ConfigError
from cfd3d.priors.embedded.commands import prior_configs, read_prior_config
from cfd3d.priors.embedded.training import TrainConfig
from cfd3d.priors.embedded.unet import grow, grown
from cfd3d.priors.embedded.weights import load_weights
from cfd3d.priors.embedded.world import WorldConfig
from cfd3d.scene.sampling import CameraSamplerConfig

SMALL = {
    "train": {"batch_size": 4, "warmup": 1},
    "unet": {"channels": [16, 32], "text_width": 32, "groups": 4},
    "world": {"n_samples": 8, "p_pair": 0.5, "cameras": {"fovy_deg": [50, 50]}},
}
"""A tiny run: small UNet, 4 images a step, 8 samples a ray; the world changed a little."""
FRONT = Path(__file__).resolve().parents[3] / "configs" / "embedded-prior-front.json"
"""The shipped prior's first recipe (pairs seen from the front); ``RECIPE`` goes on from
the weights it writes."""


def _plain(value):
    """Tuples as lists, as JSON stores them."""
    return json.loads(json.dumps(value))


def test_the_recipe_file_is_the_shipped_weights_settings(shipped_recipe):
    model, metadata = load_weights()
    config, world = shipped_recipe
    config = replace(config, seed=1)  # the command line's --seed 1, as recorded below
    # settings added after the weights were made are absent there, which means the default
    for ours, stored, default in (
        (config, metadata["train_config"], TrainConfig()),
        (world, metadata["world_config"], WorldConfig()),
    ):
        expected = {**_plain(asdict(default)), **stored}
        if "unet" in stored:
            expected["unet"] = {**_plain(asdict(default.unet)), **stored["unet"]}
        assert _plain(asdict(ours)) == expected
    assert asdict(model.config) == asdict(config.unet)
    assert metadata["command"] == (
        f"cfd3d train-prior --config configs/embedded-prior.json --seed 1 "
        f"--steps {config.steps} --dataset-size {config.dataset_size}"
    )
    # the second of two recipes: it starts from the weights the first one writes
    assert config.init_weights == f"runs/{FRONT.stem}/embedded_prior.safetensors"
    assert len(metadata["init_weights_sha256"]) == 64
    # without --config: the first prior's world and training, what the tests' small runs use
    assert prior_configs({}) == (TrainConfig(), WorldConfig())
    assert TrainConfig().steps == 3000 and TrainConfig().unet.attention_levels == ()


def test_sections_merge_over_the_defaults(shipped_recipe):
    config, world = read_prior_config(FRONT)
    assert config.unet.attention_levels == (1,) and config.unet.channels == (48, 96, 128)
    assert config.unet.text_positions_std == 1.0 and not config.init_weights
    assert config.steps == 12000 and config.dataset_size == 24000
    assert config.batch_size == TrainConfig().batch_size  # merged, not replaced
    assert world.face_rgb == (0.06, 0.06, 0.08) and world.p_pair == 0.45
    assert world.p_head == WorldConfig().p_head
    cameras = world.cameras
    assert cameras.fovy_deg == (50.0, 50.0) and cameras.distance == (1.4, 1.4)
    assert cameras.elevation_deg == (-10.0, 90.0)
    assert cameras.azimuth_deg == CameraSamplerConfig().azimuth_deg  # merged, not replaced
    assert world.pair_cameras == replace(
        cameras, azimuth_deg=(-40.0, 40.0), elevation_deg=(-10.0, 55.0)
    )
    # the shipped recipe goes on from there: every pair seen from every side, captioned
    final, final_world = shipped_recipe
    assert final.unet == config.unet and final_world.cameras == cameras
    assert final.steps == 6000 and final.dataset_size == 12000 and final.lr == 5e-4
    assert final_world.p_pair == 0.6 and final_world.p_view_pair == 1.0
    assert final_world.pair_cameras is None
    config, world = prior_configs({"unet": {"image_size": 64, "channels": [32, 64]}})
    assert world.image_size == 64  # the world follows the UNet's size


def test_pair_cameras_merge_over_the_worlds_cameras():
    world = {"cameras": {"distance": [1.4, 1.4], "elevation_deg": [-10, 90]}}
    front = {"azimuth_deg": [-40, 40], "elevation_deg": [-10, 55]}
    _, plain = prior_configs({"world": world})
    _, paired = prior_configs({"world": {**world, "pair_cameras": front}})
    assert plain.pair_cameras is None
    assert paired.cameras == plain.cameras
    assert paired.pair_cameras == replace(
        plain.cameras, azimuth_deg=(-40.0, 40.0), elevation_deg=(-10.0, 55.0)
    )
    with pytest.raises(ConfigError, match=r"world\.pair_cameras: unknown key"):
        prior_configs({"world": {"pair_cameras": {"zoom": 2}}})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"trian": {}}', "unknown key(s) trian"),
        ('{"train": {"stepz": 3}}', "train: unknown key(s) stepz"),
        ('{"world": {"cameras": {"zoom": 2}}}', "world.cameras: unknown key(s) zoom"),
        ('{"train": {"steps": 2.5}}', "train.steps must be of type int"),
        ('{"train": {"lr": -1}}', "train: lr must be positive"),
        ('{"world": {"p_pair": 1.5}}', "world: p_pair must lie in [0, 1]"),
        ('{"world": {"face_rgb": [0, 0]}}', "world.face_rgb must have 3 entries"),
        ('{"world": {"cameras": {"elevation_deg": [0, 95]}}}', "elevation_deg must lie in"),
        ('{"world": {"image_size": 64}}', "must equal the unet's, 32"),
        ('{"unet": {"attention_levels": [4]}}', "attention level 4 is outside"),
        ('{"unet": {"channels": [48, 100]}}', "multiples of groups"),
        ('{"unet": {"vocab_size": 20}}', "vocab_size must exceed"),
        ('{"unet": {"max_tokens": 8}}', "max_tokens must be at least 12"),
        ('{"train": {"unet": {}}}', 'top-level "unet"'),
        ("[1, 2]", "must hold a JSON object"),
        ("{not json", "cannot read --config file"),
    ],
)
def test_bad_config_files_are_one_line_and_exit_code_2(tmp_path, capsys, text, message):
    config = tmp_path / "bad.json"
    config.write_text(text)
    out = tmp_path / "w.safetensors"
    args = ["train-prior", "--config", str(config), "--work", str(tmp_path / "work")]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and message in err
    assert not out.exists() and not (tmp_path / "work").exists()


def test_a_missing_config_or_bad_threads_is_refused(tmp_path, capsys):
    assert main(["train-prior", "--config", str(tmp_path / "nope.json")]) == 2
    assert "nope.json' not found" in capsys.readouterr().err
    assert main(["train-prior", "--threads", "0", "--work", str(tmp_path / "w")]) == 2
    assert "--threads must be a positive integer" in capsys.readouterr().err


def _train(tmp_path: Path, name: str, config: dict | None, *extra: str) -> Path:
    """Run a 2-step ``cfd3d train-prior`` on 8 images; returns the weights file."""
    work = tmp_path / name
    args = ["train-prior", "--steps", "2", "--dataset-size", "8", "--work", str(work)]
    if config is not None:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(config))
        args += ["--config", str(path)]
    out = work / "w.safetensors"
    assert main([*args, *extra, "--out", str(out)]) == 0
    return out


def test_a_config_run_records_its_settings_and_they_reproduce_it(tmp_path):
    threads = torch.get_num_threads()
    try:
        first = _train(tmp_path, "a", SMALL, "--threads", "1")
        assert torch.get_num_threads() == 1
        _, metadata = load_weights(first)
        config, world = prior_configs(SMALL)
        config = replace(config, steps=2, dataset_size=8)  # as the command line says
        assert metadata["world_config"] == _plain(asdict(world))
        assert metadata["train_config"] == _plain(asdict(config))
        assert metadata["train_config"]["unet"]["channels"] == [16, 32]
        assert metadata["command"] == (
            f"cfd3d train-prior --config {tmp_path / 'a.json'} --seed 0 --steps 2 --dataset-size 8"
        )
        # the recorded settings, as a --config file, make the same weights
        again = _train(tmp_path, "b", metadata["train_prior_config"], "--seed", "0")
        model, metadata_again = load_weights(again)
        reference = load_weights(first)[0].state_dict()
        assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())
        assert metadata_again.pop("command") != metadata.pop("command")  # the file's name
        assert metadata_again == metadata
    finally:
        torch.set_num_threads(threads)


def test_another_world_refuses_the_checkpoint_and_renders_its_own_data(tmp_path, capsys):
    first = _train(tmp_path, "a", SMALL)
    work = first.parent
    darker = json.loads(json.dumps(SMALL))
    darker["world"]["face_rgb"] = [0.06, 0.06, 0.08]
    path = tmp_path / "dark.json"
    path.write_text(json.dumps(darker))
    args = ["train-prior", "--steps", "2", "--dataset-size", "8", "--work", str(work)]
    capsys.readouterr()
    assert main([*args, "--config", str(path), "--out", str(work / "dark.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert "data.world.face_rgb" in err and "--work" in err and len(err.splitlines()) == 1
    (work / "checkpoint.pt").unlink()
    assert main([*args, "--config", str(path), "--out", str(work / "dark.safetensors")]) == 0
    key = torch.load(work / "dataset.pt", weights_only=False)["key"]
    assert key["world"]["face_rgb"] == (0.06, 0.06, 0.08)
    assert load_weights(work / "dark.safetensors")[1]["world_config"]["face_rgb"] == [
        0.06,
        0.06,
        0.08,
    ]


def test_fine_tuning_starts_from_the_given_weights_and_records_them(tmp_path, capsys):
    """``init_weights``: the run starts from that model, not from a random one; its
    checksum is recorded; weights of another UNet, or none, are one line, exit 2."""
    base = _train(tmp_path, "base", SMALL, "--seed", "1")  # another random start than seed 0
    tune = json.loads(json.dumps(SMALL))
    tune["train"].update({"init_weights": str(base), "lr": 1e-9})  # steps too small to move
    tuned = _train(tmp_path, "tuned", tune)
    scratch = _train(tmp_path, "scratch", {**SMALL, "train": {**SMALL["train"], "lr": 1e-9}})
    start = load_weights(base)[0].state_dict()
    model, metadata = load_weights(tuned)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, start[key], atol=2e-3, rtol=0)  # float16 storage
    far = load_weights(scratch)[0].state_dict()
    assert max(float((far[k] - v).abs().max()) for k, v in start.items()) > 0.05
    assert metadata["init_weights_sha256"] == (base.parent / "w.sha256").read_text()[:64]
    assert metadata["train_config"]["init_weights"] == str(base)
    # a UNet with image positions starts from weights made without them (positions zero)
    positions = json.loads(json.dumps(tune))
    positions["unet"]["image_positions"] = True
    with_positions = _train(tmp_path, "positions", positions)
    model = load_weights(with_positions)[0]
    assert model.config.image_positions
    for key, value in model.state_dict().items():
        expected = torch.zeros_like(value) if key.endswith("attn.position") else start[key]
        torch.testing.assert_close(value, expected, atol=2e-3, rtol=0)

    # a UNet at twice the resolution starts from them grown by a level (its world too)
    larger = json.loads(json.dumps(tune))
    larger["unet"].update({"image_size": 64, "channels": [16, 16, 32]})
    model, metadata = load_weights(_train(tmp_path, "larger", larger))
    assert metadata["world_config"]["image_size"] == 64
    small = load_weights(base)[0]
    expected = grow(small).state_dict()
    assert model.config == grow(small).config
    fresh = ("down.0.", "downsample.0.", f"up.{len(small.up)}.", f"up.{len(small.up) + 1}.")
    for key, value in model.state_dict().items():
        if not key.startswith(fresh):  # the new level starts from the run's own seed
            torch.testing.assert_close(value, expected[key], atol=2e-3, rtol=0, msg=key)

    other = json.loads(json.dumps(tune))
    other["unet"] = {"channels": [8, 16], "text_width": 32, "groups": 4}
    ungrown = json.loads(json.dumps(tune))
    ungrown["unet"].update({"image_size": 64})  # twice the size, but no level more
    missing = json.loads(json.dumps(tune))
    missing["train"]["init_weights"] = str(tmp_path / "nothing.safetensors")
    for name, config, needle in (
        ("other", other, "another UNet"),
        ("missing", missing, "not found"),
        ("ungrown", ungrown, "another UNet"),
    ):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(config))
        capsys.readouterr()
        args = ["train-prior", "--steps", "2", "--dataset-size", "8", "--config", str(path)]
        args += ["--work", str(tmp_path / name), "--out", str(tmp_path / name / "w.safetensors")]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / name / "dataset.pt").exists()  # refused before any rendering


def test_every_recipe_in_configs_reads(shipped_recipe):
    """The recipes kept in ``configs/`` (the shipped one and the experiments') stay valid
    as the settings evolve; an experiment fine-tunes the shipped UNet or the one another
    recipe trains (``runs/<recipe>/``, where its documented command puts it), and the
    architectures match."""
    root = Path(__file__).resolve().parents[3] / "configs"
    files = sorted(root.rglob("*.json"))
    assert root / "embedded-prior.json" in files and len(files) >= 2
    for path in files:
        config, _ = read_prior_config(path)
        if not config.init_weights:
            continue
        if config.init_weights == "src/cfd3d/assets/embedded_prior.safetensors":
            start = shipped_recipe[0].unet
        else:
            parts = Path(config.init_weights).parts
            assert parts[0] == "runs" and len(parts) == 3, (path, config.init_weights)
            (recipe,) = root.rglob(f"{parts[1]}.json")  # one recipe of that name
            start = read_prior_config(recipe)[0].unet
        # the same UNet, or one at twice the image size grown from it by a level
        if config.unet.image_size == 2 * start.image_size:
            start = grown(start)
        same = replace(config.unet, image_positions=False)
        assert same == replace(start, image_positions=False), path
