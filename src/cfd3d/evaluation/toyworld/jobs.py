"""One benchmark job: distil a toy-world prompt with one method and evaluate the result.

A :class:`Job` is one run of ``benchmarks/toyworld.py``'s plan (every stage of a
pipeline); :func:`method_config` gives a method (or an ablation row) its noise source,
timesteps and ``w(t)`` on a shared preset, :func:`distil` runs a config to its last step
and looks at the result, :func:`run_job` does both for every stage and renders the ground
truth. :func:`job_key`, :func:`read_cached` and :func:`write_cached` keep finished jobs in
a ``--cache`` folder.
"""

from __future__ import annotations

import io
import json
import pickle
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from cfd3d.evaluation.toyworld.composition import Composed
from cfd3d.evaluation.toyworld.prompts import Composition, Prompt
from cfd3d.evaluation.toyworld.setting import (
    DISTANCE,
    ELEVATION,
    FOVY,
    MESH_IOU_RESOLUTION,
    ORBIT_VIEWS,
    WORLD_VIEW_SEED,
    WORLD_VIEWS,
)
from cfd3d.evaluation.toyworld.views import Views, look, mesh_iou, truth_scene, world_of
from cfd3d.generate.command import load_prior_for
from cfd3d.generate.config import GenerateConfig, save_config
from cfd3d.generate.pipeline import configure, pipeline_config, start_from
from cfd3d.generate.run import Run
from cfd3d.io import atomic_write_bytes, sha256_hex
from cfd3d.noise import NoiseConfig
from cfd3d.priors.base import Prior
from cfd3d.priors.embedded.prior import EmbeddedPrior
from cfd3d.scene.sampling import CameraSamplerConfig

METHODS: tuple[str, ...] = ("cfd", "sds", "fsd", "vsd", "ism", "sdi")
"""The methods a job distils with, in the report's order."""
ABLATIONS: dict[str, str] = {"cfd-fixed": "fixed", "cfd-fresh": "fresh"}
"""The consistency ablation: CFD's rule, schedule and ``w(t)`` with another noise source."""
HELD_OUT_SEED = 100
"""The first seed of the runs: seed 0 tuned the ``cpu-demo`` preset, 100 onwards did not."""
PRESET = "cpu-demo"
"""The preset of every voxel run: ``cfd3d generate``'s on the embedded prior."""
FIELD_PRESETS = {"voxel": PRESET, "gaussians": "toy-gaussians"}
"""The preset of each ``--field``."""


@dataclass(frozen=True)
class Result:
    """One distilled object.

    Attributes:
        method, prompt, seed: what was run.
        views: its evaluation renders.
        mesh_iou: volumetric IoU of its exported mesh against the ground truth (fully
            named prompts only), up to the turns about the vertical axis the prior cannot
            tell apart (:func:`~cfd3d.evaluation.toyworld.views.mesh_iou`).
        mesh_iou_placed: the same against the ground truth as the world places it.
        noise_ms, step_ms: summed over the steps.
        distill_s, eval_s: wall time of the optimisation and of the evaluation.
    """

    method: str
    prompt: Prompt | Composition
    seed: int
    views: Views
    mesh_iou: float | None
    noise_ms: float
    step_ms: float
    distill_s: float
    eval_s: float
    mesh_iou_placed: float | None = None


def method_config(base: GenerateConfig, method: str, seed: int, steps: int) -> GenerateConfig:
    """``base`` for ``method``: its noise source, timesteps and ``w(t)``; an ablation row
    (:data:`ABLATIONS`) is CFD with the row's noise source. A timestep schedule or
    weighting that ``base`` sets is kept for ``base``'s own method (a preset tuned with
    them is benchmarked with them); every other method gets its defaults."""
    noise = None
    if method in ABLATIONS:
        method, noise = "cfd", NoiseConfig(kind=ABLATIONS[method], seed=seed)  # type: ignore[arg-type]
    own = method == base.method
    return replace(
        base,
        method=method,
        seed=seed,
        steps=steps,
        noise=noise,
        timesteps=base.timesteps if own else None,
        weighting=base.weighting if own else None,
    ).resolved()


def distil(
    config: GenerateConfig,
    prior: Prior,
    size: int,
    init: dict | None = None,
    composition: Composition | None = None,
) -> tuple[Run, Views, dict[str, float]]:
    """Run ``config`` to its last step, its field started from the checkpoint state
    ``init`` if given (a pipeline's later stage), then render the result (:func:`look`, in
    the prior's world; timings in the dict)."""
    tic = time.perf_counter()
    run = Run(config, prior)
    if init is not None:
        start_from(run, init)
    noise_ms = step_ms = 0.0
    while run.step < config.steps:
        step = run.take_step()
        noise_ms += step.noise_ms
        step_ms += step.step_ms
    distill_s = time.perf_counter() - tic
    run.field.eval()
    views = look(run, run.field, size, config.seed, world_of(prior), composition)
    timing = {
        "noise_ms": noise_ms,
        "step_ms": step_ms,
        "distill_s": distill_s,
        "eval_s": time.perf_counter() - tic - distill_s,
    }
    return run, views, timing


@dataclass(frozen=True)
class Job:
    """One run of the plan (all the stages of a pipeline): what a worker needs besides the
    prior. ``steps``: every run's (every stage's) steps; ``None`` keeps the stages' own.
    ``cameras``: distil with these instead of the configs' (the toy presets use the shipped
    prior's training cameras; a prior from other weights may have been trained on others).
    """

    base: GenerateConfig
    method: str
    prompt: Prompt | Composition
    seed: int
    steps: int | None
    size: int
    pipeline: str | None = None
    cameras: CameraSamplerConfig | None = None


