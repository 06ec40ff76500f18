"""What a render with back-propagation costs: field evaluations, bytes, memory, time.

The measurements behind ``benchmarks/render_scale.py`` (issue 12), reusable by tests and
other benchmarks. One measured call renders ``B`` views and back-propagates a fixed random
image gradient into the field, either in one pass (the dense marcher with a graph over
every sample) or with empty-space skipping and deferred back-propagation
(:mod:`cfd3d.render.occupancy`, :mod:`cfd3d.render.deferred`).
"""

from __future__ import annotations

import contextlib
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cfd3d.evaluation.memory import SavedTensorsMeter
from cfd3d.render.deferred import render_deferred
from cfd3d.render.shading import ShadingConfig
from cfd3d.render.volume import VolumeRenderer
from cfd3d.scene.cameras import Cameras
from cfd3d.scene.fields import FieldOutput


class CountingField(torch.nn.Module):
    """Wraps a field and counts the points it evaluates (``__call__`` only; the density
    probes of normals are part of a sample's cost, not extra samples)."""

    def __init__(self, field: torch.nn.Module):
        super().__init__()
        self.inner = field
        self.evaluations = 0

    def forward(self, points: torch.Tensor) -> FieldOutput:
        self.evaluations += points.shape[0]
        return self.inner(points)

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return self.inner.density(points)

    def normals(self, points: torch.Tensor) -> torch.Tensor:
        return self.inner.normals(points)


@dataclass(frozen=True)
class RenderCost:
    """One render + backward.

    Attributes:
        ms: wall time in milliseconds (device synchronised).
        evaluations: field evaluations (samples) of the forward render; the deferred
            re-render evaluates them a second time, not counted here.
        rays: pixels rendered.
        rgb: ``(B, H, W, 3)`` the rendered image (detached).
    """

    ms: float
    evaluations: int
    rays: int
    rgb: torch.Tensor

    @property
    def evaluations_per_ray(self) -> float:
        return self.evaluations / self.rays


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def render_and_backward(
    renderer: VolumeRenderer,
    field: torch.nn.Module,
    cameras: Cameras,
    size: int,
    shading: ShadingConfig,
    grad_rgb: torch.Tensor,
    *,
    occupancy=None,
    deferred: bool = False,
    chunk_rays: int = 16384,
    seed: int = 0,
) -> RenderCost:
    """Render ``size``² views of ``field`` and back-propagate ``grad_rgb`` into it.

    Args:
        renderer: the volume renderer.
        field: the field (its ``.grad`` accumulate).
        cameras: ``B`` cameras.
        size: image height and width.
        shading: the shading config.
        grad_rgb: ``(B, size, size, 3)`` the upstream gradient on the image.
        occupancy: an occupancy grid (``None``: dense marching).
        deferred: render without graph and back-propagate chunk by chunk.
        chunk_rays: rays per chunk of the deferred pass.
        seed: seeds the render's randomness (jittered samples, lights).
    """
    counting = CountingField(field)
    generator = torch.Generator().manual_seed(seed)
    device = cameras.device
    _sync(device)
    tic = time.perf_counter()
    if deferred:
        pending = render_deferred(
            renderer,
            counting,
            cameras,
            size,
            size,
            shading=shading,
            generator=generator,
            chunk_rays=chunk_rays,
            occupancy=occupancy,
        )
        evaluations = counting.evaluations
        pending.backward(grad_rgb)
        rgb = pending.output.rgb
    else:
        kwargs = {} if occupancy is None else {"occupancy": occupancy}
        out = renderer(
            counting, cameras, size, size, shading=shading, generator=generator, **kwargs
        )
        evaluations = counting.evaluations
        (out.rgb * grad_rgb).sum().backward()
        rgb = out.rgb.detach()
    _sync(device)
    ms = 1e3 * (time.perf_counter() - tic)
    return RenderCost(ms=ms, evaluations=evaluations, rays=len(cameras) * size * size, rgb=rgb)


def bytes_per_sample(
    renderer: VolumeRenderer,
    field: torch.nn.Module,
    cameras: Cameras,
    size: int,
    shading: ShadingConfig,
    *,
    occupancy=None,
) -> float:
    """Bytes autograd keeps for backward per evaluated sample of a render with graph
    (lights and the background excluded; parameters are not counted)."""
    counting = CountingField(field)
    kwargs = {} if occupancy is None else {"occupancy": occupancy}
    generator = torch.Generator().manual_seed(0)
    with SavedTensorsMeter(exclude=field.parameters()) as meter:
        out = renderer(
            counting, cameras, size, size, shading=shading, generator=generator, **kwargs
        )
    del out
    return meter.nbytes / max(counting.evaluations, 1)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for :func:`peak_memory_mb`: CUDA's peak statistics, or Linux's
    resident-set high-water mark (``/proc/self/clear_refs``; a child process otherwise
    inherits its parent's peak at ``fork``)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since :func:`reset_peak_memory` (or the process's start): CUDA
    ``max_memory_allocated`` on a GPU, else the peak resident set size (``VmHWM``;
    ``ru_maxrss`` where ``/proc`` is missing)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB between two images in [0, 1] (over all pixels and channels)."""
    mse = float((a.float() - b.float()).square().mean())
    return float("inf") if mse == 0.0 else -10.0 * float(torch.log10(torch.tensor(mse)))
