"""`cfd3d generate`: presets, outputs, config round trip, checkpoint/resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import trimesh

from cfd3d.cli import main
from cfd3d.generate.config import (
    PRESETS,
    config_from_dict,
    config_to_dict,
    load_config,
    preset_config,
    save_config,
)
from cfd3d.generate.run import list_checkpoints
from cfd3d.priors.sd_random import save_random_pipeline

# Small exports keep each run to a few seconds; the steps themselves use the preset.
SMALL_EXPORT = {"mesh_resolution": 24, "turntable_frames": 3, "turntable_size": 32}


def write_config(path: Path, preset: str, prompt: str, **overrides) -> Path:
    config = replace(preset_config(preset, prompt), **{**SMALL_EXPORT, **overrides})
    path.write_text(save_config(config.resolved()))
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    return save_random_pipeline(tmp_path_factory.mktemp("sd") / "tiny", "tiny")


def check_outputs(out: Path, steps: int) -> None:
    assert (out / "summary.json").exists()
    mesh = trimesh.load(out / "model.glb", force="mesh")
    assert len(mesh.faces) > 0
    for name in ("turntable.mp4", "turntable.gif", "preview.png", "config.json"):
        assert (out / name).stat().st_size > 0, name
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(steps))
    assert {"t", "loss", "grad_norm", "noise_ms", "step_ms"} <= set(json.loads(lines[0]))
    assert list_checkpoints(out / "checkpoints")


def test_config_round_trips_through_json():
    for name in PRESETS:
        config = preset_config(name, "a red cube").resolved()
        assert config_from_dict(json.loads(save_config(config))) == config
        assert config_from_dict(config_to_dict(config)) == config


@pytest.mark.parametrize("method", ["cfd", "sds", "fsd"])
def test_cpu_demo_preset_runs_every_method(method, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.json", "cpu-demo", "a red cube", steps=2)
    out = tmp_path / "run"
    code, err = run_cli(
        ["generate", "--config", str(cfg), "--method", method, "--out", str(out), "-q"], capsys
    )
    assert code == 0, err
    check_outputs(out, 2)
    saved = load_config(out / "config.json")
    assert saved.method == method
    expected_noise = {"cfd": "integral", "sds": "fresh", "fsd": "panorama"}[method]
    assert saved.noise is not None and saved.noise.kind == expected_noise


@pytest.mark.parametrize("interior", [7.0, 40.0])
def test_the_exported_mesh_is_the_distilled_object(interior, tmp_path):
    # A distilled voxel field saturates at whatever density makes it opaque (about 7 for
    # the demo's cube); the mesh must be that object, not whatever pokes above a fixed level.
    from cfd3d.generate.outputs import write_outputs
    from cfd3d.generate.run import Run
    from cfd3d.priors.registry import load_prior

    config = replace(
        preset_config("cpu-demo", "a red cube"), **{**SMALL_EXPORT, "mesh_resolution": 48}
    )
    run = Run(config.resolved(), load_prior("embedded"))
    field = run.field
    res = field.config.resolution
    axis = torch.linspace(-field.config.bound, field.config.bound, res)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
    inside = (grid.abs().amax(dim=-1) < 0.3).float()  # a cube of half-size 0.3
    density = interior * inside + 0.01
    density[3, 3, 3] = 1.6 * interior  # one hot voxel far from the cube
    with torch.no_grad():  # invert softplus(raw + shift)
        raw = torch.log(torch.expm1(density)) - field.config.density_shift
        field.raw_density.copy_(raw)
    written = write_outputs(run, tmp_path)
    mesh = trimesh.load(written["glb"], force="mesh")
    lo, hi = mesh.bounds
    assert hi - lo == pytest.approx([0.6, 0.6, 0.6], abs=0.1)
    assert 0.3 * interior < float(written["mesh_threshold"]) < 0.7 * interior


@pytest.mark.parametrize("preset", ["sd-stage1", "sd-low-vram", "sd-cpu"])
def test_stable_diffusion_presets_run_two_steps_on_the_cpu(preset, sd_folder, tmp_path, capsys):
    # Renders at 64² (sd-stage1 uses 128², then 512²) with albedo shading to keep the test
    # to seconds on a 2-core CPU; everything else is the preset's (occupancy grid included).
    cfg = write_config(
        tmp_path / "c.json",
        preset,
        "a hamburger",
        steps=2,
        prior=str(sd_folder),
        device="cpu",
        render_size=64,
        p_albedo=1.0,
        p_textureless=0.0,
    )
    out = tmp_path / "run"
    code, err = run_cli(["generate", "--config", str(cfg), "--out", str(out), "-q"], capsys)
    assert code == 0, err
    assert (out / "turntable.mp4").exists() and (out / "summary.json").exists()


def test_stable_diffusion_folder_from_the_command_line(third_party_sd_folder, tmp_path, capsys):
    """The issue's acceptance command, with a folder that cfd3d did not write."""
    sd_folder = third_party_sd_folder
    out = tmp_path / "burger"
    code, err = run_cli(
        [
            "generate",
            "a hamburger",
            "--prior",
            str(sd_folder),
            "--steps",
            "3",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    for name in ("model.glb", "turntable.mp4", "turntable.gif", "preview.png", "config.json"):
        assert (out / name).exists(), name
    assert load_config(out / "config.json").preset == "sd-cpu"  # no GPU here


def test_rerunning_a_saved_config_reproduces_the_run(tmp_path, capsys):
    cfg = write_config(tmp_path / "c.json", "cpu-demo", "a blue cone", steps=4)
    for name in ("a", "b"):
        assert main(["generate", "--config", str(cfg), "--out", str(tmp_path / name), "-q"]) == 0
    rerun = tmp_path / "c"
    assert (
        main(
            ["generate", "--config", str(tmp_path / "a" / "config.json"), "--out", str(rerun), "-q"]
        )
        == 0
    )
    states = [
        torch.load(list_checkpoints(tmp_path / n / "checkpoints")[-1], weights_only=False)
        for n in ("a", "b", "c")
    ]
    for other in states[1:]:
        for key, value in states[0]["field"].items():
            assert torch.equal(value, other["field"][key])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    steps = 40
    cfg = write_config(
        tmp_path / "c.json", "cpu-demo", "a red cube", steps=steps, checkpoint_every=5
    )
    cmd = [sys.executable, "-m", "cfd3d.cli", "generate", "--config", str(cfg), "-q", "--out"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run([*cmd, str(whole)], env=_env(), check=True, timeout=300)

    proc = subprocess.Popen([*cmd, str(killed)], env=_env())
    deadline = time.monotonic() + 240
    while not (killed / "checkpoints" / "step_000010.pt").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()
    done = len((killed / "metrics.jsonl").read_text().splitlines())
    assert done < steps

    resume = [sys.executable, "-m", "cfd3d.cli", "generate", "--resume", "-q", "--out"]
    subprocess.run([*resume, str(killed)], env=_env(), check=True, timeout=300)
    a = torch.load(whole / "checkpoints" / f"step_{steps:06d}.pt", weights_only=False)
    b = torch.load(killed / "checkpoints" / f"step_{steps:06d}.pt", weights_only=False)
    for key in a["field"]:
        assert torch.equal(a["field"][key], b["field"][key]), key
    lines = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(steps))


def test_ctrl_c_writes_a_checkpoint_that_resumes(tmp_path, capsys, monkeypatch):
    from cfd3d.generate.run import Run

    cfg = write_config(tmp_path / "c.json", "cpu-demo", "a red cube", steps=6)
    out = tmp_path / "run"
    original = Run.take_step

    def interrupted(self):
        if self.step == 3:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Run, "take_step", interrupted)
    code, err = run_cli(["generate", "--config", str(cfg), "--out", str(out), "-q"], capsys)
    assert code == 130
    assert "--resume" in err
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_000003.pt"]
    monkeypatch.setattr(Run, "take_step", original)
    code, err = run_cli(["generate", "--resume", "--out", str(out), "-q"], capsys)
    assert code == 0, err
    check_outputs(out, 6)


def test_non_finite_gradients_are_skipped_then_stop_the_run(tmp_path, capsys, monkeypatch):
    from cfd3d.priors.embedded.prior import EmbeddedPrior

    cfg = write_config(
        tmp_path / "c.json", "cpu-demo", "a red cube", steps=30, checkpoint_every=2, max_bad_steps=3
    )
    out = tmp_path / "run"
    original = EmbeddedPrior.eps
    calls = {"n": 0}

    def flaky(self, x_t, t, embedding, cameras=None):
        calls["n"] += 1
        eps = original(self, x_t, t, embedding, cameras)
        return eps * float("nan") if calls["n"] > 4 else eps

    monkeypatch.setattr(EmbeddedPrior, "eps", flaky)
    code, err = run_cli(["generate", "--config", str(cfg), "--out", str(out), "-q"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "non-finite" in err and "step_000004.pt" in err
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["skipped"] for x in lines] == [False] * 4 + [True] * 3
    state = torch.load(out / "checkpoints" / "step_000004.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["field"].values())
    assert not (out / "summary.json").exists()


# ---------------------------------------------------------------------------- bad input


def _one_line_exit_2(args: list[str], capsys) -> str:
    code, err = run_cli(args, capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["generate", "", "--out", "{out}"], "empty"),
        (["generate", "   ", "--out", "{out}"], "empty"),
        (["generate", "a red dragon", "--out", "{out}"], "'dragon'"),
        (["generate", "a red cube", "--preset", "fast", "--out", "{out}"], "unknown preset"),
        (["generate", "a red cube", "--method", "vsd", "--out", "{out}"], "unknown method"),
        (["generate", "a red cube", "--formats", "stl", "--out", "{out}"], "stl"),
        (["generate", "a red cube", "--steps", "0", "--out", "{out}"], "steps"),
        (
            ["generate", "a red cube", "--config", "{out}/missing.json", "--out", "{out}"],
            "not found",
        ),
    ],
)
def test_bad_arguments_are_one_line_and_write_nothing(args, needle, tmp_path, capsys):
    out = tmp_path / "out"
    err = _one_line_exit_2([a.replace("{out}", str(out)) for a in args], capsys)
    assert needle in err
    assert not out.exists()
    if "dragon" in needle:
        assert "cfd3d prior-vocab" in err


def test_unknown_words_exit_2_through_the_console_script(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cfd3d.cli",
            "generate",
            "a fluffy cube",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=_env(),
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "'fluffy'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    cfg = write_config(root / "c.json", "cpu-demo", "a red cube", steps=2)
    assert main(["generate", "--config", str(cfg), "--out", str(root / "run"), "-q"]) == 0
    return root / "run"


def test_a_finished_run_is_never_overwritten_silently(finished_run, capsys):
    before = snapshot(finished_run)
    err = _one_line_exit_2(["generate", "a blue cone", "--out", str(finished_run)], capsys)
    assert "finished run" in err and "--overwrite" in err
    assert snapshot(finished_run) == before


def test_a_folder_with_an_unfinished_run_needs_resume(finished_run, tmp_path, capsys):
    folder = tmp_path / "unfinished"
    folder.mkdir()
    (folder / "config.json").write_bytes((finished_run / "config.json").read_bytes())
    before = snapshot(folder)
    err = _one_line_exit_2(["generate", "a blue cone", "--out", str(folder)], capsys)
    assert "--resume" in err
    assert snapshot(folder) == before


def test_resume_without_a_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = _one_line_exit_2(["generate", "--resume", "--out", str(tmp_path / "empty")], capsys)
    assert "nothing to resume" in err


def test_resume_with_a_corrupt_checkpoint(finished_run, tmp_path, capsys):
    import shutil

    folder = tmp_path / "corrupt"
    shutil.copytree(finished_run, folder)
    (folder / "summary.json").unlink()
    newest = list_checkpoints(folder / "checkpoints")[-1]
    newest.write_bytes(b"not a checkpoint")
    before = snapshot(folder)
    err = _one_line_exit_2(["generate", "--resume", "--out", str(folder)], capsys)
    assert "unreadable" in err and newest.name in err
    assert snapshot(folder) == before


def test_overwrite_replaces_a_finished_run(finished_run, tmp_path, capsys):
    import shutil

    folder = tmp_path / "again"
    shutil.copytree(finished_run, folder)
    cfg = write_config(tmp_path / "c.json", "cpu-demo", "a blue cone", steps=2)
    code, err = run_cli(
        ["generate", "--config", str(cfg), "--out", str(folder), "--overwrite", "-q"], capsys
    )
    assert code == 0, err
    assert load_config(folder / "config.json").prompt == "a blue cone"
    check_outputs(folder, 2)


def test_an_uncached_hub_id_fails_fast_with_an_actionable_line(tmp_path):
    env = {**_env(), "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_OFFLINE", None)
    start = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cfd3d.cli",
            "generate",
            "a hamburger",
            "--prior",
            "someone/not-a-real-model",
            "--steps",
            "3",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert time.monotonic() - start < 30
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "HF_HUB_OFFLINE" in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("cameras", "needle"),
    [
        ({"elevation_deg": [40.0, 0.0]}, "elevation_deg"),
        ({"fovy_deg": [40.0, 190.0]}, "fovy_deg"),
        ({"fovy_deg": [0.0, 60.0]}, "fovy_deg"),
        ({"distance": [0.5, 1.5]}, "distance"),
    ],
)
def test_invalid_camera_ranges_in_a_config_file(cameras, needle, tmp_path, capsys):
    data = config_to_dict(preset_config("cpu-demo", "a red cube").resolved())
    data["cameras"].update(cameras)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "out"
    err = _one_line_exit_2(["generate", "--config", str(path), "--out", str(out)], capsys)
    assert needle in err
    assert not out.exists()


def test_a_config_file_with_an_unknown_key(tmp_path, capsys):
    data = config_to_dict(preset_config("cpu-demo", "a red cube").resolved())
    data["learning_rate"] = 0.1
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    err = _one_line_exit_2(
        ["generate", "--config", str(path), "--out", str(tmp_path / "o")], capsys
    )
    assert "learning_rate" in err


def test_resume_refuses_options_that_would_change_the_run(finished_run, capsys):
    before = snapshot(finished_run)
    err = _one_line_exit_2(
        ["generate", "--resume", "--steps", "50", "--out", str(finished_run)], capsys
    )
    assert "--steps" in err
    assert snapshot(finished_run) == before


def test_help_explains_each_presets_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in PRESETS:
        config = preset_config(name, "a red cube")
        assert f"{name} {config.steps}" in text
        assert f"{name} {config.guidance_scale:g}" in text
    assert "--resume" in text and "--overwrite" in text


def test_perp_neg_weights_follow_the_azimuth_and_a_run_uses_them(tmp_path, capsys):
    from cfd3d.generate.run import Run
    from cfd3d.priors.registry import load_prior
    from cfd3d.scene.cameras import spherical_cameras

    prior = load_prior("embedded")
    config = replace(preset_config("cpu-demo", "a red head"), perp_neg=2.0).resolved()
    run = Run(config, prior)
    azimuth = torch.tensor([0.0, 90.0, 180.0, 300.0])
    cameras = spherical_cameras(azimuth, torch.full((4,), 15.0), torch.ones(4), torch.ones(4) * 50)
    condition = run.condition(cameras)
    (front, w_front), (back, w_back) = condition.perp_neg
    assert torch.allclose(w_front, torch.tensor([0.0, 0.0, 2.0, 0.0]), atol=1e-6)
    assert torch.allclose(w_back, torch.tensor([2.0, 0.0, 0.0, 1.0]), atol=1e-6)
    assert torch.equal(front[0], prior.embed(["a red head, front view"])[0])
    assert torch.equal(back[0], prior.embed(["a red head, back view"])[0])
    # Off by default, and without view prompts there is nothing to be opposite to.
    assert Run(replace(config, perp_neg=0.0), prior).condition(cameras).perp_neg == ()
    assert Run(replace(config, view_prompts=False), prior).condition(cameras).perp_neg == ()
    # The guided prediction changes exactly where a negative weighs.
    x = torch.randn(4, *prior.input_shape)
    t = torch.full((4,), 500)
    plain = prior.predict_eps(x, t, replace(condition, perp_neg=()), 3.0)
    perp = prior.predict_eps(x, t, condition, 3.0)
    change = (perp - plain).flatten(1).abs().amax(dim=1)
    assert change[1] < 1e-4 < float(change[[0, 2, 3]].min()), change  # batching: float noise

    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.json", "cpu-demo", "a red head", steps=2)
    code, err = run_cli(
        ["generate", "--config", str(cfg), "--perp-neg", "2", "--out", str(out), "-q"], capsys
    )
    assert code == 0, err
    assert load_config(out / "config.json").perp_neg == 2.0
    code, err = run_cli(["generate", "x", "--perp-neg", "-1", "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "perp_neg must be >= 0" in err
