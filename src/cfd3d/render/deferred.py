"""Deferred back-propagation: peak render memory independent of the image size.

The distillation loss is a function of the rendered image alone, so a step can

1. render every view *without* an autograd graph (:func:`render_deferred`),
2. let the prior compute the loss and back-propagate it to the image, giving
   ``∂L/∂rgb`` of shape ``(B, H, W, 3)`` (through the VAE encoder for latent priors),
3. re-render the rays chunk by chunk *with* a graph and back-propagate each chunk with its
   slice of that image gradient (:meth:`DeferredRender.backward`).

By the chain rule the field's gradient is ``Σ_pixels (∂L/∂rgb) · (∂rgb/∂θ)``, a sum over
pixels that splits exactly over chunks, so the result equals one-pass back-propagation
(up to float summation order) while only one chunk's graph is ever alive (the idea of
Zhang et al. 2022, "ARF: Artistic Radiance Fields", Sec. 3.3).

Re-rendering must reproduce the first pass exactly: the same sample positions, lights and
background colours. Every random draw of the render comes from the step's generator, so
both passes start from the same generator state and walk the same chunks in the same
order. The composite over the background,
``rgb = color + (1 - opacity) · background``, is differentiated by hand: ``∂L/∂color = g``,
``∂L/∂opacity = -Σ_c g_c · background_c`` and ``∂L/∂background = g · (1 - opacity)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cfd3d.render.background import Background, SolidBackground
from cfd3d.render.compositing import Composite
from cfd3d.render.shading import ShadingConfig, light_positions
from cfd3d.render.types import RenderOutput
from cfd3d.render.volume import VolumeRenderer
from cfd3d.scene.cameras import Cameras
from cfd3d.scene.fields import Field


def _copy_generator(generator: torch.Generator | None) -> torch.Generator | None:
    if generator is None:
        return None
    copy = torch.Generator(device=generator.device)
    copy.set_state(generator.get_state())
    return copy


@dataclass
class _Rays:
    """The flattened rays of ``B`` views and the per-ray lights."""

    origins: torch.Tensor  # (R, 3)
    directions: torch.Tensor  # (B, H, W, 3)
    lights: torch.Tensor | None  # (R, 3)


class DeferredRender:
    """One render whose back-propagation is deferred; see the module doc.

    Build it with :func:`render_deferred`. :attr:`output` is the render without graph;
    :meth:`backward` takes the gradient of the loss with respect to ``output.rgb`` and
    accumulates the parameters' gradients (field and background) exactly as
    ``output.rgb.backward(grad)`` would after a render with graph.
    """

    def __init__(
        self,
        renderer: VolumeRenderer,
        field: Field,
        cameras: Cameras,
        height: int,
        width: int,
        shading: ShadingConfig,
        background: Background,
        generator: torch.Generator | None,
        chunk_rays: int,
        occupancy=None,
    ) -> None:
        self.renderer, self.field, self.cameras = renderer, field, cameras
        self.height, self.width = height, width
        self.shading, self.background = shading, background
        self.chunk_rays, self.occupancy = chunk_rays, occupancy
        self._start_state = _copy_generator(generator)
        with torch.no_grad():
            self.output = self._render(generator, grad_rgb=None)

    def _rays(self, generator: torch.Generator | None) -> _Rays:
        origins, directions = self.cameras.rays(self.height, self.width)
        lights = None
        if self.shading.needs_normals:
            per_view = light_positions(self.cameras, self.shading, generator)
            lights = per_view[:, None, :].expand(-1, self.height * self.width, 3).reshape(-1, 3)
        return _Rays(origins.reshape(-1, 3), directions, lights)

    def _chunk(self, rays: _Rays, sel: slice, generator: torch.Generator | None) -> Composite:
        directions = rays.directions.reshape(-1, 3)
        kwargs = {} if self.occupancy is None else {"occupancy": self.occupancy}
        return self.renderer.render_rays(
            self.field,
            rays.origins[sel],
            directions[sel],
            shading=self.shading,
            lights=None if rays.lights is None else rays.lights[sel],
            generator=generator,
            **kwargs,
        )

    def _render(
        self,
        generator: torch.Generator | None,
        grad_rgb: torch.Tensor | None,
        grad_opacity: torch.Tensor | None = None,
    ) -> RenderOutput:
        """Walk the chunks: collect the image (``grad_rgb is None``) or back-propagate.

        Both walks draw the same random numbers in the same order: lights, then every
        chunk's samples, then the background.
        """
        rays = self._rays(generator)
        n_rays = rays.origins.shape[0]
        pieces: list[Composite] = []
        background_rgb = None
        if grad_rgb is not None:
            grad = grad_rgb.reshape(-1, 3)
            extra = None if grad_opacity is None else grad_opacity.reshape(-1, 1)
            # The background is drawn after the chunks, but its colour is needed to split
            # the gradient; a generator copy at the chunks' end state draws it early.
            background_rgb = self._background_after_chunks(rays, generator)
            background_flat = background_rgb.detach().reshape(-1, 3)
        for start in range(0, n_rays, self.chunk_rays):
            sel = slice(start, min(start + self.chunk_rays, n_rays))
            piece = self._chunk(rays, sel, generator)
            if grad_rgb is None:
                pieces.append(piece)
                continue
            g = grad[sel]
            g_opacity = -(g * background_flat[sel]).sum(dim=-1, keepdim=True)
            if extra is not None:
                g_opacity = g_opacity + extra[sel]
            surrogate = (piece.color * g).sum() + (piece.opacity * g_opacity).sum()
            if surrogate.requires_grad:
                surrogate.backward()
        if grad_rgb is not None:
            opacity = self.output.opacity.detach()
            if background_rgb.requires_grad:
                background_rgb.backward(grad_rgb * (1.0 - opacity))
            return self.output
        return self._assemble(pieces, rays, generator)

    def _background_after_chunks(
        self, rays: _Rays, generator: torch.Generator | None
    ) -> torch.Tensor:
        """The background colours of the first walk: draw them from the generator state
        the first walk had after its chunks (recorded as :attr:`_end_state`)."""
        end = _copy_generator(self._end_state)
        return self.background(rays.directions, end)

    def _assemble(
        self, pieces: list[Composite], rays: _Rays, generator: torch.Generator | None
    ) -> RenderOutput:
        b, h, w = len(self.cameras), self.height, self.width

        def image(values: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat(values).view(b, h, w, -1)

        self._end_state = _copy_generator(generator)
        opacity = image([p.opacity for p in pieces])
        color = image([p.color for p in pieces])
        rgb = color + (1.0 - opacity) * self.background(rays.directions, generator)
        normal = None
        if pieces and pieces[0].normal is not None:
            normal = image([p.normal for p in pieces])  # type: ignore[misc]
        return RenderOutput(
            rgb=rgb, opacity=opacity, depth=image([p.depth for p in pieces]), normal=normal
        )

    def backward(self, grad_rgb: torch.Tensor, grad_opacity: torch.Tensor | None = None) -> None:
        """Accumulate parameter gradients for the loss gradient ``grad_rgb``
        ``(B, H, W, 3)`` on :attr:`output` ``.rgb`` and, if given, a loss term's own
        gradient ``grad_opacity`` ``(B, H, W, 1)`` on ``.opacity`` (a regulariser's), one
        chunk's graph at a time."""
        if grad_rgb.shape != self.output.rgb.shape:
            raise ValueError(
                f"grad_rgb must be {tuple(self.output.rgb.shape)}, got {tuple(grad_rgb.shape)}"
            )
        if grad_opacity is not None and grad_opacity.shape != self.output.opacity.shape:
            raise ValueError(
                f"grad_opacity must be {tuple(self.output.opacity.shape)}, "
                f"got {tuple(grad_opacity.shape)}"
            )
        with torch.enable_grad():
            self._render(
                _copy_generator(self._start_state),
                grad_rgb.detach(),
                None if grad_opacity is None else grad_opacity.detach(),
            )


def render_deferred(
    renderer: VolumeRenderer,
    field: Field,
    cameras: Cameras,
    height: int,
    width: int,
    *,
    shading: ShadingConfig,
    background: Background | None = None,
    generator: torch.Generator | None = None,
    chunk_rays: int = 16384,
    occupancy=None,
) -> DeferredRender:
    """Render ``B = len(cameras)`` views without graph, ready for a deferred backward.

    Args:
        renderer: the volume renderer.
        field: what to render.
        cameras: ``B`` cameras.
        height, width: image size in pixels.
        shading: the full shading config of this render.
        background: the background (default: solid white).
        generator: the render's randomness (advanced exactly as a render with graph of
            the same chunks would advance it); ``None`` is deterministic.
        chunk_rays: rays re-rendered with graph at a time: the peak memory of the
            backward pass.
        occupancy: an occupancy grid for empty-space skipping (``None``: dense marching).

    Returns:
        A :class:`DeferredRender`; its ``output`` holds ``(B, H, W, C)`` maps without graph.
    """
    if chunk_rays < 1:
        raise ValueError(f"chunk_rays must be at least 1, got {chunk_rays}")
    return DeferredRender(
        renderer,
        field,
        cameras,
        height,
        width,
        shading,
        background or SolidBackground(),
        generator,
        chunk_rays,
        occupancy,
    )
