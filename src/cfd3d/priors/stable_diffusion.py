"""Stable Diffusion 1.x / 2.x priors through diffusers (the real-model path).

diffusers only loads the weights; the noise math stays in :mod:`cfd3d.diffusion` and the
update rules. The adapter loads the UNet, VAE, CLIP text encoder, tokenizer and noise
schedule from a diffusers-format folder, a Hugging Face hub id, or a single-file LDM
checkpoint (``.safetensors`` / ``.ckpt``, read by :mod:`cfd3d.priors.ldm`), and implements
:class:`cfd3d.priors.base.Prior`:

* ``embed``: CLIP text embeddings ``(B, 77, D)``;
* ``eps``: the UNet's prediction, converted from v-prediction for SD 2.x 768-v models;
* ``encode``: rendered RGB in [0, 1] -> scaled VAE latents, differentiable (the VAE
  encoder's mean, as in DreamFusion-style latent distillation), or the identity when
  distilling directly in latent space.

**Which model.** One function decides, :func:`model_candidates`: the explicit value
(``--prior`` / config ``prior``), then the environment variable ``CFD3D_SD_MODEL``, then
:data:`DEFAULT_MODEL` only if it is in the local Hugging Face cache (its publisher withdrew
it from the hub in November 2025, so it is never downloaded). The first candidate that
:func:`locate_model` finds on this machine is used; otherwise the first hub id among them is
downloaded unless ``HF_HUB_OFFLINE`` is set.

**Single files** carry no scheduler: the schedule is Stable Diffusion's (scaled-linear
betas 0.00085 -> 0.012, 1000 steps) and the prediction type and image size follow
:func:`single_file_defaults` unless :class:`StableDiffusionConfig` sets them.

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
from cfd3d.priors.ldm import SINGLE_FILE_SUFFIXES
from cfd3d.priors.tokenizers import embed_prompts
from cfd3d.priors.vae import vae_decode, vae_encode

DEFAULT_MODEL = "stabilityai/stable-diffusion-2-1-base"
"""The documented default; withdrawn from the hub (Nov 2025), used only from the cache."""
MODEL_ENV = "CFD3D_SD_MODEL"
SUPPORTED_PIPELINES = ("StableDiffusionPipeline",)
PRIOR_KINDS_HELP = (
    "supported priors: 'embedded' (built in), or a Stable Diffusion 1.x/2.x checkpoint: a "
    "diffusers folder, a single .safetensors/.ckpt file, or a hub id"
)
HOW_TO_PROVIDE = (
    "pass --prior with a local diffusers folder (--prior PATH), a single .safetensors/.ckpt "
    "file or a hub mirror id, or set CFD3D_SD_MODEL to one of them; download hub models "
    "where the hub is reachable (huggingface-cli download ID) and set HF_HUB_OFFLINE=1 to "
    "skip network look-ups"
)
LDM_SCHEDULER = {
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "num_train_timesteps": 1000,
}
"""The noise schedule of every SD 1.x/2.x LDM config (``linear_start``/``linear_end``)."""
_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_FILE = re.compile(r"^([A-Za-z0-9][\w.-]*/[\w.-]+)/(.+\.(?:safetensors|ckpt|pt|pth))$")
_V_NAME = re.compile(r"v[-_]?pred|768[-_]?v\b|[-_]v[-_]")
_BETA_SCHEDULES = {"scaled_linear": "scaled_linear", "linear": "linear"}


@dataclass(frozen=True)
class StableDiffusionConfig:
    """How to load and run a Stable Diffusion prior.

    Attributes:
        model: what to load: a local diffusers folder, a single-file LDM checkpoint
            (``.safetensors``/``.ckpt``), a hub id (``owner/name``, diffusers layout) or a
            file on the hub (``owner/name/file.safetensors``). ``None``: the configured
            model (``$CFD3D_SD_MODEL``, else :data:`DEFAULT_MODEL` if cached); see
            :func:`model_candidates`.
        device: ``"cuda"``, ``"cpu"``, ... (``None``: CUDA when available).
        dtype: weights' precision; ``"auto"`` is float16 on CUDA and float32 on the CPU.
        latent: distil directly in latent space: :meth:`StableDiffusionPrior.encode` takes
            4-channel latent renders and passes them through (no VAE).
        channels_last: store UNet/VAE weights channels-last (faster convolutions on GPUs).
        attention_slicing: compute attention in slices (less memory, slower).
        cpu_offload: sequential CPU offload of the UNet/VAE/text encoder (needs
            accelerate; lowest memory, much slower).
        revision: hub revision (branch, tag or commit).
        prediction_type: what the UNet predicts; ``"auto"``: the scheduler config of a
            diffusers folder, or :func:`single_file_defaults` for a single file (which
            cannot say).
        image_size: the model's native image side in pixels; ``None``: the UNet config of
            a diffusers folder, or :func:`single_file_defaults` for a single file.
    """

    model: str | None = None
    device: str | None = None
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    latent: bool = False
    channels_last: bool = False
    attention_slicing: bool = False
    cpu_offload: bool = False
    revision: str | None = None
    prediction_type: Literal["auto", "epsilon", "v_prediction"] = "auto"
    image_size: int | None = None


def low_vram(config: StableDiffusionConfig) -> StableDiffusionConfig:
    """The ``--low-vram`` preset: float16, attention slicing and sequential CPU offload."""
    return replace(config, dtype="float16", attention_slicing=True, cpu_offload=True)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _cached_snapshot(repo: str, revision: str | None = None) -> Path | None:
    """The local snapshot folder of a hub model in diffusers layout, without network."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    patterns = ["model_index.json", *(f"{c}/*" for c in _COMPONENTS)]
    try:
        folder = snapshot_download(
            repo, revision=revision, allow_patterns=patterns, local_files_only=True
        )
    except (OSError, ValueError):  # not cached (LocalEntryNotFoundError), or a bad id
        return None
    return Path(folder) if (Path(folder) / "model_index.json").is_file() else None


def _cached_file(repo: str, filename: str, revision: str | None = None) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo, filename, revision=revision)
    except ValueError:
        return None
    return Path(found) if isinstance(found, str) else None


def locate_model(spec: str, revision: str | None = None) -> Path | None:
    """Where ``spec`` is on this machine, never touching the network.

    Args:
        spec: a local folder or file (returned if it exists; its contents are checked when
            loading), a hub id ``owner/name`` (its cached snapshot folder, if the local
            Hugging Face cache holds ``model_index.json``) or a hub file
            ``owner/name/path/file.safetensors`` (the cached file).
        revision: hub revision.

    Returns:
        The folder or file, or ``None`` when it is not on this machine.
    """
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if match := _HUB_FILE.match(spec):
        return _cached_file(match.group(1), match.group(2), revision)
    if _HUB_ID.match(spec):
        return _cached_snapshot(spec, revision)
    return None


def model_candidates(explicit: str | None) -> list[str]:
    """The Stable Diffusion models to try, in order (no duplicates).

    An explicit model (``--prior`` / config ``prior``) is the only candidate: a user who
    names a model never silently gets another. Without one (or with ``"sd"``, or the
    withdrawn :data:`DEFAULT_MODEL` that older configs name):

    1. the environment variable ``CFD3D_SD_MODEL``, if set;
    2. :data:`DEFAULT_MODEL`, only if it is in the local Hugging Face cache (or named).

    Args:
        explicit: the value the user passed, or ``None``.
    """
    if explicit and explicit not in ("sd", DEFAULT_MODEL):
        return [explicit]
    candidates = [os.environ.get(MODEL_ENV, "").strip()]
    if explicit == DEFAULT_MODEL or locate_model(DEFAULT_MODEL) is not None:
        candidates.append(DEFAULT_MODEL)
    return list(dict.fromkeys(c for c in candidates if c))


def _is_hub_spec(spec: str) -> bool:
    """Whether ``spec`` reads as a hub id or hub file rather than a local path."""
    if Path(spec).expanduser().is_absolute() or spec.startswith((".", "~")):
        return False
    return bool(_HUB_FILE.match(spec) or _HUB_ID.match(spec))


def _describe(spec: str, explicit: str | None) -> str:
    source = "" if spec in (explicit, DEFAULT_MODEL) else f"${MODEL_ENV}="
    if not _is_hub_spec(spec):
        return f"{source}{spec} (no such folder or file)"
    withdrawn = ", and withdrawn from the hub" if spec == DEFAULT_MODEL else ""
    return f"{source}{spec} (not in the local Hugging Face cache{withdrawn})"


def _download(spec: str, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download

    if match := _HUB_FILE.match(spec):
        return Path(
            hf_hub_download(match.group(1), match.group(2), revision=revision, etag_timeout=10)
        )
    patterns = ["model_index.json", *(f"{c}/*" for c in _COMPONENTS)]
    return Path(
        snapshot_download(spec, revision=revision, allow_patterns=patterns, etag_timeout=10)
    )


def resolve_model(model: str | None, revision: str | None = None) -> Path:
    """The folder or single file to load for ``model`` (see :func:`model_candidates`).

    The first candidate found on this machine wins; if none is, the first hub id among
    them (never the withdrawn :data:`DEFAULT_MODEL`) is downloaded unless
    ``HF_HUB_OFFLINE`` is set.

    Raises:
        UserError: one line naming every candidate tried and how to provide a model.
    """
    candidates = model_candidates(model)
    for spec in candidates:
        found = locate_model(spec, revision)
        if found is not None:
            return found
    tried = {spec: _describe(spec, model) for spec in candidates}
    hub = [s for s in candidates if s != DEFAULT_MODEL and _is_hub_spec(s)]
    if hub and not _offline():
        try:
            return _download(hub[0], revision)
        except ImportError as exc:  # pragma: no cover - huggingface_hub comes with diffusers
            raise ImportError("Stable Diffusion priors need: pip install 'cfd3d[sd]'") from exc
        except Exception as exc:  # hub errors vary (network, auth, 404); all mean the same
            text = str(exc).strip()
            reason = text.splitlines()[0][:160] if text else type(exc).__name__
            tried[hub[0]] = f"{hub[0]} (download failed: {reason})"
    listed = "; ".join(tried.values()) or (
        f"no --prior given, ${MODEL_ENV} unset, {DEFAULT_MODEL} not in the local cache"
    )
    offline = "; HF_HUB_OFFLINE is set" if hub and _offline() else ""
    raise UserError(f"no Stable Diffusion model found (tried: {listed}){offline}; {HOW_TO_PROVIDE}")


def single_file_defaults(path: Path, layout: str) -> tuple[str, int]:
    """Prediction type and image size of a single-file checkpoint that the config leaves open.

    LDM files do not record them, so the file name decides: ``v_prediction`` if the name
    says so (``v-pred``, ``vpred``, ``768-v``, ``-v-``) or if it is an SD 2.x file
    (OpenCLIP text encoder) whose name contains ``768`` (``v2-1_768-ema-pruned``,
    ``768-v-ema``: Stability's 768 models are v-prediction); ``epsilon`` otherwise (all
    SD 1.x releases, SD 2.x ``512-base``, MVDream). Image size: 768 if the name contains
    ``768``, else 512.

    Args:
        path: the checkpoint file.
        layout: :func:`cfd3d.priors.ldm.text_encoder_layout` of its weights.

    Returns:
        ``(prediction_type, image_size)``.
    """
    name = path.name.lower()
    big = "768" in name
    v = bool(_V_NAME.search(name)) or (big and layout == "open_clip")
    return ("v_prediction" if v else "epsilon"), (768 if big else 512)


def check_diffusers_folder(folder: Path, model: str) -> Path:
    """``folder`` if it holds a diffusers Stable Diffusion pipeline with every component.

    Raises:
        UserError: one line saying what is missing or unsupported (``model`` names it).
    """
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


def _latent_size(image_size: int, vae) -> int:
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    if image_size <= 0 or image_size % scale:
        raise ConfigError(
            f"image_size {image_size} must be a positive multiple of the VAE's factor {scale}"
        )
    return image_size // scale


def _single_file_modules(path: Path, config: StableDiffusionConfig) -> dict:
    """UNet, VAE, text encoder, tokenizer and schedule of a single-file LDM checkpoint."""
    from cfd3d.priors import ldm

    if not ldm.is_single_file(path):
        raise UserError(
            f"'{path}' is a file but not a checkpoint ({', '.join(SINGLE_FILE_SUFFIXES)}); "
            f"{PRIOR_KINDS_HELP}"
        )
    state = ldm.read_state_dict(path)
    if ldm.is_mvdream(state):
        raise UserError(
            f"'{path}' is an MVDream checkpoint (it has a camera embedding); use it as the "
            "multi-view prior (--prior-mv), and a Stable Diffusion checkpoint as --prior"
        )
    channels = ldm.unet_config_from_ldm(state)["in_channels"]
    if channels != 4:
        raise UserError(
            f"'{path}' has a {channels}-channel UNet (an inpainting or other variant); the "
            "Stable Diffusion prior needs a text-to-image checkpoint (4 latent channels)"
        )
    layout = ldm.text_encoder_layout(state)
    prediction, image_size = single_file_defaults(path, layout)
    if config.prediction_type != "auto":
        prediction = config.prediction_type
    image_size = config.image_size or image_size
    schedule = _schedule_from_config({**LDM_SCHEDULER, "prediction_type": prediction})
    vae = ldm.vae_from_ldm(state, sample_size=image_size)
    # SD 2.x 768 models need float32 attention scores in float16 (diffusers' config for
    # stabilityai/stable-diffusion-2-1 sets upcast_attention, the 512-base one does not).
    unet = ldm.unet_from_ldm(
        state,
        sample_size=_latent_size(image_size, vae),
        upcast_attention=layout == "open_clip" and image_size >= 768,
    )
    text_encoder, tokenizer = ldm.text_encoder_from_ldm(state)
    _, dtype = _device_and_dtype(config)
    for module in (unet, vae, text_encoder):
        module.to(dtype=dtype)
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "schedule": schedule,
    }


class StableDiffusionPrior(Prior):
    """A Stable Diffusion 1.x / 2.x checkpoint as a :class:`Prior`.

    ``StableDiffusionPrior(config)`` loads ``config.model`` (resolved by
    :func:`resolve_model`; the folder or file used is :attr:`source`); :meth:`from_modules`
    wraps modules already in memory.
    """

    source: Path | None
    """The folder or single file the weights came from (``None`` for :meth:`from_modules`)."""

    def __init__(self, config: StableDiffusionConfig) -> None:
        source = resolve_model(config.model, config.revision)  # fast errors: before imports
        try:
            from diffusers import AutoencoderKL, UNet2DConditionModel
            from transformers import CLIPTextModel, CLIPTokenizer
        except ImportError as exc:
            raise ImportError(
                "Stable Diffusion priors need diffusers and transformers: pip install 'cfd3d[sd]'"
            ) from exc
        self.source = source
        if source.is_file():
            self._assemble(config, **_single_file_modules(source, config))
            return
        folder = check_diffusers_folder(source, str(source))
        _, dtype = _device_and_dtype(config)
        scheduler_config = json.loads(
            next((folder / "scheduler").glob("scheduler_config.json")).read_text()
        )
        if config.prediction_type != "auto":
            scheduler_config["prediction_type"] = config.prediction_type
        schedule = _schedule_from_config(scheduler_config)  # fail before loading weights
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype)
        if config.image_size is not None:
            unet.register_to_config(sample_size=_latent_size(config.image_size, vae))
        self._assemble(
            config,
            unet=unet,
            vae=vae,
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
        prior.source = None
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

    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        return embed_prompts(self.tokenizer, self.text_encoder, prompts, self.device)

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
        return vae_encode(
            self.vae, images, self.image_size, self.scaling_factor, self.device, self.dtype
        )

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.config.latent and z.shape[1] != self.input_shape[0]:
            return z
        return vae_decode(self.vae, z, self.scaling_factor, self.device, self.dtype)
