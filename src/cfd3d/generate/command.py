"""``cfd3d generate``: the text-to-3D command, its output folder and its life cycle.

Output folder ``DIR``::

    config.json      the resolved GenerateConfig (``--config DIR/config.json`` repeats it)
    metrics.jsonl    one JSON line per step: step, t, loss, grad norm, timings
    checkpoints/     step_NNNNNN.pt every ``checkpoint_every`` steps (atomic; the newest
                     ``keep_checkpoints`` are kept)
    model.glb        the mesh (plus model.obj / model.ply with --formats)
    turntable.mp4, turntable.gif, preview.png
    summary.json     written last: the run is finished
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

from cfd3d.errors import ConfigError, OutputError, UserError
from cfd3d.generate.config import (
    PRESETS,
    GenerateConfig,
    default_preset,
    load_config,
    preset_config,
    save_config,
)
from cfd3d.generate.outputs import write_outputs
from cfd3d.generate.run import Run, list_checkpoints, read_checkpoint
from cfd3d.io import atomic_write_text, ensure_writable_dir
from cfd3d.priors.base import Prior

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"
CHECKPOINTS = "checkpoints"
OUTPUT_NAMES = (
    CONFIG_NAME,
    METRICS_NAME,
    SUMMARY_NAME,
    CHECKPOINTS,
    "model.glb",
    "model.obj",
    "model.ply",
    "turntable.mp4",
    "turntable.gif",
    "preview.png",
)


def load_prior_for(config: GenerateConfig) -> Prior:
    """The run's prior, on the run's device; prompt problems raise here, before any output."""
    from cfd3d.priors.registry import is_stable_diffusion, load_prior

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


def check_output_folder(folder: Path, overwrite: bool) -> None:
    """Refuse a folder that holds another run or files this run would overwrite."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise OutputError(f"--out '{folder}' is a file, not a folder; choose another --out")
    present = [name for name in OUTPUT_NAMES if (folder / name).exists()]
    if not present or overwrite:
        return
    if (folder / SUMMARY_NAME).exists():
        raise OutputError(
            f"'{folder}' holds a finished run; choose another --out, or pass --overwrite to "
            "replace it"
        )
    if (folder / CONFIG_NAME).exists():
        raise OutputError(
            f"'{folder}' holds another run; continue it with --resume, choose another --out, "
            "or pass --overwrite to replace it"
        )
    raise OutputError(
        f"'{folder}' already holds {', '.join(present)}; choose another --out, or pass "
        "--overwrite to replace them"
    )


def _clear_outputs(folder: Path) -> None:
    for name in OUTPUT_NAMES:
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
    else:
        if args.prompt is None:
            raise ConfigError("no prompt given; pass a text prompt, e.g. 'a red cube'")
        if not args.prompt.strip():
            raise ConfigError("the prompt is empty; pass a text prompt, e.g. 'a red cube'")
        prior = args.prior or "embedded"
        preset = args.preset or default_preset(prior, args.device)
        config = preset_config(preset, args.prompt)
        config = replace(config, prior=prior)
    overrides = {
        "prior": args.prior if args.config is not None else None,
        "method": args.method,
        "steps": args.steps,
        "seed": args.seed,
        "guidance_scale": args.guidance,
        "negative_prompt": args.negative_prompt,
        "perp_neg": args.perp_neg,
        "device": args.device,
        "low_vram": True if args.low_vram else None,
        "formats": tuple(args.formats.split(",")) if args.formats else None,
    }
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if args.method is not None and args.config is not None:
        # a new method brings its own noise, timesteps and weighting
        config = replace(config, noise=None, timesteps=None, weighting=None)
    if args.seed is not None and config.noise is not None:
        config = replace(config, noise=replace(config.noise, seed=args.seed))
    return config.resolved()


def run_generate(args: argparse.Namespace) -> int:
    out: Path = args.out
    if args.resume:
        return _resume(args)
    config = config_from_args(args)
    check_output_folder(out, args.overwrite)
    prior = load_prior_for(config)
    run = Run(config, prior)
    ensure_writable_dir(out)
    if args.overwrite:
        _clear_outputs(out)
    atomic_write_text(out / CONFIG_NAME, save_config(config))
    return _drive(run, out, args.quiet)


