"""Staged runs: a pipeline is a named sequence of stage configs run one after another.

Stages are configuration, not new code paths: each stage is a :class:`GenerateConfig` that
``cfd3d generate --pipeline NAME`` runs with the same :class:`~cfd3d.generate.run.Run` and
step loop as a single run, into its own sub-folder laid out like a ``cfd3d generate``
folder. Stage ``k + 1``'s field starts from stage ``k``'s final checkpoint
(:attr:`GenerateConfig.init_from`, applied by :func:`start_from`): the same field kind, a
voxel grid possibly at another resolution (trilinear resampling), or a voxel grid or NeRF
handing over to 3D Gaussians (``field="gaussians"``; their centres are sampled from the
earlier field's density with the later stage's seed, their colours from its albedo:
:func:`~cfd3d.scene.gaussians.gaussians_from_field`); a learned environment map is carried
along when both stages use one. Optimiser state and noise start afresh in every stage, as
in the reference implementation.

Pipelines (:data:`PIPELINES`):

* ``toy``: the embedded prior on a CPU. Stage 1 is the ``cpu-demo`` preset; stage 2
  refines the same voxel grid from renders at twice the resolution (area-downsampled to
  the prior's 32², i.e. anti-aliased) with the timestep annealed further down from where
  stage 1 ended.
* ``paper``: the CFD paper's NeRF recipe (``configs/cfd`` of the official code): MVDream
  stage 1 (groups of 4 views 90° apart, CFG 50, 10k steps, 64² then 256² renders from step
  5k, 32×32×4 noise, timestep 0.98 -> 0.60 (5k) -> 0.31), then Stable Diffusion refinement
  at 512² (CFG 70, 20k steps, timestep 0.40 -> 0.21).
* ``paper-sd``: the ``sd-stage1`` preset, then the same refinement.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from cfd3d.distill.timesteps import TimestepSchedule
from cfd3d.errors import ConfigError, UserError
from cfd3d.generate.config import (
    GenerateConfig,
    config_from_dict,
    preset_config,
)
from cfd3d.generate.run import Run
from cfd3d.render.shading import ShadingConfig
from cfd3d.scene.gaussians import GaussianField, gaussians_from_field
from cfd3d.scene.nerf import NeRFField
from cfd3d.scene.sampling import CameraSamplerConfig
from cfd3d.scene.voxel import VoxelGridConfig, VoxelGridField

_STAGE_NAME = re.compile(r"[A-Za-z0-9_-]+")
_HANDOVER_STREAM = 0x5EED_0005
"""Seeds the sampling of Gaussians from an earlier field (with the run's seed)."""


def is_stage_name(name: str) -> bool:
    """Whether ``name`` can name a stage: a plain folder name (letters, digits, ``-``,
    ``_``), never a path out of the pipeline's folder."""
    return _STAGE_NAME.fullmatch(name) is not None


@dataclass(frozen=True)
class Stage:
    """One stage of a pipeline.

    Attributes:
        name: the stage's sub-folder of the output folder (letters, digits, ``-``, ``_``).
        config: what the stage runs. Its ``prior`` is the default that ``--prior`` (or, for
            a multi-view stage, ``--prior-mv``) replaces; ``init_from`` is set by
            :func:`configure` for every stage after the first.
        multiview: the stage runs on the multi-view (MVDream) prior of ``--prior-mv``
            instead of ``--prior``.
    """

    name: str
    config: GenerateConfig
    multiview: bool = False

    def __post_init__(self) -> None:
        if not is_stage_name(self.name):
            raise ConfigError(
                f"stage name '{self.name}' must be letters, digits, '-' or '_' (a folder name)"
            )


@dataclass(frozen=True)
class Pipeline:
    """Named stages run one after another in one output folder.

    Attributes:
        name: the pipeline's name (its key in :data:`PIPELINES`).
        summary: one line for ``cfd3d generate --help``.
        stages: the stages in run order; at least one, with distinct names.
    """

    name: str
    summary: str
    stages: tuple[Stage, ...]

    def __post_init__(self) -> None:
        if not self.stages:
            raise ConfigError(f"pipeline '{self.name}' has no stages")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"pipeline '{self.name}' repeats a stage name: {', '.join(names)}")

    @property
    def has_multiview(self) -> bool:
        """Whether a stage runs on the multi-view prior (and needs ``--prior-mv``)."""
        return any(s.multiview for s in self.stages)


# ------------------------------------------------------------------------- the pipelines

