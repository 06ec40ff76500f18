"""Random-weight Stable Diffusion pipelines in diffusers format, built from configs offline.

Used by the tests (``preset="tiny"``, seconds on a CPU) and by ``benchmarks/sd_step.py``
(``preset="sd21-base"``: the full Stable Diffusion 2.1-base architecture; ``"small"``: the
same topology at reduced widths for the CPU). Step timings do not depend on weight
values, so no download is needed to measure them. :func:`build_random_components` builds
the modules in memory; the folder that :func:`save_random_pipeline` writes loads exactly
like a downloaded checkpoint.

The ``"tiny-sd1"`` and ``"tiny-sd2"`` presets follow the rules by which
:mod:`cfd3d.priors.ldm` reads an architecture from a single file (32-group norms, 8 UNet
heads for SD 1.x and 64-channel heads for SD 2.x, 64-channel text heads, CLIP's real
49,408-token vocabulary and tokenizer), so the same weights can be saved both as a
diffusers folder and, with :func:`save_random_single_file`, as one LDM-layout file
(:func:`ldm_state_dict` renames the diffusers tensors back to the original LDM keys).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from cfd3d.priors.tokenizers import byte_alphabet

Preset = Literal["tiny", "small", "sd21-base", "tiny-sd1", "tiny-sd2"]
PRESETS: tuple[str, ...] = ("tiny", "small", "sd21-base", "tiny-sd1", "tiny-sd2")


def write_char_tokenizer(folder: Path, max_length: int) -> int:
    """A character-level CLIP tokenizer (no merges); returns its vocabulary size."""
    vocab: dict[str, int] = {}
    for suffix in ("", "</w>"):
        for char in byte_alphabet():
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

    if preset in ("tiny-sd1", "tiny-sd2"):
        sd2 = preset == "tiny-sd2"
        unet = UNet2DConditionModel(
            sample_size=8,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=width,
            attention_head_dim=(1, 1) if sd2 else 8,
            use_linear_projection=sd2,
        )
        vae = AutoencoderKL(
            block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            sample_size=16,
        )
        return unet, vae
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
            at reduced widths, 64x64 images), ``"sd21-base"`` (the full SD 2.1-base
            architecture, 865M-parameter UNet, 512x512 images; about 5 GB in float32), or
            ``"tiny-sd1"`` / ``"tiny-sd2"`` (16x16 images, SD 1.x / 2.x conventions and CLIP's
            real tokenizer; these also save as LDM single files).
        prediction_type: the scheduler's ``prediction_type``.
        seed: seed of the weights (the same seed gives the same weights for either
            prediction type).
        tokenizer_folder: where the tokenizer's files are written (a temporary folder if
            ``None``).
    """
    from diffusers import DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from cfd3d.priors.tokenizers import OPEN_CLIP_PAD, SD1_PAD, write_clip_tokenizer

    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}'; valid: {', '.join(PRESETS)}")
    torch.manual_seed(seed)
    tiny, full = preset == "tiny", preset == "sd21-base"
    ldm_ready = preset in ("tiny-sd1", "tiny-sd2")
    max_length = 16 if tiny else 77
    with tempfile.TemporaryDirectory(prefix="cfd3d-tokenizer-") as tmp:
        folder = Path(tmp) if tokenizer_folder is None else tokenizer_folder
        if ldm_ready:
            pad = SD1_PAD if preset == "tiny-sd1" else OPEN_CLIP_PAD
            write_clip_tokenizer(folder, pad, max_length)
        else:
            write_char_tokenizer(folder, max_length)
        tokenizer = CLIPTokenizer.from_pretrained(folder)
    vocab_size = len(tokenizer)
    width = 1024 if full else 16 if tiny else 64 if ldm_ready else 32
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=width,
            intermediate_size=2 * width if tiny or ldm_ready else 4 * width,
            num_hidden_layers=23 if full else 2,
            num_attention_heads=16 if full else 1 if ldm_ready else 2,
            max_position_embeddings=max_length,
            hidden_act="quick_gelu" if tiny or preset == "tiny-sd1" else "gelu",
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=tokenizer.pad_token_id,
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


_RESNET_TO_LDM = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
)
_VAE_ATTENTION_TO_LDM = (
    ("group_norm", "norm"),
    ("to_q", "q"),
    ("to_k", "k"),
    ("to_v", "v"),
    ("to_out.0", "proj_out"),
)