def _resume(args: argparse.Namespace) -> int:
    out: Path = args.out
    config_file = out / CONFIG_NAME
    checkpoints = list_checkpoints(out / CHECKPOINTS)
    if not config_file.exists() or not checkpoints:
        raise UserError(
            f"nothing to resume in '{out}': it has no {CONFIG_NAME} and checkpoint; start the "
            "run without --resume"
        )
    config = load_config(config_file)
    given = [
        f"--{name.replace('_', '-')}"
        for name in (
            "prior",
            "method",
            "preset",
            "steps",
            "seed",
            "guidance",
            "negative_prompt",
            "perp_neg",
            "formats",
            "config",
        )
        if getattr(args, name) is not None
    ]
    if given:
        raise ConfigError(
            f"--resume continues the run with its saved {CONFIG_NAME}; drop {', '.join(given)} "
            "(or start a new run with --config and another --out)"
        )
    if args.prompt is not None and args.prompt != config.prompt:
        raise ConfigError(
            f"--resume continues the run for '{config.prompt}'; drop the prompt argument or "
            "choose another --out for a new prompt"
        )
    state = read_checkpoint(checkpoints[-1])
    prior = load_prior_for(config)
    run = Run(config, prior)
    try:
        run.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise UserError(
            f"checkpoint '{checkpoints[-1]}' does not match {CONFIG_NAME} ({exc}); delete it "
            "to resume from an earlier checkpoint, or start afresh with another --out"
        ) from None
    _truncate_metrics(out / METRICS_NAME, run.step)
    return _drive(run, out, args.quiet)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines of steps at or after ``step`` (they will be taken again)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] < step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def _drive(run: Run, out: Path, quiet: bool) -> int:
    """Take the remaining steps with checkpoints, then export; handles Ctrl-C."""
    from tqdm import tqdm

    c = run.config
    ckpt_dir = out / CHECKPOINTS
    tic = time.perf_counter()
    bar = tqdm(
        total=c.steps, initial=run.step, desc="generate", unit="step", disable=quiet, leave=False
    )
    last_saved = None
    try:
        with open(out / METRICS_NAME, "a", encoding="utf-8") as metrics:
            while run.step < c.steps:
                result = run.take_step()
                metrics.write(json.dumps(result.as_dict()) + "\n")
                metrics.flush()
                bar.update(1)
                bar.set_postfix(t=result.t, loss=f"{result.loss:.3g}", refresh=False)
                if run.bad_steps >= c.max_bad_steps:
                    saved = last_saved or (list_checkpoints(ckpt_dir) or [None])[-1]
                    raise UserError(
                        f"stopped at step {result.step}: {run.bad_steps} consecutive steps had "
                        f"non-finite gradients (lower --guidance or the learning rate); last good "
                        f"checkpoint: {saved or 'none'}"
                    )
                due = run.step % c.checkpoint_every == 0 and run.step < c.steps
                if due and run.bad_steps == 0:  # never checkpoint in a run of bad steps
                    last_saved = run.save_checkpoint(ckpt_dir)
    except KeyboardInterrupt:
        bar.close()
        if run.bad_steps == 0:
            saved = run.save_checkpoint(ckpt_dir)
            print(
                f"interrupted at step {run.step}; checkpoint {saved} written; continue with "
                f"'cfd3d generate --resume --out {out}'",
                file=sys.stderr,
            )
        raise
    bar.close()
    final = run.save_checkpoint(ckpt_dir)
    fit_s = time.perf_counter() - tic
    if not quiet:
        print(f"distilled {c.steps} steps in {fit_s:.1f} s; exporting...", file=sys.stderr)
    written = write_outputs(run, out)
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
    if not quiet:
        mesh = written.get("glb") or next(
            (written[f] for f in ("obj", "ply") if f in written), None
        )
        print(f"done: {out}")
        if mesh:
            print(f"  mesh:      {mesh}")
        print(f"  turntable: {written['mp4']} (GIF: {written['gif']})")
        print(f"  preview:   {written['preview']}")
    return 0


def _by_preset(attribute: str) -> str:
    """``"(default: the preset's: cpu-demo 500, ...)"`` for a config attribute."""
    values = (f"{n} {getattr(f('a red cube'), attribute):g}" for n, f in PRESETS.items())
    return f"(default: the preset's: {', '.join(values)})"


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
            "its words); pass a Stable Diffusion hub id or diffusers folder as --prior on a "
            "GPU. Runs checkpoint as they go: continue an interrupted one with --resume."
        ),
    )
    p.add_argument("prompt", nargs="?", help="the text prompt, e.g. 'a red cube'")
    p.add_argument("--out", type=Path, required=True, help="output folder of the run")
    p.add_argument(
        "--prior",
        default=None,
        help="'embedded' (default) or a Stable Diffusion hub id / diffusers folder "
        "(e.g. stabilityai/stable-diffusion-2-1-base)",
    )
    p.add_argument("--method", default=None, help="cfd (default), sds or fsd")
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
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or messages")
    p.set_defaults(run=run_generate)
