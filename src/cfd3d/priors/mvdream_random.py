"""Tiny random-weight MVDream checkpoints in the published single-file LDM layout.

For tests and CPU smoke runs: the same keys as ``sd-v2.1-base-4view.pt`` (UNet under
``model.diffusion_model.`` with the camera MLP ``camera_embed.0/2``, VAE under
``first_stage_model.``, OpenCLIP text encoder under ``cond_stage_model.model.``), at tiny
widths. The Stable Diffusion part is :mod:`cfd3d.priors.sd_random`'s ``"tiny-sd2"`` preset
renamed to LDM keys (:func:`cfd3d.priors.sd_random.ldm_state_dict`), so with the same seed
its UNet, VAE and text encoder equal that preset's; the camera MLP is drawn from its own
seeded generator.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from cfd3d.priors.mvdream import CAMERA_DIM

CAMERA_PREFIX = "model.diffusion_model.camera_embed."
PRESET = "tiny-sd2"
"""The :mod:`cfd3d.priors.sd_random` preset the UNet, VAE and text encoder come from."""


def camera_embed_weights(time_embed_dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random camera MLP (Linear 16 -> D, SiLU, Linear D -> D) under MVDream's LDM keys.

    Weights and biases are uniform in ``±1/sqrt(fan_in)`` (PyTorch's ``nn.Linear`` range),
    so the camera shifts the time embedding by about as much as a trained layer would.

    Args:
        time_embed_dim: ``D``, the UNet's time-embedding width (4x its first block's width).
        seed: seed of the draw.
    """
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for index, fan_in in (("0", CAMERA_DIM), ("2", time_embed_dim)):
        bound = 1.0 / math.sqrt(fan_in)
        for leaf, shape in (("weight", (time_embed_dim, fan_in)), ("bias", (time_embed_dim,))):
            value = (torch.rand(shape, generator=generator) * 2.0 - 1.0) * bound
            out[f"{CAMERA_PREFIX}{index}.{leaf}"] = value
    return out


def random_mvdream_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny random MVDream model as an LDM state dict (published key layout).

    UNet: channels (32, 64), one res-block per level, attention at the second level and in
    the middle, one 64-channel (or narrower) head, cross-attention width 64, 4x128 camera
    MLP; VAE: channels (32, 64), 2x downsampling; OpenCLIP text encoder: width 64, 3 blocks
    (the last one skipped, as SD 2 conditions on the penultimate layer), CLIP's
    49,408-token vocabulary.

    Args:
        seed: seed of all weights (the camera MLP uses ``seed + 1000``).
    """
    from cfd3d.priors.sd_random import build_random_components, ldm_state_dict

    parts = build_random_components(PRESET, seed=seed)
    state = ldm_state_dict(parts, "sd2", seed)
    time_embed_dim = int(parts.unet.config.block_out_channels[0]) * 4
    state.update(camera_embed_weights(time_embed_dim, seed + 1000))
    return state


def save_random_mvdream(path: str | Path, seed: int = 0) -> Path:
    """Write :func:`random_mvdream_state_dict` to ``path`` as one file.

    ``.safetensors`` files hold the flat state dict; ``.pt``/``.ckpt`` files hold it as the
    published ``sd-v2.1-base-4view.pt`` does (a flat ``torch.save`` dict, no Lightning
    wrapper).

    Args:
        path: the file to write; its suffix picks the format.
        seed: seed of the weights.

    Returns:
        ``path``.
    """
    path = Path(path)
    state = random_mvdream_state_dict(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path
