"""`cfd3d batch`: the plan, runs on a local Dask cluster (127.0.0.1), reruns that skip and
resume, a worker killed mid-run, the index, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cfd3d.batch.execute import run_state
from cfd3d.batch.plan import RunSpec, read_plan
from cfd3d.cli import main
from cfd3d.errors import ConfigError

pytest.importorskip("distributed")

SMALL = {"mesh_resolution": 24, "turntable_frames": 3, "turntable_size": 32}
STEPS = 16
TINY = {
    "checkpoint_every": 2,
    "views_per_step": 1,
    "n_samples": 16,
    "voxel": {"resolution": 12},
    "mesh_resolution": 12,
    "texture_size": 64,
    "turntable_frames": 1,
    "turntable_size": 32,
}
"""A run of about a second (12³ voxels, one 32² view a step, a checkpoint every 2 steps)."""


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _index(out: Path) -> dict[str, dict]:
    return {r["prompt"]: r for r in json.loads((out / "index.json").read_text())["runs"]}


def test_plan_formats_name_each_run_by_its_content(tmp_path):
    text = tmp_path / "p.txt"
    text.write_text("# a comment\na red cube\n\na blue cone\na red cube\n")
    assert [s.prompt for s in read_plan(text)] == ["a red cube", "a blue cone"]  # once each
    jsonl = _jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "a red cube", "seed": 1, "method": "sds", "overrides": {"lr": 0.01}},
            {"prompt": "a red cube", "seed": 2},
        ],
    )
    csv = tmp_path / "p.csv"
    csv.write_text('prompt,seed,method,overrides\n"a red cube, front",1,sds,"{""lr"": 0.01}"\n')
    a, b = read_plan(jsonl)
    (c,) = read_plan(csv)
    assert (a.seed, a.method, a.overrides) == (1, "sds", {"lr": 0.01})
    assert (c.prompt, c.seed, c.overrides) == ("a red cube, front", 1, {"lr": 0.01})
    assert a.folder_name() != b.folder_name()
    assert (
        a.folder_name()
        == RunSpec("a red cube", 1, method="sds", overrides={"lr": 0.01}).folder_name()
    )
    assert a.folder_name().startswith("a-red-cube-")
    assert read_plan(text, {"prior": "sd"})[0].prior == "sd"
    assert a.config().lr == 0.01 and a.config().method == "sds"


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ('{"prompt": "a red cube"}\n{"prompt": \n', ".jsonl", "p.jsonl:2: not valid JSON"),
        ('{"prompt": "a red cube", "colour": 1}\n', ".jsonl", "unknown key(s) colour"),
        ('{"prompt": "a red cube", "seed": "x"}\n', ".jsonl", "'seed' must be an integer"),
        ('{"prompt": "a red cube", "steps": 0}\n', ".jsonl", "'steps' must be a positive"),
        ('{"prompt": "  "}\n', ".jsonl", "'prompt' must be non-empty"),
        ('{"prompt": "a", "pipeline": "toy", "overrides": {"lr": 1}}\n', ".jsonl", "single runs"),
        ("seed\n1\n", ".csv", "'prompt' among them"),
        ("prompt,seed\na red cube,1,2\n", ".csv", "more fields than columns"),
        ("# only a comment\n", ".txt", "holds no runs"),
    ],
)
def test_malformed_plans_are_one_line_errors(tmp_path, capsys, content, suffix, message):
    path = tmp_path / f"p{suffix}"
    path.write_text(content)
    assert main(["batch", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_batch_input_is_refused_before_any_run(tmp_path, capsys):
    plan = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a red cube", "overrides": {"lr": -1}}])
    assert main(["batch", str(plan), "--out", str(tmp_path / "out")]) == 2
    assert "learning rates > 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing started
    for argv, message in [
        (["batch", str(tmp_path / "missing.txt")], "not found"),
        (["batch", str(tmp_path)], "is a folder"),
        (["batch", str(plan), "--workers", "0"], "--workers"),
    ]:
        assert main([*argv, "--out", str(tmp_path / "o2")]) == 2
        assert message in capsys.readouterr().err
    bad = tmp_path / "bytes.txt"
    bad.write_bytes(b"a red \xff cube\n")
    assert main(["batch", str(bad), "--out", str(tmp_path / "o3")]) == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_failed_runs_are_indexed_and_said_in_one_line(tmp_path, capsys):
    plan = _jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "a blue cone", "seed": 1, "method": "sds", "steps": 2, "overrides": TINY},
            {"prompt": "a red zebra", "steps": 2},  # a word the embedded prior does not know
        ],
    )
    out = tmp_path / "out"
    argv = ["batch", str(plan), "--out", str(out), "--workers", "1", "--threads", "1", "-q"]
    assert main(argv) == 2  # one run failed: said in one line, the other kept
    err = capsys.readouterr().err
    assert "1 of 2 runs failed" in err and "zebra" in err and err.count("\n") == 1
    runs = _index(out)
    assert {p: r["status"] for p, r in runs.items()} == {
        "a blue cone": "finished",
        "a red zebra": "failed",
    }
    cone = runs["a blue cone"]
    assert (cone["method"], cone["seed"], cone["preset"]) == ("sds", 1, "cpu-demo")
    assert cone["wall_s"] > 0
    for kind in ("glb", "gif", "mp4", "preview"):
        assert (out / cone["files"][kind]).is_file()
    page = (out / "index.html").read_text()
    assert page.count('class="card') == 2 and cone["files"]["gif"] in page
    assert "zebra" in runs["a red zebra"]["error"] and "zebra" in page


def _tree_sockets(process) -> set[tuple[str, str]]:
    """``(local ip, remote ip)`` of every inet socket of ``process`` and its children."""
    seen = set()
    for p in [process, *process.children(recursive=True)]:
        try:
            for conn in p.net_connections(kind="inet"):
                seen.add((conn.laddr.ip, conn.raddr.ip if conn.raddr else ""))
        except Exception:  # a worker that just ended
            continue
    return seen


def _worker_mid_run(parent):
    """A worker process of ``parent`` writing the metrics of a run that has a checkpoint
    and no summary yet, or ``None``."""
    for child in parent.children(recursive=True):
        try:
            line = " ".join(child.cmdline())
            if "spawn_main" not in line or "resource_tracker" in line:
                continue
            for handle in child.open_files():
                folder = Path(handle.path).parent
                if (
                    handle.path.endswith("metrics.jsonl")
                    and list(folder.glob("checkpoints/step_*.pt"))
                    and not (folder / "summary.json").exists()
                ):
                    return child
        except Exception:  # a process that just ended
            continue
    return None


def test_six_runs_on_two_workers_survive_a_killed_worker_and_equal_solo_runs(tmp_path, capsys):
    """A worker is SIGKILLed mid-run; every run finishes, its final checkpoint has the bytes
    of the same run made alone with ``cfd3d generate``; a rerun does no work; every socket
    stays on 127.0.0.1; the batch stops its own cluster."""
    psutil = pytest.importorskip("psutil")
    rows = [
        {"prompt": prompt, "seed": seed, "steps": STEPS, "overrides": TINY}
        for prompt in ("a red cube", "a blue cone", "a yellow torus")
        for seed in (0, 1)
    ]
    plan = _jsonl(tmp_path / "p.jsonl", rows)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "cfd3d.cli", "batch", str(plan), "--out", str(out)]
    cmd += ["--workers", "2", "--threads", "1", "-q"]
    proc = subprocess.Popen(cmd, env=env)
    parent = psutil.Process(proc.pid)
    killed, sockets = [], set()
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline:
        sockets |= _tree_sockets(parent)
        if not killed:
            victim = _worker_mid_run(parent)
            if victim is not None:
                victim.kill()  # a worker process whose run has written a checkpoint
                killed.append(victim.pid)
        time.sleep(0.05)
    assert proc.wait(timeout=60) == 0
    assert killed, "the batch finished before a worker could be killed"
    assert not psutil.pid_exists(proc.pid) or psutil.Process(proc.pid).status() == "zombie"
    assert sockets and {ip for pair in sockets for ip in pair if ip} == {"127.0.0.1"}
    records = {r["name"]: r for r in json.loads((out / "index.json").read_text())["runs"]}
    assert len(records) == 6 and all(r["status"] == "finished" for r in records.values())
    assert any(r["resumed"] for r in records.values())  # the killed worker's run

    final = f"step_{STEPS:06d}.pt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers (--threads 1): float sums depend on it
    try:
        for folder in (p for p in out.iterdir() if p.is_dir()):
            solo = tmp_path / "solo" / folder.name
            config = str(folder / "batch-config.json")
            assert main(["generate", "--config", config, "--out", str(solo), "-q"]) == 0
            ours = (folder / "checkpoints" / final).read_bytes()
            assert ours == (solo / "checkpoints" / final).read_bytes(), folder.name
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoints/*")}
    assert main(["batch", str(plan), "--out", str(out), "--workers", "1", "-q"]) == 0
    again = json.loads((out / "index.json").read_text())["runs"]
    assert len(again) == 6 and all(r["skipped"] for r in again)  # no work the second time
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/checkpoints/*")} == stamps


def test_run_state_reads_the_folder(tmp_path):
    assert run_state(tmp_path / "none") == "new"
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text("{}")
    assert run_state(tmp_path / "a") == "new"  # died before its first checkpoint
    (tmp_path / "a" / "checkpoints").mkdir()
    (tmp_path / "a" / "checkpoints" / "step_000005.pt").write_bytes(b"x")
    assert run_state(tmp_path / "a") == "interrupted"
    (tmp_path / "a" / "summary.json").write_text("{}")
    assert run_state(tmp_path / "a") == "finished"
    with pytest.raises(ConfigError):
        RunSpec("a red cube", overrides={"voxel": {"resolution": "big"}}).config()


def test_runs_go_to_a_running_scheduler_and_ask_for_a_gpu_where_workers_have_one(tmp_path):
    from distributed import Client, LocalCluster

    from cfd3d.batch.command import _resources

    plan = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a red cube", "steps": 2, "overrides": SMALL}])
    out = tmp_path / "out"
    with LocalCluster(
        n_workers=1,
        processes=False,
        protocol="tcp://",
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address=None,
        resources={"GPU": 1},
    ) as cluster:
        with Client(cluster) as client:
            assert _resources(client) == {"GPU": 1}
        argv = ["batch", str(plan), "--out", str(out), "--threads", "1", "-q"]
        assert main([*argv, "--scheduler", cluster.scheduler_address]) == 0
    assert [r["status"] for r in _index(out).values()] == ["finished"]


def test_an_unreachable_scheduler_is_one_line(tmp_path, capsys):
    plan = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a red cube", "steps": 2}])
    argv = ["batch", str(plan), "--out", str(tmp_path / "o"), "--scheduler", "tcp://127.0.0.1:9"]
    assert main([*argv, "--connect-timeout", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Dask scheduler" in err and err.count("\n") == 1


def test_local_workers_keep_glibc_malloc_trimming_as_it_is():
    """Dask's nanny would set MALLOC_TRIM_THRESHOLD_=65536, which halves torch's speed."""
    from cfd3d.batch.command import connect

    with connect(1) as client:
        (value,) = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values()
    assert value == os.environ.get("MALLOC_TRIM_THRESHOLD_")
