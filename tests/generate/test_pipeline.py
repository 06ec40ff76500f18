"""Staged runs: ``cfd3d generate --pipeline NAME``, the field handoff, resume, bad input."""

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
from cfd3d.errors import ConfigError
from cfd3d.generate.config import load_config, preset_config, save_config
from cfd3d.generate.pipeline import (
    PIPELINES,
    Pipeline,
    Stage,
    configure,
    pipeline_config,
    resample_grid,
    start_from,
)
from cfd3d.generate.run import Run, list_checkpoints
from cfd3d.priors.registry import load_prior
from cfd3d.scene.encoding import HashGridConfig
from cfd3d.scene.nerf import NeRFConfig
from cfd3d.scene.voxel import VoxelGridConfig

SMALL_EXPORT = {"mesh_resolution": 24, "turntable_frames": 3, "turntable_size": 32}
ASSETS = ("model.glb", "turntable.mp4", "turntable.gif", "preview.png")

# The same patch for a child process: every pipeline's stages with small exports and a
# checkpoint every 2 steps.
_SMALL_CLI = f"""
import sys
from dataclasses import replace
from cfd3d.cli import main
from cfd3d.generate import pipeline

def small(factory):
    def make(prompt):
        p = factory(prompt)
        changes = dict({SMALL_EXPORT}, checkpoint_every=2)
        stages = tuple(replace(s, config=replace(s.config, **changes)) for s in p.stages)
        return replace(p, stages=stages)
    return make

for name, factory in list(pipeline.PIPELINES.items()):
    pipeline.PIPELINES[name] = small(factory)
sys.exit(main(sys.argv[1:]))
"""


def _small(factory, **changes):
    def make(prompt: str) -> Pipeline:
        p = factory(prompt)
        stages = tuple(
            replace(s, config=replace(s.config, **{**SMALL_EXPORT, **changes})) for s in p.stages
        )
        return replace(p, stages=stages)

    return make


@pytest.fixture
def small_pipelines(monkeypatch):
    """Every pipeline with small exports (the steps come from ``--steps-per-stage``)."""
    for name, factory in list(PIPELINES.items()):
        monkeypatch.setitem(PIPELINES, name, _small(factory, checkpoint_every=2))


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and modification time of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def one_line_exit_2(args: list[str], capsys) -> str:
    code, err = run_cli(args, capsys)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def check_stage(folder: Path, steps: int) -> None:
    for name in (*ASSETS, "config.json", "summary.json"):
        assert (folder / name).stat().st_size > 0, folder / name
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(steps))
    assert list_checkpoints(folder / "checkpoints")[-1].name == f"step_{steps:06d}.pt"


