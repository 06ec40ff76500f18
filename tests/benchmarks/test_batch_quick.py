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
    assert report["runs"] == 4 and report["finished"] == {"1": 4, "2": 4}
    assert report["speedup"] > 0 and set(report["wall_s"]) == {"1", "2"}