_MV_NEGATIVE = (
    "ugly, bad anatomy, blurry, pixelated obscure, unnatural colors, poor lighting, dull, "
    "unclear, cropped, lowres, low quality, artifacts, duplicate, deformed, bad proportions"
)
_REFINE_NEGATIVE = (
    "lack details, ugly, oversmoothed, bad structure, out of focus, blurry, cartoon, "
    "oversaturated, foggy, hazy, pixelated obscure, unnatural colors, dull, unclear, lowres, "
    "low quality, deformed"
)
MULTIVIEW_PRIOR = "mvdream"
"""The prior of a multi-view stage until ``--prior-mv`` names a checkpoint."""


def _toy_stage1(prompt: str) -> GenerateConfig:
    return replace(preset_config("cpu-demo", prompt), preset="toy:stage1")


def _toy_stage2(prompt: str) -> GenerateConfig:
    """The same 48³ grid refined from 64² renders (the prior sees their 32² area average,
    anti-aliased edges), timestep 0.21 -> 0.05 (``cpu-demo`` ends at 0.21), learning
    rates 0.4 times stage 1's, 150 steps, the density factor ``cpu-demo`` ends with held
    throughout.

    Measured with ``benchmarks/toyworld.py --pipeline toy`` (3 prompts x 2 seeds, before
    ``cpu-demo``'s ``lr_density``, so on a blurrier stage 1 than today's): the
    refinement leaves the silhouettes as they were (mask IoU within ±0.01 per run, mean
    change -0.001); their errors are mostly the object's size, which low timesteps do not
    move. None of the variants tried on other seeds (32² renders, a 64³ grid, timesteps
    down to 0.02 or from 0.5, fresh noise, 4 views, 300 steps, Adam's state carried
    over) raised the mean by more than 0.002."""
    base = preset_config("cpu-demo", prompt)
    return replace(
        base,
        preset="toy:stage2",
        steps=150,
        render_size=64,
        timesteps=TimestepSchedule(kind="annealed", knots=((0.0, 0.21), (1.0, 0.05))),
        lr=0.02,
        voxel=replace(base.voxel, lr_density=0.08),  # 4 x lr, as in stage 1
        gamma_start=1e-3,
        checkpoint_every=50,
        density_scale=((0.0, base.density_scale_at(base.steps)),),
    )


def _mvdream_stage1(prompt: str) -> GenerateConfig:
    """MVDream NeRF stage 1 (``mvdream-stage1.yaml``). The reference draws the camera
    distance relative to the field of view (0.8-1.0 / tan(fovy / 2), fovy 15-60°); with
    independent ranges this frames the object alike: fovy 45-55°, distance 1.8-2.1."""
    sd = preset_config("sd-stage1", prompt)
    return replace(
        sd,
        prior=MULTIVIEW_PRIOR,
        preset="paper:stage1",
        steps=10000,
        guidance_scale=50.0,
        negative_prompt=_MV_NEGATIVE,
        view_prompts=False,
        cameras=CameraSamplerConfig(
            elevation_deg=(0.0, 30.0),
            distance=(1.8, 2.1),
            fovy_deg=(45.0, 55.0),
            views_per_group=4,
        ),
        views_per_step=4,
        render_size=64,
        render_schedule=((5000, 256),),
        p_albedo=1.0,
        p_textureless=0.0,
        timesteps=TimestepSchedule(kind="annealed", knots=((0.0, 0.98), (0.5, 0.60), (1.0, 0.31))),
        checkpoint_every=1000,
    )


def _sd_refine(prompt: str) -> GenerateConfig:
    """Stable Diffusion NeRF refinement at 512² (``sd-nerf-stage2.yaml``)."""
    sd = preset_config("sd-stage1", prompt)
    return replace(
        sd,
        preset="paper:stage2",
        steps=20000,
        guidance_scale=70.0,
        negative_prompt=_REFINE_NEGATIVE,
        cameras=CameraSamplerConfig(
            elevation_deg=(0.0, 40.0), distance=(1.5, 1.8), fovy_deg=(55.0, 65.0)
        ),
        views_per_step=1,
        render_size=512,
        render_schedule=(),
        shading=ShadingConfig(mode="diffuse", ambient=0.8, diffuse=0.2, light_jitter=0.5),
        p_albedo=0.5,
        p_textureless=0.5,
        timesteps=TimestepSchedule(kind="annealed", knots=((0.0, 0.40), (1.0, 0.21))),
        checkpoint_every=1000,
    )


def _toy(prompt: str) -> Pipeline:
    return Pipeline(
        "toy",
        "embedded prior on a CPU: cpu-demo, then refinement at 64² renders and lower timesteps",
        (Stage("stage1", _toy_stage1(prompt)), Stage("stage2", _toy_stage2(prompt))),
    )


