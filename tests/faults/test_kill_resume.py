"""SIGKILL and SIGTERM at random moments and inside checkpoint writes, then --resume: every
run must finish bit-identical to an uninterrupted one (see ``harness.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HARNESS = Path(__file__).with_name("harness.py")
TRIALS_PER_PROCESS = 26
SEEDS = (1, 2)  # two harness processes side by side: 52 trials


def test_killed_runs_resume_bit_identical(tiny, tiny_reference, tmp_path):
    config, _ = tiny_reference
    procs = []
    for seed in SEEDS:
        work = tmp_path / f"seed{seed}"
        work.mkdir()
        cmd = [sys.executable, str(HARNESS), str(config), str(work), str(TRIALS_PER_PROCESS)]
        procs.append(
            subprocess.Popen([*cmd, str(seed)], env=tiny.env(), stdout=subprocess.PIPE, text=True)
        )
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0
        results.append(json.loads(out))
    trials = sum(r["trials"] for r in results)
    kills = sum(r["kills"] for r in results)
    print(f"fault figures: {trials} trials, {kills} kills, {results}")
    assert trials == TRIALS_PER_PROCESS * len(SEEDS) >= 50
    assert sum(r["data_lost"] for r in results) == 0, [r["failures"] for r in results]
    assert sum(r["resumed_correctly"] for r in results) == trials
    assert kills >= trials  # every trial was interrupted at least once
    kinds = {k for r in results for k in r["kinds"]}
    assert kinds == {"random", "write-before", "write-after", "sigterm"}
