"""A full disk (``ENOSPC`` from a write) during checkpoints, the metrics log and exports: one
line, exit 2, the previous checkpoint intact, and --resume finishes the run unchanged."""

from __future__ import annotations

import errno
import io
import os

import pytest

import cfd3d.generate.command as command
import cfd3d.io
from cfd3d.cli import main
from cfd3d.generate.run import list_checkpoints, read_checkpoint


class _FullDisk(io.RawIOBase):
    """A writable handle whose writes fail as on a full disk."""

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fail_atomic_write(monkeypatch, number: int) -> None:
    """The ``number``-th atomic write (1-based) of the process hits a full disk."""
    real_fdopen, calls = os.fdopen, [0]

    def fdopen(fd, *args, **kwargs):
        calls[0] += 1
        if calls[0] == number:
            os.close(fd)
            return _FullDisk()
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(cfd3d.io.os, "fdopen", fdopen)


def _one_line(capsys, code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: the disk is full") and err.count("\n") == 1, err
    return err


# Atomic writes of a tiny run: 1 config.json, then (checksum, checkpoint) at steps 2, 4, ...
# 12, then the exports (mp4, gif, preview, glb) and summary.json.
@pytest.mark.parametrize(
    ("write", "intact"),
    [(4, "step_000002.pt"), (5, "step_000002.pt"), (14, "step_000012.pt")],
    ids=["checksum", "checkpoint", "export"],
)
def test_a_full_disk_stops_with_one_line_and_resumes(
    write, intact, tiny, tiny_reference, tmp_path, monkeypatch, capsys
):
    config, expected = tiny_reference
    out = tmp_path / "run"
    _fail_atomic_write(monkeypatch, write)
    err = _one_line(capsys, main(["generate", "--config", str(config), "--out", str(out), "-q"]))
    assert intact in err and "--resume" in err
    newest = list_checkpoints(out / "checkpoints")[-1]
    assert newest.name == intact
    read_checkpoint(newest)  # whole and verified
    assert not [p for p in out.rglob("*.tmp")], "a temporary file was left behind"
    monkeypatch.undo()
    assert main(["generate", "--resume", "--out", str(out), "-q"]) == 0
    assert tiny.fingerprint(out) == expected


def test_a_full_disk_on_the_metrics_log(tiny, tiny_reference, tmp_path, monkeypatch, capsys):
    config, expected = tiny_reference
    out = tmp_path / "run"
    real_open = open

    def full_after_five_lines(path, mode="r", **kwargs):
        handle = real_open(path, mode, **kwargs)
        if mode != "a":
            return handle
        write, lines = handle.write, [0]

        def failing(text):
            lines[0] += 1
            if lines[0] > 5:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return write(text)

        handle.write = failing
        return handle

    monkeypatch.setattr(command, "open", full_after_five_lines, raising=False)
    err = _one_line(capsys, main(["generate", "--config", str(config), "--out", str(out), "-q"]))
    assert "step_000004.pt" in err
    monkeypatch.undo()
    assert main(["generate", "--resume", "--out", str(out), "-q"]) == 0
    assert tiny.fingerprint(out) == expected


def test_a_full_disk_in_sample_is_one_line(tmp_path, monkeypatch, capsys):
    _fail_atomic_write(monkeypatch, 1)
    out = tmp_path / "s.png"
    code = main(["sample", "a red cube", "-n", "1", "--steps", "2", "--out", str(out)])
    _one_line(capsys, code)
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))
