"""``cfd3d generate``: the text-to-3D command, its output folder and its life cycle.

Output folder ``DIR``::

    config.json      the resolved GenerateConfig (``--config DIR/config.json`` repeats it)
    metrics.jsonl    one JSON line per step: step, t, loss, grad norm, timings
    checkpoints/     step_NNNNNN.pt every ``checkpoint_every`` steps, each with its SHA-256
                     in step_NNNNNN.pt.sha256 (atomic; the newest ``keep_checkpoints`` are
                     kept)
    model.glb        the mesh (plus model.obj / model.ply with --formats)
    turntable.mp4, turntable.gif, preview.png
    summary.json     written last: the run is finished

With ``--pipeline NAME`` (stages as configuration, :mod:`cfd3d.generate.pipeline`)::

    stage1/, stage2/ ...  one run folder per stage, laid out as above; every stage's
                          config.json is written before the first stage starts
    pipeline.json    the pipeline, prompt, seed and stage names (written before stage 1)
    model.glb, turntable.mp4, turntable.gif, preview.png   the last stage's, copied
    summary.json     written last: the pipeline is finished

``--resume`` continues a pipeline where it stopped: finished stages stay untouched, the
current one continues from its last checkpoint, later ones start afresh.

Life cycle. Ctrl-C, SIGTERM and SIGHUP (what schedulers send before they kill) stop a run
between two steps: it writes a checkpoint and exits with ``128 + signum`` (130, 143, 129);
a second signal exits at once (the atomic writes leave nothing half-written). ``--resume``
continues from the newest checkpoint that passes its checksum and structure checks,
naming the ones it skipped; with no usable checkpoint it starts again at step 0 (and a
damaged ``config.json`` is recovered from a checkpoint). ``--resume --steps N`` changes
the run's length: the steps taken stay, the later ones follow the schedules (timesteps, γ)
defined for ``N`` steps from the current step on (an annealed schedule continues at the
point ``step / N`` of its curve); this is deterministic but not the same as a run started
with ``--steps N``. A full disk stops the run with one line; the previous checkpoint stays.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from cfd3d.errors import ConfigError, OutputError, StoppedBySignal, UserError
from cfd3d.generate.config import (
    PRESETS,
    GenerateConfig,
    config_from_dict,
    config_to_dict,
    default_preset,
    load_config,
    preset_config,
    save_config,
)
from cfd3d.generate.outputs import write_outputs
from cfd3d.generate.pipeline import (
    PIPELINES,
    Pipeline,
    Stage,
    check_handoff,
    configure,
    is_stage_name,
    pipeline_config,
    start_from,
)
from cfd3d.generate.run import (
    DamagedCheckpoint,
    Run,
    StepResult,
    checkpoint_step,
    list_checkpoints,
    read_checkpoint,
    remove_checkpoint,
)
from cfd3d.io import (
    DiskFullError,
    atomic_write_bytes,
    atomic_write_text,
    disk_full,
    ensure_writable_dir,
)
from cfd3d.priors.base import Prior
from cfd3d.text import quote

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"
CHECKPOINTS = "checkpoints"
PIPELINE_NAME = "pipeline.json"
ASSET_NAMES = (
    "model.glb",
    "model.obj",
    "model.mtl",
    "model_texture.png",
    "model.ply",
    "turntable.mp4",
    "turntable.gif",
    "preview.png",
)
"""The files a user opens; a pipeline copies its last stage's to the top folder."""
OUTPUT_NAMES = (CONFIG_NAME, METRICS_NAME, SUMMARY_NAME, CHECKPOINTS, PIPELINE_NAME, *ASSET_NAMES)


def check_device(name: str | None) -> None:
    """Refuse a device that torch does not know or this machine does not have.

    Raises:
        ConfigError: naming the device and what to use instead.
    """
    import torch

    if name is None:
        return
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"unknown device '{name}'; use cpu, cuda, cuda:N or mps (or leave --device out)"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device '{name}': this machine has no CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"device '{name}': this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device '{name}': MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device '{name}' is not supported; use cpu, cuda, cuda:N or mps")


def load_prior_for(config: GenerateConfig) -> Prior:
    """The run's prior, on the run's device; prompt problems raise here, before any output."""
    from cfd3d.priors.registry import check_text_to_image, is_stable_diffusion, load_prior

    check_device(config.device)
    check_text_to_image(config.prior)
    if config.prior != "embedded" and is_stable_diffusion(config.prior):
        prior = load_prior(
            config.prior,
            device=config.device,
            dtype="float16" if config.low_vram else config.dtype,
            attention_slicing=config.low_vram,
            cpu_offload=config.low_vram,
        )
    else:
        prior = load_prior(config.prior)
        if config.device is not None:
            prior.to(config.device)  # type: ignore[attr-defined]
    size = config.render_size
    _, h, w = prior.input_shape
    if size % h or size % w:
        raise ConfigError(
            f"render_size {size} must be a multiple of the prior's noise size {h}x{w}"
        )
    return prior


