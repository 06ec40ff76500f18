"""The page's pure parts: the status line and the preview enlargement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio", reason="the web app needs the ui extra: pip install 'cfd3d[ui]'")

from cfd3d.serve.app import build_app, enlarge, status_line
from cfd3d.serve.jobs import Job, JobRunner, Outcome, Progress, Request, ServeSettings


def make_job(tmp_path: Path) -> Job:
    config, folder = JobRunner(ServeSettings(tmp_path)).resolve(Request("a red cube"))
    return Job(Request("a red cube"), config, folder)


def test_the_status_line_follows_a_job(tmp_path):
    job = make_job(tmp_path)
    assert status_line(job, 2) == "waiting for the device: 2 run(s) ahead"
    job.status = "running"
    assert status_line(job, 0).startswith("loading the prior")
    job.progress = Progress(step=40, steps=500, t=812, loss=0.012345, eta_s=38.4)
    job.note = "continued from step 30"
    assert status_line(job, 0) == (
        "step 40 / 500 · t 812 · loss 0.01235 · ETA 38 s (continued from step 30)"
    )
    job.cancel()
    assert status_line(job, 0).endswith("cancelling after this step...")
    job.finish(Outcome("failed", "the prompt is empty", job.folder))
    assert status_line(job, 0) == "Error: the prompt is empty"


def test_previews_are_enlarged_by_a_whole_factor():
    image = np.arange(96 * 96 * 3, dtype=np.uint8).reshape(96, 96, 3)
    big = enlarge(image, 256)
    assert big.shape == (288, 288, 3)
    assert np.array_equal(big[::3, ::3], image)
    assert enlarge(big, 256).shape == big.shape


def test_the_app_builds_without_launching(tmp_path):
    app = build_app(JobRunner(ServeSettings(tmp_path)))
    ids = {getattr(block, "elem_id", None) for block in app.blocks.values()}
    assert {"prompt", "steps", "generate", "cancel", "status", "model", "video"} <= ids
