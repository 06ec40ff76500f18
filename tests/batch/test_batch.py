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

from cfd3d.batch.execute import execute, run_state
from cfd3d.batch.plan import RunSpec, read_plan
from cfd3d.cli import main
from cfd3d.errors import ConfigError

pytest.importorskip("distributed")

SMALL = {"mesh_resolution": 24, "turntable_frames": 3, "turntable_size": 32}


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


def test_a_batch_runs_indexes_and_reruns_only_what_is_unfinished(tmp_path, capsys):
    plan = _jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "a red cube", "steps": 3, "overrides": SMALL},
            {"prompt": "a blue cone", "seed": 1, "method": "sds", "steps": 3, "overrides": SMALL},
            {"prompt": "a red zebra", "steps": 3},  # a word the embedded prior does not know
        ],
    )
    out = tmp_path / "out"
    argv = ["batch", str(plan), "--out", str(out), "--workers", "2", "--threads", "1", "-q"]
    assert main(argv) == 2  # one run failed: said in one line, the others kept
    err = capsys.readouterr().err
    assert "1 of 3 runs failed" in err and "zebra" in err and err.count("\n") == 1
    runs = _index(out)
    assert {p: r["status"] for p, r in runs.items()} == {
        "a red cube": "finished",
        "a blue cone": "finished",
        "a red zebra": "failed",
    }
    cone = runs["a blue cone"]
    assert (cone["method"], cone["seed"], cone["preset"]) == ("sds", 1, "cpu-demo")
    assert cone["wall_s"] > 0
    for kind in ("glb", "gif", "mp4", "preview"):
        assert (out / cone["files"][kind]).is_file()
    page = (out / "index.html").read_text()
    assert page.count('class="card') == 3 and cone["files"]["gif"] in page
    assert "zebra" in runs["a red zebra"]["error"]
    glb = out / cone["files"]["glb"]
    before = glb.stat().st_mtime_ns

    assert main(argv) == 2
    runs = _index(out)
    assert runs["a blue cone"]["skipped"] and runs["a red cube"]["skipped"]
    assert runs["a blue cone"]["wall_s"] == cone["wall_s"]  # the earlier measurement
    assert glb.stat().st_mtime_ns == before  # finished runs untouched


def _final_field(folder: Path) -> dict[str, torch.Tensor]:
    last = sorted((folder / "checkpoints").glob("step_*.pt"))[-1]
    return torch.load(last, weights_only=False)["field"]


def test_a_killed_worker_resumes_its_run_elsewhere_bit_identically(tmp_path):
    psutil = pytest.importorskip("psutil")
    spec = {"prompt": "a red cube", "seed": 3, "steps": 20}
    spec["overrides"] = {**SMALL, "checkpoint_every": 4}
    plan = _jsonl(tmp_path / "p.jsonl", [spec])
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "cfd3d.cli", "batch", str(plan), "--out", str(out)]
    proc = subprocess.Popen([*cmd, "--workers", "1", "--threads", "1", "-q"], env=env)
    parent = psutil.Process(proc.pid)
    killed = []
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if not killed and list(out.glob("*/checkpoints/step_*.pt")):
            for child in parent.children(recursive=True):
                line = " ".join(child.cmdline())
                if "spawn_main" in line and "resource_tracker" not in line:
                    child.kill()  # the worker process, mid-run
                    killed.append(child.pid)
        time.sleep(0.05)
    assert proc.wait(timeout=60) == 0
    assert killed, "the run finished before a worker could be killed"
    (record,) = _index(out).values()
    assert record["status"] == "finished" and record["resumed"]
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    steps = [json.loads(line)["step"] for line in (folder / "metrics.jsonl").open()]
    assert steps == list(range(20))  # no step lost or repeated

    clean = execute(RunSpec(**{**spec}), str(tmp_path / "clean"), threads=1)
    assert clean["status"] == "finished" and not clean["resumed"]
    ours, theirs = _final_field(folder), _final_field(tmp_path / "clean" / folder.name)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


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