def check_output_folder(folder: Path, overwrite: bool, stages: tuple[str, ...] = ()) -> None:
    """Refuse a folder that holds another run or files this run would overwrite (``stages``:
    the stage folders a pipeline would write)."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise OutputError(f"--out '{folder}' is a file, not a folder; choose another --out")
    names = (*OUTPUT_NAMES, *stages, *_recorded_stages(folder))
    present = [name for name in dict.fromkeys(names) if (folder / name).exists()]
    if not present or overwrite:
        return
    if (folder / SUMMARY_NAME).exists():
        raise OutputError(
            f"'{folder}' holds a finished run; choose another --out, or pass --overwrite to "
            "replace it"
        )
    if (folder / CONFIG_NAME).exists() or (folder / PIPELINE_NAME).exists():
        raise OutputError(
            f"'{folder}' holds another run; continue it with --resume, choose another --out, "
            "or pass --overwrite to replace it"
        )
    raise OutputError(
        f"'{folder}' already holds {', '.join(present)}; choose another --out, or pass "
        "--overwrite to replace them"
    )


def _recorded_stages(folder: Path) -> tuple[str, ...]:
    """The stage folders named by ``folder/pipeline.json`` (none if it is absent or
    unreadable); only plain folder names, never a path out of ``folder``."""
    try:
        stages = json.loads((folder / PIPELINE_NAME).read_text())["stages"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return ()
    if not isinstance(stages, list):
        return ()
    return tuple(s for s in stages if isinstance(s, str) and is_stage_name(s))


def clear_outputs(folder: Path, stages: tuple[str, ...] = ()) -> None:
    for name in dict.fromkeys((*OUTPUT_NAMES, *stages, *_recorded_stages(folder))):
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def config_from_args(args: argparse.Namespace) -> GenerateConfig:
    """The run's config from a preset or ``--config`` file plus command-line overrides."""
    if args.config is not None:
        config = load_config(args.config)
        if args.prompt is not None and args.prompt != config.prompt:
            config = replace(config, prompt=args.prompt)
        if config.init_from is not None and not Path(config.init_from).expanduser().is_absolute():
            # relative to the folder of the run that config.json belongs to
            folder = args.config.resolve().parent
            config = replace(config, init_from=os.path.normpath(folder / config.init_from))
    else:
        _check_prompt(args.prompt)
        prior = args.prior or "embedded"
        preset = args.preset or default_preset(prior, args.device, args.field)
        config = preset_config(preset, args.prompt)
        config = replace(config, prior=prior)
    overrides = _overrides(args)
    if args.config is not None and args.prior is not None:
        overrides["prior"] = args.prior
    config = replace(config, **overrides)
    if args.method is not None and args.config is not None:
        # a new method brings its own noise, timesteps and weighting
        config = replace(config, noise=None, timesteps=None, weighting=None)
    if args.seed is not None and config.noise is not None:
        config = replace(config, noise=replace(config.noise, seed=args.seed))
    return config.resolved()


def _check_prompt(prompt: str | None) -> None:
    if prompt is None:
        raise ConfigError("no prompt given; pass a text prompt, e.g. 'a red cube'")
    if not prompt.strip():
        raise ConfigError("the prompt is empty; pass a text prompt, e.g. 'a red cube'")


def _overrides(args: argparse.Namespace) -> dict:
    """The config fields the command line sets (every stage's, for a pipeline)."""
    overrides = {
        "method": args.method,
        "steps": args.steps,
        "seed": args.seed,
        "guidance_scale": args.guidance,
        "guidance_interval": tuple(args.guidance_interval) if args.guidance_interval else None,
        "negative_prompt": args.negative_prompt,
        "perp_neg": args.perp_neg,
        "device": args.device,
        "low_vram": True if args.low_vram else None,
        "formats": tuple(args.formats.split(",")) if args.formats else None,
        "field": args.field,
    }
    return {k: v for k, v in overrides.items() if v is not None}


