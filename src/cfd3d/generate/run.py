"""One text-to-3D run: build the parts, take optimisation steps, checkpoint and resume.

A step is the data flow of DESIGN.md, left to right::

    cameras -> render(field) -> noise(render, cameras) -> prior.encode(rgb) -> z
        -> gradient w(t) (eps_hat(alpha z + sigma eps~, t, y) - eps~) on z
        -> loss with that gradient -> backward -> Adam step -> SDE refresh of the noise

Large renders take the same path with deferred back-propagation (render without graph,
back-propagate the image gradient chunk by chunk: :mod:`cfd3d.render.deferred`), and an
optional occupancy grid, refreshed at the start of a step, skips empty space. Gaussians
(``field="gaussians"``) render through :class:`~cfd3d.render.splat.SplatRenderer`, and
after the Adam step go through adaptive density control, which resizes them and Adam's
state (:func:`~cfd3d.scene.gaussians.adaptive_density_control`).

Every method shares it through one dispatch, the update rule built once per run
(:func:`cfd3d.distill.methods.make_rule`): CFD, SDS and FSD differ only in the noise
source, the timestep schedule and ``w(t)``; VSD, ISM and SDI bring their own rules.
Every random draw of step ``i`` comes from generators keyed by ``(seed, i)``, so a
resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import io
import math
import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from cfd3d.distill.gamma import gamma_at
from cfd3d.distill.loss import gradient_loss
from cfd3d.distill.methods import make_rule
from cfd3d.distill.timesteps import timestep_fraction
from cfd3d.errors import ConfigError, UserError
from cfd3d.export.ply import read_gaussian_ply
from cfd3d.generate.config import GenerateConfig, config_to_dict
from cfd3d.io import atomic_write_bytes, atomic_write_text, sha256_hex
from cfd3d.noise import make_noise
from cfd3d.priors.base import Condition, Prior
from cfd3d.priors.prompts import view_prompt
from cfd3d.render import (
    EnvironmentMap,
    RandomColorBackground,
    SolidBackground,
    VolumeRenderer,
)
from cfd3d.render.deferred import render_deferred
from cfd3d.render.occupancy import OccupancyGrid
from cfd3d.render.shading import ShadingConfig
from cfd3d.render.splat import SplatInfo, SplatRenderer, resolve_backend
from cfd3d.render.types import RenderOutput
from cfd3d.scene.cameras import Cameras
from cfd3d.scene.gaussians import GaussianField, adaptive_density_control
from cfd3d.scene.nerf import NeRFField
from cfd3d.scene.sampling import VIEW_LABELS, sample_cameras, view_labels
from cfd3d.scene.voxel import VoxelGridField

_STEP_STREAM = 0x5EED_0001
_OCCUPANCY_STREAM = 0x5EED_0002
_DENSIFY_STREAM = 0x5EED_0004  # 0x5EED_0003: the update rules (cfd3d.distill.methods)


def gradients_finite(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every gradient the optimiser would apply is finite (a step that is not is
    skipped, not taken)."""
    return all(
        bool(torch.isfinite(p.grad).all())
        for group in optimizer.param_groups
        for p in group["params"]
        if p.grad is not None
    )


@dataclass
class StepResult:
    """What one step reports (a line of ``metrics.jsonl``)."""

    step: int
    t: int
    loss: float
    grad_norm: float
    skipped: bool
    render_ms: float
    noise_ms: float
    prior_ms: float
    backward_ms: float
    step_ms: float

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in vars(self).items()}


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of every random draw of ``step`` (cameras, lights, backgrounds)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) ^ _STEP_STREAM)


