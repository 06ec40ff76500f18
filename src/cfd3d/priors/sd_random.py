"""Random-weight Stable Diffusion pipelines in diffusers format, built from configs offline.

Used by the tests (``preset="tiny"``, seconds on a CPU) and by ``benchmarks/sd_step.py``
(``preset="sd21-base"``: the full Stable Diffusion 2.1-base architecture; ``"small"``: the
same topology at reduced widths for the CPU). Step timings do not depend on weight
values, so no download is needed to measure them. :func:`build_random_components` builds
the modules in memory; the folder that :func:`save_random_pipeline` writes loads exactly
like a downloaded checkpoint.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

Preset = Literal["tiny", "small", "sd21-base"]
PRESETS: tuple[str, ...] = ("tiny", "small", "sd21-base")


def _byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins that byte-level BPE uses for raw bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_char_tokenizer(folder: Path, max_length: int) -> int:
    """A character-level CLIP tokenizer (no merges); returns its vocabulary size."""
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for char in _byte_level_alphabet():
            vocab[char + suffix] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": max_length, "tokenizer_class": "CLIPTokenizer"})
    )
    return len(vocab)


@dataclass(frozen=True)
class RandomComponents:
    """The modules of a random-weight Stable Diffusion pipeline (float32, on the CPU).

    Attributes:
        unet: ``UNet2DConditionModel``.
        vae: ``AutoencoderKL``.
        text_encoder: ``CLIPTextModel``.
        tokenizer: a character-level ``CLIPTokenizer``.
        scheduler: ``DDIMScheduler`` with Stable Diffusion's scaled-linear schedule.
    """

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any


def _unet_and_vae(preset: Preset, width: int) -> tuple[Any, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    if preset == "tiny":
        unet = UNet2DConditionModel(
            sample_size=8,
            block_out_channels=(8, 16),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=width,
            norm_num_groups=4,
            attention_head_dim=2,
        )
        vae = AutoencoderKL(
            block_out_channels=(8, 16),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=16,
        )
        return unet, vae
    small = preset == "small"
    # SD 2.1-base: 64x64x4 latents of 512x512 images; "small" keeps the topology (four
    # levels each, cross-attention in the first three UNet levels, linear projections,
    # 64-channel heads) at 1/10 of the UNet width and 8x8 latents of 64x64 images.
    unet = UNet2DConditionModel(
        sample_size=8 if small else 64,
        block_out_channels=(32, 64, 128, 128) if small else (320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=width,
        attention_head_dim=(1, 1, 2, 2) if small else (5, 10, 20, 20),
        use_linear_projection=True,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 32, 64, 64) if small else (128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=64 if small else 512,
    )
    return unet, vae


def build_random_components(
    preset: Preset = "tiny",
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
    seed: int = 0,
    tokenizer_folder: Path | None = None,
) -> RandomComponents:
    """Build a random-weight Stable Diffusion pipeline's modules in memory.

    Args:
        preset: ``"tiny"`` (16x16 images, for tests), ``"small"`` (the SD 2.1-base topology
            at reduced widths, 64x64 images) or ``"sd21-base"`` (the full SD 2.1-base
            architecture, 865M-parameter UNet, 512x512 images; about 5 GB in float32).
        prediction_type: the scheduler's ``prediction_type``.
        seed: seed of the weights (the same seed gives the same weights for either
            prediction type).
        tokenizer_folder: where the tokenizer's files are written (a temporary folder if
            ``None``).
    """
    from diffusers import DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}'; valid: {', '.join(PRESETS)}")
    torch.manual_seed(seed)
    tiny, full = preset == "tiny", preset == "sd21-base"
    max_length = 16 if tiny else 77
    with tempfile.TemporaryDirectory(prefix="cfd3d-tokenizer-") as tmp:
        folder = Path(tmp) if tokenizer_folder is None else tokenizer_folder
        vocab_size = write_char_tokenizer(folder, max_length)
        tokenizer = CLIPTokenizer.from_pretrained(folder)
    width = 1024 if full else 16 if tiny else 32
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=width,
            intermediate_size=2 * width if tiny else 4 * width,
            num_hidden_layers=23 if full else 2,
            num_attention_heads=16 if full else 2,
            max_position_embeddings=max_length,
            hidden_act="quick_gelu" if tiny else "gelu",
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    )
    unet, vae = _unet_and_vae(preset, width)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    return RandomComponents(unet, vae, text_encoder, tokenizer, scheduler)


def save_random_pipeline(
    folder: str | Path,
    preset: Preset = "tiny",
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
    seed: int = 0,
) -> Path:
    """Write a random-weight ``StableDiffusionPipeline`` in diffusers layout to ``folder``."""
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    parts = build_random_components(preset, prediction_type, seed, folder / "tokenizer")
    pipeline = StableDiffusionPipeline(
        unet=parts.unet,
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        scheduler=parts.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder)
    return folder
