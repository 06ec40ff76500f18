"""VSD, ISM and SDI in ``cfd3d generate``: two steps of every preset, a resumed run equal
to an uninterrupted one (VSD's trainable copy included), bad settings as one line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cfd3d.cli import main
from cfd3d.generate.command import load_prior_for
from cfd3d.generate.config import load_config, preset_config, save_config
from cfd3d.generate.run import Run
from cfd3d.priors.sd_random import save_random_pipeline

NEW_METHODS = ("vsd", "ism", "sdi")
SMALL_EXPORT = {"mesh_resolution": 24, "turntable_frames": 3, "turntable_size": 32}


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    return save_random_pipeline(tmp_path_factory.mktemp("sd") / "tiny", "tiny")


def _config(preset: str, method: str, sd_folder: Path | None = None, **overrides):
    prompt = "a red cube" if preset == "cpu-demo" else "a hamburger"
    config = replace(preset_config(preset, prompt), method=method, **SMALL_EXPORT, **overrides)
    if preset != "cpu-demo":
        # 32² albedo renders keep a step to seconds; the rest is the preset's
        config = replace(
            config,
            prior=str(sd_folder),
            device="cpu",
            render_size=32,
            render_schedule=(),
            p_albedo=1.0,
            p_textureless=0.0,
        )
    return config.resolved()


@pytest.mark.parametrize("method", NEW_METHODS)
def test_cpu_demo_runs_the_new_methods_end_to_end(method, tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(save_config(_config("cpu-demo", method, steps=2)))
    out = tmp_path / "run"
    code = main(["generate", "--config", str(cfg), "--out", str(out), "-q"])
    assert code == 0, capsys.readouterr().err
    saved = load_config(out / "config.json")
    assert saved.method == method and saved.noise is not None and saved.noise.kind == "fresh"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 1]
    assert all(x["grad_norm"] > 0 and not x["skipped"] for x in lines)
    assert (out / "model.glb").stat().st_size > 0


@pytest.mark.parametrize("preset", ["sd-stage1", "sd-low-vram", "sd-cpu"])
@pytest.mark.parametrize("method", NEW_METHODS)
def test_stable_diffusion_presets_take_two_steps(method, preset, sd_folder):
    config = _config(preset, method, sd_folder, steps=2)
    run = Run(config, load_prior_for(config))
    results = [run.take_step() for _ in range(2)]
    assert all(r.grad_norm > 0 and not r.skipped for r in results)
    for p in run.field.parameters():
        assert torch.isfinite(p).all()


def _run_steps(config, prior, steps: int, state: dict | None = None) -> Run:
    run = Run(config, prior)
    if state is not None:
        run.load_state_dict(state)
    while run.step < steps:
        run.take_step()
    return run


@pytest.mark.parametrize(
    ("preset", "method"), [*(("cpu-demo", m) for m in NEW_METHODS), ("sd-cpu", "vsd")]
)
def test_a_resumed_run_equals_an_uninterrupted_one(preset, method, sd_folder, tmp_path):
    config = _config(preset, method, sd_folder, steps=4)
    prior = load_prior_for(config)
    whole = _run_steps(config, prior, 4)
    path = tmp_path / "half.pt"
    torch.save(_run_steps(config, prior, 2).state_dict(), path)
    resumed = _run_steps(config, prior, 4, torch.load(path, weights_only=False))
    a, b = whole.state_dict(), resumed.state_dict()
    for key, value in a["field"].items():
        assert torch.equal(value, b["field"][key]), key
    if method == "vsd":  # the trainable copy is checkpointed and resumes exactly
        for x, y in zip(
            a["rule"]["vsd_copy"]["weights"], b["rule"]["vsd_copy"]["weights"], strict=True
        ):
            assert torch.equal(x, y)
    else:
        assert "rule" not in a


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"vsd": {"lora_rank": 0}}, "vsd.lora_rank must be a positive integer"),
        ({"ism": {"inversion_steps": 0}}, "ism.inversion_steps must be a positive integer"),
        ({"sdi": {"inversion_steps": -3}}, "sdi.inversion_steps must be a positive integer"),
    ],
)
def test_bad_method_settings_are_one_line_and_exit_code_2(override, needle, tmp_path, capsys):
    data = json.loads(save_config(_config("cpu-demo", "vsd", steps=2)))
    for section, values in override.items():
        data[section].update(values)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(data))
    out = tmp_path / "out"
    assert main(["generate", "--config", str(cfg), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert not out.exists()


def test_an_unknown_method_is_one_line_and_exit_code_2(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", "a red cube", "--method", "dds", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "valid: cfd, sds, fsd, vsd, ism, sdi" in err
