"""`cfd3d batch` throughput: the same toy-world runs on 1 and on 2 local Dask workers.

Eight runs (four prompts x two seeds, the ``cpu-demo`` preset on the embedded prior with
``--steps`` steps each) are made twice, into fresh folders: once on a local cluster of one
worker process, once on two; every worker has one torch thread. ``speedup`` is the first
wall time over the second; on 2 idle cores it can approach 2 (the cluster's start-up and
the runs' exports are part of both times).

JSON keys: ``wall_s`` (``{"1": s, "2": s}``), ``speedup``, ``runs``, ``steps``, ``seed``
(the first seed; the second is ``seed + 1``), ``finished`` (runs finished in each batch).

Usage: ``python benchmarks/batch.py --seed 0 [--steps 100] [--quick]``; the last stdout
line is one JSON object. ``--quick`` (4 runs, small exports) is a smoke run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from cfd3d.batch.command import connect, run_plan
from cfd3d.batch.plan import RunSpec
from cfd3d.cli import guarded

PROMPTS = ("a red cube", "a blue cone", "a yellow torus", "a green sphere")
QUICK = {"mesh_resolution": 16, "texture_size": 32, "turntable_frames": 1, "turntable_size": 32}
"""``--quick``: small exports (a smoke run of the benchmark, not a measurement)."""


def timed_batch(specs: list[RunSpec], root: Path, workers: int) -> tuple[float, int]:
    """Wall seconds of running ``specs`` on ``workers`` local workers, and how many
    finished."""
    tic = time.perf_counter()
    with connect(workers) as client:
        records = run_plan(specs, root, client, threads=1, quiet=False)
    return time.perf_counter() - tic, sum(r["status"] == "finished" for r in records)


def run(args: argparse.Namespace) -> int:
    prompts, overrides = (PROMPTS[:2], QUICK) if args.quick else (PROMPTS, {})
    specs = [
        RunSpec(prompt, seed=args.seed + k, steps=args.steps, overrides=overrides)
        for prompt in prompts
        for k in (0, 1)
    ]
    wall, finished = {}, {}
    with tempfile.TemporaryDirectory(prefix="cfd3d-batch-bench-") as tmp:
        for workers in (1, 2):
            root = Path(tmp) / f"workers{workers}"
            root.mkdir()
            wall[str(workers)], finished[str(workers)] = timed_batch(specs, root, workers)
            print(f"{workers} worker(s): {wall[str(workers)]:.1f} s", flush=True)
    result = {
        "runs": len(specs),
        "steps": args.steps,
        "seed": args.seed,
        "wall_s": {k: round(v, 2) for k, v in wall.items()},
        "speedup": round(wall["1"] / wall["2"], 3),
        "finished": finished,
    }
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="first seed of each prompt")
    parser.add_argument("--steps", type=int, default=100, help="steps of each run")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 runs with small exports")
    args = parser.parse_args(argv)
    return guarded(lambda: run(args))


if __name__ == "__main__":
    raise SystemExit(main())