def _unet_key_to_ldm(key: str, layers: int) -> str:
    """One diffusers ``UNet2DConditionModel`` key in the original LDM ``openaimodel`` naming."""
    fixed = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    module, _, leaf = key.rpartition(".")
    if module in fixed:
        return f"{fixed[module]}.{leaf}"
    parts = key.split(".")
    rest = ".".join(parts[4:])
    if parts[0] == "mid_block":
        index = {"resnets": 2 * int(parts[2]), "attentions": 1}[parts[1]]
        rest = ".".join(parts[3:])
        return f"middle_block.{index}.{_resnet_rename(rest) if parts[1] == 'resnets' else rest}"
    block, kind, j = int(parts[1]), parts[2], int(parts[3])
    if parts[0] == "down_blocks":
        if kind == "downsamplers":
            return f"input_blocks.{(block + 1) * (layers + 1)}.0.op.{'.'.join(parts[5:])}"
        index = 1 + block * (layers + 1) + j
        sub = "0" if kind == "resnets" else "1"
        return f"input_blocks.{index}.{sub}.{_resnet_rename(rest) if sub == '0' else rest}"
    if kind == "upsamplers":
        raise AssertionError("upsamplers are placed by ldm_state_dict")
    index = block * (layers + 1) + j
    sub = "0" if kind == "resnets" else "1"
    return f"output_blocks.{index}.{sub}.{_resnet_rename(rest) if sub == '0' else rest}"


def _resnet_rename(rest: str) -> str:
    module, _, leaf = rest.rpartition(".")
    return f"{dict(_RESNET_TO_LDM).get(module, module)}.{leaf}"


def _vae_key_to_ldm(key: str, levels: int) -> str:
    """One diffusers ``AutoencoderKL`` key in the original LDM autoencoder naming."""
    parts = key.split(".")
    if parts[0] in ("quant_conv", "post_quant_conv"):
        return key
    coder, module = parts[0], parts[1]
    if module == "conv_norm_out":
        return f"{coder}.norm_out.{parts[2]}"
    if module in ("conv_in", "conv_out"):
        return key
    if module == "mid_block":
        if parts[2] == "resnets":
            rest = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
            return f"{coder}.mid.block_{int(parts[3]) + 1}.{rest}"
        rest = ".".join(parts[4:])
        for new, old in _VAE_ATTENTION_TO_LDM:
            rest = rest.replace(new, old) if rest.startswith(new + ".") else rest
        return f"{coder}.mid.attn_1.{rest}"
    level = int(parts[2])
    ldm_level = level if coder == "encoder" else levels - 1 - level
    stage = "down" if coder == "encoder" else "up"
    if parts[3] in ("downsamplers", "upsamplers"):
        return f"{coder}.{stage}.{ldm_level}.{stage}sample.{'.'.join(parts[5:])}"
    rest = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
    return f"{coder}.{stage}.{ldm_level}.block.{parts[4]}.{rest}"


def _clip_state_dict(text_encoder: Any) -> dict[str, torch.Tensor]:
    """``CLIPTextModel`` weights named as in SD 1.x files (``text_model.`` first; recent
    transformers versions drop that prefix from the module's own names)."""
    return {
        k if k.startswith("text_model.") else f"text_model.{k}": v
        for k, v in text_encoder.state_dict().items()
    }


