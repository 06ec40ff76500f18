"""The tiny run every fault test damages: a 12³ voxel grid, one 32² view a step, 12 steps,
a checkpoint every 2 steps, exports of a few kilobytes (about 1 s a run, warm)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cfd3d.cli import main
from cfd3d.generate.config import preset_config, save_config
from cfd3d.scene.voxel import VoxelGridConfig

STEPS = 12


def tiny_config(**overrides):
    config = replace(
        preset_config("cpu-demo", "a red cube"),
        steps=STEPS,
        checkpoint_every=2,
        views_per_step=1,
        n_samples=16,
        voxel=VoxelGridConfig(resolution=12, blob_radius=0.4),
        mesh_resolution=8,
        turntable_frames=1,
        turntable_size=32,
        fps=1,
        keep_checkpoints=2,
    )
    return replace(config, **overrides).resolved()


def write_tiny_config(path: Path, **overrides) -> Path:
    path.write_text(save_config(tiny_config(**overrides)))
    return path


def fingerprint(out: Path, steps: int = STEPS) -> dict:
    """What a resumed run must share with an uninterrupted one, byte for byte."""
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "checkpoint": (out / "checkpoints" / f"step_{steps:06d}.pt").read_bytes(),
        "metrics": [(m["step"], m["t"], m["loss"]) for m in metrics],
        "mesh": (out / "model.glb").read_bytes(),
        "finished": (out / "summary.json").exists(),
    }


@pytest.fixture(scope="session")
def tiny_reference(tmp_path_factory) -> tuple[Path, dict]:
    """The tiny config and the fingerprint of its uninterrupted run."""
    root = tmp_path_factory.mktemp("tiny")
    config = write_tiny_config(root / "tiny.json")
    assert main(["generate", "--config", str(config), "--out", str(root / "run"), "-q"]) == 0
    return config, fingerprint(root / "run")


def cli_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def cfd3d_process(args: list[str]) -> subprocess.Popen:
    """``cfd3d ARGS`` in a fresh interpreter (stderr piped, as text)."""
    return subprocess.Popen(
        [sys.executable, "-m", "cfd3d.cli", *args],
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """In-process runs with the thread count of :func:`cfd3d_process`'s (one): float sums
    depend on it, and the tests compare runs of both kinds, and runs resumed across them,
    byte for byte (with torch's default of one thread per core they differed from the
    first step whenever this folder ran alone)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny() -> SimpleNamespace:
    """The helpers above, for the tests of this folder."""
    return SimpleNamespace(
        steps=STEPS,
        config=tiny_config,
        write_config=write_tiny_config,
        fingerprint=fingerprint,
        env=cli_env,
        process=cfd3d_process,
    )
