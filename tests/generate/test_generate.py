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
        (["generate", "a red cube", "--method", "dds", "--out", "{out}"], "unknown method"),
        (["generate", "a red cube", "--formats", "stl", "--out", "{out}"], "stl"),
        (["generate", "a red cube", "--steps", "0", "--out", "{out}"], "steps"),
        (["generate", "a red cube", "--device", "foo", "--out", "{out}"], "unknown device 'foo'"),
        (["generate", "a red cube", "--prior", "gmm", "--out", "{out}"], "not a text-to-image"),
        (["generate", "a red \udcff\udcfe cube", "--out", "{out}"], "not UTF-8"),
        (["generate", "a red\x1b[2J cube", "--out", "{out}"], "control character \\x1b"),
        (["generate", "a red cube 3", "--out", "{out}"], "character(s) '3'"),
        (["generate", "a red cube", "--negative-prompt", "bad\nworse", "--out", "{out}"], "\\n"),
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
    assert len(err) < 300
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


def test_resume_skips_a_truncated_checkpoint_for_the_previous_one(tmp_path, capsys):
    cfg = write_config(tmp_path / "c.json", "cpu-demo", "a red cube", steps=4, checkpoint_every=2)
    folder = tmp_path / "run"
    assert main(["generate", "--config", str(cfg), "--out", str(folder), "-q"]) == 0
    (folder / "summary.json").unlink()
    newest = folder / "checkpoints" / "step_000004.pt"
    whole = newest.read_bytes()
    newest.write_bytes(whole[: len(whole) // 2])
    code, err = run_cli(["generate", "--resume", "--out", str(folder), "-q"], capsys)
    assert code == 0, err
    assert f"skipped checkpoint '{newest}'" in err and "SHA-256" in err
    assert newest.read_bytes() == whole  # steps 2-4 taken again from step_000002.pt
    check_outputs(folder, 4)


def test_resume_with_a_config_but_no_checkpoint_starts_at_step_0(finished_run, tmp_path, capsys):
    """A run stopped before its first checkpoint is not lost: config.json is enough."""
    folder = tmp_path / "early"
    folder.mkdir()
    (folder / "config.json").write_bytes((finished_run / "config.json").read_bytes())
    code, err = run_cli(["generate", "--resume", "--out", str(folder), "-q"], capsys)
    assert code == 0, err
    check_outputs(folder, 2)
    final = "checkpoints/step_000002.pt"
    assert (folder / final).read_bytes() == (finished_run / final).read_bytes()


def test_a_very_long_run_prints_its_estimate_and_stops_cleanly(tmp_path, capsys, monkeypatch):
    from cfd3d.generate.run import Run

    cfg = write_config(tmp_path / "c.json", "cpu-demo", "a red cube", steps=2)
    out = tmp_path / "run"
    original = Run.take_step

    def interrupted(self):
        if self.step == 4:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Run, "take_step", interrupted)
    args = ["generate", "--config", str(cfg), "--steps", "10000000", "--out", str(out), "-q"]
    code, err = run_cli(args, capsys)
    assert code == 130
    warning = next(line for line in err.splitlines() if line.startswith("warning:"))
    assert "9999997 steps to go take about" in warning and " h on cpu" in warning
    assert "SIGTERM" in warning and "--resume" in warning
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_000004.pt"]


def test_a_short_run_prints_no_estimate(finished_run, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.json", "cpu-demo", "a red cube", steps=5)
    code, err = run_cli(["generate", "--config", str(cfg), "--out", str(tmp_path / "r")], capsys)
    assert code == 0 and "warning" not in err


def test_resume_with_steps_continues_a_finished_run_deterministically(tmp_path, capsys):
    """--resume --steps 8 on a finished 4-step run: steps 0-3 stay, steps 4-7 follow the
    annealed schedule defined for 8 steps; two copies end bit-identical."""
    import shutil

    from cfd3d.distill.timesteps import PAPER_KNOTS, TimestepSchedule, timestep_fraction
    from cfd3d.priors.registry import load_prior

    schedule = TimestepSchedule(kind="annealed", knots=PAPER_KNOTS)
    cfg = write_config(tmp_path / "c.json", "cpu-demo", "a red cube", steps=4, timesteps=schedule)
    first = tmp_path / "a"
    assert main(["generate", "--config", str(cfg), "--out", str(first), "-q"]) == 0
    before = [json.loads(x) for x in (first / "metrics.jsonl").read_text().splitlines()]
    second = tmp_path / "b"
    shutil.copytree(first, second)
    for folder in (first, second):
        code, err = run_cli(["generate", "--resume", "--steps", "8", "--out", str(folder)], capsys)
        assert code == 0, err
        check_outputs(folder, 8)
        assert load_config(folder / "config.json").steps == 8
        assert json.loads((folder / "summary.json").read_text())["steps"] == 8
    final = "checkpoints/step_000008.pt"
    assert (first / final).read_bytes() == (second / final).read_bytes()
    after = [json.loads(x) for x in (first / "metrics.jsonl").read_text().splitlines()]
    assert after[:4] == before
    index = load_prior("embedded").schedule.index
    expected = [int(index(timestep_fraction(schedule, i, 8))) for i in range(4, 8)]
    assert [x["t"] for x in after[4:]] == expected
    code, err = run_cli(["generate", "--resume", "--steps", "6", "--out", str(first)], capsys)
    assert code == 2 and "at step 8 already" in err and err.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_one_line(tmp_path, capsys):
    out = tmp_path / "o"
    err = _one_line_exit_2(
        ["generate", "a red cube", "--device", "cuda", "--out", str(out)], capsys
    )
    assert "no CUDA GPU" in err and "--device cpu" in err
    assert not out.exists()


def test_a_2000_word_prompt_is_refused_with_a_short_line(tmp_path, capsys):
    prompt = " ".join(["cube"] * 2000)
    err = _one_line_exit_2(["generate", prompt, "--out", str(tmp_path / "o")], capsys)
    assert "9999 characters" in err and len(err) < 300


@pytest.mark.parametrize("betas", [[0.9, 1.0], [-0.1, 0.99], [0.9, 2.0]])
def test_adam_betas_outside_0_1_in_a_config_file(betas, tmp_path, capsys):
    data = config_to_dict(preset_config("cpu-demo", "a red cube").resolved())
    data["betas"] = betas
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "out"
    err = _one_line_exit_2(["generate", "--config", str(path), "--out", str(out)], capsys)
    assert "betas" in err and not out.exists()


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
        ({"elevation_deg": ["low", 40]}, "elevation_deg"),
        ({"fovy_deg": [float("nan"), 60.0]}, "fovy_deg"),
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
        ["generate", "--resume", "--seed", "5", "--guidance", "9", "--out", str(finished_run)],
        capsys,
    )
    assert "--seed, --guidance" in err and "--steps" not in err
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


# ------------------------------------------------------------- the noise a CFD step feeds


def _noise_fed_by_generate(method: str) -> tuple[list[torch.Tensor], list[tuple]]:
    """The noise ``generate``'s step hands to the update rule in two steps of four views of
    a solid ball (radius 0.4), and each view's depth, opacity and cameras."""
    from cfd3d.generate.run import Run
    from cfd3d.priors.registry import load_prior

    config = replace(preset_config("cpu-demo", "a red cube"), method=method, views_per_step=4)
    run = Run(config.resolved(), load_prior("embedded"))
    field = run.field
    axis = torch.linspace(-field.config.bound, field.config.bound, field.config.resolution)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
    density = 60.0 * (grid.norm(dim=-1) < 0.4).float() + 1e-3
    with torch.no_grad():  # invert softplus(raw + shift)
        field.raw_density.copy_(torch.log(torch.expm1(density)) - field.config.density_shift)
    noise, gradient = run.noise, run.rule.gradient
    fed, views = [], []

    def recorded_noise(out, cameras, step):
        views.append((out.depth.detach(), out.opacity.detach(), cameras))
        return noise(out, cameras, step)

    def recorded_gradient(z, t, condition, scale, eps, weighting, step):
        fed.append(eps.detach().clone())
        return gradient(z, t, condition, scale, eps, weighting, step)

    run.noise = type("Recorded", (), {"__call__": staticmethod(recorded_noise)})()
    run.noise.refresh = noise.refresh  # type: ignore[attr-defined]
    run.rule.gradient = recorded_gradient  # type: ignore[method-assign]
    run.take_step()
    run.take_step()
    return fed, views


def _surface_pairs(fed, views, a: tuple[int, int], b: tuple[int, int], radius: float = 0.015):
    """Noise values ``(n, 2)`` at opaque pixels of view ``a`` and ``b`` (``(step, view)``)
    whose surface points lie within ``radius`` of each other."""
    points = []
    for step, view in (a, b):
        depth, opacity, cameras = views[step]
        origins, dirs = cameras.rays(depth.shape[1], depth.shape[2])
        mask = opacity[view, ..., 0] > 0.9
        xyz = (origins + dirs * depth)[view][mask]
        eps = fed[step][view].permute(1, 2, 0)[mask]
        points.append((xyz, eps))
    (xa, ea), (xb, eb) = points
    dist, nearest = torch.cdist(xa, xb).min(dim=1)
    near = dist < radius
    return torch.stack([ea[near].flatten(), eb[nearest[near]].flatten()], dim=1)


def _correlations(method: str) -> tuple[float, float, int]:
    fed, views = _noise_fed_by_generate(method)
    same_step = [((0, i), (0, j)) for i in range(4) for j in range(i + 1, 4)]
    next_step = [((0, i), (1, j)) for i in range(4) for j in range(4)]
    result = []
    for pairs in (same_step, next_step):
        values = torch.cat([_surface_pairs(fed, views, a, b) for a, b in pairs])
        result.append((float(torch.corrcoef(values.T)[0, 1]), len(values)))
    (across_views, n_views), (across_steps, n_steps) = result
    return across_views, across_steps, min(n_views, n_steps)


def test_a_cfd_step_feeds_noise_consistent_across_views_and_steps():
    """The noise ``generate`` hands to the update rule, read at the same surface point: CFD
    (integral noise) must agree between the views of a step and from one step to the next
    (γ = 1e-2 refreshes 1 % of its variance); SDS (fresh noise) must not. Pixel footprints
    overlap only partly (points within 0.015 of a 0.04-wide footprint), hence about 0.45,
    not 1, for CFD; 300+ pixel pairs put chance correlations near ±0.05."""
    views, steps, n = _correlations("cfd")
    assert n > 300
    assert views > 0.3 and steps > 0.3, (views, steps)
    fresh_views, fresh_steps, _ = _correlations("sds")
    assert abs(fresh_views) < 0.1 and abs(fresh_steps) < 0.1, (fresh_views, fresh_steps)


def test_checkpoint_every_minutes_adds_checkpoints_without_changing_the_run(
    tmp_path, capsys, monkeypatch
):
    from cfd3d.generate.run import Run

    cfg = write_config(tmp_path / "c.json", "cpu-demo", "a red cube", steps=4)
    saves: list[int] = []
    original = Run.save_checkpoint

    def counted(self, folder):
        saves.append(self.step)
        return original(self, folder)

    monkeypatch.setattr(Run, "save_checkpoint", counted)
    timed, plain = tmp_path / "timed", tmp_path / "plain"
    args = ["generate", "--config", str(cfg), "-q", "--out"]
    assert main([*args, str(timed), "--checkpoint-every-minutes", "1e-9"]) == 0
    assert saves == [1, 2, 3, 4]
    saves.clear()
    assert main([*args, str(plain)]) == 0
    assert saves == [4]
    final = "checkpoints/step_000004.pt"
    assert (timed / final).read_bytes() == (plain / final).read_bytes()
    out = tmp_path / "bad"
    err = _one_line_exit_2([*args, str(out), "--checkpoint-every-minutes", "0"], capsys)
    assert "--checkpoint-every-minutes" in err and not out.exists()