def final_field(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(list_checkpoints(folder / "checkpoints")[-1], weights_only=False)["field"]


# ------------------------------------------------------------------------ definitions


def test_every_pipeline_chains_and_its_stages_are_valid_configs():
    for name in PIPELINES:
        pipeline = pipeline_config(name, "a red cube")
        assert pipeline.name == name and len(pipeline.stages) >= 2
        configured = configure(
            pipeline, prior_mv="mv.pt" if pipeline.has_multiview else None, steps_per_stage=3
        )
        first, *later = configured.stages
        assert first.config.init_from is None
        for previous, stage in zip(configured.stages, later, strict=False):
            assert stage.config.init_from == f"../{previous.name}"
        assert all(s.config.steps == 3 for s in configured.stages)
        assert all(s.config.prior == "mv.pt" for s in configured.stages if s.multiview)


def test_the_paper_pipeline_is_the_reference_recipe():
    mv, sd = pipeline_config("paper", "a hamburger").stages
    assert mv.multiview and not sd.multiview
    c = mv.config
    assert (c.guidance_scale, c.steps, c.views_per_step, c.cameras.views_per_group) == (
        50.0,
        10000,
        4,
        4,
    )
    assert (c.render_size, c.render_schedule) == (64, ((5000, 256),))
    assert c.field == sd.config.field == "nerf"
    s = sd.config
    assert (s.guidance_scale, s.steps, s.render_size) == (70.0, 20000, 512)
    assert s.timesteps is not None and s.timesteps.knots[0][1] == pytest.approx(0.40)


def test_toy_stage2_refines_at_a_higher_resolution_and_lower_timesteps():
    first, second = pipeline_config("toy", "a red cube").stages
    assert first.config == replace(preset_config("cpu-demo", "a red cube"), preset="toy:stage1")
    assert second.config.render_size > first.config.render_size
    assert second.config.steps < first.config.steps
    schedule = second.config.timesteps
    assert schedule is not None and schedule.kind == "annealed"
    assert schedule.knots[0][1] == pytest.approx(0.21)  # cpu-demo's last timestep fraction
    assert schedule.knots[-1][1] < schedule.knots[0][1]


def test_resampling_keeps_the_field():
    gen = torch.Generator().manual_seed(0)
    grid = torch.randn(5, 5, 5, 2, generator=gen)
    assert torch.equal(resample_grid(grid, 5), grid)
    fine = resample_grid(grid, 9)  # every other vertex of the fine grid is a coarse vertex
    assert torch.allclose(fine[::2, ::2, ::2], grid, atol=1e-6)
    assert torch.allclose(fine[1, 0, 0], 0.5 * (grid[0, 0, 0] + grid[1, 0, 0]), atol=1e-6)


def test_start_from_hands_the_field_over():
    prior = load_prior("embedded")
    # no density ramp: its factor must carry over between stages (tests/generate/
    # test_density_scale.py), which is not what this test is about
    base = replace(preset_config("cpu-demo", "a red cube"), steps=2, density_scale=()).resolved()
    earlier = Run(base, prior)
    earlier.take_step()
    state = earlier.state_dict()
    same = Run(replace(base, seed=5), prior)
    start_from(same, state)
    for key, value in earlier.field.state_dict().items():
        assert torch.equal(same.field.state_dict()[key], value), key
    finer = replace(base, voxel=VoxelGridConfig(resolution=64, blob_radius=0.4, density_shift=-2))
    later = Run(finer, prior)
    start_from(later, state)
    points = torch.rand(500, 3) * 1.6 - 0.8
    with torch.no_grad():
        a, b = earlier.field(points), later.field(points)
    # Trilinear twice is not trilinear once: close, not equal, away from the vertices.
    assert (a.density - b.density).abs().max() < 0.1 * a.density.abs().max()
    assert torch.allclose(a.albedo, b.albedo, atol=0.05)
    tiny = NeRFConfig(encoding=HashGridConfig(n_levels=2, log2_table_size=8, max_resolution=16))
    nerf = Run(replace(base, field="nerf", nerf=tiny), prior)
    with pytest.raises(ConfigError, match="'nerf' field cannot start from"):
        start_from(nerf, state)


# ------------------------------------------------------------------------- end to end


def test_toy_pipeline_end_to_end(small_pipelines, tmp_path, capsys):
    out = tmp_path / "cube"
    code, err = run_cli(
        [
            "generate",
            "a red cube",
            "--pipeline",
            "toy",
            "--steps-per-stage",
            "2",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    record = json.loads((out / "pipeline.json").read_text())
    assert record == {
        "pipeline": "toy",
        "summary": pipeline_config("toy", "x").summary,
        "prompt": "a red cube",
        "seed": 0,
        "stages": ["stage1", "stage2"],
        "multiview": [],
    }
    for stage in record["stages"]:
        check_stage(out / stage, 2)
    stage1, stage2 = (
        load_config(out / "stage1/config.json"),
        load_config(out / "stage2/config.json"),
    )
    assert stage1.render_size == 32 and stage2.render_size == 64
    assert stage2.init_from == "../stage1"
    for name in ASSETS:  # the last stage's assets, at the top
        assert (out / name).read_bytes() == (out / "stage2" / name).read_bytes(), name
    assert len(trimesh.load(out / "model.glb", force="mesh").faces) > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and list(summary["stages"]) == ["stage1", "stage2"]
    assert summary["files"]["glb"] == str(out / "model.glb")

    # A stage's config.json repeats that stage elsewhere: its init_from is re-anchored.
    again = tmp_path / "again"
    code, err = run_cli(
        ["generate", "--config", str(out / "stage2/config.json"), "--out", str(again), "-q"], capsys
    )
    assert code == 0, err
    for key, value in final_field(out / "stage2").items():
        assert torch.equal(final_field(again)[key], value), key

    # A finished pipeline is never overwritten silently, by a pipeline or a single run.
    before = snapshot(out)
    for args in (["--pipeline", "toy"], []):
        err = one_line_exit_2(["generate", "a blue cone", *args, "--out", str(out)], capsys)
        assert "finished run" in err
    assert snapshot(out) == before


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def one_thread():
    """One torch thread, as in the child process (bit-identical float sums)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sigkill_in_stage2_then_resume(small_pipelines, one_thread, tmp_path, capsys):
    args = ["generate", "a blue cone", "--pipeline", "toy", "--steps-per-stage", "6", "-q"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main([*args, "--out", str(whole)]) == 0

    proc = subprocess.Popen(
        [sys.executable, "-c", _SMALL_CLI, *args, "--out", str(killed)], env=_env()
    )
    deadline = time.monotonic() + 120
    while not (killed / "stage2" / "checkpoints" / "step_000002.pt").exists():
        assert proc.poll() is None, "the pipeline ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "stage2" / "summary.json").exists()
    assert not (killed / "summary.json").exists()
    stage1 = snapshot(killed / "stage1")

    err = one_line_exit_2(
        ["generate", "--resume", "--steps-per-stage", "3", "--out", str(killed)], capsys
    )
    assert "--steps-per-stage" in err
    code, err = run_cli(["generate", "--resume", "-q", "--out", str(killed)], capsys)
    assert code == 0, err
    assert snapshot(killed / "stage1") == stage1  # the finished stage is untouched
    check_stage(killed / "stage2", 6)
    for key, value in final_field(whole / "stage2").items():  # as if never interrupted
        assert torch.equal(final_field(killed / "stage2")[key], value), key
    assert (killed / "summary.json").exists() and (killed / "model.glb").exists()


def test_resume_restarts_a_stage_that_had_no_checkpoint(small_pipelines, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["generate", "a red cube", "--pipeline", "toy", "--steps-per-stage", "2", "-q"]
    assert main([*args, "--out", str(out)]) == 0
    finished = final_field(out / "stage2")
    # As if killed in stage 2 before its first checkpoint, mid-way through its metrics.
    for name in ("summary.json", "stage2/summary.json", *ASSETS):
        (out / name).unlink()
    for path in list_checkpoints(out / "stage2" / "checkpoints"):
        path.unlink()
    stage1 = snapshot(out / "stage1")
    err = one_line_exit_2(["generate", "a red cube", "--out", str(out)], capsys)
    assert "--resume" in err  # an unfinished pipeline is not overwritten either
    code, err = run_cli(["generate", "--resume", "-q", "--out", str(out)], capsys)
    assert code == 0, err
    assert snapshot(out / "stage1") == stage1
    check_stage(out / "stage2", 2)
    for key, value in finished.items():
        assert torch.equal(final_field(out / "stage2")[key], value), key


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--pipeline", "fast"], "unknown pipeline 'fast'; valid: toy, paper, paper-sd"),
        (["--pipeline", "toy", "--prior-mv", "mv.pt"], "no multi-view"),
        (["--pipeline", "paper"], "--prior-mv"),
        (["--prior-mv", "mv.pt"], "--pipeline"),
        (["--steps-per-stage", "3"], "--pipeline"),
        (["--pipeline", "toy", "--steps", "3"], "--steps-per-stage"),
        (["--pipeline", "toy", "--steps-per-stage", "0"], "--steps-per-stage"),
        (["--pipeline", "toy", "--preset", "cpu-demo"], "--preset"),
    ],
)
def test_bad_pipeline_arguments_are_one_line_and_write_nothing(args, needle, tmp_path, capsys):
    out = tmp_path / "out"
    err = one_line_exit_2(["generate", "a red cube", *args, "--out", str(out)], capsys)
    assert needle in err
    assert not out.exists()


def test_init_from_that_does_not_exist(tmp_path, capsys):
    config = replace(preset_config("cpu-demo", "a red cube"), init_from="../nowhere")
    path = tmp_path / "c.json"
    path.write_text(save_config(config.resolved()))
    out = tmp_path / "out"
    err = one_line_exit_2(["generate", "--config", str(path), "--out", str(out)], capsys)
    assert f"init_from '{tmp_path.parent / 'nowhere'}' not found" in err
    assert not out.exists()


def test_help_explains_the_pipelines(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in PIPELINES:
        assert f"{name}: " in text
    for flag in ("--pipeline NAME", "--prior-mv PATH", "--steps-per-stage N"):
        assert flag in text


def test_stages_that_do_not_chain_are_refused_before_any_stage(monkeypatch, tmp_path, capsys):
    def broken(prompt: str) -> Pipeline:
        first = Stage("stage1", preset_config("cpu-demo", prompt))
        return Pipeline(
            "broken",
            "voxel then NeRF",
            (first, Stage("stage2", replace(first.config, field="nerf"))),
        )

    monkeypatch.setitem(PIPELINES, "broken", broken)
    out = tmp_path / "out"
    err = one_line_exit_2(
        ["generate", "a red cube", "--pipeline", "broken", "--out", str(out)], capsys
    )
    assert "stage2" in err and "'nerf' field cannot start from" in err
    assert not out.exists()


def test_prior_mv_must_be_a_multiview_checkpoint(tmp_path, capsys):
    sd = tmp_path / "sd"  # a diffusers folder: refused before anything is loaded
    sd.mkdir()
    out = tmp_path / "out"
    err = one_line_exit_2(
        [
            "generate",
            "a hamburger",
            "--pipeline",
            "paper",
            "--prior-mv",
            str(sd),
            "--prior",
            str(sd),
            "--out",
            str(out),
        ],
        capsys,
    )
    assert "multi-view" in err and "--prior-mv" in err
    assert not out.exists()


# ---------------------------------------------------------------- the paper's pipeline


def _tiny_paper(factory):
    """The paper pipeline at CPU-test sizes: the tiny MVDream's 32² latents take 32²
    renders, the tiny SD's 8² latents 16²; a small hash grid, 8 samples per ray."""
    nerf = NeRFConfig(encoding=HashGridConfig(n_levels=4, log2_table_size=12, max_resolution=64))

    def make(prompt: str) -> Pipeline:
        p = factory(prompt)
        stages = tuple(
            replace(
                s,
                config=replace(
                    s.config,
                    **SMALL_EXPORT,
                    render_size=32 if s.multiview else 16,
                    render_schedule=(),
                    n_samples=8,
                    nerf=nerf,
                ),
            )
            for s in p.stages
        )
        return replace(p, stages=stages)

    return make


def test_paper_pipeline_end_to_end_with_tiny_checkpoints(monkeypatch, tmp_path, capsys):
    """MVDream (an LDM single file) -> Stable Diffusion (a diffusers folder); interrupted in
    stage 2, then resumed with stage 1 untouched."""
    from cfd3d.priors.mvdream_random import save_random_mvdream
    from cfd3d.priors.sd_random import save_random_pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setitem(PIPELINES, "paper", _tiny_paper(PIPELINES["paper"]))
    mv = save_random_mvdream(tmp_path / "tiny-4view.pt")
    sd = save_random_pipeline(tmp_path / "sd", "tiny")
    out = tmp_path / "burger"
    original = Run.take_step

    def interrupted(self):
        if self.config.prior == str(sd) and self.step == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Run, "take_step", interrupted)
    args = ["--prior-mv", str(mv), "--prior", str(sd), "--steps-per-stage", "3", "--out", str(out)]
    code, err = run_cli(["generate", "a hamburger", "--pipeline", "paper", "-q", *args], capsys)
    assert code == 130 and f"--resume --out {out}" in err
    stage1 = snapshot(out / "stage1")
    check_stage(out / "stage1", 3)
    assert [p.name for p in list_checkpoints(out / "stage2/checkpoints")] == ["step_000002.pt"]
    assert not (out / "summary.json").exists()

    monkeypatch.setattr(Run, "take_step", original)
    code, err = run_cli(["generate", "--resume", "-q", "--out", str(out)], capsys)
    assert code == 0, err
    assert snapshot(out / "stage1") == stage1
    check_stage(out / "stage2", 3)
    first, second = load_config(out / "stage1/config.json"), load_config(out / "stage2/config.json")
    assert first.prior == str(mv) and second.prior == str(sd)
    assert first.cameras.views_per_group == first.views_per_step == 4
    assert (first.guidance_scale, second.guidance_scale) == (50.0, 70.0)
    assert json.loads((out / "pipeline.json").read_text())["multiview"] == ["stage1"]
    for name in ASSETS:
        assert (out / name).read_bytes() == (out / "stage2" / name).read_bytes(), name
