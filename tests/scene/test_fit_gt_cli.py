"""benchmarks/fit_gt.py rejects an unknown scene with one line and exit code 2."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fit_gt.py"


def test_unknown_scene_is_one_line_and_exit_code_2(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--scene", "red_dodecahedron", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown scene 'red_dodecahedron'")
    assert "shapes: sphere, cube" in lines[0]
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []  # nothing written
