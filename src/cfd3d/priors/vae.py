"""The latent priors' VAE (Stable Diffusion, MVDream): renders in, latents out, with gradient."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def vae_encode(
    vae: Any,
    images: torch.Tensor,
    image_size: tuple[int, int],
    scaling_factor: float,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``(B, 3, H, W)`` renders in [0, 1] -> ``(B, 4, h, w)`` scaled latents, with gradient.

    The renders are resized (bilinear) to ``image_size``, mapped to [-1, 1] and encoded in
    the VAE's ``dtype`` on ``device``; the latents are the posterior's mean times
    ``scaling_factor``, returned in the renders' dtype.

    In float16, a render of one flat colour gives the encoder's first group norm no
    variance, and its backward overflows: the renders' gradient comes back NaN, which the
    step loop skips as a non-finite step (in float32 it stays finite).
    """
    if tuple(images.shape[-2:]) != tuple(image_size):
        images = F.interpolate(images, size=image_size, mode="bilinear", align_corners=False)
    x = (images * 2.0 - 1.0).to(device, dtype)
    latents = vae.encode(x).latent_dist.mean * scaling_factor
    return latents.to(images.dtype)


@torch.no_grad()
def vae_decode(
    vae: Any, z: torch.Tensor, scaling_factor: float, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Scaled latents -> ``(B, 3, H, W)`` float32 images in [0, 1] (no gradient)."""
    x = vae.decode((z / scaling_factor).to(device, dtype)).sample
    return ((x.float() + 1.0) * 0.5).clamp(0.0, 1.0)
