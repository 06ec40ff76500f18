"""MVDream: a multi-view diffusion prior that sees four views of one object at once.

MVDream (Shi et al. 2023, "MVDream: Multi-view Diffusion for 3D Generation") is Stable
Diffusion 2.1-base with two changes to its UNet, both expressed here with diffusers parts:

* **camera embedding** -- a two-layer MLP (Linear, SiLU, Linear) of the flattened 4x4
  camera-to-world matrix, added to the timestep embedding. diffusers'
  ``UNet2DConditionModel(class_embed_type="projection",
  projection_class_embeddings_input_dim=16)`` is exactly that (``class_embedding`` is a
  ``TimestepEmbedding``: ``linear_1``, SiLU, ``linear_2``, added to the time embedding);
  the camera goes in as ``class_labels``;
* **joint self-attention** -- the first (self-)attention of every transformer block attends
  over the tokens of all ``num_frames`` views of an object: ``(B*V, L, C)`` is reshaped to
  ``(B, V*L, C)`` around diffusers' scaled-dot-product attention
  (:class:`MultiViewAttnProcessor`, set on every ``attn1``); cross-attention to the prompt
  stays per view.

The published checkpoint ``sd-v2.1-base-4view.pt`` is one LDM-layout file (UNet with
``camera_embed.0/2``, VAE, OpenCLIP ViT-H text encoder; 256x256 images, 4x32x32 latents,
eps-prediction, SD's scaled-linear schedule 0.00085..0.012 over 1000 steps, VAE scaling
factor 0.18215); :meth:`MVDreamPrior.from_single_file` loads it through
:mod:`cfd3d.priors.ldm`.

**Camera conventions.** cfd3d (:mod:`cfd3d.scene.cameras`): right-handed world with +z up;
camera-to-world matrices with OpenGL camera axes (columns: camera right, camera up, camera
backward = -viewing direction, then the camera centre); azimuth measured from +x towards +y,
azimuth 0 looking at the object's front (camera on +x), any distance.
MVDream (its ``camera_utils.get_camera(..., blender_coord=True)``, the cameras it was
trained and sampled with): the same OpenGL camera axes in a right-handed +z-up ("Blender")
world, with the camera on the unit sphere; its azimuth ``phi`` puts the camera at
``(sin phi, -cos phi)`` in the xy-plane, i.e. MVDream azimuth = cfd3d azimuth + 90 degrees
(its sampling script's default views start at azimuth 90: cfd3d's azimuth 0, camera on +x).
For the same camera both conventions give the same matrix, so the conversion
(:func:`mvdream_camera_condition`) keeps the rotation and only moves the camera onto the
unit sphere, ``t / (|t| + 1e-8)`` as MVDream's ``normalize_camera`` does, then flattens
row-major to 16 numbers. MVDream-threestudio does the same with threestudio's cameras,
whose convention is cfd3d's (+z up, azimuth 0 on +x labelled the front view).

**Batches** hold whole groups: views ``g*V .. g*V + V-1`` are the ``V = num_frames`` views
of object ``g`` (as :func:`cfd3d.scene.sampling.sample_cameras` with ``views_per_group=4``
draws them); :meth:`cfd3d.priors.base.Prior.predict_eps` stacks the conditional and
unconditional branches as whole batches, so groups stay aligned.

Optional dependencies: ``pip install 'cfd3d[sd]'`` (diffusers, transformers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from cfd3d.diffusion.schedule import NoiseSchedule, make_schedule
from cfd3d.errors import ConfigError, UserError
from cfd3d.priors.base import Prior
from cfd3d.priors.tokenizers import embed_prompts
from cfd3d.priors.vae import vae_decode, vae_encode

CAMERA_DIM = 16
"""Length of MVDream's camera condition: a flattened 4x4 matrix."""
SCALING_FACTOR = 0.18215
"""MVDream's VAE latent scaling factor (its ``sd-v2-base.yaml``; not stored in the file)."""


