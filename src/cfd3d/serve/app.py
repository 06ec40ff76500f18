"""The page of ``cfd3d serve``: a Gradio Blocks app over a :class:`~cfd3d.serve.jobs.JobRunner`.

Inputs: prompt, prior, method, preset, seed and steps; Generate and Cancel. While a run
goes, a status line (queue position, or step, t, loss and ETA) and a preview render
refreshed every few steps; when it is done, the GLB in an interactive 3D viewer, the
turntable video and download links (GLB, MP4, GIF). Errors a user can cause appear in
the status line as one sentence, never as a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr
import numpy as np

from cfd3d.distill.methods import METHODS
from cfd3d.errors import UserError
from cfd3d.generate.config import PRESETS
from cfd3d.serve.jobs import Job, JobRunner, Outcome, request_from_form

POLL_S = 0.3
"""Seconds between two looks at a running job (status and preview refresh)."""
TITLE = "cfd3d: text to 3D by Consistent Flow Distillation"
PREVIEW_SHOWN = 256
"""Pixels a preview is enlarged to (nearest neighbour) on the page, at least."""


def enlarge(image: np.ndarray, size: int = PREVIEW_SHOWN) -> np.ndarray:
    """``(H, W, C)`` repeated by the whole factor that makes it at least ``size`` high."""
    factor = max(1, -(-size // image.shape[0]))
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def status_line(job: Job, ahead: int) -> str:
    """One line on ``job``: ``ahead`` runs before it, its progress, or how it ended."""
    if job.outcome is not None:
        prefix = {"finished": "", "cancelled": "", "failed": "Error: "}[job.outcome.status]
        return prefix + job.outcome.message
    if job.status == "queued":
        if job.cancel_requested:
            return "cancelling..."
        if ahead:
            return f"waiting for the device: {ahead} run(s) ahead"
        return "starting..."
    progress = job.progress
    note = f" ({job.note})" if job.note else ""
    if progress is None:
        return f"loading the prior and the run{note}..."
    eta = f"{progress.eta_s:.0f} s" if progress.eta_s < 120 else f"{progress.eta_s / 60:.0f} min"
    line = (
        f"step {progress.step} / {progress.steps} · t {progress.t} · loss {progress.loss:.4g} · "
        f"ETA {eta}{note}"
    )
    if progress.step == progress.steps:
        line += " · exporting the mesh and turntable..."
    if job.cancel_requested:
        line += " · cancelling after this step..."
    return line


def result_values(outcome: Outcome) -> tuple[Any, Any, Any, Any]:
    """Preview, mesh, video and download list of a finished run (paths as text)."""
    files = outcome.files
    downloads = [str(files[kind]) for kind in ("mesh", "mp4", "gif") if kind in files]
    return (
        str(files["preview"]),
        str(files["mesh"]) if "mesh" in files else None,
        str(files["mp4"]),
        downloads,
    )


def build_app(runner: JobRunner) -> gr.Blocks:
    """The Blocks of the page (not launched); one job per browser session at a time."""
    sessions: dict[str, Job] = {}

    def generate(
        prompt: str,
        prior: str,
        method: str,
        preset: str,
        seed: float | None,
        steps: float | None,
        request: gr.Request,
    ) -> Iterator[tuple]:
        try:
            job = runner.submit(request_from_form(prompt, prior, method, preset, seed, steps))
        except UserError as exc:
            sessions.pop(request.session_hash, None)  # nothing for show_result to show
            yield f"Error: {exc}", None, None, None, None
            return
        sessions[request.session_hash] = job
        yield status_line(job, runner.ahead_of(job)), None, None, None, None
        shown = None
        try:
            while job.wait(POLL_S) is None:
                image = gr.skip()
                if job.preview is not None and job.preview[0] != shown:
                    shown, image = job.preview[0], enlarge(job.preview[1])
                line = status_line(job, runner.ahead_of(job))
                yield line, image, gr.skip(), gr.skip(), gr.skip()
        finally:
            if job.outcome is None:  # the page went away: stop the run with a checkpoint
                job.cancel()
        yield status_line(job, 0), gr.skip(), gr.skip(), gr.skip(), gr.skip()

    def show_result(request: gr.Request) -> tuple:
        # A separate, single update: the 3D viewer drops a model whose value arrives
        # twice while its renderer loads (what a generator's last output does).
        job = sessions.get(request.session_hash)
        if job is None or job.outcome is None or job.outcome.status != "finished":
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return result_values(job.outcome)

    def cancel(request: gr.Request) -> None:
        job = sessions.get(request.session_hash)
        if job is not None:
            job.cancel()

    with gr.Blocks(title="cfd3d", analytics_enabled=False) as app:
        gr.Markdown(
            f"## {TITLE}\n"
            "The embedded prior knows a toy world of coloured shapes ('a red cube', "
            "'a green cone next to a pink capsule'; `cfd3d prior-vocab` lists its words). "
            f"Runs land in `{runner.settings.out}`; the same settings continue a cancelled run."
        )
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", placeholder="a red cube", elem_id="prompt")
                prior = gr.Textbox(
                    label="Prior",
                    value="embedded",
                    info="embedded; sd ($CFD3D_SD_MODEL); or a Stable Diffusion folder, "
                    ".safetensors file or hub id",
                    elem_id="prior",
                )
                with gr.Row():
                    method = gr.Dropdown([("the preset's", ""), *METHODS], value="", label="Method")
                    preset = gr.Dropdown(
                        [("the prior's default", ""), *PRESETS], value="", label="Preset"
                    )
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                    steps = gr.Number(
                        value=None,
                        precision=0,
                        label="Steps",
                        info="empty: the preset's",
                        elem_id="steps",
                    )
                with gr.Row():
                    start = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Cancel", variant="stop", elem_id="cancel")
                status = gr.Textbox(label="Status", interactive=False, elem_id="status")
                preview = gr.Image(label="Preview", interactive=False, elem_id="preview")
            with gr.Column(scale=2):
                model = gr.Model3D(label="Model (GLB)", height=420, elem_id="model")
                video = gr.Video(
                    label="Turntable",
                    autoplay=True,
                    loop=True,
                    interactive=False,
                    height=320,
                    elem_id="video",
                )
                downloads = gr.File(
                    label="Downloads", file_count="multiple", interactive=False, elem_id="downloads"
                )
        start.click(
            generate,
            inputs=[prompt, prior, method, preset, seed, steps],
            outputs=[status, preview, model, video, downloads],
            concurrency_limit=None,  # the runner queues runs, one at a time on the device
            show_progress="hidden",
        ).then(show_result, outputs=[preview, model, video, downloads], show_progress="hidden")
        stop.click(cancel, inputs=None, outputs=None, queue=False)
    return app
