"""The command line: outputs, and one clean line + exit code 2 for every user error."""

import subprocess
import sys

import pytest
from PIL import Image

from cfd3d.cli import main


def test_image_command_writes_png_gif_and_config(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        ["image", "a simple shape", "--steps", "20", "--batch", "3", "--quiet", "--out", str(out)]
    )
    assert code == 0
    png = Image.open(out / "final.png")
    assert png.size[1] == 128 and png.size[0] > 3 * 128
    gif = Image.open(out / "trajectory.gif")
    assert gif.n_frames == 20
    assert '"method": "cfd"' in (out / "config.json").read_text()
    assert not list(out.glob("*.tmp"))


def test_image_command_is_reproducible(tmp_path):
    args = ["image", "a simple shape", "--steps", "15", "--quiet", "--seed", "3"]
    main([*args, "--out", str(tmp_path / "a")])
    main([*args, "--out", str(tmp_path / "b")])
    assert (tmp_path / "a" / "final.png").read_bytes() == (
        tmp_path / "b" / "final.png"
    ).read_bytes()


BAD_INPUTS = [
    (["--method", "dds"], "unknown method 'dds'"),
    (["--prior", "nope"], "unknown prior 'nope'"),
    (["--schedule", "cubic"], "unknown timestep schedule 'cubic'"),
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--steps", "-3"], "--steps must be a positive integer"),
    (["--gamma", "2"], "gamma must be in [0, 1]"),
    (["--steps", "ten"], "invalid int value"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) if extra == ["--steps", "ten"] else _no_raise():
        code = main(["image", "a simple shape", "--quiet", "--out", str(tmp_path), *extra])
        assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and err.startswith("error:")


def test_unknown_prompt_and_empty_prompt(tmp_path, capsys):
    assert main(["image", "a purple elephant", "--quiet", "--out", str(tmp_path)]) == 2
    assert "known prompts" in capsys.readouterr().err
    assert main(["image", "  ", "--quiet", "--out", str(tmp_path)]) == 2
    assert "prompt is empty" in capsys.readouterr().err


def test_unwritable_output_folder_keeps_existing_files(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    code = main(["image", "a simple shape", "--quiet", "--out", str(blocker / "sub")])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot write to output folder" in err and "--out" in err
    assert blocker.read_text() == "keep me"


def test_console_script_exit_code_without_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cfd3d.cli",
            "image",
            "x",
            "--method",
            "bad",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: unknown method 'bad'; valid: cfd, sds, fsd, vsd, ism, sdi"


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    import os

    from cfd3d.io import atomic_write_bytes

    mask = os.umask(0o022)
    try:
        path = atomic_write_bytes(tmp_path / "f.bin", b"x")
    finally:
        os.umask(mask)
    assert path.read_bytes() == b"x"
    assert path.stat().st_mode & 0o777 == 0o644


def _one_line_exit_2(args: list[str], capsys) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("existing", [True, False], ids=["existing-folder", "no-suffix"])
def test_sample_refuses_a_folder_as_out_and_creates_nothing(existing, tmp_path, capsys):
    out = tmp_path / "samples"
    if existing:
        out.mkdir()
    err = _one_line_exit_2(["sample", "a red cube", "-n", "1", "--out", str(out)], capsys)
    assert ".png" in err
    assert out.exists() == existing and (not existing or not any(out.iterdir()))


def test_sample_refuses_odd_text(tmp_path, capsys):
    err = _one_line_exit_2(
        ["sample", "a red \udcff cube", "-n", "1", "--out", str(tmp_path / "s.png")], capsys
    )
    assert "UTF-8" in err
    err = _one_line_exit_2(
        ["sample", "a red cube 2", "-n", "1", "--out", str(tmp_path / "s.png")], capsys
    )
    assert "'2'" in err and "character" in err


def test_train_prior_refuses_a_checkpoint_of_another_seed(tmp_path, capsys):
    """A seed-1 command must not resume (and relabel) a seed-0 run in the same --work."""
    from dataclasses import asdict, replace

    import torch

    from cfd3d.priors.embedded.training import TrainConfig

    work = tmp_path / "work"
    work.mkdir()
    seed0 = replace(TrainConfig(seed=0), steps=1, dataset_size=2)
    torch.save({"config": asdict(seed0), "step": 1}, work / "checkpoint.pt")
    args = ["train-prior", "--steps", "1", "--dataset-size", "2", "--work", str(work)]
    err = _one_line_exit_2([*args, "--seed", "1", "--out", str(tmp_path / "w.st")], capsys)
    assert "seed 0, not 1" in err and "--work" in err
    assert not (tmp_path / "w.st").exists()


def test_a_full_disk_anywhere_is_one_line(capsys):
    import errno
    import os

    from cfd3d.cli import guarded

    def full():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/x.bin")

    assert guarded(full) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "disk is full" in err and "/data/x.bin" in err

    def bug():
        raise OSError(errno.EACCES, "a bug keeps its traceback")

    with pytest.raises(OSError):
        guarded(bug)
