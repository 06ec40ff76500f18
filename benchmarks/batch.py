"""`cfd3d batch` throughput: the same toy-world runs on 1 and on 2 local Dask workers.

Eight runs (four prompts x two seeds, the ``cpu-demo`` preset on the embedded prior with
``--steps`` steps each) are made on a local cluster of one worker process and on one of two,
every worker with one torch thread, each batch into a fresh folder. ``speedup`` is the total
wall time on one worker over the total on two; on 2 idle cores it can approach 2 (the
cluster's start-up and the runs' exports are part of both times).

This box's speed drifts over minutes of full load (the same batch measured 112-145 s), so
one "1 then 2" pair is biased against whichever comes second. ``--rounds R`` (default 2)
alternates the order (1, 2 / 2, 1 / ...) so that a drift cancels; the spread of the
per-round speed-ups is reported beside their pooled value.

JSON keys: ``wall_s`` (``{"1": [s per round], "2": [...]}``), ``speedup`` (pooled),
``speedup_rounds`` (one per round), ``runs``, ``steps``, ``seed`` (the first seed; the second
is ``seed + 1``), ``rounds``, ``finished`` (runs finished in each batch).

Usage: ``python benchmarks/batch.py --seed 0 [--steps 100] [--rounds 2] [--quick]``; the last
stdout line is one JSON object. ``--quick`` (4 runs, small exports, one round) is a smoke
run.
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
from cfd3d.errors import UserError

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
    if args.rounds < 1:
        raise UserError("--rounds must be at least 1")
    rounds = 1 if args.quick else args.rounds
    wall: dict[str, list[float]] = {"1": [], "2": []}
    finished: dict[str, list[int]] = {"1": [], "2": []}
    with tempfile.TemporaryDirectory(prefix="cfd3d-batch-bench-") as tmp:
        for r in range(rounds):
            for workers in (1, 2) if r % 2 == 0 else (2, 1):
                root = Path(tmp) / f"round{r}-workers{workers}"
                root.mkdir()
                seconds, done = timed_batch(specs, root, workers)
                wall[str(workers)].append(round(seconds, 2))
                finished[str(workers)].append(done)
                print(f"round {r + 1}: {workers} worker(s): {seconds:.1f} s", flush=True)
    result = {
        "runs": len(specs),
        "steps": args.steps,
        "seed": args.seed,
        "rounds": rounds,
        "wall_s": wall,
        "speedup": round(sum(wall["1"]) / sum(wall["2"]), 3),
        "speedup_rounds": [round(a / b, 3) for a, b in zip(wall["1"], wall["2"], strict=True)],
        "finished": finished,
    }
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="first seed of each prompt")
    parser.add_argument("--steps", type=int, default=100, help="steps of each run")
    parser.add_argument(
        "--rounds", type=int, default=2, help="measurements of each, in alternating order"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 runs with small exports")
    args = parser.parse_args(argv)
    return guarded(lambda: run(args))


if __name__ == "__main__":
    raise SystemExit(main())
