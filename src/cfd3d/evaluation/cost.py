"""What a run will cost on this device: a small model of time per step and peak memory.

The figures are ESTIMATES, and every caller shows them as such. One step of a run
(:mod:`cfd3d.generate.run`) is modelled as

    step_ms = ms_per_render + samples x us_per_sample / 1000    render and its backward
            + views x (branches x unet_ms + encoder_ms)         the prior
            + field parameters x adam_ns_per_parameter / 1e6    Adam on the field

    peak_mb = baseline + prior weights + field state (weights, gradients, Adam moments)
            + views x encoder_mb + mb_per_render + kept samples x bytes_per_sample

with ``samples = views x size² x samples_per_ray`` (dense marching), the render terms
averaged over the shading modes a run draws (with and without normals), and ``branches``
the UNet evaluations of guidance (1, 2 with classifier-free guidance, 4 with Perp-Neg).
A run sums its steps over its render schedule. For 3D Gaussians (``field="gaussians"``)
a "sample" is a pixel (``samples_per_ray`` is 1): the rasteriser's time and memory per
pixel at the preset's initial Gaussian count, measured like the volume renderer's.

Where the constants come from:

* Rendering is measured on the device, once per field kind and samples per ray: the
  preset's field, freshly initialised, renders one view with shading with and without
  normals and back-propagates into the field; the image grows from 2² (16² on CUDA) until
  one render takes long enough to time. Recorded: time per sample, memory per sample (on
  CUDA the allocator's peak over the render and its backward; on the CPU the bytes autograd
  saves, :class:`cfd3d.evaluation.memory.SavedTensorsMeter`, which misses what custom
  autograd functions keep on their own) and Adam's time per parameter. A deferred backward
  (:mod:`cfd3d.render.deferred`) costs a forward render without graph (timed too) plus the
  render with graph, and keeps one chunk of rays.
* The embedded prior is timed on the device: one guided evaluation of a step's batch.
* Stable Diffusion is too large to time within seconds, so its time is FLOPs over the
  device's speed: SD 2.1-base's UNet and VAE-encoder FLOPs (counted once with
  ``torch.utils.flop_counter``) divided by the speed of one 320-channel 3x3 convolution
  (the UNet's first level), timed here in the prior's dtype, times the share of that
  speed the whole networks reached on the reference device (:data:`UNET_EFFICIENCY`,
  :data:`ENCODER_EFFICIENCY`: the 2-core AMD EPYC CPU box, one thread, float32). The
  ``sd_step --small`` CPU figures in ``docs/benchmarks.md`` time a 1/10-width UNet on 8x8
  latents (85 ms for 0.26 GFLOP, 3 GFLOP/s), which is all overhead and says nothing about
  the full model, so they are not used. No GPU has been measured yet: on CUDA these shares
  are an extrapolation from the CPU until ``benchmarks/sd_step.py`` records GPU figures.
  Sequential CPU offload (``low_vram``) adds one host-to-device copy of the UNet and VAE
  weights per step, at a copy speed timed here.

* Gaussians are rendered on the device by the run's rasteriser (:mod:`cfd3d.render.splat`:
  the pure-PyTorch reference on a CPU, so on this project's 2-core CPU box the Gaussian
  figures are CPU measurements of that rasteriser; gsplat on CUDA when installed). Their
  cost grows with the Gaussians that cover each tile, so a run whose density control
  multiplies the count costs more than estimated (noted).

What the model ignores: empty-space skipping and early ray termination (the render terms
are dense marching, an upper bound for presets with an occupancy grid); the multi-view
noise (4-6 % of a ``cpu-demo`` step); the UNet's activations (inference without graph,
freed at once); model loading, prompt encoding, checkpoints and the exports at the end of
a run; a field's contents (a dense render costs the same for any field values); other
work sharing the device; the CUDA context (outside torch's allocator).
Stable Diffusion priors are costed as SD 2.1-base at 512² whatever checkpoint is passed.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace

import torch

from cfd3d.evaluation.memory import SavedTensorsMeter
from cfd3d.evaluation.render_cost import render_and_backward
from cfd3d.generate.config import GenerateConfig
from cfd3d.render.shading import ShadingConfig
from cfd3d.render.splat import SplatRenderer, resolve_backend
from cfd3d.render.volume import VolumeRenderer
from cfd3d.scene.cameras import Cameras
from cfd3d.scene.gaussians import GaussianField
from cfd3d.scene.nerf import NeRFField
from cfd3d.scene.sampling import sample_cameras
from cfd3d.scene.voxel import VoxelGridField

SD_UNET_GFLOP = 804.3
"""Forward GFLOP of SD 2.1-base's UNet for one 64x64x4 latent (``FlopCounterMode``)."""
SD_ENCODER_GFLOP = 2267.7
"""GFLOP of SD 2.1-base's VAE encoder at 512², forward plus backward to its input."""
SD_PARAMETERS = 1_290.0e6
"""SD 2.1-base weights: UNet 865.9 M, VAE 83.7 M, OpenCLIP-H text encoder 340.4 M."""
SD_OFFLOADED_PARAMETERS = 949.6e6
"""What sequential CPU offload copies to the GPU every step: the UNet and the VAE."""
SD_ENCODER_BYTES_PER_PIXEL = 12_140.0
"""Bytes the VAE encoder keeps for backward per input pixel in float32 (measured with
:class:`SavedTensorsMeter` at 64² and 128²: 12 160 and 12 134); half in float16."""
SD_IMAGE_SIZE = 512
"""The image side SD 2.1-base's VAE encodes (renders are resized to it)."""
UNET_EFFICIENCY = 0.28
"""SD 2.1-base UNet GFLOP/s over the calibration convolution's GFLOP/s on the reference
device (2-core AMD EPYC box, one thread, float32, 2026-12-02, load average about 1: UNet
52 GFLOP/s at batch 1 and a 64x64 latent, convolution 184 GFLOP/s). Two more runs with the
box overloaded (load average 6) gave 0.42: contention slows the short convolution timing
less than the long network, so this constant errs on the slow side."""
ENCODER_EFFICIENCY = 0.35
"""The same for the VAE encoder's forward plus backward (256² input: 64 GFLOP/s; 0.51 and
0.58 in the overloaded runs)."""