class Run:
    """The state of a run and its step function.

    Args:
        config: a resolved config (:meth:`GenerateConfig.resolved`).
        prior: the prior (built by the caller, so prompt errors surface before any file
            is written).
    """

    def __init__(self, config: GenerateConfig, prior: Prior) -> None:
        self.config = config
        self.prior = prior
        self.device = prior.device
        seed_gen = torch.Generator().manual_seed(config.seed)
        if config.field == "voxel":
            self.field: torch.nn.Module = VoxelGridField(config.voxel, generator=seed_gen)
        elif config.field == "gaussians":
            self.field = GaussianField(config.gaussians, generator=seed_gen)
            path = config.gaussians.init_path
            if config.gaussians.init == "ply" and path is not None:
                ply = read_gaussian_ply(Path(path).expanduser(), config.gaussians.sh_degree)
                self.field.set_parameters(ply)
        else:
            self.field = NeRFField(config.nerf, generator=seed_gen)
        self.field.to(self.device)
        self.background = self._make_background()
        self.renderer = VolumeRenderer(config.renderer_config())
        self.splatter: SplatRenderer | None = None
        if config.field == "gaussians":
            self.splatter = SplatRenderer(config.splat_config())
            resolve_backend(self.splatter.config.backend, self.device)  # refused before a step
        self._splat_info: SplatInfo | None = None
        self.occupancy: OccupancyGrid | None = None
        if config.occupancy is not None:
            self.occupancy = OccupancyGrid(config.occupancy, config.field_bound).to(self.device)
        assert config.noise is not None and config.timesteps is not None
        _, noise_h, noise_w = prior.input_shape
        for size in config.render_sizes:
            if size % noise_h or size % noise_w:
                raise ConfigError(
                    f"render size {size} must be a multiple of the prior's noise size "
                    f"{noise_h}x{noise_w}; change render_size / render_schedule"
                )
        self.noise = make_noise(config.noise, prior.input_shape)
        self.optimizer = torch.optim.Adam(self._param_groups(), betas=config.betas, eps=1e-15)
        self.rule = make_rule(config.method, prior, config.seed, config.vsd, config.ism, config.sdi)
        self.step = 0
        self.bad_steps = 0
        self._sync_density_scale()
        self._conditions = self._embed_prompts()

    # ------------------------------------------------------------------ construction

    def _make_background(self):
        kind = self.config.background
        if kind == "environment":
            return EnvironmentMap().to(self.device)
        if kind == "random":
            return RandomColorBackground()
        return SolidBackground()

    def _param_groups(self) -> list[dict]:
        c = self.config
        if isinstance(self.field, NeRFField):
            groups = [
                {"params": self.field.grid_parameters(), "lr": c.lr},
                {"params": self.field.mlp_parameters(), "lr": c.lr_mlp},
            ]
        elif isinstance(self.field, GaussianField):
            groups = self.field.parameter_groups()
        elif isinstance(self.field, VoxelGridField) and c.voxel.lr_density is not None:
            groups = [
                {"params": [self.field.raw_density], "lr": c.voxel.lr_density},
                {"params": [self.field.raw_color], "lr": c.lr},
            ]
        else:
            groups = [{"params": list(self.field.parameters()), "lr": c.lr}]
        if isinstance(self.background, torch.nn.Module):
            groups.append({"params": list(self.background.parameters()), "lr": c.lr_mlp})
        return groups

    def _embed_prompts(self) -> dict[str, Condition]:
        """One condition per view label (or one for all views), embedded once."""
        c = self.config
        labels = VIEW_LABELS if c.view_prompts else ("",)
        return {
            label: self.prior.condition(
                view_prompt(c.prompt, label) if label else c.prompt, c.negative_prompt, 1
            )
            for label in labels
        }

    def condition(self, cameras: Cameras) -> Condition:
        """The guided condition of a batch of views (view-dependent prompts, Perp-Neg)."""
        c = self.config
        labels = view_labels(cameras, c.view_labels) if c.view_prompts else [""] * len(cameras)
        parts = [self._conditions[label] for label in labels]
        return Condition(
            cond=torch.cat([p.cond for p in parts]),
            uncond=torch.cat([p.uncond for p in parts]),
            prompts=tuple(p.prompts[0] for p in parts),
            perp_neg=self._perp_neg(cameras),
            cameras=cameras.c2w.to(self.device),
        )

    def _perp_neg(self, cameras: Cameras) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """Perp-Neg negatives against the Janus problem: the "front view" prompt weighs
        ``perp_neg * max(0, -cos azimuth)`` (full behind the object, nothing from the
        side), the "back view" prompt ``perp_neg * max(0, cos azimuth)``."""
        c = self.config
        if c.perp_neg == 0.0 or not c.view_prompts:
            return ()
        cos = torch.cos(torch.deg2rad(cameras.azimuth.to(self.device, torch.float32)))

        def negative(label: str, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            cond = self._conditions[label].cond
            return cond.expand(len(cameras), *cond.shape[1:]), c.perp_neg * weight.clamp_min(0.0)

        return (negative("front", -cos), negative("back", cos))

    # --------------------------------------------------------------------------- step

    def shading_for(self, gen: torch.Generator) -> ShadingConfig:
        c = self.config
        u = float(torch.rand((), generator=gen))
        if u < c.p_albedo:
            mode = "albedo"
        elif u < c.p_albedo + c.p_textureless:
            mode = "textureless"
        else:
            mode = "diffuse"
        return replace(c.shading, mode=mode)  # type: ignore[arg-type]

    def render(
        self, cameras: Cameras, size: int, shading=None, generator=None, background=None
    ) -> RenderOutput:
        if self.splatter is not None:
            out, info = self.splatter.render_with_info(
                self.field,  # type: ignore[arg-type]
                cameras.to(self.device),
                size,
                size,
                shading=shading,
                background=background or self.background,
                generator=generator,
            )
            if torch.is_grad_enabled():  # a training render: keep it for density control
                self._splat_info = info
            return out
        return self.renderer(
            self.field,
            cameras.to(self.device),
            size,
            size,
            shading=shading,
            background=background or self.background,
            generator=generator,
            occupancy=self.occupancy,
        )

    def _clock(self) -> float:
        """Seconds, after the device has finished its queued work (true phase timings on
        asynchronous devices such as CUDA)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def take_step(self) -> StepResult:
        """One optimisation step (or a skipped one, for non-finite gradients)."""
        c, i = self.config, self.step
        tic = self._clock()
        if self.occupancy is not None:
            self.occupancy.update(
                self.field.density,  # type: ignore[attr-defined]
                i,
                torch.Generator().manual_seed((c.seed * 1_000_003 + i) ^ _OCCUPANCY_STREAM),
            )
        gen = step_generator(c.seed, i)
        cameras = sample_cameras(c.cameras, c.views_per_step, gen)
        shading = self.shading_for(gen)
        size = c.render_size_at(i)
        deferred = None
        if c.defers_backward(size):
            deferred = render_deferred(
                self.renderer,
                self.field,
                cameras.to(self.device),
                size,
                size,
                shading=shading,
                background=self.background,
                generator=gen,
                chunk_rays=c.chunk_rays,
                occupancy=self.occupancy,
            )
            out = deferred.output
            image = out.rgb.detach().requires_grad_(True)
        else:
            out = self.render(cameras, size, shading, gen)
            image = out.rgb
        t_render = self._clock()
        eps_tilde = self.noise(out, cameras, i).to(self.device)
        t_noise = self._clock()
        z = self.prior.encode(image.permute(0, 3, 1, 2))
        fraction = timestep_fraction(c.timesteps, i, c.steps, c.seed)  # type: ignore[arg-type]
        t = self.prior.schedule.index(fraction)
        t_batch = torch.full((len(cameras),), int(t), dtype=torch.long, device=self.device)
        grad = self.rule.gradient(
            z,
            t_batch,
            self.condition(cameras),
            c.guidance_at(fraction),
            eps_tilde.to(z.dtype),
            c.weighting,  # type: ignore[arg-type]
            i,
        )
        t_prior = self._clock()
        loss = gradient_loss(z, grad)
        if c.sparsity > 0.0 and deferred is None:
            loss = loss + c.sparsity * out.opacity.sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if deferred is not None:
            assert image.grad is not None
            sparsity = None
            if c.sparsity > 0.0:
                sparsity = torch.full_like(out.opacity, c.sparsity)
                loss = loss + c.sparsity * out.opacity.sum()
            deferred.backward(image.grad, sparsity)
        finite = math.isfinite(float(loss.detach())) and gradients_finite(self.optimizer)
        if finite:
            self.optimizer.step()
            self.bad_steps = 0
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_steps += 1
        self._control_density(i, finite)
        self.noise.refresh(gamma_at(i, c.steps, c.gamma_start, c.gamma_end))
        t_end = self._clock()
        self.step = i + 1
        self._sync_density_scale()
        return StepResult(
            step=i,
            t=int(t),
            loss=float(loss.detach()),
            grad_norm=float(grad.flatten(1).norm(dim=1).mean()),
            skipped=not finite,
            render_ms=1e3 * (t_render - tic),
            noise_ms=1e3 * (t_noise - t_render),
            prior_ms=1e3 * (t_prior - t_noise),
            backward_ms=1e3 * (t_end - t_prior),
            step_ms=1e3 * (t_end - tic),
        )

    def _control_density(self, i: int, finite: bool) -> None:
        """Gaussians' adaptive density control after step ``i``: add this step's
        view-space gradients to the statistics (finite steps only), then clone, split,
        prune or reset opacities when due (:func:`adaptive_density_control`)."""
        info, self._splat_info = self._splat_info, None
        if not isinstance(self.field, GaussianField):
            return
        if finite and info is not None:
            self.field.accumulate_stats(info.ndc_grad(), info.visible, info.radius)
        generator = torch.Generator().manual_seed(
            (self.config.seed * 1_000_003 + i) ^ _DENSIFY_STREAM
        )
        adaptive_density_control(self.field, self.optimizer, i + 1, generator)

    # --------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict:
        state = {
            "step": self.step,
            "bad_steps": self.bad_steps,
            "field": {k: v.detach().cpu() for k, v in self.field.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "noise": self.noise.state_dict(),
            "config": config_to_dict(self.config),
        }
        if isinstance(self.background, torch.nn.Module):
            state["background"] = self.background.state_dict()
        if self.occupancy is not None:
            state["occupancy"] = self.occupancy.state_dict()
        rule = self.rule.state_dict()  # VSD's trainable copy
        if rule:
            state["rule"] = rule
        return state

    def load_state_dict(self, state: dict) -> None:
        self.field.load_state_dict(state["field"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.noise.load_state_dict(state["noise"])
        if isinstance(self.background, torch.nn.Module):
            self.background.load_state_dict(state["background"])
        if self.occupancy is not None:
            self.occupancy.load_state_dict(state["occupancy"])
        if "rule" in state:
            self.rule.load_state_dict(state["rule"])
        self.step = int(state["step"])
        self.bad_steps = int(state["bad_steps"])
        self._sync_density_scale()

    def _sync_density_scale(self) -> None:
        """Give a volume field the density factor of the current step (the config's
        ``density_scale``; after the last step, the factor the run ends with)."""
        if hasattr(self.field, "density_scale"):
            self.field.density_scale = self.config.density_scale_at(self.step)

    def save_checkpoint(self, folder: Path) -> Path:
        """Write ``folder/step_NNNNNN.pt`` and prune old ones (see :func:`write_checkpoint`)."""
        return write_checkpoint(folder, self.step, self.state_dict(), self.config.keep_checkpoints)


CHECKSUM_SUFFIX = ".sha256"
"""A checkpoint ``step_NNNNNN.pt`` has its SHA-256 in ``step_NNNNNN.pt.sha256`` beside it."""

_CHECKPOINT = re.compile(r"step_(\d{6,})\.pt")
_REQUIRED = ("step", "bad_steps", "field", "optimizer", "noise")


class DamagedCheckpoint(UserError):
    """A checkpoint file that cannot be used; ``reason`` says why in a few words."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            f"checkpoint '{path}' is unusable ({reason}); delete it to resume from an earlier "
            "checkpoint, or start afresh with another --out"
        )
        self.path = path
        self.reason = reason


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint file's name records (``step_000120.pt`` -> 120)."""
    match = _CHECKPOINT.fullmatch(path.name)
    if match is None:
        raise ValueError(f"'{path.name}' is not a checkpoint name")
    return int(match.group(1))


