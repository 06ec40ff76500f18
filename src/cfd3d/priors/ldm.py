"""Single-file checkpoints in the original LDM key layout (Stable Diffusion 1.x/2.x, MVDream).

The original latent-diffusion code saves one state dict that holds every part of the model
under a prefix: the UNet under ``model.diffusion_model.``, the VAE under
``first_stage_model.``, and the text encoder under ``cond_stage_model.transformer.``
(SD 1.x: OpenAI CLIP ViT-L/14 in Hugging Face layout) or ``cond_stage_model.model.``
(SD 2.x and MVDream: OpenCLIP ViT-H/14). This module reads such files and turns each part
into the diffusers / transformers module that :mod:`cfd3d.priors.stable_diffusion` runs.

The key renaming uses diffusers' own converters (``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``,
``convert_open_clip_checkpoint`` in ``diffusers.loaders.single_file_utils``): they only
rename tensors and never reach the network. diffusers' *config* helpers need the original
YAML file (fetched from the hub), so the architecture is read here from tensor shapes
instead, with these rules for what shapes cannot tell:

* UNet attention heads: 8 heads per level with convolutional ``proj_in`` (SD 1.x), 64
  channels per head (at least one head) with linear ``proj_in`` (SD 2.x, MVDream);
* text encoder: 64 channels per head; ``quick_gelu`` for OpenAI CLIP, ``gelu`` for OpenCLIP;
* group norms: 32 groups; VAE scaling factor 0.18215;
* the UNet's ``sample_size`` (latent side) is the caller's (default 64: 512-pixel images).

Every function raises :class:`cfd3d.errors.UserError` (one line) for a file that is not
such a checkpoint.
"""

from __future__ import annotations

import contextlib
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cfd3d.errors import UserError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPEN_CLIP_PREFIX = "cond_stage_model.model."
MVDREAM_CAMERA_PREFIX = UNET_PREFIX + "camera_embed."
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
VAE_SCALING_FACTOR = 0.18215
_EXPECTED = (
    "a Stable Diffusion 1.x/2.x or MVDream checkpoint in the original LDM layout "
    f"(keys {UNET_PREFIX}*, {VAE_PREFIX}*, cond_stage_model.*)"
)


def is_single_file(path: str | Path) -> bool:
    """Whether ``path`` names a single-file checkpoint by its suffix (it need not exist)."""
    return Path(path).suffix.lower() in SINGLE_FILE_SUFFIXES


