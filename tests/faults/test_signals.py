"""Ctrl-C, SIGTERM and SIGHUP stop a run cleanly between two steps (checkpoint, exit
128 + signum); a second signal exits at once and leaves nothing damaged."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from cfd3d.cli import main
from cfd3d.generate.run import list_checkpoints, read_checkpoint

STEPS = 60


@pytest.fixture(scope="module")
def long_reference(tiny, tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("long")
    config = tiny.write_config(root / "c.json", steps=STEPS)
    assert main(["generate", "--config", str(config), "--out", str(root / "run"), "-q"]) == 0
    return config, tiny.fingerprint(root / "run", STEPS)


def _start_and_wait(tiny, config: Path, out: Path):
    proc = tiny.process(["generate", "--config", str(config), "--out", str(out), "-q"])
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "step_000004.pt").exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return proc


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=["SIGTERM", "SIGHUP", "SIGINT"]
)
def test_a_signal_stops_the_run_with_a_checkpoint(signum, tiny, long_reference, tmp_path):
    config, expected = long_reference
    out = tmp_path / "run"
    proc = _start_and_wait(tiny, config, out)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert err.count("\n") == 1 and "--resume" in err, err
    assert signal.Signals(signum).name in err
    newest = list_checkpoints(out / "checkpoints")[-1]
    stopped_at = read_checkpoint(newest)["step"]
    assert 4 <= stopped_at < STEPS and f"step {stopped_at};" in err
    assert not (out / "summary.json").exists()
    assert main(["generate", "--resume", "--out", str(out), "-q"]) == 0
    assert tiny.fingerprint(out, STEPS) == expected


def test_a_second_signal_exits_at_once_without_damage(tiny, long_reference, tmp_path):
    config, expected = long_reference
    out = tmp_path / "run"
    proc = _start_and_wait(tiny, config, out)
    deadline = time.monotonic() + 60
    while proc.poll() is None:  # a signal every 2 ms: one lands while the first is handled
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.002)
        assert time.monotonic() < deadline
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "second signal" in err
    for path in list_checkpoints(out / "checkpoints"):
        read_checkpoint(path)
    assert main(["generate", "--resume", "--out", str(out), "-q"]) == 0
    assert tiny.fingerprint(out, STEPS) == expected
