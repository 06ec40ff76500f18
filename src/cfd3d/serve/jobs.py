"""The runs behind ``cfd3d serve``: a request from the page becomes one run in
``DIR/<folder>``, laid out exactly like ``cfd3d generate``'s and driven by its step loop.

The folder is named from the request's content (:meth:`cfd3d.batch.plan.RunSpec.folder_name`),
so the same settings always find the same folder: a finished run is shown as it is, a
cancelled or interrupted one continues from its newest checkpoint (the path of
``cfd3d generate --resume``, bit-identical on the CPU), anything else starts afresh. Runs
take the device one at a time, first come first served; a running job reports its
progress (step, t, loss, ETA) after every step and a preview render of its field every
few steps. Cancelling stops a run between two steps as Ctrl-C does: a checkpoint is
written and the run stays resumable.

Errors a user can cause (a word the embedded prior does not know, missing weights, bad
steps) end a job as ``"failed"`` with their one-line message; other errors are bugs: their
traceback goes to the server's log and the job's message says so.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from cfd3d.batch.execute import run_state
from cfd3d.batch.plan import RunSpec
from cfd3d.errors import ConfigError, StoppedBySignal, UserError
from cfd3d.generate.command import (
    CONFIG_NAME,
    SUMMARY_NAME,
    clear_outputs,
    drive,
    estimate_seconds,
    load_prior_for,
    new_run,
    restore,
    resume_config,
)
from cfd3d.generate.config import GenerateConfig, default_preset, save_config
from cfd3d.generate.outputs import render_turntable
from cfd3d.generate.run import Run, StepResult
from cfd3d.io import atomic_write_text, ensure_writable_dir
from cfd3d.priors.base import Prior

JobStatus = Literal["queued", "running", "finished", "cancelled", "failed"]
ETA_WINDOW = 20
"""Steps whose durations (previews included) the ETA averages."""


@dataclass(frozen=True)
class Request:
    """What the page asks for: one run.

    Attributes:
        prompt: the text prompt, e.g. ``"a red cube"``.
        prior: ``"embedded"`` (the toy-world prior shipped in the package), ``"sd"`` (the
            model in ``$CFD3D_SD_MODEL``), or a Stable Diffusion folder, single file or hub id.
        method: the distillation method (``None``: the preset's).
        preset: the preset (``None``: the prior's default on the server's device).
        seed: the run's seed.
        steps: optimisation steps (``None``: the preset's).
    """

    prompt: str
    prior: str = "embedded"
    method: str | None = None
    preset: str | None = None
    seed: int = 0
    steps: int | None = None


def request_from_form(
    prompt: str | None,
    prior: str | None,
    method: str | None,
    preset: str | None,
    seed: float | None,
    steps: float | None,
) -> Request:
    """A :class:`Request` from the page's raw values (empty text or number: the default).

    Raises:
        ConfigError: an empty prompt, a seed or step count that is not a whole number,
            fewer than one step.
    """
    if prompt is None or not prompt.strip():
        raise ConfigError("the prompt is empty; type a prompt, e.g. 'a red cube'")
    if seed is None:
        seed = 0
    if not float(seed).is_integer() or seed < 0:
        raise ConfigError(f"the seed must be a whole number of at least 0, not {seed:g}")
    if steps is not None and (not float(steps).is_integer() or steps < 1):
        raise ConfigError(
            f"steps must be a whole number of at least 1 (or empty for the preset's), not {steps:g}"
        )
    return Request(
        prompt=prompt.strip(),
        prior=(prior or "").strip() or "embedded",
        method=method or None,
        preset=preset or None,
        seed=int(seed),
        steps=None if steps is None else int(steps),
    )


@dataclass(frozen=True)
class ServeSettings:
    """How the server runs requests.

    Attributes:
        out: the folder every run lands in, each in ``out/<prompt-slug>-<hash>``.
        device: the device runs take, one at a time (``None``: as ``cfd3d generate``,
            CUDA when available).
        overrides: config fields every run changes, nested as in ``config.json``
            (e.g. ``{"turntable_size": 256}``); part of what names a run's folder.
        preview_every: steps between two preview renders of a running job.
        preview_size: the preview's side in pixels.
    """

    out: Path
    device: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    preview_every: int = 25
    preview_size: int = 96

    def __post_init__(self) -> None:
        if self.preview_every < 1:
            raise ConfigError(f"--preview-every must be at least 1, not {self.preview_every}")
        if not 16 <= self.preview_size <= 1024:
            raise ConfigError(f"--preview-size must be 16 to 1024 pixels, not {self.preview_size}")


@dataclass(frozen=True)
class Progress:
    """A running job after its latest step.

    Attributes:
        step: steps taken so far.
        steps: the run's length.
        t: the diffusion timestep of the latest step.
        loss: the latest step's loss.
        eta_s: estimated seconds to the end of the steps (exports not included).
    """

    step: int
    steps: int
    t: int
    loss: float
    eta_s: float


@dataclass(frozen=True)
class Outcome:
    """How a job ended.

    Attributes:
        status: ``"finished"``, ``"cancelled"`` (a checkpoint was written if a step was
            taken) or ``"failed"``.
        message: one line for the page.
        folder: the run's folder.
        files: ``{"mesh", "mp4", "gif", "preview"}`` to the files a finished run wrote
            (``"mesh"`` missing when the field had no surface); empty otherwise.
    """

    status: Literal["finished", "cancelled", "failed"]
    message: str
    folder: Path
    files: dict[str, Path] = field(default_factory=dict)


class Job:
    """One request on its way through the runner; read it from any thread.

    Args:
        request: what was asked.
        config: the resolved config of a new run of ``request``.
        folder: the run's folder.
    """

    def __init__(self, request: Request, config: GenerateConfig, folder: Path) -> None:
        self.request = request
        self.config = config
        self.folder = folder
        self.status: JobStatus = "queued"
        self.note = ""
        """What the job is doing, e.g. ``"continued from step 40"`` (empty: nothing to say)."""
        self.progress: Progress | None = None
        self.preview: tuple[int, np.ndarray] | None = None
        """The latest preview: ``(step, (H, W, 3) uint8 image)``."""
        self.outcome: Outcome | None = None
        self._cancel = threading.Event()
        self._done = threading.Event()

    def cancel(self) -> None:
        """Ask the job to stop: a queued job ends at once, a running one after its current
        step, with a checkpoint."""
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def wait(self, timeout: float | None = None) -> Outcome | None:
        """The outcome once the job has ended, or ``None`` after ``timeout`` seconds."""
        self._done.wait(timeout)
        return self.outcome

    def finish(self, outcome: Outcome) -> None:
        """Record how the job ended (the runner's part) and wake those who wait."""
        self.outcome = outcome
        self.status = outcome.status
        self._done.set()


class JobRunner:
    """Runs submitted jobs one at a time, in submission order, on one worker thread.

    Args:
        settings: where runs land and how they report.
    """

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self._waiting: list[Job] = []
        self._active: Job | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None
        self._prior: tuple[tuple, Prior] | None = None

    def resolve(self, request: Request) -> tuple[GenerateConfig, Path]:
        """The config of a new run of ``request`` and the folder it lands in.

        Raises:
            ConfigError: an unknown method or preset, overrides that do not fit the config.
        """
        preset = request.preset or default_preset(request.prior, self.settings.device)
        spec = RunSpec(
            prompt=request.prompt,
            seed=request.seed,
            prior=request.prior,
            method=request.method,
            preset=preset,
            steps=request.steps,
            overrides=self.settings.overrides,
        )
        config = spec.config()
        if self.settings.device is not None:
            config = replace(config, device=self.settings.device).resolved()
        return config, self.settings.out / spec.folder_name()

    def submit(self, request: Request) -> Job:
        """Queue ``request``; returns its job at once.

        Raises:
            ConfigError: what :meth:`resolve` raises (nothing is queued then).
            RuntimeError: the runner is closed.
        """
        config, folder = self.resolve(request)
        with self._cond:
            if self._closed:
                raise RuntimeError("the job runner is closed")
            job = Job(request, config, folder)
            self._waiting.append(job)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="cfd3d-jobs", daemon=True)
                self._worker.start()
            self._cond.notify()
        return job

    def ahead_of(self, job: Job) -> int:
        """How many jobs run before ``job`` starts (0 once it runs or has ended)."""
        with self._cond:
            if job not in self._waiting:
                return 0
            return self._waiting.index(job) + (self._active is not None)

    def close(self, timeout: float | None = None) -> None:
        """Cancel every job (the running one writes its checkpoint) and stop the worker."""
        with self._cond:
            self._closed = True
            for job in [*self._waiting, *([self._active] if self._active else [])]:
                job.cancel()
            self._cond.notify()
            worker = self._worker
        if worker is not None:
            worker.join(timeout)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if not self._waiting:
                    return
                job = self._waiting.pop(0)
                self._active = job
            job.finish(self._outcome(job))
            with self._cond:
                self._active = None

    def _outcome(self, job: Job) -> Outcome:
        if job.cancel_requested:
            return Outcome("cancelled", "cancelled before it started", job.folder)
        job.status = "running"
        try:
            return self._execute(job)
        except UserError as exc:
            return Outcome("failed", str(exc), job.folder)
        except Exception as exc:  # a bug: keep the traceback in the server's log
            traceback.print_exc(file=sys.stderr)
            return Outcome(
                "failed",
                f"internal error ({type(exc).__name__}: {exc}); the server's log has the details",
                job.folder,
            )

    def _execute(self, job: Job) -> Outcome:
        folder = job.folder
        state = run_state(folder)
        if state == "finished":
            return finished_outcome(folder, "made earlier with these settings")
        if state == "interrupted":
            config = resume_config(folder)
            run = restore(Run(config, self._load_prior(config)), folder)
            job.note = f"continued from step {run.step}"
        else:
            config = job.config
            run = new_run(config, self._load_prior(config), folder)  # prompt errors: here
            ensure_writable_dir(folder)
            clear_outputs(folder)  # what an attempt left before its first checkpoint
            atomic_write_text(folder / CONFIG_NAME, save_config(config))
        reporter = StepReporter(
            run,
            self.settings.preview_every,
            self.settings.preview_size,
            should_stop=lambda: job.cancel_requested,
            on_progress=lambda progress: setattr(job, "progress", progress),
            on_preview=lambda step, image: setattr(job, "preview", (step, image)),
        )
        tic = time.perf_counter()
        try:
            drive(run, folder, True, reporter)
        except StoppedBySignal:
            return Outcome(
                "cancelled",
                f"cancelled at step {run.step} of {config.steps}; its checkpoint is written: "
                "Generate with the same settings continues from it",
                folder,
            )
        return finished_outcome(folder, f"took {time.perf_counter() - tic:.0f} s")

    def _load_prior(self, config: GenerateConfig) -> Prior:
        """``config``'s prior, loaded once and kept while the next runs use the same one."""
        key = (config.prior, config.device, config.low_vram, config.dtype)
        if self._prior is None or self._prior[0] != key:
            self._prior = None  # free the previous one first
            self._prior = (key, load_prior_for(config))
        return self._prior[1]


class StepReporter:
    """The ``on_step`` of a served run: progress after every step, a preview render every
    ``every`` steps (and after the first), and the answer to "stop now?".

    Args:
        run: the run being driven.
        every: steps between previews.
        size: the preview's side in pixels.
        should_stop: polled after every step; True stops the run (with a checkpoint).
        on_progress: gets the :class:`Progress` after every step.
        on_preview: gets ``(step, (size, size, 3) uint8 image)`` for every preview.
    """

    def __init__(
        self,
        run: Run,
        every: int,
        size: int,
        should_stop: Callable[[], bool],
        on_progress: Callable[[Progress], None],
        on_preview: Callable[[int, np.ndarray], None],
    ) -> None:
        self.run = run
        self.every = every
        self.size = size
        self.should_stop = should_stop
        self.on_progress = on_progress
        self.on_preview = on_preview
        self._first = run.step + 1
        self._seconds: list[float] = []
        self._last = time.perf_counter()

    def __call__(self, result: StepResult) -> bool:
        done = result.step + 1
        if done == self._first or done % self.every == 0:
            self.on_preview(done, render_preview(self.run, self.size))
        now = time.perf_counter()
        self._seconds = [*self._seconds[-ETA_WINDOW + 1 :], now - self._last]
        self._last = now
        steps = self.run.config.steps
        eta = estimate_seconds(self._seconds, steps - done)
        self.on_progress(Progress(done, steps, result.t, result.loss, eta))
        return self.should_stop()


def render_preview(run: Run, size: int) -> np.ndarray:
    """``(size, size, 3)`` uint8: the run's field from the front, as the turntable shows it
    (no gradients; the run's state and random streams are untouched)."""
    with torch.no_grad():
        return render_turntable(run, 1, size)[0]


def finished_outcome(folder: Path, note: str) -> Outcome:
    """The outcome of the finished run in ``folder``, from its ``summary.json``."""
    summary = json.loads((folder / SUMMARY_NAME).read_text(encoding="utf-8"))
    written = summary.get("files", {})
    files = {}
    mesh = next((written[kind] for kind in ("glb", "obj", "ply") if kind in written), None)
    if mesh is not None:
        files["mesh"] = folder / Path(mesh).name
    for kind in ("mp4", "gif", "preview"):
        if kind in written:
            files[kind] = folder / Path(written[kind]).name
    message = f"done: {summary.get('steps', '?')} steps, {note}; files in {folder}"
    if "mesh_error" in written:
        message += f" (no mesh: {written['mesh_error']})"
    return Outcome("finished", message, folder, files)