_CONV_CHANNELS = 320
_MIN_TIMED_MS = {"cpu": 50.0, "cuda": 20.0}
_FIRST_SIZE = {"cpu": 2, "cuda": 16}
_FIRST_SPLAT_SIZE = 32
"""Gaussians are timed from 32² up: on smaller images every tile holds nearly every
Gaussian, and the cost per pixel is far above a large image's."""
_MB = 2.0**20


@dataclass(frozen=True)
class DeviceSpeed:
    """What the cost model measured about a device.

    Attributes:
        device: the torch device, e.g. ``"cpu"`` or ``"cuda:0"``.
        dtype: the dtype of the convolution timing (a Stable Diffusion prior's default:
            float16 on CUDA, float32 on the CPU).
        conv_gflops: achieved GFLOP/s of a 320-channel 3x3 convolution in ``dtype``.
        copy_gbps: host-to-device copy speed in GB/s (CUDA only, else ``None``).
        baseline_mb: memory in use before a run starts: this process's resident set on
            the CPU (Python, torch, cfd3d), torch's allocations on CUDA.
    """

    device: str
    dtype: str
    conv_gflops: float
    copy_gbps: float | None
    baseline_mb: float


@dataclass(frozen=True)
class RenderSpeed:
    """A field kind's render cost on a device, for one shading mode.

    A render with graph and its backward takes ``ms_per_render + samples x us_per_sample
    / 1000`` milliseconds and holds ``mb_per_render + samples x bytes_per_sample`` for its
    backward: fixed parts (Python and kernel launches; tensors the size of the field) and
    parts per sample, fitted through the last two image sizes measured.

    Attributes:
        ms_per_render: the fixed part of the time, in milliseconds.
        us_per_sample: microseconds per ray sample.
        us_forward: microseconds per sample of a render without graph (fixed part included).
        mb_per_render: the fixed part of the memory.
        bytes_per_sample: the memory per sample.
        adam_ns_per_parameter: nanoseconds per field parameter of one Adam step.
        size: side of the image the times were taken on.
    """

    ms_per_render: float
    us_per_sample: float
    us_forward: float
    mb_per_render: float
    bytes_per_sample: float
    adam_ns_per_parameter: float
    size: int