def write_checkpoint(folder: Path, step: int, state: dict, keep: int) -> Path:
    """Write ``state`` as ``folder/step_NNNNNN.pt`` with its checksum, then prune.

    The checksum file is written first and each file atomically, so a kill at any moment
    leaves either the previous checkpoints or those plus a complete, verifiable new one.
    Pruning keeps the new checkpoint and the ``keep - 1`` newest before it, and removes
    checkpoints of later steps (left by a run that was resumed from an earlier one; this
    run computes those steps again) and temporary files of interrupted writes.

    Raises:
        cfd3d.io.DiskFullError: the disk is full; the earlier checkpoints are untouched.
    """
    buffer = io.BytesIO()
    torch.save(_interned(state), buffer)
    data = buffer.getvalue()
    path = folder / f"step_{step:06d}.pt"
    atomic_write_text(_checksum_path(path), f"{sha256_hex(data)}  {path.name}\n")
    atomic_write_bytes(path, data)
    present = list_checkpoints(folder)
    older = [p for p in present if checkpoint_step(p) < step]
    later = [p for p in present if checkpoint_step(p) > step]
    for old in [*older[: max(len(older) - (keep - 1), 0)], *later]:
        remove_checkpoint(old)
    for stale in folder.glob(".step_*.tmp"):
        stale.unlink(missing_ok=True)
    return path


