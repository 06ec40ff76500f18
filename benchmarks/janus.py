"""Janus on the toy world: does a distilled head show its face from behind?

The toy world's "head" is a ball with a face on its front (+x, azimuth 0), in the face
colour of the prior's world (``EmbeddedPrior.world.face_rgb``: pale for the first prior).
Every run distils "a {colour} head" with the ``cpu-demo`` preset (view-dependent prompts
on) from the shipped prior or ``--weights`` and is rendered in albedo from the evaluation
orbit of ``benchmarks/toyworld.py`` (:mod:`cfd3d.evaluation.toyworld.setting`: 8 views at
elevation 15°, front first), on white. In each view, ``face`` is the share of the object's
pixels (opacity > 0.5) whose albedo is nearer the face colour than the head's colour and
within :data:`~cfd3d.evaluation.toyworld.views.FACE_TOLERANCE` of it
(:func:`~cfd3d.evaluation.toyworld.views.face_by_view`); the ground-truth head of that
world, rendered the same way, gives the reference ``face`` per view.

Per configuration (``cfd``, ``cfd+perpneg``, ``sds`` by default; ``+perpneg`` adds Perp-Neg
with weight ``--perp-neg``):

* ``face_rate``: share of results whose front view shows at least half the ground truth's
  front face (the prior's face was distilled at all);
* ``janus_rate``: share of results whose back view (azimuth 180°) shows at least half the
  ground truth's front face (a face where there is none: the Janus failure);
* ``face_by_azimuth``: the mean ``face`` per orbit view, next to ``truth_by_azimuth``;
* ``wall_s``: distillation and evaluation time of its runs.

Usage::

    python benchmarks/janus.py [--seed 0] [--seeds 3] [--colors red blue green]
        [--configs cfd cfd+perpneg sds] [--perp-neg 2] [--weights PATH] [--jobs 2] [--quick]

The last line of stdout is one JSON object; progress goes to stderr. Bad arguments are
one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from cfd3d.cli import guarded
from cfd3d.errors import UserError
from cfd3d.evaluation.toyworld.jobs import distil, load_prior, method_config
from cfd3d.evaluation.toyworld.setting import BACK_VIEW, EVAL_SIZE
from cfd3d.evaluation.toyworld.views import face_by_view, faces, true_head, world_of
from cfd3d.generate.config import GenerateConfig, preset_config
from cfd3d.generate.run import Run
from cfd3d.priors.base import Prior
from cfd3d.scene.toy import COLORS


@dataclass(frozen=True)
class Job:
    """One run: its config (method, colour, seed), its configuration's label, its colour."""

    config: GenerateConfig
    label: str
    color: str


_PRIOR: list[Prior] = []


def start_worker(weights: Path | None, base: GenerateConfig, threads: int) -> None:
    """Initialise a worker process: its thread count and its own copy of the prior."""
    torch.set_num_threads(threads)
    _PRIOR[:] = [load_prior(weights, base)]


def run_job(job: Job) -> dict:
    """Distil ``job`` with this process's prior: its face share per orbit view, its time."""
    _, views, timing = distil(job.config, _PRIOR[0], EVAL_SIZE)
    return {
        "label": job.label,
        "color": job.color,
        "seed": job.config.seed,
        "face": face_by_view(views.albedo, views.opacity, job.color, world_of(_PRIOR[0]).face_rgb),
        "seconds": timing["distill_s"] + timing["eval_s"],
    }


def parse_label(label: str) -> tuple[str, bool]:
    """``"cfd+perpneg"`` -> ``("cfd", True)``."""
    method, _, extra = label.partition("+")
    if method not in ("cfd", "sds", "fsd") or extra not in ("", "perpneg"):
        raise UserError(f"unknown configuration {label!r}; use METHOD or METHOD+perpneg")
    return method, bool(extra)