def run_generate(args: argparse.Namespace) -> int:
    out: Path = args.out
    _every_minutes(args)  # checked before anything is written
    if args.resume:
        if (out / PIPELINE_NAME).exists():
            return _resume_pipeline(args)
        return _resume(args)
    if args.pipeline is not None:
        return _run_pipeline(args)
    for flag, value in (("--prior-mv", args.prior_mv), ("--steps-per-stage", args.steps_per_stage)):
        if value is not None:
            raise ConfigError(f"{flag} belongs to staged runs; add --pipeline NAME or drop it")
    config = config_from_args(args)
    check_output_folder(out, args.overwrite)
    prior = load_prior_for(config)
    run = new_run(config, prior, out)
    ensure_writable_dir(out)
    if args.overwrite:
        clear_outputs(out)
    atomic_write_text(out / CONFIG_NAME, save_config(config))
    summary = drive(run, out, args.quiet, every_minutes=_every_minutes(args))
    _report(summary, out, args.quiet)
    return 0


def new_run(config: GenerateConfig, prior: Prior, out: Path) -> Run:
    """A run of ``config`` at step 0, its field taken from ``config.init_from`` if set."""
    run = Run(config, prior)
    if config.init_from is not None:
        start_from(run, _init_state(config.init_from, out))
    return run


def _init_state(init_from: str, out: Path) -> dict:
    """The checkpoint ``init_from`` names: a finished run's folder (its final checkpoint)
    or a checkpoint file; relative to ``out``."""
    path = Path(os.path.normpath(out / Path(init_from).expanduser()))
    if path.is_dir():
        checkpoints = list_checkpoints(path / CHECKPOINTS)
        if not (path / SUMMARY_NAME).exists() or not checkpoints:
            raise UserError(
                f"init_from '{path}' holds no finished run; finish it first ('cfd3d generate "
                f"--resume --out {path}') or name one of its checkpoints"
            )
        path = checkpoints[-1]
    elif not path.is_file():
        raise UserError(
            f"init_from '{path}' not found; name a finished run's folder or a checkpoint file"
        )
    return read_checkpoint(path)


_RESUME_FIXED = (
    "prior",
    "prior_mv",
    "method",
    "preset",
    "pipeline",
    "steps",
    "steps_per_stage",
    "seed",
    "guidance",
    "guidance_interval",
    "negative_prompt",
    "perp_neg",
    "formats",
    "field",
    "config",
)
"""Options that would change a run, refused with ``--resume`` (``--steps`` is accepted for
a single run: it changes the run's length, see the module docstring)."""


def _check_resume_args(
    args: argparse.Namespace, saved: str, prompt: str, allowed: tuple[str, ...] = ()
) -> None:
    given = [
        f"--{n.replace('_', '-')}"
        for n in _RESUME_FIXED
        if n not in allowed and getattr(args, n) is not None
    ]
    if given:
        raise ConfigError(
            f"--resume continues the run with its saved {saved}; drop {', '.join(given)} "
            "(or start a new run with another --out)"
        )
    if args.prompt is not None and args.prompt != prompt:
        raise ConfigError(
            f"--resume continues the run for '{quote(prompt)}'; drop the prompt argument or "
            "choose another --out for a new prompt"
        )


def _resume(args: argparse.Namespace) -> int:
    out: Path = args.out
    checkpoints = list_checkpoints(out / CHECKPOINTS)
    if not (out / CONFIG_NAME).exists() and not checkpoints:
        raise UserError(
            f"nothing to resume in '{out}': it holds no {CONFIG_NAME} and no checkpoint; start "
            "the run without --resume"
        )
    config = resume_config(out)
    _check_resume_args(args, CONFIG_NAME, config.prompt, allowed=("steps",))
    if args.steps is not None:
        config = replace(config, steps=args.steps)
    run = restore(Run(config, load_prior_for(config)), out)
    if run.step > config.steps:
        raise ConfigError(
            f"the run in '{out}' is at step {run.step} already; --steps must be at least that"
        )
    if args.steps is not None:
        atomic_write_text(out / CONFIG_NAME, save_config(config))
        (out / SUMMARY_NAME).unlink(missing_ok=True)  # not finished at its new length
    summary = drive(run, out, args.quiet, every_minutes=_every_minutes(args))
    _report(summary, out, args.quiet)
    return 0


def resume_config(out: Path) -> GenerateConfig:
    """``out/config.json``, or, when it is missing or damaged, the config recorded in the
    newest readable checkpoint (written back to ``config.json``, with a warning).

    Raises:
        ConfigError: ``config.json`` is unusable and no checkpoint holds a config.
    """
    try:
        return load_config(out / CONFIG_NAME)
    except ConfigError as exc:
        problem = exc
    for path in reversed(list_checkpoints(out / CHECKPOINTS)):
        try:
            config = config_from_dict(read_checkpoint(path)["config"])
        except (DamagedCheckpoint, ConfigError, KeyError):
            continue
        _warn(f"{problem}; using the config recorded in '{path}' (written to {CONFIG_NAME})")
        atomic_write_text(out / CONFIG_NAME, save_config(config))
        return config
    raise problem


