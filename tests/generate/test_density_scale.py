"""``density_scale``: a volume field's density multiplied by a factor that follows the run's
progress (the schedule, the runs that use it, resume, staged runs and bad settings)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from cfd3d.errors import ConfigError
from cfd3d.generate.pipeline import check_handoff, pipeline_config
from cfd3d.generate.run import Run

RAMP = ((0.25, 1.0), (1.0, 3.0))


def test_the_factor_follows_the_knots_and_holds_beyond_them(small_cpu_demo):
    config = small_cpu_demo(steps=9, density_scale=RAMP)  # progress step / 8
    factors = [config.density_scale_at(step) for step in range(10)]
    assert factors[:3] == [1.0, 1.0, 1.0]  # before the first knot (progress 0.25 at step 2)
    assert factors[5] == pytest.approx(1.0 + 2.0 * (5 / 8 - 0.25) / 0.75)
    assert factors[8] == factors[9] == 3.0  # the last step and the finished run
    assert (
        small_cpu_demo(steps=9, density_scale=()).density_scale_at(4) == 1.0
    )  # none: 1 throughout
    assert small_cpu_demo(density_scale=((0.0, 2.5),)).density_scale_at(123) == 2.5


def test_a_run_scales_its_fields_density_by_its_steps_factor_and_resumes(prior, small_cpu_demo):
    config = small_cpu_demo(steps=5, density_scale=RAMP)
    run = Run(config, prior)
    points = torch.rand(64, 3) - 0.5
    with torch.no_grad():
        before = run.field.density(points)  # step 0: factor 1
    seen = [run.field.density_scale]
    for _ in range(config.steps):
        run.take_step()
        seen.append(run.field.density_scale)
    assert seen == [config.density_scale_at(step) for step in range(6)]
    assert seen[-1] == 3.0 and len(set(seen)) > 2
    with torch.no_grad():
        assert torch.allclose(run.field(points).density, 3.0 * _unscaled(run, points))
        assert not torch.equal(before, run.field.density(points))

    halfway = Run(config, prior)
    for _ in range(3):
        halfway.take_step()
    resumed = Run(config, prior)
    resumed.load_state_dict(halfway.state_dict())
    assert resumed.field.density_scale == config.density_scale_at(3)
    for _ in range(2):
        resumed.take_step()
    for key, value in run.field.state_dict().items():
        assert torch.equal(value, resumed.field.state_dict()[key]), key


def _unscaled(run: Run, points: torch.Tensor) -> torch.Tensor:
    scale = run.field.density_scale
    run.field.density_scale = 1.0
    try:
        return run.field.density(points)
    finally:
        run.field.density_scale = scale


def test_a_later_stage_starts_with_the_factor_the_earlier_one_ends_with():
    first, second = (s.config for s in pipeline_config("toy", "a red cube").stages)
    assert second.density_scale_at(0) == first.density_scale_at(first.steps)
    assert second.density_scale_at(second.steps) == second.density_scale_at(0)
    check_handoff(first, second, "stage2")
    ramped = replace(first, density_scale=RAMP)
    with pytest.raises(ConfigError, match=r"density_scale 3 .* start this stage's density_scale"):
        check_handoff(ramped, replace(second, density_scale=()), "stage2")


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"density_scale": [[0.5, 1.0], [0.2, 2.0]]}, "progress rising"),
        ({"density_scale": [[0.0, 1.0], [1.5, 2.0]]}, "progress rising"),
        ({"density_scale": [[0.0, 0.0]]}, "factors > 0"),
        ({"density_scale": [[0.0, 1.0, 2.0]]}, "density_scale"),
        ({"density_scale": "sharp"}, "density_scale"),
        ({"field": "gaussians", "density_scale": [[0.0, 2.0]]}, "not to Gaussians"),
    ],
)
def test_bad_density_scales_are_one_line(change, needle, refused_config):
    assert needle in refused_config(change)
