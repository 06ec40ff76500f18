"""A voxel (or NeRF) stage hands over to a Gaussian stage: the pipeline chains them, and the
Gaussians sampled from the earlier field's density render its silhouette before any step."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from cfd3d.errors import ConfigError
from cfd3d.generate.config import GenerateConfig, preset_config
from cfd3d.generate.pipeline import Pipeline, Stage, configure, start_from
from cfd3d.generate.run import Run
from cfd3d.priors.registry import load_prior
from cfd3d.scene.cameras import orbit
from cfd3d.scene.encoding import HashGridConfig
from cfd3d.scene.gaussians import GaussianField
from cfd3d.scene.nerf import NeRFConfig

SMALL = {"mesh_resolution": 24, "turntable_frames": 3, "turntable_size": 32}


def stage(preset: str, **changes) -> GenerateConfig:
    return replace(preset_config(preset, "a red cube"), **SMALL, **changes)


def chained(first: GenerateConfig, second: GenerateConfig, seed: int = 0) -> Pipeline:
    """Two stages as ``cfd3d generate --pipeline`` runs them (3 steps each)."""
    pipeline = Pipeline(
        "handover", "an earlier field, then Gaussians", (Stage("a", first), Stage("b", second))
    )
    return configure(pipeline, steps_per_stage=3, overrides={"seed": seed})


@pytest.fixture(scope="module")
def prior():
    return load_prior("embedded")


def silhouettes(run: Run, size: int = 32) -> torch.Tensor:
    """``(6, size, size)`` where an orbit's albedo renders are at least half opaque."""
    with torch.no_grad():
        out = run.render(orbit(6, elevation_deg=20.0), size, shading="albedo")
    return out.opacity[..., 0] > 0.5


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum())


def finished_stage(config: GenerateConfig, prior) -> dict:
    run = Run(config, prior)
    for _ in range(config.steps):
        assert not run.take_step().skipped
    return run.state_dict()


def test_a_voxel_stage_hands_its_silhouette_to_gaussians(prior):
    # Without cpu-demo's density ramp: squeezed into 3 steps it would make the initial
    # blob's soft tail opaque, a silhouette no finished stage has. And from a blob as dense
    # as a finished stage's object (raw 10): cpu-demo's starts at 5, a haze whose soft
    # tail renders half opaque well outside its half-interior level set, until its ramp
    # makes it opaque.
    dense = replace(preset_config("cpu-demo", "a red cube").voxel, blob_density=10.0)
    pipeline = chained(stage("cpu-demo", density_scale=(), voxel=dense), stage("toy-gaussians"))
    voxel, gaussians = (s.config for s in pipeline.stages)
    assert (voxel.field, gaussians.field, gaussians.init_from) == ("voxel", "gaussians", "../a")
    earlier = Run(voxel, prior)
    for _ in range(voxel.steps):
        earlier.take_step()
    state = earlier.state_dict()
    later = Run(gaussians, prior)
    start_from(later, state)
    field = later.field
    assert isinstance(field, GaussianField) and field.count == gaussians.gaussians.count
    assert later.step == 0
    overlap = iou(silhouettes(later), silhouettes(earlier))
    assert overlap >= 0.8, overlap
    # the colours come from the voxel grid's albedo at the centres
    with torch.no_grad():
        albedo = earlier.field(field.means.detach()).albedo
    assert torch.allclose(field.colors(), albedo.clamp(0, 1), atol=1e-5)
    # deterministic with the run's seed, another seed draws other centres
    again = Run(gaussians, prior)
    start_from(again, state)
    assert torch.equal(again.field.means, field.means)
    other = Run(replace(gaussians, seed=1), prior)
    start_from(other, state)
    assert not torch.equal(other.field.means, field.means)
    # the Gaussian stage then trains as usual, density control included
    assert not later.take_step().skipped


def test_a_nerf_stage_hands_over_too(prior):
    tiny = NeRFConfig(encoding=HashGridConfig(n_levels=2, log2_table_size=8, max_resolution=16))
    nerf = stage("cpu-demo", field="nerf", nerf=tiny, steps=1)
    gaussians = stage(
        "toy-gaussians", gaussians=replace(preset_config("toy-gaussians", "x").gaussians, count=200)
    )
    pipeline = chained(nerf, gaussians)
    state = finished_stage(replace(pipeline.stages[0].config, steps=1), prior)
    later = Run(pipeline.stages[1].config, prior)
    start_from(later, state)
    assert later.field.count == 200
    assert float(later.field.means.detach().abs().max()) <= pipeline.stages[0].config.nerf.bound


def test_handovers_that_do_not_chain_are_refused():
    with pytest.raises(
        ConfigError, match="'voxel' field cannot start from the previous stage's 'gaussians'"
    ):
        chained(stage("toy-gaussians"), stage("cpu-demo"))
    degree = replace(preset_config("toy-gaussians", "x").gaussians, sh_degree=1)
    with pytest.raises(ConfigError, match="sh_degree 1 differs"):
        chained(stage("toy-gaussians"), stage("toy-gaussians", gaussians=degree))
