"""benchmarks/toyworld.py: its measures, its prompt reader, and a quick run of every method
(~25 s)."""

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from cfd3d.generate.config import preset_config
from cfd3d.generate.run import Run
from cfd3d.priors.embedded.prior import EmbeddedPrior
from cfd3d.priors.embedded.unet import TinyUNet, UNetConfig
from cfd3d.priors.embedded.weights import write_weights
from cfd3d.priors.embedded.world import WorldConfig, vocabulary
from cfd3d.scene.sampling import CameraSamplerConfig
from cfd3d.scene.toy import single

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "toyworld.py"
_spec = importlib.util.spec_from_file_location("toyworld_benchmark", SCRIPT)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses look their module up while it is created
_spec.loader.exec_module(bench)


@pytest.fixture(scope="module")
def shipped_run():
    """A ``cpu-demo`` run on the shipped prior (renders ground truth like the benchmark)."""
    config = preset_config("cpu-demo", "a red cube").resolved()
    return Run(config, bench.load_prior(None, config))


def _views(opacity: torch.Tensor, albedo: torch.Tensor) -> "bench.Views":
    """Views of one flat colour ``albedo`` ``(3,)`` with ``opacity`` ``(V, S, S)``, on white."""
    a = opacity[..., None]
    rgb = a * albedo + (1.0 - a)
    blank = np.zeros((4, 4, 3), dtype=np.uint8)
    nothing = torch.zeros(1, 3, 32, 32)
    return bench.Views(albedo=rgb, opacity=opacity, probe=nothing, world=nothing, figure=blank)


def test_prompts_are_read_or_refused():
    assert bench.parse_prompt("a red cube") == bench.Prompt("a red cube", "red", "cube")
    assert bench.parse_prompt("a red object").missing == "shape"
    assert bench.parse_prompt("a torus").missing == "color"
    assert bench.parse_prompt("a blue cone").missing is None
    for bad in ("a red head", "two red cubes", "a", "a red cube on top of a blue sphere"):
        with pytest.raises(bench.UserError):
            bench.parse_prompt(bad)


def test_compositions_are_read_or_refused():
    c = bench.parse_composition("a Red cube  on top of a blue sphere")
    assert (c.colors, c.shapes, c.relation) == (("red", "blue"), ("cube", "sphere"), "on")
    assert c.scene().name == "red_cube_on_blue_sphere" and c.missing is None
    assert bench.parse_composition("a green cone next to a pink capsule").relation == "next_to"
    for text in bench.COMPOSITIONS:
        assert bench.parse_composition(text).scene().caption() == text
    with pytest.raises(bench.UserError, match="one colour"):
        bench.parse_composition("a red cube on top of a red sphere")
    for bad in ("a red cube", "a red head next to a blue cube", "a red cube under a blue cone"):
        with pytest.raises(bench.UserError, match="cannot read the composition"):
            bench.parse_composition(bad)


def test_iou_colour_and_diversity_on_synthetic_views():
    full = torch.zeros(2, 8, 8)
    full[:, 2:6, 2:6] = 1.0  # 32 pixels
    half = torch.zeros(2, 8, 8)
    half[:, 2:6, 2:4] = 0.8  # 16 of them, partly transparent
    red = torch.tensor(bench.COLORS["red"])
    truth, guess = _views(full, red), _views(half, red)
    assert bench.mask_iou(guess, truth) == pytest.approx(0.5)
    assert bench.mask_iou(truth, truth) == 1.0
    assert torch.allclose(bench.mean_color(guess), red, atol=1e-6)  # un-premultiplied
    assert bench.mean_color(_views(torch.zeros(2, 8, 8), red)) is None
    assert bench.diversity([truth]) == 0.0
    assert bench.diversity([truth, truth]) == 0.0
    assert bench.diversity([truth, guess]) > 0.0