class _Opaque:
    """Stand-in for a class pickled in a training checkpoint (never executed, never kept)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Opaque:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _torch_load(path: Path) -> Any:
    mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        if not mmap:
            raise
    # Lightning checkpoints pickle training state (callback classes, numpy scalars) next to
    # the weights. Load them with the weights-only unpickler, every such global replaced by
    # an inert stand-in: nothing from the file runs.
    names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    with torch.serialization.safe_globals([(_Opaque, name) for name in names]):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def _read_raw(path: Path) -> Any:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return _torch_load(path)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an LDM-layout checkpoint (``.safetensors``, ``.ckpt``, ``.pt``, ``.pth``).

    ``.ckpt``/``.pt`` files are read with PyTorch's weights-only unpickler (memory-mapped when
    possible); a top-level ``state_dict`` entry (Lightning checkpoints) is unwrapped and
    entries that are not tensors are dropped.

    Args:
        path: the checkpoint file.

    Returns:
        Tensors by LDM key (``model.diffusion_model.*``, ``first_stage_model.*``, ...).

    Raises:
        UserError: the file is missing or unreadable, or is not a Stable Diffusion / MVDream
            checkpoint.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint file '{path}' not found; pass an existing {_EXPECTED}")
    try:
        raw = _read_raw(path)
    except Exception as exc:  # safetensors, zip and pickle errors vary; all mean "unreadable"
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"cannot read checkpoint '{path}' ({reason}); expected {_EXPECTED}, as .safetensors "
            "or a PyTorch .ckpt/.pt file; re-download it if it is truncated"
        ) from None
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping):
        raise UserError(
            f"'{path}' holds a {type(raw).__name__}, not a state dict; expected {_EXPECTED}"
        )
    state = {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not any(k.startswith(UNET_PREFIX) for k in state):
        sample = ", ".join(list(state)[:3]) or "no tensors"
        raise UserError(f"'{path}' is not {_EXPECTED}; its keys start with: {sample}")
    return state


def checkpoint_keys(path: str | Path) -> list[str]:
    """The tensor names of a checkpoint file, reading only the header of ``.safetensors``.

    Raises:
        UserError: as :func:`read_state_dict`.
    """
    path = Path(path).expanduser()
    if path.is_file() and path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as handle:
                keys = list(handle.keys())
        except Exception:  # unreadable header: read_state_dict words the error
            return list(read_state_dict(path))
        if any(k.startswith(UNET_PREFIX) for k in keys):
            return keys
    return list(read_state_dict(path))


def is_mvdream(keys: list[str] | Mapping[str, Any]) -> bool:
    """Whether a checkpoint's keys hold MVDream's camera embedding (``camera_embed.*``)."""
    return any(k.startswith(MVDREAM_CAMERA_PREFIX) for k in keys)


def _strip(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _indices(keys: list[str], pattern: str) -> list[int]:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return sorted(found)


def _require(part: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in part:
        raise UserError(f"the checkpoint's {what} lacks '{key}'; expected {_EXPECTED}")
    return part[key]


def unet_config_from_ldm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``UNet2DConditionModel`` config read from the shapes of an LDM UNet.

    Args:
        state_dict: LDM keys; those under ``model.diffusion_model.`` are read.

    Returns:
        Keyword arguments of ``UNet2DConditionModel`` (``sample_size`` 64).

    Raises:
        UserError: no UNet, or one that is not a Stable Diffusion 1.x/2.x UNet.
    """
    unet = _strip(state_dict, UNET_PREFIX)
    what = "UNet (model.diffusion_model.*)"
    conv_in = _require(unet, "input_blocks.0.0.weight", what)
    out = _require(unet, "out.2.weight", what)
    keys = list(unet)
    blocks = _indices(keys, r"input_blocks\.(\d+)\.")
    levels: list[list[int]] = [[]]
    for i in blocks[1:]:
        if f"input_blocks.{i}.0.op.weight" in unet:
            levels.append([])
        else:
            levels[-1].append(i)
    layers = {len(level) for level in levels}
    if len(layers) != 1 or 0 in layers:
        raise UserError(
            f"the checkpoint's UNet has an unexpected block layout; expected {_EXPECTED}"
        )
    channels, attention, depth = [], [], set()
    for level in levels:
        first = level[0]
        channels.append(
            int(_require(unet, f"input_blocks.{first}.0.out_layers.3.weight", what).shape[0])
        )
        blocks_here = _indices(keys, rf"input_blocks\.{first}\.1\.transformer_blocks\.(\d+)\.")
        attention.append(bool(blocks_here))
        if blocks_here:
            depth.add(len(blocks_here))
    attn = [i for level in levels for i in level if f"input_blocks.{i}.1.proj_in.weight" in unet]
    if not attn or "middle_block.1.proj_in.weight" not in unet:
        raise UserError(f"the checkpoint's UNet has no cross-attention; expected {_EXPECTED}")
    proj_in = unet[f"input_blocks.{attn[0]}.1.proj_in.weight"]
    linear = proj_in.ndim == 2
    context = unet[f"input_blocks.{attn[0]}.1.transformer_blocks.0.attn2.to_k.weight"].shape[1]
    heads = [max(1, c // 64) if linear else 8 for c in channels]
    return {
        "sample_size": 64,
        "in_channels": int(conv_in.shape[1]),
        "out_channels": int(out.shape[0]),
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        "block_out_channels": channels,
        "layers_per_block": layers.pop(),
        "cross_attention_dim": int(context),
        "attention_head_dim": heads,
        "use_linear_projection": linear,
        "transformer_layers_per_block": depth.pop() if len(depth) == 1 else 1,
        "norm_num_groups": 32,
    }


def _empty_weights():
    """Build modules with parameters on the meta device (buffers stay real) when accelerate
    is installed: :func:`_load` then assigns the checkpoint's tensors without a random init."""
    try:
        from accelerate import init_empty_weights
    except ImportError:
        return contextlib.nullcontext()
    return init_empty_weights()


def _load(module: torch.nn.Module, weights: Mapping[str, torch.Tensor], what: str):
    names = set(module.state_dict())
    weights = {_own_name(k, names): v for k, v in weights.items()}
    missing = sorted(names - set(weights))
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise UserError(
            f"the checkpoint's {what} lacks {len(missing)} tensor(s) ({shown}); expected "
            f"{_EXPECTED}"
        )
    try:
        module.load_state_dict({k: weights[k] for k in names}, strict=True, assign=True)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1].strip()[:160]
        raise UserError(
            f"the checkpoint's {what} does not fit a Stable Diffusion 1.x/2.x architecture "
            f"({reason})"
        ) from None
    return module.eval()


def _own_name(key: str, names: set[str]) -> str:
    """``key`` as ``CLIPTextModel`` names it: transformers 5 dropped the ``text_model.``
    prefix that SD checkpoints and diffusers' converters use."""
    if key not in names and key.startswith("text_model.") and key[11:] in names:
        return key[11:]
    return key


def unet_from_ldm(
    state_dict: Mapping[str, torch.Tensor],
    extra_keys: Mapping[str, str] | None = None,
    **config_overrides: Any,
):
    """The diffusers UNet of an LDM checkpoint.

    The config comes from :func:`unet_config_from_ldm`, updated by ``config_overrides``
    (e.g. ``sample_size=32``, or MVDream's ``class_embed_type="projection"``). Keys under
    ``model.diffusion_model.`` that a Stable Diffusion UNet does not have (MVDream's
    ``camera_embed.*``) are ignored unless ``extra_keys`` maps them to parameters of the
    built model; every parameter of the model must be filled.

    Args:
        state_dict: LDM keys (from :func:`read_state_dict`).
        extra_keys: LDM key without the ``model.diffusion_model.`` prefix -> diffusers
            parameter name, e.g. ``{"camera_embed.0.weight": "class_embedding.linear_1.weight"}``.
        **config_overrides: ``UNet2DConditionModel`` arguments that replace inferred ones.

    Returns:
        ``UNet2DConditionModel`` in eval mode, in the checkpoint's dtype, on the CPU.

    Raises:
        UserError: the UNet is missing or does not fit the inferred architecture.
    """
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    inferred = unet_config_from_ldm(state_dict)
    config = {**inferred, **config_overrides}
    # The converter maps the plain SD layout only (the inferred config says so); extra
    # embeddings an override asks for come through ``extra_keys``.
    weights = convert_ldm_unet_checkpoint(_strip_to(state_dict, UNET_PREFIX), inferred)
    for ldm_key, diffusers_key in (extra_keys or {}).items():
        weights[diffusers_key] = _require(state_dict, UNET_PREFIX + ldm_key, "UNet")
    with _empty_weights():
        unet = UNet2DConditionModel(**config)
    return _load(unet, weights, "UNet (model.diffusion_model.*)")


def vae_config_from_ldm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``AutoencoderKL`` config read from the shapes of an LDM VAE (``first_stage_model.``).

    Raises:
        UserError: the checkpoint has no VAE.
    """
    vae = _strip(state_dict, VAE_PREFIX)
    what = "VAE (first_stage_model.*)"
    conv_in = _require(vae, "encoder.conv_in.weight", what)
    levels = _indices(list(vae), r"encoder\.down\.(\d+)\.")
    if not levels:
        raise UserError(f"the checkpoint's {what} has no encoder blocks; expected {_EXPECTED}")
    channels = [
        int(_require(vae, f"encoder.down.{i}.block.0.conv1.weight", what).shape[0]) for i in levels
    ]
    resnets = _indices(list(vae), r"encoder\.down\.0\.block\.(\d+)\.")
    return {
        "in_channels": int(conv_in.shape[1]),
        "out_channels": int(_require(vae, "decoder.conv_out.weight", what).shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * len(channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(channels),
        "block_out_channels": channels,
        "latent_channels": int(_require(vae, "post_quant_conv.weight", what).shape[0]),
        "layers_per_block": len(resnets),
        "norm_num_groups": 32,
        "scaling_factor": VAE_SCALING_FACTOR,
        "sample_size": 512,
    }


def vae_from_ldm(state_dict: Mapping[str, torch.Tensor], **config_overrides: Any):
    """The diffusers VAE (``AutoencoderKL``) of an LDM checkpoint (``first_stage_model.*``).

    Args:
        state_dict: LDM keys (from :func:`read_state_dict`).
        **config_overrides: ``AutoencoderKL`` arguments that replace inferred ones (e.g.
            ``sample_size``, the image side used for tiling only).

    Returns:
        ``AutoencoderKL`` in eval mode, scaling factor 0.18215 unless overridden.

    Raises:
        UserError: the VAE is missing or does not fit the inferred architecture.
    """
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    config = {**vae_config_from_ldm(state_dict), **config_overrides}
    weights = convert_ldm_vae_checkpoint(_strip_to(state_dict, VAE_PREFIX), config)
    with _empty_weights():
        vae = AutoencoderKL(**config)
    return _load(vae, weights, "VAE (first_stage_model.*)")


def _strip_to(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix``, keys unchanged (diffusers' converters strip it)."""
    return {k: v for k, v in state_dict.items() if k.startswith(prefix)}


def text_encoder_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``"clip"`` (SD 1.x), ``"open_clip"`` (SD 2.x, MVDream) or ``""`` (no text encoder)."""
    if any(k.startswith(CLIP_PREFIX) for k in state_dict):
        return "clip"
    if any(k.startswith(OPEN_CLIP_PREFIX) for k in state_dict):
        return "open_clip"
    return ""


def _clip_text_config(
    vocab: int, width: int, hidden: int, layers: int, positions: int, act: str, pad: int
):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, width // 64),
        max_position_embeddings=positions,
        hidden_act=act,
        bos_token_id=vocab - 2,
        eos_token_id=vocab - 1,
        pad_token_id=pad,
    )


def text_encoder_from_ldm(state_dict: Mapping[str, torch.Tensor]):
    """The text encoder and a matching tokenizer of an LDM checkpoint.

    SD 1.x (``cond_stage_model.transformer.``): OpenAI CLIP ViT-L/14, all layers, final layer
    norm, padding with ``<|endoftext|>``. SD 2.x / MVDream (``cond_stage_model.model.``):
    OpenCLIP ViT-H/14 as SD 2 uses it, i.e. the *penultimate* layer's output followed by the
    final layer norm: the last residual block and the text projection are dropped, and
    prompts are padded with id 0 (``"!"``) as ``open_clip.tokenize`` does. Either way
    ``text_encoder(ids)[0]`` is the ``(B, 77, D)`` conditioning of the UNet.

    Args:
        state_dict: LDM keys (from :func:`read_state_dict`).

    Returns:
        ``(CLIPTextModel, CLIPTokenizer)``; the tokenizer is built offline from the CLIP BPE
        vocabulary shipped with cfd3d (:func:`cfd3d.priors.tokenizers.clip_tokenizer`).

    Raises:
        UserError: no text encoder, or one that does not fit the CLIP text architecture.
    """
    from transformers import CLIPTextModel

    from cfd3d.priors.tokenizers import OPEN_CLIP_PAD, SD1_PAD, clip_tokenizer

    layout = text_encoder_layout(state_dict)
    if layout == "clip":
        from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

        what = "text encoder (cond_stage_model.transformer.*)"
        weights = convert_ldm_clip_checkpoint(_strip_to(state_dict, CLIP_PREFIX))
        weights.pop("text_model.embeddings.position_ids", None)
        embed = "text_model.embeddings."
        tokens = _require(weights, embed + "token_embedding.weight", what)
        positions = _require(weights, embed + "position_embedding.weight", what)
        hidden = _require(weights, "text_model.encoder.layers.0.mlp.fc1.weight", what)
        layers = len(_indices(list(weights), r"text_model\.encoder\.layers\.(\d+)\."))
        tokenizer = clip_tokenizer(SD1_PAD, positions.shape[0])
        act = "quick_gelu"
    elif layout == "open_clip":
        from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

        what = "text encoder (cond_stage_model.model.*)"
        model = _strip(state_dict, OPEN_CLIP_PREFIX)
        tokens = _require(model, "token_embedding.weight", what)
        positions = _require(model, "positional_embedding", what)
        hidden = _require(model, "transformer.resblocks.0.mlp.c_fc.weight", what)
        blocks = len(_indices(list(model), r"transformer\.resblocks\.(\d+)\."))
        if blocks < 2:
            raise UserError(f"the checkpoint's {what} has {blocks} layer(s); expected {_EXPECTED}")
        layers = blocks - 1  # the penultimate layer's output, as SD 2.x conditions on it
        tokenizer = clip_tokenizer(OPEN_CLIP_PAD, positions.shape[0])
        act = "gelu"
    else:
        raise UserError(
            f"the checkpoint has no text encoder (cond_stage_model.*); expected {_EXPECTED}"
        )
    config = _clip_text_config(
        int(tokens.shape[0]),
        int(tokens.shape[1]),
        int(hidden.shape[0]),
        layers,
        int(positions.shape[0]),
        act,
        int(tokenizer.pad_token_id),
    )
    with _empty_weights():
        text_encoder = CLIPTextModel(config)
    if layout == "open_clip":
        weights = convert_open_clip_checkpoint(
            text_encoder, _strip_to(state_dict, OPEN_CLIP_PREFIX)
        )
        dropped = f"text_model.encoder.layers.{layers}."
        weights = {
            k: v
            for k, v in weights.items()
            if not k.startswith(dropped) and k != "text_projection.weight"
        }
    if tokenizer.vocab_size > config.vocab_size:
        raise UserError(
            f"the checkpoint's {what} has a {config.vocab_size}-token vocabulary, smaller than "
            f"CLIP's {tokenizer.vocab_size}; expected {_EXPECTED}"
        )
    return _load(text_encoder, weights, what), tokenizer