def _same_run(config: GenerateConfig, recorded: object) -> bool:
    """Whether a checkpoint's recorded config is ``config`` up to the run's length."""
    if not isinstance(recorded, dict):
        return False
    mine = config_to_dict(config)
    return {**recorded, "steps": 0} == {**mine, "steps": 0}


def restore(run: Run, out: Path) -> Run:
    """``run`` continued from the newest usable checkpoint in ``out`` (each skipped one is
    named with the reason, and removed: its steps are taken again), or at step 0 (from its
    ``init_from``) when there is none; drops the metric lines of steps to be taken again.
    Returns the run to drive (a fresh one if a damaged checkpoint was partly loaded)."""
    skipped = []
    for path in reversed(list_checkpoints(out / CHECKPOINTS)):
        try:
            state = read_checkpoint(path)
        except DamagedCheckpoint as exc:
            _warn(f"skipped checkpoint '{path}': {exc.reason}")
            skipped.append(path)
            continue
        if "config" in state and not _same_run(run.config, state["config"]):
            _warn(f"skipped checkpoint '{path}': it was written by a run of another config")
            skipped.append(path)
            continue
        try:
            run.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            _warn(f"skipped checkpoint '{path}': it does not match {CONFIG_NAME} ({exc})")
            skipped.append(path)
            run = Run(run.config, run.prior)
            continue
        for later in skipped:
            remove_checkpoint(later)
        _truncate_metrics(out / METRICS_NAME, run.step)
        return run
    if list_checkpoints(out / CHECKPOINTS):
        _warn("no usable checkpoint; the run starts again at step 0")
    if run.config.init_from is not None:
        start_from(run, _init_state(run.config.init_from, out))
    _truncate_metrics(out / METRICS_NAME, 0)
    return run


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines of steps at or after ``step`` (they will be taken again) and lines
    that are not whole records (a write cut short by a kill)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            if json.loads(line)["step"] < step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
"""Signals that stop a run cleanly between two steps (Ctrl-C and what schedulers send)."""


