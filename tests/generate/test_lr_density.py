"""``VoxelGridConfig.lr_density``: the voxel grid's density learns at its own rate (the
optimiser's groups, what one step moves, resume, saved configs and bad settings)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from cfd3d.errors import ConfigError
from cfd3d.generate.config import config_from_dict, config_to_dict
from cfd3d.generate.run import Run
from cfd3d.scene.voxel import VoxelGridConfig


def _with_lr_density(config, lr_density):
    return replace(config, voxel=replace(config.voxel, lr_density=lr_density))


def test_the_density_gets_its_own_group_only_when_set(prior, small_cpu_demo):
    plain = small_cpu_demo(steps=2)
    plain = _with_lr_density(plain, None)
    run = Run(plain, prior)
    assert [g["lr"] for g in run.optimizer.param_groups] == [plain.lr]

    split = _with_lr_density(plain, 0.3)
    run = Run(split, prior)
    groups = run.optimizer.param_groups
    assert [g["lr"] for g in groups] == [0.3, split.lr]
    assert groups[0]["params"] == [run.field.raw_density]
    assert groups[1]["params"] == [run.field.raw_color]


def test_one_adam_step_moves_the_density_by_about_its_own_rate(prior, small_cpu_demo):
    """Adam's first step moves every parameter with a gradient by its learning rate (the
    sign of the gradient times lr), so the density's largest move is ``lr_density`` and the
    colour's ``lr``."""
    config = _with_lr_density(small_cpu_demo(steps=2), 0.4)
    run = Run(config, prior)
    density = run.field.raw_density.detach().clone()
    color = run.field.raw_color.detach().clone()
    assert not run.take_step().skipped
    moved_density = (run.field.raw_density.detach() - density).abs().max().item()
    moved_color = (run.field.raw_color.detach() - color).abs().max().item()
    assert moved_density == pytest.approx(0.4, rel=1e-3)
    assert moved_color == pytest.approx(config.lr, rel=1e-3)


def test_resume_with_a_density_rate_is_bit_identical(prior, small_cpu_demo):
    config = _with_lr_density(small_cpu_demo(steps=4), 0.2)
    straight = Run(config, prior)
    for _ in range(4):
        straight.take_step()
    halfway = Run(config, prior)
    for _ in range(2):
        halfway.take_step()
    resumed = Run(config, prior)
    resumed.load_state_dict(halfway.state_dict())
    for _ in range(2):
        resumed.take_step()
    for key, value in straight.field.state_dict().items():
        assert torch.equal(value, resumed.field.state_dict()[key]), key


def test_the_setting_is_saved_and_a_config_without_it_reads_back_as_unset(small_cpu_demo):
    config = _with_lr_density(small_cpu_demo(), 0.25)
    assert config_from_dict(config_to_dict(config)).voxel.lr_density == 0.25
    old = config_to_dict(config)
    del old["voxel"]["lr_density"]  # a config.json written before the setting existed
    assert config_from_dict(old).voxel.lr_density is None


@pytest.mark.parametrize("value", [0.0, -0.1])
def test_a_rate_that_is_not_positive_is_one_clear_error(value):
    with pytest.raises(ConfigError, match="lr_density must be positive"):
        VoxelGridConfig(lr_density=value)