def test_an_empty_result_is_a_colour_failure_and_counted():
    full = torch.zeros(2, 8, 8)
    full[:, 2:6, 2:6] = 1.0
    red = torch.tensor(bench.COLORS["red"])
    truth = _views(full, red)
    prompt = bench.parse_prompt("a red cube")

    def result(views, seed):
        return bench.Result("cfd", prompt, seed, views, 0.5, 0.0, 1.0, 1.0, 1.0)

    detail = bench.single_detail(
        [result(truth, 1), result(_views(torch.zeros(2, 8, 8), red), 2)], truth
    )
    assert [s["color_err"] for s in detail["seeds"]] == [0.0, bench.EMPTY_COLOR_ERR]
    assert detail["color_err"] == pytest.approx(0.5) and detail["empty_results"] == 1


def test_a_perfect_samplers_mode_tv_band():
    # the figure: 8 samples of "a red object" (31 / 41 / 15 % ...) give TV 0.29 on
    # average, 0.14-0.46 from 5 to 95 %
    band = bench.sampler_tv_band(torch.tensor([0.31, 0.41, 0.15, 0.05, 0.04, 0.04]), 8)
    assert 0.1 < band["p05"] < band["p50"] < band["p95"] < 0.5
    assert bench.sampler_tv_band(torch.tensor([1.0, 0.0]), 8) == {"p05": 0, "p50": 0, "p95": 0}


def test_ablation_rows_are_cfd_with_another_noise():
    base = bench.preset_config(bench.PRESET, "a red cube")
    for row, kind in bench.ABLATIONS.items():
        config = bench.method_config(base, row, 7, 3)
        assert config.method == "cfd" and config.noise.kind == kind and config.noise.seed == 7
        cfd = bench.method_config(base, "cfd", 7, 3)
        assert config.timesteps == cfd.timesteps and config.weighting == cfd.weighting
    assert bench.method_config(base, "cfd", 7, 3).noise.kind == "integral"


def test_total_variation_and_majority():
    p = bench.frequencies(torch.tensor([0, 0, 1, 2]), 4)
    assert p.tolist() == [0.5, 0.25, 0.25, 0.0]
    assert bench.total_variation(p, p) == 0.0
    assert bench.total_variation(p, torch.tensor([0.0, 0.0, 0.0, 1.0]).double()) == 1.0
    assert bench.majority(torch.tensor([2, 1, 2, 1, 0]), 3) == 1  # a tie goes to the smaller


