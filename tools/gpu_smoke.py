"""End-to-end `cfd3d generate` runs on one device, for the GPU checks (tools/gpu_checks.sh).

1. The embedded prior's default run (`cpu-demo`, voxel grid) with ``--steps``.
2. The paper pipeline (MVDream NeRF at 64² then 256² renders, then SD refinement at 512²)
   at the presets' real render sizes, hash grid and samples, with tiny random-weight
   checkpoints (an MVDream single file and a diffusers folder, written here, no download),
   ``--steps-per-stage`` steps each: the CUDA and half-precision paths of the real pipeline,
   not its quality.

Prints one JSON object last: per run its exit code, wall seconds and the files it wrote.
Usage: ``python tools/gpu_smoke.py OUT_DIR [--device cuda] [--steps 100] [--steps-per-stage 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from cfd3d.cli import main as cfd3d
from cfd3d.priors.mvdream_random import save_random_mvdream
from cfd3d.priors.sd_random import save_random_pipeline


def timed(name: str, argv: list[str], out: Path, report: dict) -> None:
    start = time.perf_counter()
    code = cfd3d([*argv, "--out", str(out), "-q"])
    report[name] = {
        "exit": code,
        "seconds": round(time.perf_counter() - start, 1),
        "files": sorted(p.name for p in out.iterdir()) if out.exists() else [],
    }
    print(name, report[name], flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the runs and the tiny checkpoints")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=100, help="steps of the embedded run")
    parser.add_argument("--steps-per-stage", type=int, default=3)
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"device": args.device}
    device = ["--device", args.device]
    embedded = ["generate", "a red cube", "--steps", str(args.steps), *device]
    timed("embedded", embedded, args.out / "embedded", report)
    mv = save_random_mvdream(args.out / "tiny-4view.pt")
    sd = save_random_pipeline(args.out / "tiny-sd", "tiny")
    paper = ["generate", "a hamburger", "--pipeline", "paper", "--prior-mv", str(mv)]
    paper += ["--prior", str(sd), "--steps-per-stage", str(args.steps_per_stage), *device]
    timed("paper", paper, args.out / "paper", report)
    print(json.dumps(report))
    return 0 if all(r["exit"] == 0 for r in report.values() if isinstance(r, dict)) else 1


if __name__ == "__main__":
    sys.exit(main())