def mvdream_schedule() -> NoiseSchedule:
    """MVDream's noise schedule (its ``sd-v2-base.yaml``: LDM's "linear" betas, which are
    linear in sqrt-space, i.e. diffusers' ``scaled_linear``, 0.00085 .. 0.012, T = 1000)."""
    return make_schedule("scaled_linear", num_timesteps=1000, beta_start=0.00085, beta_end=0.012)


def mvdream_camera_condition(c2w: torch.Tensor) -> torch.Tensor:
    """MVDream's camera condition for cfd3d cameras (conventions in the module docstring).

    Args:
        c2w: ``(B, 4, 4)`` camera-to-world matrices in cfd3d's convention.

    Returns:
        ``(B, 16)`` row-major flattened matrices with the camera centre moved onto the unit
        sphere (``t / (|t| + 1e-8)``, as MVDream's ``normalize_camera``).
    """
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
        raise ValueError(
            f"cameras must be (B, 4, 4) camera-to-world matrices, got {tuple(c2w.shape)}"
        )
    translation = c2w[:, :3, 3:]
    unit = translation / (translation.norm(dim=1, keepdim=True) + 1e-8)
    top = torch.cat([c2w[:, :3, :3], unit], dim=2)
    return torch.cat([top, c2w[:, 3:]], dim=1).reshape(-1, CAMERA_DIM)


