"""The job logic of `cfd3d serve`, without a browser: runs, progress, cancel and resume,
the queue, and errors that become messages."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from cfd3d.batch.plan import RunSpec
from cfd3d.cli import main
from cfd3d.errors import ConfigError
from cfd3d.generate.command import drive, load_prior_for
from cfd3d.generate.config import save_config
from cfd3d.generate.run import Run, list_checkpoints
from cfd3d.serve.jobs import (
    JobRunner,
    Progress,
    Request,
    ServeSettings,
    StepReporter,
    request_from_form,
)

# Small exports keep each run to a few seconds (as in tests/generate/test_generate.py).
SMALL_EXPORT = {"mesh_resolution": 24, "turntable_frames": 3, "turntable_size": 32}
GENERATE_FILES = {
    "config.json",
    "metrics.jsonl",
    "checkpoints",
    "summary.json",
    "model.glb",
    "turntable.mp4",
    "turntable.gif",
    "preview.png",
}


def make_runner(out: Path, **settings) -> JobRunner:
    defaults = {"overrides": SMALL_EXPORT, "preview_every": 2, "preview_size": 32}
    return JobRunner(ServeSettings(out, **{**defaults, **settings}))


@pytest.fixture
def runner(tmp_path):
    runner = make_runner(tmp_path / "out")
    yield runner
    runner.close(timeout=60)


def wait_for_step(job, step: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while job.progress is None or job.progress.step < step:
        assert job.outcome is None, job.outcome
        assert time.monotonic() < deadline, "the job did not get going"
        time.sleep(0.01)


def test_request_from_form_reads_the_page_and_refuses_bad_values():
    assert request_from_form(" a red cube ", "", "", "", None, None) == Request("a red cube")
    request = request_from_form("a red cube", "sd", "sds", "sd-cpu", 3.0, 12.0)
    assert request == Request("a red cube", "sd", "sds", "sd-cpu", 3, 12)
    for steps in (0, -5, 2.5):
        with pytest.raises(ConfigError, match="steps must be a whole number"):
            request_from_form("a red cube", "", "", "", 0, steps)
    with pytest.raises(ConfigError, match="seed"):
        request_from_form("a red cube", "", "", "", -1, None)
    with pytest.raises(ConfigError, match="prompt is empty"):
        request_from_form("  ", "", "", "", 0, None)


def test_a_request_runs_into_a_folder_laid_out_like_generate(runner, tmp_path):
    job = runner.submit(Request("a red cube", steps=4))
    outcome = job.wait(120)
    assert outcome is not None and outcome.status == "finished", outcome
    spec = RunSpec("a red cube", preset="cpu-demo", steps=4, overrides=SMALL_EXPORT)
    assert outcome.folder == tmp_path / "out" / spec.folder_name()
    assert {p.name for p in outcome.folder.iterdir()} == GENERATE_FILES
    assert set(outcome.files) == {"mesh", "mp4", "gif", "preview"}
    assert all(path.parent == outcome.folder and path.exists() for path in outcome.files.values())
    assert job.progress is not None and (job.progress.step, job.progress.steps) == (4, 4)
    step, image = job.preview
    assert step == 4 and image.shape == (32, 32, 3) and image.dtype.name == "uint8"
    lines = (outcome.folder / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1, 2, 3]


def test_the_step_reporter_reports_every_step_and_previews_every_n(tmp_path):
    config = RunSpec("a red cube", steps=5, overrides=SMALL_EXPORT).config()
    run = Run(config, load_prior_for(config))
    progress: list[Progress] = []
    previews: list[int] = []
    reporter = StepReporter(
        run,
        every=2,
        size=24,
        should_stop=lambda: False,
        on_progress=progress.append,
        on_preview=lambda step, image: previews.append(step),
    )
    (tmp_path / "run").mkdir()
    drive(run, tmp_path / "run", True, reporter)
    assert [p.step for p in progress] == [1, 2, 3, 4, 5]
    assert all(p.steps == 5 and p.eta_s >= 0 for p in progress) and progress[-1].eta_s == 0
    logged = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [p.loss for p in progress] == pytest.approx(
        [json.loads(line)["loss"] for line in logged], rel=1e-6
    )
    assert previews == [1, 2, 4]


def test_cancel_writes_a_checkpoint_and_the_same_request_resumes_bit_identically(runner, tmp_path):
    steps = 8
    request = Request("a red cube", seed=3, steps=steps)
    job = runner.submit(request)
    wait_for_step(job, 2)
    job.cancel()
    outcome = job.wait(120)
    assert outcome is not None and outcome.status == "cancelled", outcome
    folder = outcome.folder
    assert not (folder / "summary.json").exists()
    stopped = int(outcome.message.split("cancelled at step ")[1].split()[0])
    assert 2 <= stopped < steps
    assert list_checkpoints(folder / "checkpoints")[-1].name == f"step_{stopped:06d}.pt"

    again = runner.submit(request)
    outcome = again.wait(120)
    assert outcome is not None and outcome.status == "finished", outcome
    assert again.folder == folder and again.note == f"continued from step {stopped}"

    # the same run made alone by `cfd3d generate`, without previews or a stop
    config_file = tmp_path / "config.json"
    config_file.write_text(save_config(again.config))
    whole = tmp_path / "whole"
    assert main(["generate", "--config", str(config_file), "--out", str(whole), "-q"]) == 0
    name = f"step_{steps:06d}.pt"
    a = torch.load(whole / "checkpoints" / name, weights_only=False)
    b = torch.load(folder / "checkpoints" / name, weights_only=False)
    for key in a["field"]:
        assert torch.equal(a["field"][key], b["field"][key]), key
    assert (whole / "model.glb").read_bytes() == (folder / "model.glb").read_bytes()
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(steps))

    before = (folder / "summary.json").read_bytes()
    third = runner.submit(request).wait(60)
    assert third is not None and third.status == "finished" and "made earlier" in third.message
    assert (folder / "summary.json").read_bytes() == before


def test_runs_take_the_device_one_at_a_time_in_order(runner):
    first = runner.submit(Request("a red cube", steps=3))
    second = runner.submit(Request("a blue cone", steps=3))
    third = runner.submit(Request("a green torus", steps=3))
    assert runner.ahead_of(second) == 1 and runner.ahead_of(third) == 2
    third.cancel()
    for job in (first, second, third):
        assert job.wait(120) is not None
    assert [first.status, second.status, third.status] == ["finished", "finished", "cancelled"]
    assert third.outcome.message == "cancelled before it started"
    assert not third.folder.exists()
    end_of_first = (first.folder / "summary.json").stat().st_mtime
    assert (second.folder / "config.json").stat().st_mtime >= end_of_first


def test_user_errors_end_the_job_with_their_message(runner, monkeypatch, tmp_path):
    job = runner.submit(Request("a purple dragon", steps=3))
    outcome = job.wait(60)
    assert outcome.status == "failed"
    assert "'dragon'" in outcome.message and "cfd3d prior-vocab" in outcome.message
    assert "\n" not in outcome.message and not job.folder.exists()

    monkeypatch.delenv("CFD3D_SD_MODEL", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    outcome = runner.submit(Request("a red cube", prior="sd", steps=2)).wait(60)
    assert outcome.status == "failed" and "CFD3D_SD_MODEL" in outcome.message

    for request, words in (
        (Request("a red cube", method="magic"), "unknown method 'magic'"),
        (Request("a red cube", preset="huge"), "unknown preset 'huge'"),
    ):
        with pytest.raises(ConfigError, match=words):
            runner.submit(request)


def test_a_bug_fails_the_job_with_a_pointer_to_the_log(runner, monkeypatch, capsys):
    def broken(self):
        raise RuntimeError("boom")

    monkeypatch.setattr(Run, "take_step", broken)
    outcome = runner.submit(Request("a red cube", steps=2)).wait(60)
    assert outcome.status == "failed"
    assert outcome.message.startswith("internal error (RuntimeError: boom)")
    assert "Traceback" in capsys.readouterr().err


def test_close_stops_the_running_job_with_a_checkpoint(tmp_path):
    runner = make_runner(tmp_path / "out")
    job = runner.submit(Request("a red cube", steps=200))
    waiting = runner.submit(Request("a blue cone", steps=2))
    wait_for_step(job, 1)
    runner.close(timeout=60)
    assert job.status == "cancelled" and waiting.status == "cancelled"
    assert list_checkpoints(job.folder / "checkpoints")
    with pytest.raises(RuntimeError, match="closed"):
        runner.submit(Request("a red cube"))