class StopOnSignal:
    """Within ``with``, the first of :data:`STOP_SIGNALS` sets :attr:`signum` (the step
    loop checks it between steps); a second one exits at once with ``128 + signum``.

    Outside the main thread (where Python cannot handle signals) it does nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            name = signal.Signals(signum).name
            sys.stderr.write(f"stopped at once by a second signal ({name})\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.signum = signum

    def __enter__(self) -> StopOnSignal:
        try:
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread
            self.restore()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.restore()

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()


LONG_RUN_S = {"cpu": 2 * 3600.0}
"""Runs estimated to take longer than this on a device type get a warning with the
estimate before they go on (other devices: :data:`LONG_RUN_DEFAULT_S`)."""
LONG_RUN_DEFAULT_S = 24 * 3600.0
ESTIMATE_AFTER_STEPS = 3
"""Steps of a call timed before the duration is estimated (the first one warms up)."""


def estimate_seconds(step_seconds: list[float], remaining: int) -> float:
    """The time ``remaining`` steps take at the pace of ``step_seconds`` (the first timed
    step, which warms caches up, left out when there are more)."""
    timed = step_seconds[1:] or step_seconds
    return remaining * sum(timed) / len(timed)


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"


def _warn_if_long(run: Run, step_seconds: list[float], out: Path) -> None:
    remaining = run.config.steps - run.step
    estimate = estimate_seconds(step_seconds, remaining)
    bound = LONG_RUN_S.get(run.device.type, LONG_RUN_DEFAULT_S)
    if estimate > bound:
        _warn(
            f"{remaining} steps to go take about {_duration(estimate)} on {run.device} "
            f"({estimate / remaining:.3g} s/step); stop cleanly with Ctrl-C or SIGTERM (a "
            f"checkpoint is written) and continue with 'cfd3d generate --resume --out "
            f"{_top_folder(out)}' (add --steps N for another length)"
        )


def drive(
    run: Run,
    out: Path,
    quiet: bool,
    on_step: Callable[[StepResult], bool] | None = None,
    every_minutes: float | None = None,
) -> dict:
    """Take the remaining steps with checkpoints, then export; stops cleanly between two
    steps on Ctrl-C, SIGTERM or SIGHUP (checkpoint, then :class:`StoppedBySignal`). Returns
    the run's summary (also written to ``out/summary.json``, last). ``on_step`` (progress
    views: ``cfd3d serve``) gets each step's result; returning True stops the run there as
    Ctrl-C does (SIGINT). ``every_minutes`` also checkpoints whenever that much time has
    passed since the last checkpoint (``--checkpoint-every-minutes``).

    Raises:
        StoppedBySignal: a signal stopped the run; its checkpoint is written.
        DiskFullError: a write failed on a full disk; the previous checkpoint is intact.
        UserError: too many consecutive non-finite steps.
    """
    from tqdm import tqdm

    c = run.config
    ckpt_dir = out / CHECKPOINTS
    tic = time.perf_counter()
    bar = tqdm(
        total=c.steps, initial=run.step, desc="generate", unit="step", disable=quiet, leave=False
    )
    last_saved = next(  # the checkpoint the run continues from, if any
        (p for p in reversed(list_checkpoints(ckpt_dir)) if checkpoint_step(p) == run.step), None
    )
    step_seconds: list[float] = []
    saved_at = time.monotonic()
    try:
        with StopOnSignal() as stop, open(out / METRICS_NAME, "a", encoding="utf-8") as metrics:
            while run.step < c.steps and stop.signum is None:
                step_tic = time.perf_counter()
                result = run.take_step()
                metrics.write(json.dumps(result.as_dict()) + "\n")
                metrics.flush()
                bar.update(1)
                bar.set_postfix(t=result.t, loss=f"{result.loss:.3g}", refresh=False)
                if run.bad_steps >= c.max_bad_steps:
                    raise UserError(
                        f"stopped at step {result.step}: {run.bad_steps} consecutive steps had "
                        f"non-finite gradients (lower --guidance or the learning rate); last good "
                        f"checkpoint: {last_saved or 'none'}"
                    )
                if len(step_seconds) < ESTIMATE_AFTER_STEPS:
                    step_seconds.append(time.perf_counter() - step_tic)
                    if len(step_seconds) == ESTIMATE_AFTER_STEPS:
                        _warn_if_long(run, step_seconds, out)
                due = run.step % c.checkpoint_every == 0 or (
                    every_minutes is not None and time.monotonic() - saved_at >= 60 * every_minutes
                )
                if due and run.step < c.steps and run.bad_steps == 0:  # never in bad steps
                    last_saved = run.save_checkpoint(ckpt_dir)
                    saved_at = time.monotonic()
                if on_step is not None and on_step(result) and stop.signum is None:
                    stop.signum = signal.SIGINT
            if stop.signum is not None and run.step < c.steps:
                bar.close()
                raise StoppedBySignal(stop.signum, _stopped(run, out, stop.signum, last_saved))
    except KeyboardInterrupt:
        bar.close()
        if run.bad_steps == 0:
            saved = run.save_checkpoint(ckpt_dir)
            print(
                f"interrupted at step {run.step}; checkpoint {saved} written; continue with "
                f"'cfd3d generate --resume --out {_top_folder(out)}'",
                file=sys.stderr,
            )
        raise
    except OSError as exc:
        if not (disk_full(exc) or isinstance(exc, DiskFullError)):
            raise
        raise DiskFullError(
            f"the disk is full at step {run.step}; the last "
            f"checkpoint, {last_saved or 'none'}, is intact: free some space and continue with "
            f"'cfd3d generate --resume --out {_top_folder(out)}'"
        ) from None
    bar.close()
    final = run.save_checkpoint(ckpt_dir)
    fit_s = time.perf_counter() - tic
    if not quiet:
        print(f"distilled {c.steps} steps in {fit_s:.1f} s; exporting...", file=sys.stderr)
    try:
        written = write_outputs(run, out)
    except OSError as exc:
        if not (disk_full(exc) or isinstance(exc, DiskFullError)):
            raise
        raise DiskFullError(
            f"the disk is full: the exports of '{out}' could not be written; the final "
            f"checkpoint {final} is intact: free some space and run 'cfd3d generate --resume "
            f"--out {_top_folder(out)}' to export again"
        ) from None
    summary = {
        "status": "finished",
        "prompt": c.prompt,
        "method": c.method,
        "prior": c.prior,
        "steps": c.steps,
        "fit_s_this_call": round(fit_s, 2),
        "total_s_this_call": round(time.perf_counter() - tic, 2),
        "checkpoint": str(final),
        "files": written,
    }
    atomic_write_text(out / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
    if "mesh_error" in written:
        print(f"warning: no mesh written: {written['mesh_error']}", file=sys.stderr)
    return summary


def _every_minutes(args: argparse.Namespace) -> float | None:
    """``--checkpoint-every-minutes``, checked.

    Raises:
        ConfigError: a value that is not positive.
    """
    minutes = getattr(args, "checkpoint_every_minutes", None)
    if minutes is not None and not minutes > 0.0:
        raise ConfigError(f"--checkpoint-every-minutes must be > 0, got {minutes}")
    return minutes


def _stopped(run: Run, out: Path, signum: int, last_saved: Path | None) -> str:
    """Write the checkpoint of a run stopped by ``signum``; the line that says so."""
    name = signal.Signals(signum).name
    resume = f"continue with 'cfd3d generate --resume --out {_top_folder(out)}'"
    if run.bad_steps:
        return (
            f"stopped by {name} at step {run.step} in a run of non-finite steps; last good "
            f"checkpoint: {last_saved or 'none'}; {resume}"
        )
    saved = run.save_checkpoint(out / CHECKPOINTS)
    return f"stopped by {name} at step {run.step}; checkpoint {saved} written; {resume}"


def _top_folder(out: Path) -> Path:
    """The folder to ``--resume``: a stage's pipeline folder, or the run's own."""
    return out.parent if (out.parent / PIPELINE_NAME).exists() else out


def _report(summary: dict, out: Path, quiet: bool) -> None:
    """Tell the user where the assets are."""
    if quiet:
        return
    written = summary["files"]
    mesh = written.get("glb") or next((written[f] for f in ("obj", "ply") if f in written), None)
    print(f"done: {out}")
    if mesh:
        print(f"  mesh:      {mesh}")
    print(f"  turntable: {written['mp4']} (GIF: {written['gif']})")
    print(f"  preview:   {written['preview']}")


# ------------------------------------------------------------------------- pipelines


def pipeline_from_args(args: argparse.Namespace) -> Pipeline:
    """The pipeline ``--pipeline`` names, configured by the command line (see
    :func:`cfd3d.generate.pipeline.configure`).

    Raises:
        ConfigError: an unknown pipeline, options that do not apply, stages that do not
            chain.
    """
    for flag, value in (("--config", args.config), ("--preset", args.preset)):
        if value is not None:
            raise ConfigError(f"{flag} does not combine with --pipeline (its stages are presets)")
    if args.steps is not None:
        raise ConfigError("--steps does not combine with --pipeline; use --steps-per-stage")
    _check_prompt(args.prompt)
    overrides = _overrides(args)
    method = overrides.pop("method", None)
    return configure(
        pipeline_config(args.pipeline, args.prompt),
        prior=args.prior,
        prior_mv=args.prior_mv,
        steps_per_stage=args.steps_per_stage,
        method=method,
        overrides=overrides,
    )


class _Priors:
    """Each distinct prior of a pipeline loaded once (stages may share one)."""

    def __init__(self) -> None:
        self._loaded: dict[tuple, Prior] = {}

    def get(self, config: GenerateConfig, multiview: bool) -> Prior:
        """The prior of a stage; a multi-view stage's must be an MVDream checkpoint file.

        Raises:
            ConfigError: a multi-view stage's prior that is not an MVDream checkpoint.
        """
        from cfd3d.priors.ldm import is_single_file

        wrong = (
            f"--prior-mv '{config.prior}' is not a multi-view (MVDream) checkpoint; pass the "
            "file of one such as sd-v2.1-base-4view.pt, and Stable Diffusion ones with --prior"
        )
        if multiview and not is_single_file(config.prior):
            raise ConfigError(wrong)
        key = (config.prior, config.device, config.low_vram, config.dtype)
        if key not in self._loaded:
            self._loaded[key] = load_prior_for(config)
        prior = self._loaded[key]
        if multiview:
            from cfd3d.priors.mvdream import MVDreamPrior

            if not isinstance(prior, MVDreamPrior):
                raise ConfigError(wrong)
        return prior


def _pipeline_record(pipeline: Pipeline) -> dict:
    first = pipeline.stages[0].config
    return {
        "pipeline": pipeline.name,
        "summary": pipeline.summary,
        "prompt": first.prompt,
        "seed": first.seed,
        "stages": [s.name for s in pipeline.stages],
        "multiview": [s.name for s in pipeline.stages if s.multiview],
    }


def _run_pipeline(args: argparse.Namespace) -> int:
    out: Path = args.out
    pipeline = pipeline_from_args(args)
    names = tuple(s.name for s in pipeline.stages)
    check_output_folder(out, args.overwrite, names)
    priors = _Priors()
    # Every stage's prior and prompt are checked before anything is written.
    runs = [Run(s.config, priors.get(s.config, s.multiview)) for s in pipeline.stages]
    ensure_writable_dir(out)
    if args.overwrite:
        clear_outputs(out, names)
    for stage in pipeline.stages:
        atomic_write_text(out / stage.name / CONFIG_NAME, save_config(stage.config))
    atomic_write_text(out / PIPELINE_NAME, json.dumps(_pipeline_record(pipeline), indent=2) + "\n")
    return _drive_pipeline(
        _pipeline_record(pipeline), list(zip(pipeline.stages, runs, strict=True)), out, args
    )


def _resume_pipeline(args: argparse.Namespace) -> int:
    out: Path = args.out
    try:
        record = json.loads((out / PIPELINE_NAME).read_text())
        stage_names = record["stages"]
        prompt = record["prompt"]
        multiview = set(record.get("multiview", []))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"cannot read '{out / PIPELINE_NAME}' ({exc}); start the pipeline afresh with "
            "another --out or --overwrite"
        ) from None
    if not isinstance(stage_names, list) or not all(isinstance(n, str) for n in stage_names):
        raise UserError(f"'{out / PIPELINE_NAME}' lists no stages; start the pipeline afresh")
    _check_resume_args(args, PIPELINE_NAME, prompt)
    stages = [
        Stage(name, load_config(out / name / CONFIG_NAME), name in multiview)
        for name in stage_names
    ]
    for previous, stage in itertools.pairwise(stages):
        check_handoff(previous.config, stage.config, stage.name)
    priors = _Priors()
    todo: list[tuple[Stage, Run | None]] = []
    for stage in stages:
        folder = out / stage.name
        if (folder / SUMMARY_NAME).exists():
            todo.append((stage, None))
            continue
        todo.append((stage, Run(stage.config, priors.get(stage.config, stage.multiview))))
    return _drive_pipeline(record, todo, out, args)


def _drive_pipeline(
    record: dict, stages: list[tuple[Stage, Run | None]], out: Path, args: argparse.Namespace
) -> int:
    """Run every unfinished stage in order (``None``: finished, left untouched), each from
    its last checkpoint or else from its ``init_from``, then copy the last stage's assets
    to ``out`` and write the pipeline's ``summary.json`` last."""
    tic = time.perf_counter()
    for index, (stage, run) in enumerate(stages):
        if run is None:
            continue
        folder = out / stage.name
        c = stage.config
        run = restore(run, folder)
        if not args.quiet:
            print(
                f"{stage.name} ({index + 1}/{len(stages)}): {c.prior}, {c.steps} steps at "
                f"{'/'.join(str(s) for s in c.render_sizes)}²",
                file=sys.stderr,
            )
        drive(run, folder, args.quiet, every_minutes=_every_minutes(args))
        stages[index] = (stage, None)  # frees the stage's field and optimiser
    last = out / stages[-1][0].name
    final = json.loads((last / SUMMARY_NAME).read_text())
    files = {}
    for kind, path in final["files"].items():
        if kind in ("mesh_threshold", "mesh_error"):
            files[kind] = path
            continue
        name = Path(path).name
        files[kind] = str(atomic_write_bytes(out / name, (last / name).read_bytes()))
    summary = {
        "status": "finished",
        "pipeline": record["pipeline"],
        "prompt": record["prompt"],
        "seed": record["seed"],
        "stages": {
            stage.name: {
                "prior": stage.config.prior,
                "method": stage.config.method,
                "steps": stage.config.steps,
                "summary": str(out / stage.name / SUMMARY_NAME),
            }
            for stage, _ in stages
        },
        "total_s_this_call": round(time.perf_counter() - tic, 2),
        "files": files,
    }
    atomic_write_text(out / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
    _report(summary, out, args.quiet)
    return 0


def _by_preset(attribute: str) -> str:
    """``"(default: the preset's: cpu-demo 500, ...)"`` for a config attribute."""
    values = (f"{n} {getattr(f('a red cube'), attribute):g}" for n, f in PRESETS.items())
    return f"(default: the preset's: {', '.join(values)})"


def _pipelines_help() -> str:
    """``"toy: ...; paper: ..."``: each pipeline's stages (prior, steps) and summary."""
    parts = []
    for name, factory in PIPELINES.items():
        pipeline = factory("a red cube")
        stages = " -> ".join(
            f"{s.name} {s.config.steps} steps" + (" (--prior-mv)" if s.multiview else "")
            for s in pipeline.stages
        )
        parts.append(f"{name}: {pipeline.summary} [{stages}]")
    return "; ".join(parts)


def add_generate_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``cfd3d generate``."""
    p = subparsers.add_parser(
        "generate",
        help="distil a 3D asset from a text prompt (GLB mesh, turntable video)",
        description=(
            "Distil a 3D model from a text-to-image diffusion prior by Consistent Flow "
            "Distillation (or SDS / FSD on the same code path) and export a GLB mesh, a "
            "turntable MP4/GIF and a preview grid. The default is the embedded toy-world "
            "prior on the CPU (try 'a red cube' or 'a blue torus'; 'cfd3d prior-vocab' lists "
            "its words); pass a Stable Diffusion model (folder, single file, hub id, or 'sd' for "
            "$CFD3D_SD_MODEL) as --prior on a GPU. Runs checkpoint as they go: continue an "
            "interrupted one with --resume. "
            "--pipeline runs named stages in one --out folder (stage1/, stage2/, ... each a "
            "full run folder; the last stage's mesh, turntable and preview copied to the top), "
            "each stage's field starting from the previous stage's result."
        ),
    )
    p.add_argument("prompt", nargs="?", help="the text prompt, e.g. 'a red cube'")
    p.add_argument("--out", type=Path, required=True, help="output folder of the run")
    p.add_argument(
        "--prior",
        default=None,
        help="'embedded' (default); 'sd' for the Stable Diffusion model in $CFD3D_SD_MODEL; "
        "or a diffusers folder, a single .safetensors/.ckpt checkpoint (SD 1.x/2.x, or "
        "MVDream) or a hub id (a mirror: stabilityai/stable-diffusion-2-1-base was "
        "withdrawn from the hub)",
    )
    p.add_argument(
        "--prior-mv",
        default=None,
        metavar="PATH",
        help="the multi-view (MVDream) checkpoint of a pipeline's multi-view stages, e.g. "
        "sd-v2.1-base-4view.pt (the paper pipeline needs it)",
    )
    p.add_argument("--method", default=None, help="cfd (default), sds, fsd, vsd, ism or sdi")
    p.add_argument(
        "--pipeline",
        default=None,
        metavar="NAME",
        help="run staged: " + _pipelines_help() + ". --prior, --prior-mv, --seed, --device, "
        "--method, --guidance and the other options apply to every stage where they mean "
        "something; --resume continues at the stage where the pipeline stopped",
    )
    p.add_argument(
        "--steps-per-stage",
        type=int,
        default=None,
        metavar="N",
        help="with --pipeline: every stage's optimisation steps (e.g. 3 for a smoke test)",
    )
    p.add_argument(
        "--preset",
        default=None,
        help=f"one of {', '.join(PRESETS)} (default: cpu-demo for the embedded prior; for "
        "Stable Diffusion sd-stage1 on a GPU, sd-cpu without one)",
    )
    p.add_argument(
        "--steps", type=int, default=None, help=f"optimisation steps {_by_preset('steps')}"
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help=f"classifier-free guidance scale {_by_preset('guidance_scale')}",
    )
    p.add_argument(
        "--guidance-interval",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="guide only at timestep fractions from LOW to HIGH, conditional prediction "
        "alone elsewhere; e.g. 0 0.6 leaves the noisiest steps unguided, which keeps seeds "
        "apart (default: the preset's; 0 1 guides throughout)",
    )
    p.add_argument("--negative-prompt", default=None, help="negative prompt for guidance")
    p.add_argument(
        "--perp-neg",
        type=float,
        default=None,
        metavar="WEIGHT",
        help="Perp-Neg against multi-faced (Janus) objects: the opposite view's prompt as a "
        "negative with this weight (e.g. 2; default 0, off; two more prior calls per view)",
    )
    p.add_argument(
        "--field",
        default=None,
        choices=("voxel", "nerf", "gaussians"),
        help="the 3D representation (default: the preset's; 'gaussians' = 3D Gaussian "
        "splatting, whose default preset on the embedded prior is toy-gaussians; it also "
        "writes the splats as model.ply)",
    )
    p.add_argument(
        "--formats", default=None, help="mesh formats, comma-separated: glb (default), obj, ply"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: CUDA if any)")
    p.add_argument(
        "--low-vram", action="store_true", help="Stable Diffusion: fp16, attention slicing, offload"
    )
    p.add_argument(
        "--config", type=Path, default=None, help="start from a saved config.json (repeats a run)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its newest usable checkpoint (damaged ones are "
        "skipped and named; with none, from step 0). With --steps N it continues a run, "
        "finished or not, to N steps: the schedules (timesteps, gamma) follow the N-step "
        "curves from the current step on (deterministic, but not the same as a fresh N-step "
        "run). Ctrl-C, SIGTERM and SIGHUP stop a run cleanly with a checkpoint",
    )
    p.add_argument(
        "--checkpoint-every-minutes",
        type=float,
        default=None,
        metavar="M",
        help="also write a checkpoint whenever M minutes have passed since the last one "
        "(for preemptible machines; the run's result does not change)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or messages")
    p.set_defaults(run=run_generate)
