"""Kill/resume trials of ``cfd3d generate``, run as a script in a fresh process.

The process imports cfd3d, loads the embedded prior and makes the reference run once, then
forks one child per run attempt (a child runs the real CLI, ``cfd3d.cli.main``); forking
saves the 2-3 s that every fresh interpreter spends importing torch and warming up. Torch
runs on one thread, so no OpenMP pool exists when the process forks.

Each trial starts a run of a tiny config and SIGKILLs it (at a random moment, or inside the
k-th atomic write: before or after its rename), or stops it with SIGTERM, then resumes it,
sometimes killing a resume too, until a resume finishes. A trial counts as resumed correctly
when the run finishes and its final checkpoint, exports and metrics (step, t, loss) equal an
uninterrupted run's byte for byte; otherwise its data is lost. Prints one JSON object.

Usage: ``python harness.py CONFIG WORK TRIALS SEED``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

from cfd3d.cli import main  # noqa: E402
from cfd3d.priors import registry  # noqa: E402

_PRIOR = registry.PRIORS["embedded"]()
registry.PRIORS["embedded"] = lambda: _PRIOR  # loaded once, shared by every child
COMPARED = ("model.glb", "preview.png")


def child(argv: list[str], kill_at_write: tuple[int, str] | None) -> int:
    """Fork a child that runs ``cfd3d`` with ``argv`` (SIGKILLing itself inside the k-th
    atomic write when ``kill_at_write`` is ``(k, "before"|"after")`` the rename)."""
    pid = os.fork()
    if pid:
        return pid
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        if kill_at_write is not None:
            target, when = kill_at_write
            replace, calls = os.replace, [0]

            def dying_replace(src, dst):
                calls[0] += 1
                if calls[0] == target and when == "before":
                    os.kill(os.getpid(), signal.SIGKILL)
                replace(src, dst)
                if calls[0] == target and when == "after":
                    os.kill(os.getpid(), signal.SIGKILL)

            os.replace = dying_replace
        code = main(argv)
    except BaseException:  # a child must never return into the parent's code
        code = 99
    os._exit(code)


def wait(pid: int, kill_after: float | None = None, sig: int = signal.SIGKILL) -> int:
    """The child's exit status (negative: killed by that signal), sending ``sig`` after
    ``kill_after`` seconds if it still runs."""
    start = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if kill_after is not None and time.monotonic() - start >= kill_after:
            os.kill(pid, sig)
            kill_after = None
        time.sleep(0.002)


def fingerprint(out: Path, steps: int) -> dict:
    """What must equal the uninterrupted run's."""
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "checkpoint": (out / "checkpoints" / f"step_{steps:06d}.pt").read_bytes(),
        "metrics": [(m["step"], m["t"], m["loss"]) for m in metrics],
        **{name: (out / name).read_bytes() for name in COMPARED},
        "finished": (out / "summary.json").exists(),
    }


def run_trials(config: Path, work: Path, trials: int, seed: int) -> dict:
    steps = json.loads(config.read_text())["steps"]
    start = ["generate", "--config", str(config), "-q", "--out"]
    reference = work / "reference"
    assert main([*start, str(reference)]) == 0  # in this process: warms every lazy import up
    expected = fingerprint(reference, steps)
    tic = time.monotonic()
    assert wait(child([*start, str(work / "timed")], None)) == 0
    duration = time.monotonic() - tic
    assert fingerprint(work / "timed", steps) == expected
    rng = random.Random(seed)
    results = {"trials": 0, "resumed_correctly": 0, "data_lost": 0, "kills": 0, "failures": []}
    kinds: dict[str, int] = {}
    for index in range(trials):
        out = work / f"trial{index}"
        kind = rng.choice(["random", "random", "write-before", "write-after", "sigterm"])
        kinds[kind] = kinds.get(kind, 0) + 1
        argv = [*start, str(out)]
        attempts = 0
        code = None
        scale = 1.0
        while code != 0 and attempts < 8:
            attempts += 1
            killing = attempts == 1 or rng.random() < 0.3  # sometimes kill a resume too
            if not killing:
                code = wait(child(argv, None))
            elif kind.startswith("write"):
                # config.json, 2 files per checkpoint, 4 exports, summary.json
                k = rng.randint(1, 2 * (steps // 2) + 6)
                code = wait(child(argv, (k, kind.split("-")[1])))
            else:
                sig = signal.SIGTERM if kind == "sigterm" else signal.SIGKILL
                code = wait(child(argv, None), rng.uniform(0.0, scale * duration), sig)
                if attempts == 1 and code == 0 and scale > 0.1:  # finished first: draw again
                    shutil.rmtree(out)
                    attempts, code, scale = 0, None, scale / 2
                    continue
            results["kills"] += code in (-signal.SIGKILL, 128 + signal.SIGTERM, -signal.SIGTERM)
            if code not in (0, -signal.SIGKILL, 128 + signal.SIGTERM, -signal.SIGTERM):
                break  # a resume that refuses or crashes: the run is lost
            if (out / "config.json").exists() or (out / "checkpoints").exists():
                argv = ["generate", "--resume", "-q", "--out", str(out)]
        results["trials"] += 1
        try:
            same = code == 0 and fingerprint(out, steps) == expected
        except (OSError, ValueError, KeyError) as exc:
            same, code = False, f"{code} ({exc})"
        if same:
            results["resumed_correctly"] += 1
            shutil.rmtree(out)
        else:
            results["data_lost"] += 1
            results["failures"].append(f"trial {index} ({kind}): exit {code}")
    results["kinds"] = kinds
    results["reference_s"] = round(duration, 3)
    return results


if __name__ == "__main__":
    config_path, work_dir, n, rng_seed = sys.argv[1:5]
    print(json.dumps(run_trials(Path(config_path), Path(work_dir), int(n), int(rng_seed))))
