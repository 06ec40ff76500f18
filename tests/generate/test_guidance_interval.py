"""``guidance_interval``: classifier-free guidance only at the timesteps inside it, the
conditional prediction alone elsewhere (the schedule, a run's prior calls, the command
line and bad settings)."""

from __future__ import annotations

import json

import pytest
import torch

from cfd3d.cli import main
from cfd3d.distill.timesteps import timestep_fraction
from cfd3d.generate.config import config_from_dict, save_config
from cfd3d.generate.run import Run


def test_guidance_applies_inside_the_interval_and_is_1_outside(small_cpu_demo):
    config = small_cpu_demo(guidance_scale=3.0, guidance_interval=(0.2, 0.6))
    assert [config.guidance_at(f) for f in (0.1, 0.2, 0.4, 0.6, 0.61, 0.98)] == [
        1.0,
        3.0,
        3.0,
        3.0,
        1.0,
        1.0,
    ]
    throughout = small_cpu_demo(guidance_scale=3.0)
    assert throughout.guidance_interval == (0.0, 1.0)
    assert {throughout.guidance_at(f) for f in (0.0, 0.5, 1.0)} == {3.0}


def test_a_run_asks_the_prior_for_each_steps_guidance(prior, small_cpu_demo, monkeypatch):
    config = small_cpu_demo(steps=12, guidance_scale=3.0, guidance_interval=(0.0, 0.6))
    fractions = [
        timestep_fraction(config.timesteps, i, config.steps, config.seed) for i in range(12)
    ]
    expected = [config.guidance_at(f) for f in fractions]
    assert 1.0 in expected and 3.0 in expected  # the annealing crosses 0.6 within 12 steps
    seen: list[float] = []
    predict = prior.predict_eps

    def spy(x_t, t, condition, guidance_scale, *args, **kwargs):
        seen.append(float(guidance_scale))
        return predict(x_t, t, condition, guidance_scale, *args, **kwargs)

    monkeypatch.setattr(prior, "predict_eps", spy)
    run = Run(config, prior)
    for _ in range(config.steps):
        run.take_step()
    assert seen == expected
    assert torch.isfinite(run.field.raw_density).all()


def test_the_interval_travels_in_the_saved_config(small_cpu_demo):
    config = small_cpu_demo(guidance_interval=(0.0, 0.6))
    assert config_from_dict(json.loads(save_config(config))).guidance_interval == (0.0, 0.6)


def test_the_command_line_sets_the_interval(tmp_path):
    out = tmp_path / "run"
    code = main(
        [
            "generate",
            "a red cube",
            "--steps",
            "2",
            "--guidance-interval",
            "0",
            "0.6",
            "--out",
            str(out),
            "-q",
        ]
    )
    assert code == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["guidance_interval"] == [0.0, 0.6]


@pytest.mark.parametrize(
    "interval", [[0.6, 0.2], [0.5, 0.5], [-0.1, 0.5], [0.0, 1.5], [0.5], "late"]
)
def test_bad_intervals_are_one_line(interval, refused_config):
    assert "guidance_interval" in refused_config({"guidance_interval": interval})
