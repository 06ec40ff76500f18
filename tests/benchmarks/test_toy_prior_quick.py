"""benchmarks/toy_prior.py: a quick run on a tiny prior, and bad input (its measures are
tested in tests/evaluation/toyworld/)."""

import importlib.util
import json
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from cfd3d.priors.embedded.unet import TinyUNet, UNetConfig
from cfd3d.priors.embedded.world import WorldConfig, vocabulary

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "toy_prior.py"
_spec = importlib.util.spec_from_file_location("toy_prior_benchmark", SCRIPT)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses look their module up while it is created
_spec.loader.exec_module(bench)

WORLD = WorldConfig()
TINY = UNetConfig(channels=(16, 32), text_width=32, vocab_size=len(vocabulary()) + 1)


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A ``cfd3d train-prior``-style checkpoint of a small random 32x32 UNet."""
    torch.manual_seed(0)
    path = tmp_path / "checkpoint.pt"
    state = {"ema": TinyUNet(TINY).state_dict(), "config": {"unet": asdict(TINY)}, "step": 7}
    torch.save(state, path)
    return path


def test_quick_run_prints_one_json_line(tiny_checkpoint, capsys):
    assert bench.main(["--quick", "--checkpoint", str(tiny_checkpoint)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["checkpoint_step"] == 7
    assert result["world"] == json.loads(json.dumps(asdict(WORLD)))  # the checkpoint's: none
    assert set(result["by_guidance"]) == {"1", "3", "7.5"}
    assert result["relation_judge_acc_gt"] == 1.0 and result["relation_judge_swapped_gt"] == 0.0
    for key in (
        "probe_acc",
        "color_acc",
        "shape_acc",
        "relation_acc",
        "relation_back_acc",
        "face_acc",
    ):
        assert 0.0 <= result[key] <= 1.0
    assert result["sample_s"] > 0 and result["weights_mb"] > 0
    assert isinstance(result["targets_met"], bool)


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--checkpoint", "nope.pt"], "nope.pt"), (["--samples", "0"], "--samples must be positive")],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, extra, message):
    assert bench.main(["--quick", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and message in err