def load_prior(weights: Path | None, base: GenerateConfig) -> Prior:
    """The embedded prior from ``weights``, or ``base``'s prior (the shipped weights for the
    toy presets) without them."""
    if weights is not None:
        return EmbeddedPrior.load(weights)
    return load_prior_for(base)


def job_configs(job: Job) -> list[tuple[str, GenerateConfig]]:
    """``(label, config)`` of each run of ``job``: the method's (label: the method), or each
    stage of its pipeline (label ``method:stage``)."""
    if job.pipeline is None:
        base = replace(job.base, prompt=job.prompt.text)
        steps = job.steps if job.steps is not None else base.steps
        runs = [(job_row(job), method_config(base, job.method, job.seed, steps))]
    else:
        pipeline = configure(
            pipeline_config(job.pipeline, job.prompt.text),
            method=job.method,
            steps_per_stage=job.steps,
            overrides={"seed": job.seed},
        )
        runs = [(f"{job.method}:{s.name}", s.config) for s in pipeline.stages]
    if job.cameras is None:
        return runs
    return [(label, replace(config, cameras=job.cameras)) for label, config in runs]


def job_row(job: Job) -> str:
    """The report row of a single-stage job: its method, ``METHOD@gaussians`` on Gaussians."""
    return job.method if job.base.field == "voxel" else f"{job.method}@{job.base.field}"


CACHE_VERSION = 4
"""Bumped when what a cached run holds, or how it is evaluated, changes."""


def job_key(job: Job, weights_sha: str, threads: int) -> str:
    """The name of ``job``'s results in a ``--cache`` folder: a digest of every stage's
    config, the evaluation, the prior's weights and the thread count (float sums depend on
    it), so a changed run is never read from an old result."""
    text = json.dumps(
        {
            "version": CACHE_VERSION,
            "configs": [(label, save_config(c)) for label, c in job_configs(job)],
            "prompt": job.prompt.text,
            "size": job.size,
            "orbit": [ORBIT_VIEWS, ELEVATION, DISTANCE, FOVY, MESH_IOU_RESOLUTION],
            "world_views": [WORLD_VIEWS, WORLD_VIEW_SEED],
            "weights": weights_sha,
            "threads": threads,
        },
        sort_keys=True,
    )
    return sha256_hex(text.encode())[:24]


SCRIPT_MODULES = frozenset({"__main__", "__mp_main__", "toyworld_benchmark"})
"""Modules that held the cached classes when they lived in ``benchmarks/toyworld.py``: the
script run as a program, and the name the tests loaded it under."""
CACHED_CLASSES = {
    "Result": Result,
    "Views": Views,
    "Prompt": Prompt,
    "Composition": Composition,
    "Composed": Composed,
}
"""The classes a cache entry holds, by name."""


class CacheUnpickler(pickle.Unpickler):
    """Reads cache entries written by any version of the benchmark: a class that the
    script's own module held (:data:`SCRIPT_MODULES`) is read as its library twin
    (:data:`CACHED_CLASSES`, the same fields)."""

    def find_class(self, module: str, name: str) -> type:
        if module in SCRIPT_MODULES and name in CACHED_CLASSES:
            return CACHED_CLASSES[name]
        return super().find_class(module, name)


class _CachePickle:
    """The ``pickle_module`` that :func:`torch.load` unpickles cache entries with."""

    Unpickler = CacheUnpickler
    load = staticmethod(pickle.load)


def read_cached(path: Path) -> list[tuple[Result, Views | None]] | None:
    """A cached job's results, or ``None`` when there is none (or it cannot be read: the
    job is then run again). Entries pickled when the classes lived in the benchmark
    script are read too (:class:`CacheUnpickler`)."""
    try:
        return torch.load(path, weights_only=False, pickle_module=_CachePickle)
    except FileNotFoundError:
        return None
    except Exception as exc:  # a damaged cache file: recompute, say so
        print(f"ignoring unreadable cached result {path} ({exc})", file=sys.stderr)
        return None


def write_cached(path: Path, runs: list[tuple[Result, Views | None]]) -> None:
    """Write ``runs`` (what :func:`run_job` returns) to ``path`` atomically."""
    buffer = io.BytesIO()
    torch.save(runs, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def run_job(job: Job, prior: Prior) -> list[tuple[Result, Views | None]]:
    """Distil ``job`` with ``prior`` (each stage from the previous stage's final state), one
    result per run; also render the ground truth of a fully named prompt or a composition."""
    world = world_of(prior)
    composition = job.prompt if isinstance(job.prompt, Composition) else None
    results: list[tuple[Result, Views | None]] = []
    state = None
    for label, config in job_configs(job):
        run_, views, timing = distil(config, prior, job.size, state, composition)
        state = run_.state_dict()
        truth = None
        iou = placed = None
        if job.prompt.missing is None:
            scene = truth_scene(job.prompt, world)
            truth = look(run_, scene, job.size, job.seed, world, composition)
            if composition is None:
                iou, placed = (round(x, 4) for x in mesh_iou(run_, scene))
        result = Result(label, job.prompt, job.seed, views, iou, **timing, mesh_iou_placed=placed)
        results.append((result, truth))
    return results
