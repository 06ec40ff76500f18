"""`benchmarks/batch.py --quick` runs its plan on 1 and 2 workers and reports a speed-up."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "batch.py"


def test_quick_run_prints_one_json_line():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), "--seed", "3", "--steps", "2", "--quick"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["runs"] == 4 and report["finished"] == {"1": [4], "2": [4]}
    assert report["rounds"] == 1 and set(report["wall_s"]) == {"1", "2"}
    (one,), (two,) = report["wall_s"]["1"], report["wall_s"]["2"]
    assert report["speedup"] == pytest.approx(one / two, abs=1e-3)
    assert report["speedup_rounds"] == [report["speedup"]]


def test_rounds_below_one_is_one_line():
    cmd = [sys.executable, str(SCRIPT), "--rounds", "0"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--rounds" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