def _paper(prompt: str) -> Pipeline:
    return Pipeline(
        "paper",
        "MVDream NeRF (--prior-mv; 4 views, CFG 50, 10k steps, 64² then 256²), then SD "
        "refinement at 512² (--prior; CFG 70, 20k steps); a GPU",
        (
            Stage("stage1", _mvdream_stage1(prompt), multiview=True),
            Stage("stage2", _sd_refine(prompt)),
        ),
    )


def _paper_sd(prompt: str) -> Pipeline:
    return Pipeline(
        "paper-sd",
        "SD NeRF (the sd-stage1 preset), then SD refinement at 512² (--prior); a GPU",
        (
            Stage("stage1", replace(preset_config("sd-stage1", prompt), preset="paper-sd:stage1")),
            Stage("stage2", replace(_sd_refine(prompt), preset="paper-sd:stage2")),
        ),
    )


PIPELINES: dict[str, Callable[[str], Pipeline]] = {
    "toy": _toy,
    "paper": _paper,
    "paper-sd": _paper_sd,
}
"""Pipeline name -> factory of the pipeline for a prompt."""


def pipeline_config(name: str, prompt: str) -> Pipeline:
    """The pipeline called ``name`` for ``prompt``.

    Raises:
        ConfigError: for an unknown name, listing the valid ones.
    """
    if name not in PIPELINES:
        raise ConfigError(f"unknown pipeline '{name}'; valid: {', '.join(PIPELINES)}")
    return PIPELINES[name](prompt)


# ------------------------------------------------------------------ options and chaining


def with_method(config: GenerateConfig, method: str) -> GenerateConfig:
    """``config`` for ``method``: its noise source and ``w(t)``; a stage's own timestep
    schedule is kept (a later stage anneals on from where the previous one ended), a
    stage without one takes the method's."""
    return replace(config, method=method, noise=None, weighting=None)


