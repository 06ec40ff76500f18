"""benchmarks/toyworld.py: quick runs of every method (~25 s), its cache, its process pool
and bad input (its measures are tested in tests/evaluation/toyworld/)."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cfd3d.evaluation.toyworld.jobs import HELD_OUT_SEED, METHODS
from cfd3d.evaluation.toyworld.prompts import COMPOSITIONS, UNDERSPECIFIED

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "toyworld.py"
_spec = importlib.util.spec_from_file_location("toyworld_benchmark", SCRIPT)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses look their module up while it is created
_spec.loader.exec_module(bench)


def test_quick_run_prints_one_json_line_and_writes_docs(tmp_path, capsys):
    assert bench.main(["--quick", "--docs", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(METHODS) <= set(result)
    config = result["config"]
    assert config["quick"] and config["steps"] == 3 and config["prompts"] == ["a red cube"]
    assert config["seeds_used"] == [HELD_OUT_SEED] and config["held_out"]
    assert set(result["prior_reference"]) == {"a red cube", *UNDERSPECIFIED}
    comp = COMPOSITIONS[0]
    assert config["compositions"] == [comp] and config["comp_seeds"] == 1
    truth = result["comp_judge_gt"]  # the judge on the true pair (shapes: a 1-epoch probe)
    assert truth["present"] == 1.0 and truth["relation"] == 1.0
    assert truth["relation_swapped"] == 0.0
    crops = result["crop_probe"]  # the judge's crop probe, on held-out truth crops
    assert crops["n_train"] >= 16 and crops["n_test"] >= 8
    assert 0.0 <= crops["shape_acc"] <= 1.0 and 0.0 <= crops["single_probe_shape_acc"] <= 1.0
    for method in METHODS:
        r = result[method]
        assert r["probe_fid"] >= 0.0 and 0.0 <= r["probe_clip"] <= 1.0
        assert r["empty_results"] >= 0
        for text, d in r["per_prompt"].items():
            if text != comp:  # compositions have no probe FID / CLIP
                assert d["probe_fid"] >= 0.0 and 0.0 <= d["probe_clip"] <= 1.0
        assert 0.0 <= r["mask_iou"] <= 1.0
        assert 0.0 <= r["mesh_iou"] <= 1.0
        assert 0.0 <= r["color_err"] <= 1.0
        assert r["diversity"] == 0.0  # one seed
        assert set(r["mode_tv"]) == set(UNDERSPECIFIED)
        assert all(0.0 <= tv <= 1.0 for tv in r["mode_tv"].values())
        assert 0.0 <= r["noise_share"] < 1.0 and r["wall_s"] > 0.0
        assert set(r["per_prompt"]) == {"a red cube", comp, *UNDERSPECIFIED}
        for key in ("comp_acc", "comp_present_acc", "comp_shape_acc", "comp_relation_acc"):
            assert 0.0 <= r[key] <= 1.0 and 0.0 <= r["per_prompt"][comp][key] <= 1.0
        assert set(r["per_prompt"][comp]["seeds"][0]) >= {
            "present",
            "shape",
            "relation",
            "comp_right",
        }
        assert r["per_prompt"]["a red object"]["classified"] == "shape"
        assert r["per_prompt"]["a torus"]["classified"] == "color"
    assert result["cfd"]["noise_share"] > result["sds"]["noise_share"]  # integral vs fresh
    for text, freq in result["prior_classes"].items():
        assert sum(freq.values()) == pytest.approx(1.0, abs=1e-3), text
    text = (tmp_path / "toyworld.md").read_text()
    assert all(f"| {m} |" in text for m in METHODS) and "probe FID" in text
    assert "## Compositions" in text
    assert all(r["torus_runs"] == 1 for r in (result[m] for m in METHODS))
    assert re.search(r"\| [01] of 1 \|", text)  # torus holes as a count of runs
    assert (tmp_path / "toyworld.png").read_bytes().startswith(b"\x89PNG")


def test_a_cached_table_is_read_back_and_a_changed_run_is_not(tmp_path, capsys):
    args = ["--quick", "--methods", "cfd", "--underspecified", "--compositions"]
    args += ["--cache", str(tmp_path)]
    assert bench.main(args) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    files = sorted(tmp_path.iterdir())
    assert len(files) == 1
    assert bench.main(args) == 0
    out = capsys.readouterr()
    again = json.loads(out.out.strip().splitlines()[-1])
    assert "1 of 1 runs read from" in out.err and sorted(tmp_path.iterdir()) == files
    assert again["cfd"]["per_prompt"] == first["cfd"]["per_prompt"]
    assert again["cfd"]["distill_s_per_run"] == first["cfd"]["distill_s_per_run"]
    files[0].write_bytes(b"damaged")  # recomputed, said so, and rewritten
    assert bench.main(args) == 0
    out = capsys.readouterr()
    assert "ignoring unreadable cached result" in out.err
    assert (
        json.loads(out.out.strip().splitlines()[-1])["cfd"]["per_prompt"]
        == first["cfd"]["per_prompt"]
    )
    assert bench.main([*args, "--steps", "2"]) == 0  # another config: not read from the cache
    assert "0 of 1 runs read from" in capsys.readouterr().err
    assert len(list(tmp_path.iterdir())) == 2


def test_the_consistency_ablation_adds_two_cfd_rows(capsys):
    args = ["--quick", "--methods", "cfd", "--ablation", "--underspecified", "--compositions"]
    assert bench.main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"cfd", "cfd-fixed", "cfd-fresh"} <= set(result) and result["config"]["ablation"]
    assert result["cfd-fixed"]["per_prompt"]["a red cube"]["mask_iou"] is not None


def test_parallel_jobs_give_the_same_results_as_one_process(capsys):
    # Each worker process loads its own prior; on the CPU the results must not depend on
    # which process ran them, nor on the order in which they finished.
    args = ["--quick", "--underspecified", "a torus", "--methods", "cfd", "sds", "--compositions"]
    assert bench.main(args) == 0
    serial = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--jobs", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    parallel = json.loads(done.stdout.strip().splitlines()[-1])
    assert parallel["config"]["jobs"] == 2
    for method in ("cfd", "sds"):
        assert parallel[method]["per_prompt"] == serial[method]["per_prompt"]
        assert parallel[method]["mask_iou"] == serial[method]["mask_iou"]
        assert parallel[method]["mesh_iou"] == serial[method]["mesh_iou"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prompts", "a red object"], "--prompts takes fully named"),
        (["--underspecified", "a red cube"], "--underspecified takes prompts"),
        (["--prompts", "a plaid cube"], "cannot read the prompt"),
        (["--seeds", "0"], "--seeds must be positive"),
        (["--jobs", "0"], "--jobs must be positive"),
        (["--methods", "dds"], "unknown method"),
        (["--ablation", "--pipeline", "toy"], "--ablation runs the single-stage preset"),
        (["--compositions", "a red cube on a blue cone"], "cannot read the composition"),
        (["--comp-seeds", "0"], "--comp-seeds must be positive"),
        (["--prompts", "--underspecified", "--compositions"], "nothing to run"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(capsys, extra, message):
    assert bench.main(["--quick", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and message in err