def _interned(obj: object) -> object:
    """``obj`` with every string interned, so that its pickle (which shares repeated
    objects) is a function of its value alone: a resumed run's checkpoint, whose optimizer
    state keys were unpickled, has the same bytes as an uninterrupted run's."""
    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, dict):
        return {_interned(k): _interned(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_interned(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_interned(v) for v in obj)
    return obj


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint file and its checksum file (either may be missing)."""
    path.unlink(missing_ok=True)
    _checksum_path(path).unlink(missing_ok=True)


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints in ``folder``, oldest first (by step)."""
    if not folder.is_dir():
        return []
    return sorted(
        (p for p in folder.iterdir() if _CHECKPOINT.fullmatch(p.name)), key=checkpoint_step
    )


def read_checkpoint(path: Path) -> dict:
    """Load a checkpoint file, verified against its checksum file and its structure.

    A checkpoint without a checksum file (written by an older cfd3d) is checked for its
    structure only.

    Raises:
        DamagedCheckpoint: the file is unreadable, fails its checksum or is not a cfd3d
            generate checkpoint (``reason`` says which).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DamagedCheckpoint(path, f"cannot read it: {exc.strerror or exc}") from None
    try:
        recorded = _checksum_path(path).read_text().split()[0]
    except (OSError, UnicodeDecodeError, IndexError):
        recorded = None
    if recorded is not None and recorded != sha256_hex(data):
        raise DamagedCheckpoint(path, "its SHA-256 does not match its .sha256 file: damaged")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for damaged files
        raise DamagedCheckpoint(path, f"unreadable: {type(exc).__name__}") from None
    if not isinstance(state, dict) or not set(_REQUIRED) <= set(state):
        raise DamagedCheckpoint(path, "not a cfd3d generate checkpoint")
    if not isinstance(state["field"], dict) or not all(
        isinstance(v, torch.Tensor) for v in state["field"].values()
    ):
        raise DamagedCheckpoint(path, "its field is not a set of tensors")
    if not isinstance(state["step"], int) or state["step"] < 0:
        raise DamagedCheckpoint(path, f"its step is {state['step']!r}")
    if _CHECKPOINT.fullmatch(path.name) and checkpoint_step(path) != state["step"]:
        raise DamagedCheckpoint(path, f"it holds step {state['step']}, not the step of its name")
    return state
