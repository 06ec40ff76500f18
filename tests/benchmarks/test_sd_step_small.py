"""benchmarks/sd_step.py --small: one timed CFD step through a reduced Stable Diffusion."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sd_step.py"
PHASES = {"render", "noise", "encode", "unet", "backward", "optimizer"}


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_small_step_reports_positive_timings():
    proc = run_script("--small", "--steps", "1", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["device"] == "cpu" and result["dtype"] == "float32"
    assert result["resolution"] == 64 and result["prior_input"] == [4, 8, 8]
    assert result["unet_params"] > 1_000_000
    assert set(result["split_ms"]) == PHASES
    assert all(ms > 0 for ms in result["split_ms"].values())
    assert result["ms_per_step"] > 0 and result["peak_mem_mb"] > 0
    assert result["nonfinite_steps"] == 0
    assert "warning: the full-size" not in proc.stderr


def test_a_non_finite_step_is_counted_and_not_taken(monkeypatch, capsys):
    """A NaN update leaves the field as it was (the Run's rule), and the JSON says so."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("sd_step_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look it up
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "cfd_gradient", lambda *a, **k: torch.full_like(a[1], torch.nan))
    taken = []
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: taken.append(1))
    assert module.main(["--small", "--steps", "2", "--threads", "1", "--resolution", "16"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["nonfinite_steps"] == 3 and not taken  # the warm-up and two timed steps


def test_a_resolution_the_latent_size_does_not_divide_is_one_line():
    proc = run_script("--small", "--resolution", "60")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: --resolution must be a positive multiple"
    )
    assert proc.stdout == ""


@pytest.mark.parametrize("flag", [[], ["--dense"]])
def test_both_marchers_report_the_split(flag):
    proc = run_script("--small", "--steps", "1", "--threads", "1", "--chunk-rays", "1000", *flag)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["marcher"] == ("dense" if flag else "skipping+deferred")
    assert set(result["split_ms"]) == PHASES and result["chunk_rays"] == 1000


def test_a_chunk_size_that_is_not_positive_is_one_line():
    proc = run_script("--small", "--chunk-rays", "0")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --chunk-rays must be a positive integer, got 0"
    ]


def test_a_step_on_gaussians_reports_the_split():
    proc = run_script("--small", "--steps", "1", "--threads", "1", "--field", "gaussians")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["field"], result["marcher"]) == ("gaussians", "splat:torch")  # no CUDA here
    assert set(result["split_ms"]) == PHASES
    assert all(ms > 0 for ms in result["split_ms"].values())


def test_gsplat_without_a_cuda_device_is_one_line():
    proc = run_script("--small", "--field", "gaussians", "--splat-backend", "gsplat")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "gsplat" in lines[0] and lines[0].startswith("error: ")
