"""benchmarks/janus.py: a quick run against the ground truth, another world's face, bad
input (its face measure is tested in tests/evaluation/toyworld/test_views.py)."""

import importlib.util
import json
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from cfd3d.evaluation.toyworld.setting import BACK_VIEW
from cfd3d.evaluation.toyworld.views import true_head
from cfd3d.priors.embedded.unet import TinyUNet, UNetConfig
from cfd3d.priors.embedded.weights import write_weights
from cfd3d.priors.embedded.world import WorldConfig, vocabulary

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "janus.py"
_spec = importlib.util.spec_from_file_location("janus_benchmark", SCRIPT)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses look their module up while it is created
_spec.loader.exec_module(bench)


def test_quick_run_reports_each_configuration_against_the_truth(capsys, shipped_world):
    assert bench.main(["--quick"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    truth = result["truth_by_azimuth"]
    assert len(truth) == 8 and truth[0] > 0.5 and truth[BACK_VIEW] == 0.0
    assert truth[1] == pytest.approx(truth[7], abs=0.02)  # the face is symmetric
    for label in ("cfd", "cfd+perpneg", "sds"):
        r = result[label]
        assert 0.0 <= r["face_rate"] <= 1.0 and 0.0 <= r["janus_rate"] <= 1.0
        assert len(r["face_by_azimuth"]) == 8 and r["runs"] == 1
    assert result["config"]["face_rgb"] == list(shipped_world.face_rgb)


def test_a_prior_of_another_world_is_judged_against_its_own_face(tmp_path, capsys):
    dark = (0.06, 0.06, 0.08)
    torch.manual_seed(0)
    config = UNetConfig(channels=(16, 32), text_width=32, vocab_size=len(vocabulary()) + 1)
    path = tmp_path / "embedded_prior.safetensors"
    world = asdict(WorldConfig(face_rgb=dark))
    metadata = {"vocabulary": list(vocabulary()), "world_config": world}
    write_weights(TinyUNet(config), metadata, path)
    assert bench.main(["--quick", "--configs", "sds", "--weights", str(path)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["config"]["face_rgb"] == list(dark)
    truth = result["truth_by_azimuth"]  # the dark-faced head, found with the dark colour
    assert truth[0] > 0.5 and truth[BACK_VIEW] == 0.0
    head = true_head("red", WorldConfig(face_rgb=dark)).primitives[0]
    assert head.face_rgb == dark


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--configs", "dds"], "unknown configuration"),
        (["--colors", "plaid"], "unknown colour"),
        (["--seeds", "0"], "--seeds must be positive"),
        (["--perp-neg", "0"], "--perp-neg must be positive"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(capsys, extra, message):
    assert bench.main(["--quick", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