def _open_clip_state_dict(text_encoder: Any, seed: int) -> dict[str, torch.Tensor]:
    """The text encoder as OpenCLIP names it, plus the parts SD 2 does not use: one more
    (random) residual block after the last one and a (random) text projection."""
    prefix = "text_model.encoder.layers."
    state = _clip_state_dict(text_encoder)
    out: dict[str, torch.Tensor] = {
        "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": state["text_model.final_layer_norm.weight"],
        "ln_final.bias": state["text_model.final_layer_norm.bias"],
    }
    renames = (
        ("self_attn.out_proj", "attn.out_proj"),
        ("layer_norm1", "ln_1"),
        ("layer_norm2", "ln_2"),
        ("mlp.fc1", "mlp.c_fc"),
        ("mlp.fc2", "mlp.c_proj"),
    )
    layers = text_encoder.config.num_hidden_layers
    for i in range(layers):
        p = f"{prefix}{i}."
        for leaf in ("weight", "bias"):
            out[f"transformer.resblocks.{i}.attn.in_proj_{leaf}"] = torch.cat(
                [state[f"{p}self_attn.{q}_proj.{leaf}"] for q in "qkv"]
            )
        for new, old in renames:
            for leaf in ("weight", "bias"):
                out[f"transformer.resblocks.{i}.{old}.{leaf}"] = state[f"{p}{new}.{leaf}"]
    generator = torch.Generator().manual_seed(seed + 1)
    for key in [k for k in out if k.startswith(f"transformer.resblocks.{layers - 1}.")]:
        last = key.replace(f"resblocks.{layers - 1}.", f"resblocks.{layers}.")
        out[last] = torch.randn(out[key].shape, generator=generator) * 0.02
    width = text_encoder.config.hidden_size
    out["text_projection"] = torch.randn(width, width, generator=generator) * width**-0.5
    return out


def ldm_state_dict(parts: RandomComponents, layout: Literal["sd1", "sd2"], seed: int = 0):
    """The modules' weights under the original LDM single-file keys.

    The UNet goes under ``model.diffusion_model.``, the VAE under ``first_stage_model.``
    (attention weights as 1x1 convolutions, as LDM stores them), and the text encoder under
    ``cond_stage_model.transformer.`` (``"sd1"``: Hugging Face CLIP naming) or
    ``cond_stage_model.model.`` (``"sd2"``: OpenCLIP naming, fused q/k/v projections, with an
    extra random last block and text projection that SD 2's penultimate-layer conditioning
    skips).

    Args:
        parts: from :func:`build_random_components`.
        layout: which text-encoder layout to write.
        seed: seed of the extra OpenCLIP tensors.

    Returns:
        ``dict[str, torch.Tensor]`` of contiguous tensors.
    """
    unet, vae, text_encoder = parts.unet, parts.vae, parts.text_encoder
    layers = unet.config.layers_per_block
    out: dict[str, torch.Tensor] = {}
    for key, value in unet.state_dict().items():
        if ".upsamplers." in key:
            block = int(key.split(".")[1])
            last = block * (layers + 1) + layers
            sub = 2 if unet.config.up_block_types[block].startswith("CrossAttn") else 1
            ldm = f"output_blocks.{last}.{sub}.conv.{key.rsplit('.', 1)[1]}"
        else:
            ldm = _unet_key_to_ldm(key, layers)
        out["model.diffusion_model." + ldm] = value
    levels = len(vae.config.block_out_channels)
    for key, value in vae.state_dict().items():
        ldm = _vae_key_to_ldm(key, levels)
        if ".mid.attn_1." in ldm and ldm.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out["first_stage_model." + ldm] = value
    if layout == "sd1":
        for key, value in _clip_state_dict(text_encoder).items():
            out["cond_stage_model.transformer." + key] = value
    else:
        for key, value in _open_clip_state_dict(text_encoder, seed).items():
            out["cond_stage_model.model." + key] = value
    return {k: v.detach().contiguous() for k, v in out.items()}


def save_random_single_file(
    path: str | Path,
    preset: Literal["tiny-sd1", "tiny-sd2"] = "tiny-sd2",
    seed: int = 0,
    extra: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a random-weight Stable Diffusion checkpoint as one LDM-layout file.

    The weights equal those of ``save_random_pipeline(folder, preset, seed=seed)`` (the
    prediction type is not stored in LDM files). ``.safetensors`` files hold the flat state
    dict; ``.ckpt``/``.pt`` files hold ``{"state_dict": ..., "global_step": 0}`` as
    Lightning writes them.

    Args:
        path: the file to write; its suffix picks the format.
        preset: ``"tiny-sd1"`` (CLIP text encoder) or ``"tiny-sd2"`` (OpenCLIP).
        seed: seed of the weights.
        extra: more tensors to store under their own keys (e.g. MVDream's
            ``model.diffusion_model.camera_embed.*``).
    """
    path = Path(path)
    parts = build_random_components(preset, seed=seed)
    state = ldm_state_dict(parts, "sd1" if preset == "tiny-sd1" else "sd2", seed)
    state.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state, "global_step": 0}, path)
    return path