class MultiViewAttnProcessor:
    """Self-attention over the tokens of all views of one object (MVDream's 3D attention).

    Wraps a diffusers attention processor (by default ``AttnProcessor2_0``, the one a plain
    SD block uses) for the self-attention ``attn1`` of a transformer block: the
    ``(B*V, L, C)`` tokens of ``B`` objects seen in ``V = num_frames`` consecutive views
    become ``(B, V*L, C)``, go through the wrapped processor (the block's own projections and
    scaled dot-product attention) and are split back. With ``num_frames = 1`` it is the
    wrapped processor.

    Args:
        num_frames: views per object.
        processor: the processor to wrap (``None``: ``AttnProcessor2_0``).
    """

    def __init__(self, num_frames: int, processor: Any = None) -> None:
        if processor is None:
            from diffusers.models.attention_processor import AttnProcessor2_0

            processor = AttnProcessor2_0()
        self.num_frames = num_frames
        self.processor = processor

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("MultiViewAttnProcessor is for unmasked self-attention only")
        batch, length, channels = hidden_states.shape
        if batch % self.num_frames:
            raise ConfigError(
                f"MVDream takes views in groups of {self.num_frames}, got a batch of {batch}"
            )
        joint = hidden_states.reshape(batch // self.num_frames, self.num_frames * length, channels)
        out = self.processor(attn, joint)
        return out.reshape(batch, length, channels)


def set_multiview_attention(unet: Any, num_frames: int) -> None:
    """Make every transformer block's self-attention (``attn1``) in ``unet`` attend jointly
    over ``num_frames`` views by wrapping its current processor in
    :class:`MultiViewAttnProcessor`; cross-attention (``attn2``) is left as it is."""
    processors = {
        name: MultiViewAttnProcessor(num_frames, proc)
        if name.endswith(".attn1.processor")
        else proc
        for name, proc in unet.attn_processors.items()
    }
    unet.set_attn_processor(processors)


@dataclass(frozen=True)
class MVDreamConfig:
    """How to run an MVDream prior.

    Attributes:
        device: ``"cuda"``, ``"cpu"``, ... (``None``: CUDA when available).
        dtype: weights' precision; ``"auto"`` is float16 on CUDA and float32 on the CPU.
        num_frames: views per object that attend to each other; the published model was
            trained with 4 (the camera sampler's ``views_per_group`` must match).
        latent_size: side of the UNet's latent input (32 for ``sd-v2.1-base-4view``: 256x256
            images through its 8x VAE). A single file does not record it, so
            :meth:`MVDreamPrior.from_single_file` sizes the prior from it; images are
            ``latent_size`` times the VAE's downsampling factor.
            :meth:`MVDreamPrior.from_modules` takes the UNet's ``sample_size`` instead.
        attention_slicing: compute attention one head at a time (less memory, slower).
        cpu_offload: sequential CPU offload of the UNet/VAE/text encoder (needs accelerate;
            lowest memory, much slower).
    """

    device: str | None = None
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    num_frames: int = 4
    latent_size: int = 32
    attention_slicing: bool = False
    cpu_offload: bool = False

    def __post_init__(self) -> None:
        for name in ("num_frames", "latent_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.dtype not in ("auto", "float16", "bfloat16", "float32"):
            raise ConfigError(
                f"dtype must be auto, float16, bfloat16 or float32, got '{self.dtype}'"
            )


def _device_and_dtype(config: MVDreamConfig) -> tuple[torch.device, torch.dtype]:
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if config.dtype == "auto":
        return device, torch.float16 if device.type == "cuda" else torch.float32
    return device, getattr(torch, config.dtype)


def _camera_extra_keys() -> dict[str, str]:
    """MVDream's ``camera_embed`` (Linear, SiLU, Linear) -> diffusers' projection class
    embedding (``TimestepEmbedding``: ``linear_1``, SiLU, ``linear_2``)."""
    return {
        f"camera_embed.{ldm}.{leaf}": f"class_embedding.{name}.{leaf}"
        for ldm, name in (("0", "linear_1"), ("2", "linear_2"))
        for leaf in ("weight", "bias")
    }


class MVDreamPrior(Prior):
    """An MVDream multi-view checkpoint as a :class:`Prior` (eps-prediction, latent).

    Build it with :meth:`from_single_file` (the published LDM file) or :meth:`from_modules`.
    :meth:`eps` needs the cameras of the views and a batch of whole view groups.

    Attributes:
        config: the options it runs with.
        unet: ``UNet2DConditionModel`` with the camera MLP as its projection class embedding
            and :class:`MultiViewAttnProcessor` on every ``attn1``.
        vae: ``AutoencoderKL``.
        text_encoder: ``CLIPTextModel`` (OpenCLIP's penultimate layer, as SD 2 uses it).
        tokenizer: its ``CLIPTokenizer``.
        scaling_factor: VAE latent scaling factor.
    """

    def __init__(
        self, config: MVDreamConfig, *, unet: Any, vae: Any, text_encoder: Any, tokenizer: Any
    ) -> None:
        if getattr(unet.config, "class_embed_type", None) != "projection" or (
            unet.config.projection_class_embeddings_input_dim != CAMERA_DIM
        ):
            raise ConfigError(
                "the MVDream UNet needs a camera embedding: class_embed_type='projection' with "
                f"projection_class_embeddings_input_dim={CAMERA_DIM}"
            )
        self.config = config
        self._device, self.dtype = _device_and_dtype(config)
        self.schedule = mvdream_schedule()
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        modules = (unet, vae, text_encoder)
        for module in modules:
            module.requires_grad_(False).eval()
            if module.dtype != self.dtype:
                module.to(dtype=self.dtype)
        if config.attention_slicing:
            unet.set_attention_slice("max")
        set_multiview_attention(unet, config.num_frames)
        if config.cpu_offload:
            try:
                from accelerate import cpu_offload
            except ImportError as exc:
                raise ImportError("--low-vram / cpu_offload needs: pip install accelerate") from exc
            for module in modules:
                cpu_offload(module, execution_device=self._device)
        else:
            for module in modules:
                module.to(self._device)
        self.scaling_factor = float(vae.config.scaling_factor)
        vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        size = int(unet.config.sample_size)
        self.input_shape = (int(unet.config.in_channels), size, size)
        self.image_size = (size * vae_scale, size * vae_scale)

    @classmethod
    def from_modules(
        cls,
        config: MVDreamConfig | None = None,
        *,
        unet: Any,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
    ) -> MVDreamPrior:
        """A prior from diffusers/transformers modules already in memory. They are cast to
        the config's dtype and moved to its device in place, and the UNet's self-attention
        processors are wrapped in :class:`MultiViewAttnProcessor`.

        Args:
            config: device, dtype and views per object (defaults: :class:`MVDreamConfig`).
            unet: ``UNet2DConditionModel`` with ``class_embed_type="projection"`` and
                ``projection_class_embeddings_input_dim=16`` (the camera MLP).
            vae: ``AutoencoderKL``.
            text_encoder: ``CLIPTextModel``.
            tokenizer: its ``CLIPTokenizer``.
        """
        return cls(
            config or MVDreamConfig(),
            unet=unet,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
        )

    @classmethod
    def from_single_file(
        cls,
        path: str | Path,
        device: str | None = None,
        dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto",
        **options: Any,
    ) -> MVDreamPrior:
        """Load an MVDream checkpoint in LDM layout, e.g. the published
        ``sd-v2.1-base-4view.pt`` (``model.diffusion_model.*`` with ``camera_embed.0/2``,
        ``first_stage_model.*``, ``cond_stage_model.model.*``), through
        :mod:`cfd3d.priors.ldm`.

        Args:
            path: ``.pt`` / ``.ckpt`` / ``.safetensors`` file.
            device, dtype: as in :class:`MVDreamConfig`.
            **options: further :class:`MVDreamConfig` fields (``num_frames``,
                ``latent_size``, ``attention_slicing``, ``cpu_offload``).

        Raises:
            UserError: for a file that cannot be read or is not an MVDream checkpoint (e.g. a
                plain Stable Diffusion one, which has no camera embedding).
        """
        unknown = sorted(set(options) - set(MVDreamConfig.__dataclass_fields__))
        if unknown:
            raise ConfigError(
                f"unknown MVDream option(s) {', '.join(unknown)}; valid: "
                f"{', '.join(MVDreamConfig.__dataclass_fields__)}"
            )
        config = MVDreamConfig(device=device, dtype=dtype, **options)
        try:
            from cfd3d.priors import ldm
        except ImportError as exc:
            raise ImportError(
                "MVDream priors need diffusers and transformers: pip install 'cfd3d[sd]'"
            ) from exc
        state_dict = ldm.read_state_dict(path)
        if not ldm.is_mvdream(state_dict):
            raise UserError(
                f"'{path}' is a Stable Diffusion checkpoint without MVDream's camera embedding "
                "(no model.diffusion_model.camera_embed.*); pass an MVDream checkpoint such as "
                "sd-v2.1-base-4view.pt as the multi-view prior (--prior-mv), and Stable "
                "Diffusion ones with --prior"
            )
        unet = ldm.unet_from_ldm(
            state_dict,
            extra_keys=_camera_extra_keys(),
            sample_size=config.latent_size,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=CAMERA_DIM,
        )
        vae = ldm.vae_from_ldm(state_dict, scaling_factor=SCALING_FACTOR)
        text_encoder, tokenizer = ldm.text_encoder_from_ldm(state_dict)
        return cls(config, unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)

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
        """Raw eps prediction for whole view groups (see :meth:`Prior.eps`).

        Raises:
            UserError: without cameras (the 2D playground has none: use MVDream for 3D).
            ConfigError: for a batch that is not a multiple of ``num_frames``.
        """
        frames = self.config.num_frames
        if cameras is None:
            raise UserError(
                "the MVDream prior needs the cameras of the views; use it for 3D generation "
                "(cfd3d generate --prior-mv), not for images without cameras"
            )
        if x_t.shape[0] % frames:
            raise ConfigError(
                f"MVDream takes views in groups of {frames}, got a batch of {x_t.shape[0]} "
                f"views; render a multiple of {frames} views per step with the camera "
                f"sampler's views_per_group={frames}"
            )
        if cameras.shape[0] != x_t.shape[0]:
            raise ValueError(f"{cameras.shape[0]} cameras for a batch of {x_t.shape[0]} views")
        camera = mvdream_camera_condition(cameras.to(self.device, torch.float32))
        return self.unet(
            x_t.to(self.device, self.dtype),
            t.to(self.device),
            encoder_hidden_states=embedding.to(self.device, self.dtype),
            class_labels=camera.to(self.dtype),
        ).sample.to(x_t.dtype)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, 4, h, w)`` scaled latents, with gradient: the
        VAE encoder's mean after a bilinear resize to :attr:`image_size`."""
        return vae_encode(
            self.vae, images, self.image_size, self.scaling_factor, self.device, self.dtype
        )

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return vae_decode(self.vae, z, self.scaling_factor, self.device, self.dtype)