@dataclass(frozen=True)
class PriorSpeed:
    """A prior's cost per view on a device.

    Attributes:
        name: ``"embedded"`` or ``"stable-diffusion"``.
        unet_ms: one UNet evaluation of one view.
        encoder_ms: encoding one view, forward and backward (0 for pixel priors).
        weights_mb: the weights in device memory.
        encoder_mb: what the encoder keeps for backward per view.
        offload_ms: per step, copying offloaded weights to the device (0 without offload).
        measured: timed on the device (``True``) or FLOPs over the device's speed.
    """

    name: str
    unet_ms: float
    encoder_ms: float
    weights_mb: float
    encoder_mb: float
    offload_ms: float
    measured: bool


@dataclass(frozen=True)
class Estimate:
    """An ESTIMATE of one run's cost on one device (a model, not a measurement).

    Attributes:
        preset: the preset (or config) name.
        device: where it was estimated.
        ms_per_step: mean over the run's steps.
        seconds_per_run: all steps (nothing before or after them).
        peak_memory_mb: the largest step's peak (see :attr:`DeviceSpeed.baseline_mb`).
        render_ms, prior_ms, optimizer_ms: the largest step's time, split.
        notes: what this estimate extrapolates or leaves out, one short phrase each.
    """

    preset: str
    device: str
    ms_per_step: float
    seconds_per_run: float
    peak_memory_mb: float
    render_ms: float
    prior_ms: float
    optimizer_ms: float
    notes: tuple[str, ...]


@dataclass(frozen=True)
class StepCost:
    """The modelled cost of one step.

    Attributes:
        render_ms, prior_ms, optimizer_ms: time, split.
        peak_mb: peak memory.
    """

    render_ms: float
    prior_ms: float
    optimizer_ms: float
    peak_mb: float

    @property
    def ms(self) -> float:
        return self.render_ms + self.prior_ms + self.optimizer_ms


def guidance_branches(config: GenerateConfig) -> int:
    """UNet evaluations per view of a step: conditional, negative and Perp-Neg branches
    (:meth:`cfd3d.priors.base.Prior.predict_eps`)."""
    perp_neg = 2 if config.perp_neg > 0.0 and config.view_prompts else 0
    if config.guidance_scale == 1.0 and not perp_neg:
        return 1
    return 2 + perp_neg


def samples_per_ray(config: GenerateConfig) -> int:
    """Field evaluations per pixel the render terms count: the ray's samples, or 1 for
    Gaussians (whose render cost is per pixel at the measured Gaussian count)."""
    if config.field == "gaussians":
        return 1
    return config.n_samples + config.n_importance


def normals_share(config: GenerateConfig) -> float:
    """The share of steps whose shading needs normals (textureless and diffuse)."""
    return 1.0 - config.p_albedo


def step_cost(
    config: GenerateConfig,
    size: int,
    plain: RenderSpeed,
    shaded: RenderSpeed,
    prior: PriorSpeed,
    baseline_mb: float,
    field_parameters: int,
) -> StepCost:
    """The modelled time and peak memory of one step at render ``size`` (pure).

    Args:
        config: the run.
        size: the step's render side.
        plain: render cost with shading that needs no normals (albedo).
        shaded: render cost with normals (diffuse; textureless costs the same).
        prior: the prior's cost.
        baseline_mb: memory in use before the run.
        field_parameters: the field's parameter count (float32, with gradients and two
            Adam moments each).
    """
    views = config.views_per_step
    rays = views * size * size
    per_ray = samples_per_ray(config)
    share = normals_share(config)
    deferred = config.defers_backward(size)

    def render(speed: RenderSpeed) -> float:
        per_sample = speed.us_per_sample + (speed.us_forward if deferred else 0.0)
        return speed.ms_per_render + rays * per_ray * per_sample / 1e3

    render_ms = share * render(shaded) + (1 - share) * render(plain)
    prior_ms = (
        views * (guidance_branches(config) * prior.unet_ms + prior.encoder_ms) + prior.offload_ms
    )
    worst = shaded if share > 0.0 else plain
    kept_rays = min(rays, config.chunk_rays) if deferred else rays
    render_mb = worst.mb_per_render + kept_rays * per_ray * worst.bytes_per_sample / _MB
    state_mb = 16.0 * field_parameters / _MB
    peak_mb = baseline_mb + prior.weights_mb + state_mb + views * prior.encoder_mb + render_mb
    optimizer_ms = worst.adam_ns_per_parameter * field_parameters / 1e6
    return StepCost(render_ms, prior_ms, optimizer_ms, peak_mb)


