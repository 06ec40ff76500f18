"""Each kind of state file of a stopped run truncated, corrupted, swapped or deleted, then
--resume: the run must finish bit-identical to an uninterrupted one, naming what it skipped."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from cfd3d.cli import main
from cfd3d.generate.run import Run, list_checkpoints, read_checkpoint

STOP_AT = 7


@pytest.fixture(scope="module")
def stopped(tiny, tmp_path_factory) -> Path:
    """A tiny run stopped by SIGTERM after step 7: checkpoints 6 and 7."""
    root = tmp_path_factory.mktemp("stopped")
    config = tiny.write_config(root / "c.json")
    original = Run.take_step

    def signalled(self):
        result = original(self)
        if self.step == STOP_AT:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    Run.take_step = signalled  # type: ignore[method-assign]
    try:
        code = main(["generate", "--config", str(config), "--out", str(root / "run"), "-q"])
    finally:
        Run.take_step = original  # type: ignore[method-assign]
    assert code == 128 + signal.SIGTERM
    names = [p.name for p in list_checkpoints(root / "run" / "checkpoints")]
    assert names == ["step_000006.pt", "step_000007.pt"]
    return root / "run"


def _half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _other_run(folder: Path, tiny) -> None:
    """Replace the newest checkpoint (and its checksum) by another seed's at step 7."""
    other = tiny.config(seed=5)
    from cfd3d.priors.registry import load_prior

    run = Run(other, load_prior("embedded"))
    for _ in range(STOP_AT):
        run.take_step()
    run.save_checkpoint(folder / "checkpoints")


CKPT = "checkpoints/step_000007.pt"
DAMAGES = {
    "newest checkpoint cut in half": (lambda f, t: _half(f / CKPT), "step_000007.pt"),
    "newest checkpoint, one bit flipped": (lambda f, t: _flip(f / CKPT), "SHA-256"),
    "newest checkpoint's checksum garbled": (
        lambda f, t: (f / f"{CKPT}.sha256").write_text("0" * 64),
        "SHA-256",
    ),
    "newest checkpoint cut, checksum deleted": (
        lambda f, t: (_half(f / CKPT), (f / f"{CKPT}.sha256").unlink()),
        "unreadable",
    ),
    "newest checkpoint emptied": (lambda f, t: (f / CKPT).write_bytes(b""), "step_000007.pt"),
    "newest checkpoint from another run": (_other_run, "another config"),
    "every checkpoint cut in half": (
        lambda f, t: [_half(p) for p in list_checkpoints(f / "checkpoints")],
        "starts again at step 0",
    ),
    "every checkpoint deleted": (
        lambda f, t: shutil.rmtree(f / "checkpoints"),
        "",
    ),
    "config.json cut in half": (lambda f, t: _half(f / "config.json"), "config recorded"),
    "config.json deleted": (lambda f, t: (f / "config.json").unlink(), "config recorded"),
    "metrics.jsonl cut mid-line": (lambda f, t: _half(f / "metrics.jsonl"), ""),
    "metrics.jsonl garbled": (
        lambda f, t: (f / "metrics.jsonl").write_bytes(b"\xff\x00{not json\n" * 3),
        "",
    ),
    "a write's temporary file left behind": (
        lambda f, t: (f / "checkpoints" / ".step_000008.pt.abc.tmp").write_bytes(b"half"),
        "",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_state_resumes_to_the_uninterrupted_result(
    damage, stopped, tiny, tiny_reference, tmp_path, capsys
):
    folder = tmp_path / "run"
    shutil.copytree(stopped, folder)
    apply, needle = DAMAGES[damage]
    apply(folder, tiny)
    capsys.readouterr()
    code = main(["generate", "--resume", "--out", str(folder), "-q"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert needle in err
    _, expected = tiny_reference
    got = tiny.fingerprint(folder)
    if damage.startswith("metrics.jsonl"):
        # The log loses its damaged lines (nothing recomputes them), never the run.
        assert set(got.pop("metrics")) <= set(expected["metrics"])
        assert got == {k: v for k, v in expected.items() if k != "metrics"}
    else:
        assert got == expected
    assert not list((folder / "checkpoints").glob("*.tmp"))
    for path in list_checkpoints(folder / "checkpoints"):
        read_checkpoint(path)  # every checkpoint left passes its checks


def test_a_damaged_config_without_any_checkpoint_is_one_line(stopped, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(stopped, folder)
    shutil.rmtree(folder / "checkpoints")
    (folder / "config.json").write_text('{"prompt": "a red cube", "steps": ')
    code = main(["generate", "--resume", "--out", str(folder), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err


def test_a_checkpoint_renamed_to_another_step_is_refused(stopped, tmp_path):
    folder = tmp_path / "ckpts"
    shutil.copytree(stopped / "checkpoints", folder)
    os.rename(folder / "step_000006.pt", folder / "step_000004.pt")
    from cfd3d.generate.run import DamagedCheckpoint

    with pytest.raises(DamagedCheckpoint, match="not the step of its name"):
        read_checkpoint(folder / "step_000004.pt")
    assert torch.load(folder / "step_000004.pt", weights_only=False)["step"] == 6
