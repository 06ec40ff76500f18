"""`cfd3d generate` with Gaussians: the preset end to end, density control inside the
step loop, bit-identical resume across densifications, options that do not apply."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import trimesh

from cfd3d.cli import main
from cfd3d.errors import ConfigError
from cfd3d.export.ply import gaussians_to_ply
from cfd3d.generate.config import GenerateConfig, preset_config, save_config
from cfd3d.generate.run import Run
from cfd3d.priors.registry import load_prior
from cfd3d.render.occupancy import OccupancyConfig
from cfd3d.scene.gaussians import GaussianConfig, GaussianField

SMALL = {"mesh_resolution": 24, "turntable_frames": 3, "turntable_size": 32}


def small_config(steps: int = 6, **gaussians) -> GenerateConfig:
    """The preset with a few hundred Gaussians, densified after steps 2 and 4 with a
    threshold every visible Gaussian passes."""
    base = preset_config("toy-gaussians", "a blue torus")
    settings = {
        "count": 300,
        "max_count": 2000,
        "densify_from": 1,
        "densify_until": 5,
        "densify_every": 2,
        "densify_grad_threshold": 1e-12,
        "opacity_reset_every": 3,
        **gaussians,
    }
    return replace(
        base, steps=steps, gaussians=replace(base.gaussians, **settings), **SMALL
    ).resolved()


@pytest.fixture(scope="module")
def prior():
    return load_prior("embedded")


def test_density_control_runs_inside_the_step_loop(prior):
    run = Run(small_config(), prior)
    field = run.field
    assert isinstance(field, GaussianField)
    names = [group["name"] for group in run.optimizer.param_groups]
    assert names == ["means", "log_scales", "quats", "opacity_logits", "sh"]
    c = run.config.gaussians
    expected = [c.lr_means, c.lr_scales, c.lr_quats, c.lr_opacity, c.lr_colors]
    assert [group["lr"] for group in run.optimizer.param_groups] == expected
    counts = []
    for _ in range(5):
        assert not run.take_step().skipped
        counts.append(field.count)
    assert counts[0] == 300 and counts[1] > 300 and counts[3] > counts[1]
    assert run.optimizer.state[field.means]["exp_avg"].shape == (field.count, 3)


def test_resume_is_bit_identical_across_densifications(prior):
    config = small_config()
    straight = Run(config, prior)
    for _ in range(config.steps):
        straight.take_step()
    first = Run(config, prior)
    for _ in range(3):
        first.take_step()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = Run(config, prior)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    assert resumed.field.count == first.field.count != config.gaussians.count
    while resumed.step < config.steps:
        resumed.take_step()
    expected, got = straight.field.state_dict(), resumed.field.state_dict()
    assert list(expected) == list(got)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    for param in straight.field.parameters():
        index = [p is param for p in straight.field.parameters()].index(True)
        twin = list(resumed.field.parameters())[index]
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(
                straight.optimizer.state[param][key], resumed.optimizer.state[twin][key]
            )


def test_generate_writes_splats_mesh_turntable_and_preview(tmp_path, capsys):
    config = replace(small_config(steps=4), mesh_threshold=0.05)
    path = tmp_path / "config.json"
    path.write_text(save_config(config))
    out = tmp_path / "run"
    code = main(["generate", "--config", str(path), "--out", str(out), "-q"])
    assert code == 0, capsys.readouterr().err
    for name in ("model.ply", "model.glb", "turntable.mp4", "turntable.gif", "preview.png"):
        assert (out / name).stat().st_size > 0, name
    header = (out / "model.ply").read_bytes()[:2000].split(b"end_header")[0].decode()
    count = int(header.split("element vertex ")[1].split()[0])
    assert count > 300  # densified
    assert len(trimesh.load(out / "model.glb", force="mesh").faces) > 0
    summary = json.loads((out / "summary.json").read_text())
    assert "mesh_error" not in json.dumps(summary)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"occupancy": OccupancyConfig()}, "occupancy grid does not apply"),
        ({"deferred_backward": "always"}, "deferred backward does not apply"),
        ({"formats": ("glb", "ply")}, "drop ply from formats"),
    ],
)
def test_options_that_do_not_apply_to_gaussians(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        replace(preset_config("toy-gaussians", "a red cube"), **overrides)


@pytest.mark.parametrize(
    ("gaussians", "needle"),
    [
        ({"count": 0}, "Gaussian count must be a positive integer"),
        ({"count": -4}, "Gaussian count must be a positive integer"),
        ({"densify_every": 0}, "densify_every must be a positive number"),
        ({"densify_every": -100}, "densify_every must be a positive number"),
        ({"opacity_reset_every": -5}, "opacity_reset_every must be a positive number"),
        ({"opacity_reset_every": 0}, "opacity_reset_every must be a positive number"),
        ({"densify_from": -1}, "need 0 <= densify_from <= densify_until"),
        ({"init": "ply"}, "init ply needs init_path"),
    ],
)
def test_bad_gaussian_settings_in_a_config_file_exit_2(gaussians, needle, tmp_path: Path, capsys):
    data = json.loads(save_config(preset_config("toy-gaussians", "a red cube").resolved()))
    data["gaussians"].update(gaussians)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    code = main(["generate", "--config", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_field_flag_picks_the_gaussian_preset_and_is_checked(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "generate",
                "a blue torus",
                "--field",
                "gaussians",
                "--steps",
                "1",
                "--out",
                str(out),
                "-q",
            ]
        )
        == 0
    )
    saved = json.loads((out / "config.json").read_text())
    assert (saved["field"], saved["preset"]) == ("gaussians", "toy-gaussians")
    assert (out / "model.ply").is_file() and (out / "model.glb").is_file()
    capsys.readouterr()
    for argv, needle in [
        (["--field", "gaussians", "--prior", "sd"], "no Gaussian preset for Stable Diffusion"),
        (["--field", "gaussians", "--preset", "sd-stage1"], "occupancy grid does not apply"),
    ]:
        assert main(["generate", "a blue torus", *argv, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "a blue torus", "--field", "splats", "--out", str(tmp_path / "x")])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err


def ply_config(tmp_path: Path, init_path: Path, field: str = "gaussians") -> Path:
    """A config.json whose Gaussians start from ``init_path`` (``field`` may be another
    kind, for ``--field gaussians`` to pick)."""
    data = json.loads(save_config(small_config(steps=1)))
    data["gaussians"].update(init="ply", init_path=str(init_path))
    data["field"] = field
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"not a ply at all\n", "is not a 3DGS PLY: it does not start with 'ply'"),
        (
            b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\n"
            b"property float y\nproperty float z\nend_header\n" + bytes(12),
            "is not a 3DGS PLY: its vertex element lacks f_dc_0",
        ),
        (None, "cannot read the Gaussians' init_path"),
    ],
)
def test_field_gaussians_from_a_file_that_is_not_a_3dgs_ply_exits_2(
    content, needle, tmp_path: Path, capsys
):
    source = tmp_path / "points.ply"
    if content is not None:
        source.write_bytes(content)
    config = ply_config(tmp_path, source, field="voxel")
    out = tmp_path / "out"
    argv = ["generate", "--config", str(config), "--field", "gaussians", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_gaussians_start_from_a_3dgs_ply(prior, tmp_path: Path):
    g = torch.Generator().manual_seed(7)
    source = GaussianField(GaussianConfig(count=40, init_opacity=0.6), generator=g)
    with torch.no_grad():
        source.sh.copy_(torch.randn(source.sh.shape, generator=g))
    path = tmp_path / "start.ply"
    path.write_bytes(gaussians_to_ply(source))
    config = replace(
        small_config(steps=1),
        gaussians=replace(small_config().gaussians, init="ply", init_path=str(path)),
    )
    run = Run(config, prior)
    assert run.field.count == 40
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        assert torch.equal(getattr(run.field, name), getattr(source, name)), name
    assert not run.take_step().skipped
    with pytest.raises(ConfigError, match="init_from and the Gaussians' init ply"):
        replace(config, init_from="../stage1")