def test_quick_run_prints_one_json_line_and_writes_docs(tmp_path, capsys):
    assert bench.main(["--quick", "--docs", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(bench.METHODS) <= set(result)
    config = result["config"]
    assert config["quick"] and config["steps"] == 3 and config["prompts"] == ["a red cube"]
    assert config["seeds_used"] == [bench.HELD_OUT_SEED] and config["held_out"]
    assert set(result["prior_reference"]) == {"a red cube", *bench.UNDERSPECIFIED}
    comp = bench.COMPOSITIONS[0]
    assert config["compositions"] == [comp] and config["comp_seeds"] == 1
    truth = result["comp_judge_gt"]  # the judge on the true pair (shapes: a 1-epoch probe)
    assert truth["present"] == 1.0 and truth["relation"] == 1.0
    assert truth["relation_swapped"] == 0.0
    for method in bench.METHODS:
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
        assert set(r["mode_tv"]) == set(bench.UNDERSPECIFIED)
        assert all(0.0 <= tv <= 1.0 for tv in r["mode_tv"].values())
        assert 0.0 <= r["noise_share"] < 1.0 and r["wall_s"] > 0.0
        assert set(r["per_prompt"]) == {"a red cube", comp, *bench.UNDERSPECIFIED}
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
    assert all(f"| {m} |" in text for m in bench.METHODS) and "probe FID" in text
    assert "## Compositions" in text
    assert (tmp_path / "toyworld.png").read_bytes().startswith(b"\x89PNG")


def test_world_views_are_drawn_like_the_worlds_images_and_fixed_by_the_seed(shipped_run):
    run = shipped_run
    world = bench.world_of(run.prior)
    assert world == WorldConfig()
    scene = single("red", "cube")
    a, b = bench.world_views(run, scene, 100, world), bench.world_views(run, scene, 100, world)
    c = bench.world_views(run, scene, 101, world)
    assert a.shape == (bench.WORLD_VIEWS, 3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a, c)  # another seed: other cameras
    assert torch.equal((a * 255).round() / 255, a)  # 8-bit, as the prior's samples
    # the object is in every view, on white, lit differently from view to view
    covered = (a < 0.98).any(dim=1).float().mean(dim=(1, 2))
    assert bool((covered > 0.05).all()) and bool((covered < 0.9).all())
    assert float(a.mean(dim=(1, 2, 3)).std()) > 0.0


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


def test_a_prior_of_another_world_is_seen_from_its_cameras(tmp_path, shipped_run):
    overhead = WorldConfig(
        cameras=CameraSamplerConfig(elevation_deg=(80.0, 90.0), fovy_deg=(50.0, 50.0)),
        p_albedo=1.0,
    )
    torch.manual_seed(0)
    config = UNetConfig(channels=(16, 32), text_width=32, vocab_size=len(vocabulary()) + 1)
    path = tmp_path / "embedded_prior.safetensors"
    metadata = {"vocabulary": list(vocabulary()), "world_config": asdict(overhead)}
    write_weights(TinyUNet(config), metadata, path)
    prior = EmbeddedPrior.load(path)
    assert bench.world_of(prior) == overhead
    scene = single("red", "cylinder")
    seen = bench.world_views(shipped_run, scene, 100, bench.world_of(prior))
    first = bench.world_views(shipped_run, scene, 100, WorldConfig())
    assert not torch.equal(seen, first)
    # from above a cylinder is a disc: a square's worth of its bounding box is covered
    mask = (seen < 0.9).any(dim=1)
    rows, cols = mask.any(dim=2).sum(dim=1).float(), mask.any(dim=1).sum(dim=1).float()
    assert bool(((rows - cols).abs() <= 2).all())
    # flat albedo in all of this world's views: one colour, no shading
    red = torch.tensor(bench.COLORS["red"])[None, :, None]
    inside = seen.flatten(2)[:, :, mask.flatten(1)[0]]
    assert bool(((inside - red).abs() < 0.02).float().mean() > 0.8)


def test_the_composition_judge_passes_the_truth_and_refuses_the_swap_and_a_smear(shipped_run):
    run, world = shipped_run, WorldConfig()
    tp = bench.probe_module()
    front = bench.evaluation_cameras()[0][0:1]  # the orbit's first view, as the crops'
    for text in bench.COMPOSITIONS:
        c = bench.parse_composition(text)
        composed = bench.look(run, c.scene(), 64, 100, world, c).composed
        visible = composed.pixels >= tp.MIN_PIXELS
        assert bool((visible.sum(dim=1) * 2 >= visible.shape[1]).all()), text
        assert bench.relation_holds(composed.centroids, c.relation), text
        assert not bench.relation_holds(composed.centroids.flip(0), c.relation), text
        # each object's crop is the single object as the probe sees it: re-centred, its size
        for k in range(2):
            alone = (
                run.renderer(
                    single(c.colors[k], c.shapes[k]),
                    front,
                    32,
                    32,
                    shading=bench.HEADLIGHT,
                    background=bench.SolidBackground(),
                )
                .rgb[0]
                .permute(2, 0, 1)
            )
            crop = composed.crops[k, 0]
            a, b = (1 - crop).amax(0) > tp.FOREGROUND, (1 - alone).amax(0) > tp.FOREGROUND
            assert float((a & b).sum() / (a | b).sum()) >= 0.6, (text, k)
    # one ball in two colours (a head whose face is blue): both colours, no relation
    smear = bench.parse_composition("a red sphere on top of a blue sphere")
    ball = single("red", "head", bench.COLORS["blue"])
    composed = bench.look(run, ball, 32, 100, world, smear).composed
    assert not bench.relation_holds(composed.centroids, "on")
    assert not bench.relation_holds(composed.centroids, "next_to")
    assert not torch.isnan(composed.centroids).any()
