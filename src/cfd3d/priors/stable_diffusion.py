"""Stable Diffusion 1.x / 2.x priors through diffusers (the real-model path).

diffusers only loads the weights; the noise math stays in :mod:`cfd3d.diffusion` and the
update rules. The adapter loads the UNet, VAE, CLIP text encoder, tokenizer and the
scheduler's noise schedule from a diffusers-format folder or a Hugging Face hub id, and
implements :class:`cfd3d.priors.base.Prior`:

* ``embed``: CLIP text embeddings ``(B, 77, D)``;
* ``eps``: the UNet's prediction, converted from v-prediction for SD 2.x 768-v models;
* ``encode``: rendered RGB in [0, 1] -> scaled VAE latents, differentiable (the VAE
  encoder's mean, as in DreamFusion-style latent distillation), or the identity when
  distilling directly in latent space.

Optional dependencies: ``pip install 'cfd3d[sd]'`` (diffusers, transformers, accelerate).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from cfd3d.diffusion.parameterization import v_to_eps
from cfd3d.diffusion.schedule import NoiseSchedule, make_schedule
from cfd3d.errors import ConfigError, UserError
from cfd3d.priors.base import Prior

DEFAULT_MODEL = "stabilityai/stable-diffusion-2-1-base"
SUPPORTED_PIPELINES = ("StableDiffusionPipeline",)
PRIOR_KINDS_HELP = (
    "supported priors: 'embedded' (built in), or a Stable Diffusion 1.x/2.x checkpoint in "
    "diffusers format (hub id such as stabilityai/stable-diffusion-2-1-base, or a local folder)"
)
_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_BETA_SCHEDULES = {"scaled_linear": "scaled_linear", "linear": "linear"}


@dataclass(frozen=True)
class StableDiffusionConfig:
    """How to load and run a Stable Diffusion prior.

    Attributes:
        model: hub id (e.g. ``stabilityai/stable-diffusion-2-1-base``) or local folder in
            diffusers layout.
        device: ``"cuda"``, ``"cpu"``, ... (``None``: CUDA when available).
        dtype: weights' precision; ``"auto"`` is float16 on CUDA and float32 on the CPU.
        latent: distil directly in latent space: :meth:`StableDiffusionPrior.encode` takes
            4-channel latent renders and passes them through (no VAE).
        channels_last: store UNet/VAE weights channels-last (faster convolutions on GPUs).
        attention_slicing: compute attention in slices (less memory, slower).
        cpu_offload: sequential CPU offload of the UNet/VAE/text encoder (needs
            accelerate; lowest memory, much slower).
        revision: hub revision (branch, tag or commit).
    """

    model: str = DEFAULT_MODEL
    device: str | None = None
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    latent: bool = False
    channels_last: bool = False
    attention_slicing: bool = False
    cpu_offload: bool = False
    revision: str | None = None


def low_vram(config: StableDiffusionConfig) -> StableDiffusionConfig:
    """The ``--low-vram`` preset: float16, attention slicing and sequential CPU offload."""
    return replace(config, dtype="float16", attention_slicing=True, cpu_offload=True)


def resolve_model_folder(model: str, revision: str | None = None) -> Path:
    """A local folder holding the diffusers layout for ``model`` (download if needed).

    Raises:
        UserError: one actionable line when the folder or hub id cannot be used.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return _check_layout(path, model)
    if path.exists() or not _HUB_ID.match(model):
        raise UserError(
            f"Stable Diffusion model folder '{model}' not found; pass an existing folder in "
            f"diffusers format or a hub id such as {DEFAULT_MODEL}"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - huggingface_hub comes with diffusers
        raise ImportError("Stable Diffusion priors need: pip install 'cfd3d[sd]'") from exc
    patterns = ["model_index.json", *(f"{c}/*" for c in _COMPONENTS)]
    try:
        folder = snapshot_download(
            model, revision=revision, allow_patterns=patterns, local_files_only=True
        )
    except OSError:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        if offline:
            raise UserError(
                f"model '{model}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is "
                f"set; download it first (huggingface-cli download {model}) or pass a local "
                "diffusers folder with --prior PATH"
            ) from None
        try:
            folder = snapshot_download(
                model, revision=revision, allow_patterns=patterns, etag_timeout=10
            )
        except Exception as exc:  # hub errors vary (network, auth, 404); all mean the same
            reason = (
                str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            )
            raise UserError(
                f"could not download Stable Diffusion model '{model}' ({reason}); check the id "
                f"and your network, run 'huggingface-cli download {model}' where the hub is "
                "reachable, or pass a local diffusers folder with --prior PATH (set "
                "HF_HUB_OFFLINE=1 to skip network look-ups)"
            ) from None
    return _check_layout(Path(folder), model)


def _check_layout(folder: Path, model: str) -> Path:
    index = folder / "model_index.json"
    if not index.is_file():
        raise UserError(
            f"'{model}' is not a diffusers Stable Diffusion folder (no model_index.json); "
            "convert the checkpoint with diffusers' conversion scripts or pass another folder"
        )
    try:
        class_name = json.loads(index.read_text()).get("_class_name", "")
    except json.JSONDecodeError:
        raise UserError(f"'{index}' is not valid JSON; re-download the model") from None
    if class_name not in SUPPORTED_PIPELINES:
        raise UserError(
            f"'{model}' is a {class_name or 'unknown'} checkpoint, which the Stable Diffusion "
            f"prior does not support; {PRIOR_KINDS_HELP}"
        )
    missing = [c for c in _COMPONENTS if not (folder / c).is_dir()]
    if missing:
        raise UserError(
            f"'{model}' is missing the diffusers component folder(s) {', '.join(missing)}; "
            "re-download or re-export the model"
        )
    return folder


def _schedule_from_config(scheduler_config: dict) -> tuple[NoiseSchedule, str]:
    beta_schedule = scheduler_config.get("beta_schedule", "linear")
    prediction = scheduler_config.get("prediction_type", "epsilon")
    if beta_schedule == "squaredcos_cap_v2":
        kind = "cosine"
    elif beta_schedule in _BETA_SCHEDULES:
        kind = _BETA_SCHEDULES[beta_schedule]
    else:
        raise UserError(f"unsupported beta_schedule '{beta_schedule}' in the model's scheduler")
    if prediction not in ("epsilon", "v_prediction"):
        raise UserError(
            f"unsupported prediction_type '{prediction}' (need epsilon or v_prediction)"
        )
    schedule = make_schedule(
        kind,  # type: ignore[arg-type]
        num_timesteps=int(scheduler_config.get("num_train_timesteps", 1000)),
        beta_start=float(scheduler_config.get("beta_start", 0.00085)),
        beta_end=float(scheduler_config.get("beta_end", 0.012)),
    )
    return schedule, prediction


def _device_and_dtype(config: StableDiffusionConfig) -> tuple[torch.device, torch.dtype]:
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if config.dtype == "auto":
        return device, torch.float16 if device.type == "cuda" else torch.float32
    return device, getattr(torch, config.dtype)


class StableDiffusionPrior(Prior):
    """A Stable Diffusion 1.x / 2.x checkpoint as a :class:`Prior`.

    ``StableDiffusionPrior(config)`` loads ``config.model``; :meth:`from_modules` wraps
    modules already in memory.
    """

    def __init__(self, config: StableDiffusionConfig) -> None:
        try:
            from diffusers import AutoencoderKL, UNet2DConditionModel
            from transformers import CLIPTextModel, CLIPTokenizer
        except ImportError as exc:
            raise ImportError(
                "Stable Diffusion priors need diffusers and transformers: pip install 'cfd3d[sd]'"
            ) from exc
        folder = resolve_model_folder(config.model, config.revision)
        _, dtype = _device_and_dtype(config)
        scheduler_config = json.loads(
            next((folder / "scheduler").glob("scheduler_config.json")).read_text()
        )
        schedule = _schedule_from_config(scheduler_config)  # fail before loading weights
        self._assemble(
            config,
            unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype),
            vae=AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype),
            text_encoder=CLIPTextModel.from_pretrained(
                folder, subfolder="text_encoder", torch_dtype=dtype
            ),
            tokenizer=CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
            schedule=schedule,
        )

    @classmethod
    def from_modules(
        cls,
        config: StableDiffusionConfig,
        *,
        unet,
        vae,
        text_encoder,
        tokenizer,
        scheduler_config: dict,
    ) -> StableDiffusionPrior:
        """A prior from diffusers/transformers modules already in memory (e.g. the random
        ones of :func:`cfd3d.priors.sd_random.build_random_components`).

        ``config.model`` and ``config.revision`` are ignored; the modules are cast to the
        config's dtype and moved to its device in place.

        Args:
            config: device, dtype and memory options.
            unet: ``UNet2DConditionModel``.
            vae: ``AutoencoderKL``.
            text_encoder: ``CLIPTextModel``.
            tokenizer: ``CLIPTokenizer``.
            scheduler_config: the scheduler's config (``dict(scheduler.config)``).
        """
        _, dtype = _device_and_dtype(config)
        for module in (unet, vae, text_encoder):
            if module.dtype != dtype:
                module.to(dtype=dtype)
        prior = cls.__new__(cls)
        prior._assemble(
            config,
            unet=unet,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            schedule=_schedule_from_config(dict(scheduler_config)),
        )
        return prior

    def _assemble(
        self,
        config: StableDiffusionConfig,
        *,
        unet,
        vae,
        text_encoder,
        tokenizer,
        schedule: tuple[NoiseSchedule, str],
    ) -> None:
        self.config = config
        device, dtype = _device_and_dtype(config)
        self._device, self.dtype = device, dtype
        self.schedule, self.prediction_type = schedule
        self.tokenizer = tokenizer
        self.text_encoder, self.unet, self.vae = text_encoder, unet, vae
        for module in (self.text_encoder, self.unet, self.vae):
            module.requires_grad_(False).eval()
        self._setup_memory(config, device)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        size = int(self.unet.config.sample_size)
        self.input_shape = (int(self.unet.config.in_channels), size, size)
        self.image_size = (size * self.vae_scale, size * self.vae_scale)

    def _setup_memory(self, config: StableDiffusionConfig, device: torch.device) -> None:
        modules = (self.text_encoder, self.unet, self.vae)
        if config.channels_last:
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
        if config.attention_slicing:
            self.unet.set_attention_slice("auto")
        if config.cpu_offload:
            try:
                from accelerate import cpu_offload
            except ImportError as exc:
                raise ImportError("--low-vram / cpu_offload needs: pip install accelerate") from exc
            for module in modules:
                cpu_offload(module, execution_device=device)
        else:
            for module in modules:
                module.to(device)

    @property
    def device(self) -> torch.device:
        return self._device

    @torch.no_grad()
    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return self.text_encoder(tokens.input_ids.to(self.device))[0]

    def eps(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        embedding: torch.Tensor,
        cameras: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = self.unet(
            x_t.to(self.device, self.dtype),
            t.to(self.device),
            encoder_hidden_states=embedding.to(self.device, self.dtype),
        ).sample.to(x_t.dtype)
        if self.prediction_type == "v_prediction":
            alpha, sigma = (
                v.to(x_t.device, x_t.dtype)[:, None, None, None]
                for v in self.schedule.alpha_sigma(t.to(x_t.device))
            )
            out = v_to_eps(x_t, out, alpha, sigma)
        return out

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, 4, H/8, W/8)`` scaled latents (with gradient).

        Images of another size are resized to :attr:`image_size` first. In latent mode the
        input must already be ``(B, 4, h, w)`` latents and is returned unchanged.
        """
        if self.config.latent:
            if images.shape[1] != self.input_shape[0]:
                raise ConfigError(
                    f"latent mode expects {self.input_shape[0]}-channel renders, "
                    f"got {images.shape[1]} channels"
                )
            return images
        if tuple(images.shape[-2:]) != self.image_size:
            images = torch.nn.functional.interpolate(
                images, size=self.image_size, mode="bilinear", align_corners=False
            )
        x = (images * 2.0 - 1.0).to(self.device, self.dtype)
        latents = self.vae.encode(x).latent_dist.mean * self.scaling_factor
        return latents.to(images.dtype)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.config.latent and z.shape[1] != self.input_shape[0]:
            return z
        x = self.vae.decode((z / self.scaling_factor).to(self.device, self.dtype)).sample
        return ((x.float() + 1.0) * 0.5).clamp(0.0, 1.0)