def run(args: argparse.Namespace) -> int:
    for flag in ("seeds", "jobs", "threads"):
        if getattr(args, flag) <= 0:
            raise UserError(f"--{flag} must be positive, got {getattr(args, flag)}")
    if args.perp_neg <= 0:
        raise UserError(f"--perp-neg must be positive, got {args.perp_neg}")
    for color in args.colors:
        if color not in COLORS:
            raise UserError(f"unknown colour {color!r}; valid: {', '.join(COLORS)}")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    colors = args.colors[:1] if args.quick else args.colors
    seeds = [args.seed + i for i in range(1 if args.quick else args.seeds)]
    base = preset_config("cpu-demo", "a red head")
    if args.quick:
        base = replace(base, steps=3)
    elif args.steps is not None:
        base = replace(base, steps=args.steps)
    prior = load_prior(args.weights, base)
    world = world_of(prior)
    base = replace(base, cameras=world.cameras)  # the preset's for the shipped weights
    jobs = []
    for label in args.configs:
        method, perp_neg = parse_label(label)
        for c in colors:
            prompted = replace(
                base, prompt=f"a {c} head", perp_neg=args.perp_neg if perp_neg else 0.0
            )
            jobs += [Job(method_config(prompted, method, s, base.steps), label, c) for s in seeds]
    truth_run = Run(base.resolved(), prior)
    truth = {c: faces(truth_run, true_head(c, world), c, world) for c in colors}

    results = []
    if args.jobs == 1:
        _PRIOR[:] = [prior]
        for i, job in enumerate(jobs, 1):
            results.append(run_job(job))
            print(
                f"[{i}/{len(jobs)}] {job.label} {job.color} seed {job.config.seed}", file=sys.stderr
            )
    else:
        with ProcessPoolExecutor(
            args.jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=start_worker,
            initargs=(args.weights, base, args.threads),
        ) as pool:
            for i, result in enumerate(pool.map(run_job, jobs), 1):
                results.append(result)
                print(f"[{i}/{len(jobs)}] {result['label']} {result['color']}", file=sys.stderr)

    out: dict = {}
    for label in args.configs:
        mine = [r for r in results if r["label"] == label]
        front_ok = [r["face"][0] >= 0.5 * truth[r["color"]][0] for r in mine]
        janus = [r["face"][BACK_VIEW] >= 0.5 * truth[r["color"]][0] for r in mine]
        out[label] = {
            "face_rate": round(float(np.mean(front_ok)), 4),
            "janus_rate": round(float(np.mean(janus)), 4),
            "face_by_azimuth": [round(float(v), 4) for v in np.mean([r["face"] for r in mine], 0)],
            "wall_s": round(sum(r["seconds"] for r in mine), 1),
            "runs": len(mine),
        }
    out["truth_by_azimuth"] = [
        round(float(v), 4) for v in np.mean([truth[c] for c in colors], axis=0)
    ]
    out["config"] = {
        "seed": args.seed,
        "seeds": len(seeds),
        "colors": colors,
        "steps": base.steps,
        "guidance_scale": base.guidance_scale,
        "perp_neg": args.perp_neg,
        "weights": None if args.weights is None else str(args.weights),
        "face_rgb": list(world.face_rgb),
        "jobs": args.jobs,
        "threads": args.threads,
        "quick": args.quick,
    }
    out["wall_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(out))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="the first seed")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per colour")
    parser.add_argument("--colors", nargs="+", default=["red", "blue", "green"])
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["cfd", "cfd+perpneg", "sds"],
        help="METHOD or METHOD+perpneg",
    )
    parser.add_argument("--perp-neg", type=float, default=2.0, help="Perp-Neg weight")
    parser.add_argument("--steps", type=int, default=None, help="steps (default: the preset's)")
    parser.add_argument(
        "--weights", type=Path, default=None, help="embedded prior weights (default: shipped)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job")
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds")
    args = parser.parse_args(argv)
    return guarded(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