def configure(
    pipeline: Pipeline,
    *,
    prior: str | None = None,
    prior_mv: str | None = None,
    steps_per_stage: int | None = None,
    method: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Pipeline:
    """The pipeline as it will run: command-line choices applied to every stage, stages
    chained (``init_from`` of stage ``k + 1`` is stage ``k``'s folder) and resolved.

    Args:
        pipeline: from :func:`pipeline_config`.
        prior: replaces the prior of every stage that is not multi-view.
        prior_mv: the multi-view prior of the multi-view stages.
        steps_per_stage: replaces every stage's ``steps`` (e.g. 3 for a smoke test).
        method: every stage's method (see :func:`with_method`).
        overrides: other :class:`GenerateConfig` fields set in every stage (seed, device,
            guidance_scale...).

    Raises:
        ConfigError: ``prior_mv`` for a pipeline without a multi-view stage, a multi-view
            stage without it, or stages that do not chain (:func:`check_handoff`).
    """
    if prior_mv is not None and not pipeline.has_multiview:
        raise ConfigError(
            f"pipeline '{pipeline.name}' has no multi-view (MVDream) stage; drop --prior-mv"
        )
    if prior_mv is None and pipeline.has_multiview:
        stage = next(s.name for s in pipeline.stages if s.multiview)
        raise ConfigError(
            f"pipeline '{pipeline.name}' runs {stage} on a multi-view prior; pass --prior-mv "
            "with an MVDream checkpoint (e.g. sd-v2.1-base-4view.pt)"
        )
    if steps_per_stage is not None and steps_per_stage < 1:
        raise ConfigError(f"--steps-per-stage must be a positive integer, got {steps_per_stage}")
    stages: list[Stage] = []
    for index, stage in enumerate(pipeline.stages):
        config = stage.config
        if stage.multiview:
            config = replace(config, prior=prior_mv)
        elif prior is not None:
            config = replace(config, prior=prior)
        if method is not None:
            config = with_method(config, method)
        changes = dict(overrides or {})
        if steps_per_stage is not None:
            changes["steps"] = steps_per_stage
        if index > 0:
            changes["init_from"] = f"../{pipeline.stages[index - 1].name}"
        config = replace(config, **changes).resolved()
        if index > 0:
            check_handoff(stages[-1].config, config, stage.name)
        stages.append(replace(stage, config=config))
    return replace(pipeline, stages=tuple(stages))


def check_handoff(previous: GenerateConfig, following: GenerateConfig, where: str) -> None:
    """Check that a field of ``previous``'s settings can start a run of ``following``'s.

    Raises:
        ConfigError: one line naming ``where`` (the later stage) and what to change.
    """
    handover = following.field == "gaussians" and previous.field in ("voxel", "nerf")
    if previous.field != following.field and not handover:
        raise ConfigError(
            f"{where}: a '{following.field}' field cannot start from the previous stage's "
            f"'{previous.field}' field; use one field kind in every stage (or hand a voxel "
            "or nerf stage over to gaussians)"
        )
    if (
        following.field == previous.field == "gaussians"
        and previous.gaussians.sh_degree != following.gaussians.sh_degree
    ):
        raise ConfigError(
            f"{where}: the Gaussians' sh_degree {following.gaussians.sh_degree} differs from "
            f"the previous stage's {previous.gaussians.sh_degree}; keep it"
        )
    if following.field == "voxel" and previous.voxel.bound != following.voxel.bound:
        raise ConfigError(
            f"{where}: the voxel grid's bound {following.voxel.bound:g} differs from the "
            f"previous stage's {previous.voxel.bound:g}; only its resolution may change"
        )
    if following.field == "nerf" and previous.nerf != following.nerf:
        raise ConfigError(
            f"{where}: the NeRF settings differ from the previous stage's; a NeRF is handed "
            "on unchanged (only a voxel grid may change resolution)"
        )
    ends, starts = previous.density_scale_at(previous.steps), following.density_scale_at(0)
    if following.field == previous.field and ends != starts:
        raise ConfigError(
            f"{where}: the previous stage ends with density_scale {ends:g} and this one starts "
            f"with {starts:g}, which would change the field it hands on; start this stage's "
            f"density_scale at {ends:g}"
        )


# -------------------------------------------------------------------------- the handoff


def resample_grid(grid: torch.Tensor, resolution: int) -> torch.Tensor:
    """A vertex grid ``(R, R, R, C)`` trilinearly resampled to ``(S, S, S, C)``, ``S =
    resolution``, over the same cube (corner vertices stay on the corners)."""
    if grid.shape[0] == resolution:
        return grid.clone()
    volume = grid.permute(3, 0, 1, 2)[None]
    out = F.interpolate(volume, size=(resolution,) * 3, mode="trilinear", align_corners=True)
    return out[0].permute(1, 2, 3, 0).contiguous()


def voxel_state_for(
    state: Mapping[str, torch.Tensor], previous: VoxelGridConfig, following: VoxelGridConfig
) -> dict[str, torch.Tensor]:
    """A voxel field's state dict under ``previous`` made fit for ``following``: resampled
    to its resolution, raw density shifted so that ``softplus(raw + density_shift)`` (the
    density) is unchanged at every vertex."""
    res = following.resolution
    density = resample_grid(state["raw_density"][..., None], res)[..., 0]
    density = density + (previous.density_shift - following.density_shift)
    return {"raw_density": density, "raw_color": resample_grid(state["raw_color"], res)}


def start_from(run: Run, state: Mapping[str, Any]) -> None:
    """Start ``run``'s field, and its environment map when both runs learn one, from the
    checkpoint ``state`` of an earlier run (stage ``k + 1`` from stage ``k``).

    Raises:
        ConfigError: the checkpoint's field cannot start this run's (:func:`check_handoff`).
        UserError: a checkpoint whose tensors do not match its own config.
    """
    previous = config_from_dict(state["config"])
    following = run.config
    check_handoff(previous, following, "init_from")
    field = state["field"]
    if following.field == "voxel":
        field = voxel_state_for(field, previous.voxel, following.voxel)
    try:
        if following.field == "gaussians" and previous.field != "gaussians":
            factor = previous.density_scale_at(int(state["step"]))
            _hand_over_to_gaussians(run, previous, field, factor)
        else:
            run.field.load_state_dict(field)
        if previous.background == following.background == "environment":
            run.background.load_state_dict(state["background"])  # type: ignore[union-attr]
    except (KeyError, RuntimeError) as exc:
        raise UserError(
            f"the checkpoint of init_from does not match its own config ({exc}); start the "
            "earlier stage afresh"
        ) from None


def _hand_over_to_gaussians(
    run: Run, previous: GenerateConfig, state: Mapping[str, torch.Tensor], density_scale: float
) -> None:
    """Set ``run``'s Gaussians from samples of an earlier voxel or NeRF field's density
    (:func:`~cfd3d.scene.gaussians.gaussians_from_field`; the field's density times the
    factor of the step its state is from), drawn with ``run``'s seed."""
    source: torch.nn.Module
    if previous.field == "voxel":
        source = VoxelGridField(previous.voxel)
    else:
        source = NeRFField(previous.nerf)
    source.load_state_dict(state)
    source.density_scale = density_scale
    source.to(run.device)
    generator = torch.Generator().manual_seed(run.config.seed ^ _HANDOVER_STREAM)
    values = gaussians_from_field(
        source, previous.field_bound, run.config.gaussians, generator, device=run.device
    )
    assert isinstance(run.field, GaussianField)
    run.field.set_parameters(values)