def steps_by_size(config: GenerateConfig) -> list[tuple[int, int]]:
    """``(render size, number of steps)`` for each part of the run's render schedule."""
    starts = [0, *(min(step, config.steps) for step, _ in config.render_schedule), config.steps]
    sizes = config.render_sizes
    return [
        (size, end - start)
        for size, start, end in zip(sizes, starts[:-1], starts[1:], strict=True)
        if end > start
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _resident_mb() -> float:
    """This process's resident set size now (Linux ``/proc``; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / _MB


def measure_device(device: torch.device) -> DeviceSpeed:
    """Time the calibration convolution (and, on CUDA, a host-to-device copy)."""
    cuda = device.type == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    batch, side = (8, 64) if cuda else (1, 32)
    generator = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(_CONV_CHANNELS, _CONV_CHANNELS, 3, padding=1).to(device, dtype)
    x = torch.randn(batch, _CONV_CHANNELS, side, side, generator=generator).to(device, dtype)
    flops = 2.0 * _CONV_CHANNELS**2 * 9 * batch * side * side
    with torch.no_grad():
        conv(x)
        best = math.inf
        for _ in range(3):
            _sync(device)
            tic = time.perf_counter()
            conv(x)
            _sync(device)
            best = min(best, time.perf_counter() - tic)
    copy_gbps = None
    if cuda:
        host = torch.empty(64 * 2**20, dtype=torch.uint8)
        host.to(device)
        _sync(device)
        tic = time.perf_counter()
        host.to(device)
        _sync(device)
        copy_gbps = host.numel() / (time.perf_counter() - tic) / 1e9
    baseline = torch.cuda.memory_allocated(device) / _MB if cuda else _resident_mb()
    return DeviceSpeed(
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        conv_gflops=flops / best / 1e9,
        copy_gbps=copy_gbps,
        baseline_mb=baseline,
    )


def _make_field(config: GenerateConfig, device: torch.device) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(config.seed)
    if config.field == "voxel":
        return VoxelGridField(config.voxel, generator=generator).to(device)
    if config.field == "gaussians":
        return GaussianField(config.gaussians, generator=generator).to(device)
    return NeRFField(config.nerf, generator=generator).to(device)


def _splat_and_backward(
    renderer: SplatRenderer,
    field: torch.nn.Module,
    cameras: Cameras,
    size: int,
    shading: ShadingConfig,
    grad_rgb: torch.Tensor,
) -> float:
    """Milliseconds of a Gaussian render with graph and its backward into the field."""
    assert isinstance(field, GaussianField)
    generator = torch.Generator().manual_seed(0)
    _sync(grad_rgb.device)
    tic = time.perf_counter()
    out = renderer(field, cameras, size, size, shading=shading, generator=generator)
    (out.rgb * grad_rgb).sum().backward()
    _sync(grad_rgb.device)
    return 1e3 * (time.perf_counter() - tic)


def measure_render(
    config: GenerateConfig, device: torch.device, mode: str, max_size: int
) -> RenderSpeed:
    """Render the config's field with shading ``mode`` on ``device`` and time it.

    Args:
        config: the run (field, samples per ray, shading, cameras).
        device: where to measure.
        mode: the shading mode (``"albedo"``: no normals, ``"diffuse"``: normals).
        max_size: the image side never exceeds this (the run's largest).
    """
    field = _make_field(config, device)
    renderer: VolumeRenderer | SplatRenderer = VolumeRenderer(config.renderer_config())
    if config.field == "gaussians":
        renderer = SplatRenderer(config.splat_config())
    shading: ShadingConfig = replace(config.shading, mode=mode)  # type: ignore[arg-type]
    n_views = config.cameras.views_per_group
    generator = torch.Generator().manual_seed(config.seed)
    cameras = sample_cameras(config.cameras, n_views, generator).to(device)
    kind = "cuda" if device.type == "cuda" else "cpu"
    first = _FIRST_SIZE[kind] if config.field != "gaussians" else _FIRST_SPLAT_SIZE
    size = min(first, max_size)
    per_ray = samples_per_ray(config)

    def grad() -> torch.Tensor:
        return torch.randn(n_views, size, size, 3, generator=generator).to(device)

    def render_ms() -> float:
        if isinstance(renderer, SplatRenderer):
            return _splat_and_backward(renderer, field, cameras, size, shading, grad())
        return render_and_backward(renderer, field, cameras, size, shading, grad()).ms

    render_ms()  # warm-up
    budget = _memory_budget(device)
    timed: list[tuple[int, float]] = []  # (samples, ms)
    kept: list[tuple[int, float]] = []  # (samples, bytes)
    while True:
        samples = n_views * size * size * per_ray
        if kind == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        with SavedTensorsMeter(exclude=field.parameters()) as meter:
            ms = render_ms()
        nbytes = meter.nbytes
        if kind == "cuda":
            nbytes = torch.cuda.max_memory_allocated(device) - before
        timed.append((samples, ms))
        kept.append((samples, nbytes))
        bigger = 4 * nbytes
        enough = len(timed) > 1 and ms >= _MIN_TIMED_MS[kind]
        if enough or 2 * size > max_size or bigger > budget:
            break
        size *= 2
    fixed_ms, per_sample_ms = _fit(timed)
    fixed_bytes, bytes_per_sample = _fit(kept)
    _sync(device)
    tic = time.perf_counter()
    with torch.no_grad():
        renderer(field, cameras, size, size, shading=shading, generator=generator)
    _sync(device)
    forward_ms = 1e3 * (time.perf_counter() - tic)
    optimizer = torch.optim.Adam(field.parameters(), eps=1e-15)
    optimizer.step()  # allocates the moments
    _sync(device)
    tic = time.perf_counter()
    optimizer.step()
    _sync(device)
    adam_ns = 1e9 * (time.perf_counter() - tic) / _parameters(field)
    return RenderSpeed(
        ms_per_render=fixed_ms,
        us_per_sample=1e3 * per_sample_ms,
        us_forward=1e3 * forward_ms / samples,
        mb_per_render=fixed_bytes / _MB,
        bytes_per_sample=bytes_per_sample,
        adam_ns_per_parameter=adam_ns,
        size=size,
    )


def _fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """``(fixed part, part per sample)`` of a cost through the last two ``(samples, cost)``
    points; all per sample when there is one point or the two disagree (noise)."""
    samples, value = points[-1]
    if len(points) > 1:
        samples_0, value_0 = points[-2]
        slope = (value - value_0) / (samples - samples_0)
        fixed = value - slope * samples
        if slope > 0.0 and fixed >= 0.0:
            return fixed, slope
    return 0.0, value / samples


def _parameters(field: torch.nn.Module) -> int:
    return sum(p.numel() for p in field.parameters())


def _memory_budget(device: torch.device) -> float:
    """Bytes a calibration render may keep: a quarter of free CUDA memory, 1 GB on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 4
    return 2.0**30


def _dtype_bytes(config: GenerateConfig, device: torch.device) -> int:
    if config.low_vram or (config.dtype == "auto" and device.type == "cuda"):
        return 2
    return 4 if config.dtype in ("auto", "float32") else 2


def stable_diffusion_speed(
    config: GenerateConfig, device: torch.device, speed: DeviceSpeed
) -> PriorSpeed:
    """SD 2.1-base's cost per view on ``device``: FLOPs over the measured speed.

    The convolution speed was timed in float16 on CUDA and float32 on the CPU; a config
    with another dtype is costed at that speed.
    """
    size = _dtype_bytes(config, device)
    offload_ms = 0.0
    weights_mb = SD_PARAMETERS * size / _MB
    if config.low_vram and speed.copy_gbps:
        offload_ms = 1e3 * SD_OFFLOADED_PARAMETERS * size / (speed.copy_gbps * 1e9)
        weights_mb = 0.0
    return PriorSpeed(
        name="stable-diffusion",
        unet_ms=1e3 * SD_UNET_GFLOP / (speed.conv_gflops * UNET_EFFICIENCY),
        encoder_ms=1e3 * SD_ENCODER_GFLOP / (speed.conv_gflops * ENCODER_EFFICIENCY),
        weights_mb=weights_mb,
        encoder_mb=SD_ENCODER_BYTES_PER_PIXEL * SD_IMAGE_SIZE**2 * size / 4 / _MB,
        offload_ms=offload_ms,
        measured=False,
    )


def embedded_speed(config: GenerateConfig, device: torch.device) -> PriorSpeed:
    """Time the embedded prior's guided evaluation of one step's batch on ``device``."""
    from cfd3d.priors.embedded.prior import EmbeddedPrior

    prior = EmbeddedPrior.load().to(device)
    views = config.views_per_step
    branches = guidance_branches(config)
    x = torch.randn(views * branches, *prior.input_shape, generator=torch.Generator()).to(device)
    t = torch.full((views * branches,), 500, dtype=torch.long, device=device)
    embedding = prior.embed([""] * (views * branches))
    prior.eps(x, t, embedding)
    _sync(device)
    tic = time.perf_counter()
    prior.eps(x, t, embedding)
    _sync(device)
    call_ms = 1e3 * (time.perf_counter() - tic)
    weights_mb = sum(p.numel() * p.element_size() for p in prior.model.parameters()) / _MB
    return PriorSpeed(
        name="embedded",
        unet_ms=call_ms / (views * branches),
        encoder_ms=0.0,
        weights_mb=weights_mb,
        encoder_mb=0.0,
        offload_ms=0.0,
        measured=True,
    )


class CostModel:
    """Estimates runs on one device, measuring each field and prior once.

    Args:
        device: where runs would execute.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.speed = measure_device(device)
        self._renders: dict[tuple, RenderSpeed] = {}
        self._priors: dict[tuple, PriorSpeed] = {}

    def _render(self, config: GenerateConfig, mode: str) -> RenderSpeed:
        key = (config.field, samples_per_ray(config), mode)
        if config.field == "gaussians":
            key += (config.gaussians.count, config.splat_backend)
        if key not in self._renders:
            max_size = max(config.render_sizes)
            self._renders[key] = measure_render(config, self.device, mode, max_size)
        return self._renders[key]

    def _prior(self, config: GenerateConfig) -> PriorSpeed:
        if config.prior == "embedded":
            key: tuple = ("embedded", config.views_per_step, guidance_branches(config))
            if key not in self._priors:
                self._priors[key] = embedded_speed(config, self.device)
            return self._priors[key]
        return stable_diffusion_speed(config, self.device, self.speed)

    def estimate(self, config: GenerateConfig) -> Estimate:
        """An ESTIMATE of ``config``'s time and peak memory on this model's device."""
        plain = self._render(config, "albedo")
        shaded = self._render(config, "diffuse") if normals_share(config) > 0 else plain
        prior = self._prior(config)
        parameters = _parameters(_make_field(config, torch.device("cpu")))
        costs = [
            (
                steps,
                step_cost(config, size, plain, shaded, prior, self.speed.baseline_mb, parameters),
            )
            for size, steps in steps_by_size(config)
        ]
        total_ms = sum(steps * cost.ms for steps, cost in costs)
        largest = costs[-1][1]
        return Estimate(
            preset=config.preset,
            device=self.speed.device,
            ms_per_step=total_ms / config.steps,
            seconds_per_run=total_ms / 1e3,
            peak_memory_mb=max(cost.peak_mb for _, cost in costs),
            render_ms=largest.render_ms,
            prior_ms=largest.prior_ms,
            optimizer_ms=largest.optimizer_ms,
            notes=self._notes(config, prior),
        )

    def _notes(self, config: GenerateConfig, prior: PriorSpeed) -> tuple[str, ...]:
        notes = []
        if not prior.measured:
            where = "GPU: extrapolated from CPU figures" if self.device.type == "cuda" else "CPU"
            notes.append(f"SD 2.1-base by FLOPs ({where})")
        if prior.offload_ms:
            notes.append("CPU offload as one weight copy per step")
        if config.occupancy is not None:
            notes.append("dense-marching upper bound (empty-space skipping ignored)")
        if config.low_vram and self.device.type != "cuda":
            notes.append("low-VRAM offload needs CUDA: costed without it")
        if config.field == "gaussians":
            backend = resolve_backend(config.splat_backend, self.device)  # type: ignore[arg-type]
            rasteriser = "gsplat" if backend == "gsplat" else "pure-PyTorch rasteriser"
            notes.append(
                f"{rasteriser} at {config.gaussians.count} Gaussians (densification "
                f"up to {config.gaussians.max_count} ignored; per-pixel cost from small "
                "images, an upper bound for large ones)"
            )
        return tuple(notes)
