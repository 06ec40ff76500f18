"""One run of a batch, as a worker executes it: start, resume or skip, by its folder.

:func:`execute` is the task a Dask worker runs. It looks at the run's folder first, so the
same task does the right thing however often it is started: a finished run (``summary.json``
present) is left as it is, an interrupted one (a config and a checkpoint, or a pipeline
record) continues with ``cfd3d generate --resume``, anything else starts afresh (replacing
the files of an attempt that died before its first checkpoint). That is what makes a batch
rerun cheap and a lost worker harmless: the retried task resumes from the last checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from cfd3d.batch.plan import RunSpec
from cfd3d.errors import UserError
from cfd3d.generate.command import (
    CHECKPOINTS,
    CONFIG_NAME,
    PIPELINE_NAME,
    SUMMARY_NAME,
)
from cfd3d.generate.config import save_config
from cfd3d.generate.run import list_checkpoints
from cfd3d.io import atomic_write_text

SPEC_NAME = "batch-run.json"
"""The run's :class:`RunSpec`, written into its folder (what the folder name hashes)."""
SPEC_CONFIG_NAME = "batch-config.json"
"""A single run's resolved config, which ``cfd3d generate --config`` starts from."""

STATUSES: tuple[str, ...] = ("finished", "failed", "pending")


def run_state(folder: Path) -> str:
    """``"finished"``, ``"interrupted"`` (resumable) or ``"new"``."""
    if (folder / SUMMARY_NAME).exists():
        return "finished"
    if (folder / PIPELINE_NAME).exists():
        return "interrupted"
    if (folder / CONFIG_NAME).exists() and list_checkpoints(folder / CHECKPOINTS):
        return "interrupted"
    return "new"


def generate_argv(spec: RunSpec, folder: Path, state: str) -> list[str]:
    """The ``cfd3d generate`` command line of ``spec`` in ``folder`` for its ``state``."""
    if state == "interrupted":
        return ["generate", "--resume", "--out", str(folder), "--quiet"]
    argv = ["generate", "--out", str(folder), "--quiet", "--overwrite"]
    if spec.pipeline is None:
        return [*argv, "--config", str(folder / SPEC_CONFIG_NAME)]
    argv += ["--pipeline", spec.pipeline, "--prior", spec.prior, "--seed", str(spec.seed)]
    if spec.method is not None:
        argv += ["--method", spec.method]
    if spec.steps is not None:
        argv += ["--steps-per-stage", str(spec.steps)]
    return [*argv, "--", spec.prompt]


def execute(spec: RunSpec, root: str, threads: int | None = None) -> dict[str, Any]:
    """Run ``spec`` in ``root/<its folder>`` to the end (or leave it if finished); returns
    its record for the batch index (:func:`run_record`).

    Errors a user can cause (a word the embedded prior does not know, missing weights)
    end this run as ``"failed"`` with the message; the batch goes on with the others.
    """
    from cfd3d.cli import build_parser

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    folder = Path(root) / spec.folder_name()
    state = run_state(folder)
    tic = time.perf_counter()
    error = None
    if state != "finished":
        try:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder / SPEC_NAME, json.dumps(spec.__dict__, indent=2) + "\n")
            if state == "new" and spec.pipeline is None:
                atomic_write_text(folder / SPEC_CONFIG_NAME, save_config(spec.config()))
            args = build_parser().parse_args(generate_argv(spec, folder, state))
            args.run(args)
        except UserError as exc:
            error = str(exc)
    record = run_record(spec, folder)
    record["resumed"] = state == "interrupted"
    record["skipped"] = state == "finished"
    if error is not None:
        record.update(status="failed", error=error)
    if not record["skipped"]:
        record["wall_s"] = round(time.perf_counter() - tic, 2)
    return record


def run_record(spec: RunSpec, folder: Path) -> dict[str, Any]:
    """What the index says of a run: its spec, folder, status and files (relative to the
    batch folder), and its method/preset as run (the preset's when the spec left them)."""
    record: dict[str, Any] = {
        "name": folder.name,
        "prompt": spec.prompt,
        "seed": spec.seed,
        "prior": spec.prior,
        "method": spec.method,
        "preset": spec.preset,
        "pipeline": spec.pipeline,
        "steps": spec.steps,
        "status": "pending",
        "wall_s": None,
        "files": {},
    }
    summary = _read_json(folder / SUMMARY_NAME)
    config = _read_json(folder / CONFIG_NAME)
    if config:
        record["method"] = record["method"] or config.get("method")
        record["preset"] = record["preset"] or config.get("preset")
        record["steps"] = record["steps"] or config.get("steps")
    if summary:
        record["status"] = "finished"
        record["wall_s"] = summary.get("total_s_this_call")
        record["files"] = {
            kind: f"{folder.name}/{Path(path).name}"
            for kind, path in summary.get("files", {}).items()
            if kind in ("glb", "obj", "ply", "mp4", "gif", "preview")
            and (folder / Path(path).name).exists()
        }
    return record


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
