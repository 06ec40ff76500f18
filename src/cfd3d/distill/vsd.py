"""Variational Score Distillation (Wang et al., "ProlificDreamer: High-Fidelity and Diverse
Text-to-3D Generation with Variational Score Distillation", NeurIPS 2023).

VSD treats the 3D object as a distribution of renders and compares two scores at a
freshly noised render ``x_t = alpha_t z + sigma_t eps``: the pretrained prior's (guided)
and that of a *trainable copy* of the prior fitted to the current renders,

    grad = w(t) (eps_hat_pretrained(x_t, t, y) - eps_copy(x_t, t, y, c)),

with ``w(t) = sigma_t^2`` and the copy at guidance 1, conditioned on the camera ``c``.
Every distillation step also takes one optimiser step of the copy on the denoising loss
``|| eps_copy(alpha_t' z + sigma_t' xi, t', y, c) - xi ||^2`` at a fresh ``t' ~ U{0..T-1}``
and noise ``xi``, the camera dropped (zeros) 10 % of the time.

Reference defaults (threestudio's ProlificDreamer): a rank-4 LoRA on the UNet's attention
projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0``), learning rate 1e-4, camera
condition from the flattened 4x4 camera-to-world matrix through a two-layer MLP added to
the time embedding, guidance 7.5 for the pretrained branch, ``t ~ U[0.02, 0.98]`` for the
first 20 % of the run then ``U[0.02, 0.5]``. The embedded prior is small, so by default
its copy is a full trainable copy instead of a LoRA. The camera MLP's last layer starts
at zero, so that the copy starts as the prior itself.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cfd3d.distill.weighting import Weighting, timestep_weight
from cfd3d.errors import ConfigError
from cfd3d.priors.base import Condition, Prior

LORA_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
"""The attention projections of a diffusers UNet that get a LoRA."""


@dataclass(frozen=True)
class VSDConfig:
    """VSD's trainable copy of the prior (reference defaults).

    Attributes:
        lora_rank: rank of the LoRA on the copy's attention projections (on every linear
            and convolution layer outside torch's fused attention and transformer layers
            for a network without diffusers attention); ``None``:
            the prior's default, a full trainable copy for the embedded prior and rank 4
            for Stable Diffusion and MVDream.
        lr: Adam learning rate of the copy.
        copy_guidance: classifier-free guidance scale of the copy's prediction.
        camera_condition: condition the copy on the camera (added to its time embedding).
        camera_dropout: probability of training the copy without its camera.
    """

    lora_rank: int | None = None
    lr: float = 1e-4
    copy_guidance: float = 1.0
    camera_condition: bool = True
    camera_dropout: float = 0.1

    def __post_init__(self) -> None:
        rank = self.lora_rank
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise ConfigError(
                f"vsd.lora_rank must be a positive integer (or null for the prior's "
                f"default), got {rank!r}"
            )
        if not self.lr > 0.0:
            raise ConfigError(f"vsd.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.camera_dropout <= 1.0:
            raise ConfigError(f"vsd.camera_dropout must lie in [0, 1], got {self.camera_dropout}")


def vsd_gradient(
    prior: Prior,
    copy_prior: Prior,
    z: torch.Tensor,
    t: torch.Tensor,
    condition: Condition,
    guidance_scale: float,
    noise: torch.Tensor,
    copy_guidance: float = 1.0,
    weighting: Weighting = "sigma_sq",
) -> torch.Tensor:
    """The VSD gradient on the prior input.

    Args:
        prior: the pretrained prior.
        copy_prior: the trainable copy (e.g. :class:`TrainableCopy`).
        z: ``(B, C, h, w)`` the rendering in the prior's input space.
        t: ``(B,)`` or scalar integer timestep.
        condition: prompt conditioning, batch ``B`` (with the views' cameras).
        guidance_scale: classifier-free guidance scale of the pretrained prediction.
        noise: ``(B, C, h, w)`` fresh noise ``eps``.
        copy_guidance: guidance scale of the copy's prediction (Perp-Neg off).
        weighting: ``w(t)``.

    Returns:
        ``(B, C, h, w)`` gradient ``w(t) (eps_hat_pretrained - eps_copy)``, detached.
    """
    t = t.expand(z.shape[0]) if t.ndim == 0 else t
    alpha, sigma = (v.to(z.dtype)[:, None, None, None] for v in prior.schedule.alpha_sigma(t))
    with torch.no_grad():
        x_t = alpha * z.detach() + sigma * noise
        eps = prior.predict_eps(x_t, t, condition, guidance_scale)
        plain = dataclasses.replace(condition, perp_neg=())
        eps_copy = copy_prior.predict_eps(x_t, t, plain, copy_guidance)
        weight = timestep_weight(prior.schedule, t, weighting).to(z.dtype)[:, None, None, None]
        return weight * (eps - eps_copy)


# ------------------------------------------------------------------------- the copy


class LoRA(nn.Module):
    """``base(x) + up(down(x))``: a low-rank update of a linear or convolution layer (Hu et
    al. 2021), ``up`` starting at zero so that the layer starts as ``base``.

    Args:
        base: the frozen ``nn.Linear`` or ``nn.Conv2d``.
        rank: the update's rank.
        generator: draws ``down``'s initial weights.
        device: where the update's weights live (the prior's device: ``base``'s own
            weights may be offloaded).
    """

    def __init__(
        self,
        base: nn.Linear | nn.Conv2d,
        rank: int,
        generator: torch.Generator,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.base = base
        if isinstance(base, nn.Linear):
            self.down: nn.Module = nn.Linear(base.in_features, rank, bias=False)
            self.up: nn.Module = nn.Linear(rank, base.out_features, bias=False)
        else:
            self.down = nn.Conv2d(
                base.in_channels,
                rank,
                base.kernel_size,  # type: ignore[arg-type]
                base.stride,  # type: ignore[arg-type]
                base.padding,  # type: ignore[arg-type]
                bias=False,
            )
            self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        fan_in = self.down.weight[0].numel()
        with torch.no_grad():
            self.down.weight.copy_(
                torch.randn(self.down.weight.shape, generator=generator) / fan_in**0.5
            )
            self.up.weight.zero_()
        self.down.to(device)
        self.up.to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x.float())).to(x.dtype)


def add_lora(
    network: nn.Module, rank: int, generator: torch.Generator, device: torch.device
) -> list[nn.Parameter]:
    """Freeze ``network`` and give a :class:`LoRA` of ``rank`` (weights on ``device``) to
    its attention projections (:data:`LORA_TARGETS`), or to every linear and convolution
    layer if it has none.

    Returns:
        The LoRA parameters (the only trainable ones).
    """
    network.requires_grad_(False)
    fused = [  # torch's attention and transformer layers read their weights directly
        name + "."
        for name, m in network.named_modules()
        if isinstance(m, nn.MultiheadAttention | nn.TransformerEncoderLayer)
    ]
    layers = [
        (name, m)
        for name, m in network.named_modules()
        if isinstance(m, nn.Linear | nn.Conv2d) and not name.startswith(tuple(fused))
    ]
    targets = [(n, m) for n, m in layers if n.endswith(LORA_TARGETS)] or layers
    params: list[nn.Parameter] = []
    for name, layer in targets:
        parent_name, _, child = name.rpartition(".")
        parent = network.get_submodule(parent_name) if parent_name else network
        lora = LoRA(layer, rank, generator, device)
        setattr(parent, child, lora)
        params += [*lora.down.parameters(), *lora.up.parameters()]
    return params


def _time_embedding(network: nn.Module) -> nn.Module:
    """The module whose output is the network's time embedding (the embedded UNet's
    ``time_mlp``, a diffusers UNet's ``time_embedding``)."""
    for name in ("time_mlp", "time_embedding"):
        if hasattr(network, name):
            return getattr(network, name)
    raise ConfigError("VSD's camera condition needs a UNet with a time embedding")


class TrainableCopy(Prior):
    """VSD's copy of a prior: the same network, trainable (in full or through LoRAs),
    camera-conditioned, with its own Adam optimiser.

    Args:
        prior: the pretrained prior (the embedded prior, Stable Diffusion or MVDream).
        config: the copy's settings.
        generator: draws the LoRAs' and the camera MLP's initial weights.

    Raises:
        ConfigError: for a prior without a network to copy.
    """

    def __init__(self, prior: Prior, config: VSDConfig, generator: torch.Generator) -> None:
        if hasattr(prior, "unet"):
            attribute, default_rank = "unet", 4
        elif hasattr(prior, "model"):
            attribute, default_rank = "model", None
        else:
            raise ConfigError(
                f"VSD needs a prior with a network to copy (the embedded prior, Stable "
                f"Diffusion or MVDream), not {type(prior).__name__}; choose another method"
            )
        self.base = prior
        self.config = config
        self.schedule = prior.schedule
        self.input_shape = prior.input_shape
        self.image_size = prior.image_size
        network = copy.deepcopy(getattr(prior, attribute))
        rank = config.lora_rank if config.lora_rank is not None else default_rank
        if rank is None:
            network.requires_grad_(True)
            trainable = list(network.parameters())
        else:
            trainable = add_lora(network, rank, generator, prior.device)
        self.network = network
        self._view = copy.copy(prior)
        setattr(self._view, attribute, network)
        method = type(prior).eps
        self._raw_eps = getattr(method, "__wrapped__", method)  # the prior's eps, with grad
        self.camera: nn.Module | None = None
        self._camera_input: torch.Tensor | None = None
        if config.camera_condition:
            embedding = _time_embedding(network)
            width = [m for m in embedding.modules() if isinstance(m, nn.Linear)][-1].out_features
            self.camera = nn.Sequential(nn.Linear(16, width), nn.SiLU(), nn.Linear(width, width))
            with torch.no_grad():  # torch's default range, drawn from the run's generator
                for p in self.camera[0].parameters():
                    p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) / 4.0)
                self.camera[-1].weight.zero_()
                self.camera[-1].bias.zero_()
            self.camera.to(prior.device)
            embedding.register_forward_hook(self._add_camera)
            trainable += list(self.camera.parameters())
        self.trainable = trainable
        self.optimizer = torch.optim.Adam(trainable, lr=config.lr)

    @property
    def device(self) -> torch.device:
        return self.base.device

    def _add_camera(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        if self.camera is None or self._camera_input is None:
            return output
        return output + self.camera(self._camera_input).to(output.dtype)

    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.base.embed(prompts)

    def _predict(
        self, x_t: torch.Tensor, t: torch.Tensor, embedding: torch.Tensor, cameras
    ) -> torch.Tensor:
        if cameras is not None:
            self._camera_input = cameras.to(self.device, torch.float32).flatten(1)
        else:
            self._camera_input = torch.zeros(x_t.shape[0], 16, device=self.device)
        try:
            return self._raw_eps(self._view, x_t, t, embedding, cameras)
        finally:
            self._camera_input = None

    def eps(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        embedding: torch.Tensor,
        cameras: torch.Tensor | None = None,
    ) -> torch.Tensor:
        with torch.no_grad():
            return self._predict(x_t, t, embedding, cameras)

    def train_step(
        self, z: torch.Tensor, condition: Condition, generator: torch.Generator
    ) -> float:
        """One Adam step of the copy on the denoising loss at the renders ``z``.

        Args:
            z: ``(B, C, h, w)`` the current renders in the prior's input space.
            condition: their conditioning (the prompt branch and the cameras are used).
            generator: CPU generator of ``t'``, ``xi`` and the camera dropout.

        Returns:
            The loss before the step.
        """
        batch = z.shape[0]
        t = torch.randint(0, self.schedule.num_timesteps, (batch,), generator=generator)
        xi = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
        keep = torch.rand(batch, generator=generator) >= self.config.camera_dropout
        t = t.to(z.device)
        alpha, sigma = (v.to(z.dtype)[:, None, None, None] for v in self.schedule.alpha_sigma(t))
        x_t = alpha * z.detach() + sigma * xi
        cameras = condition.cameras
        if cameras is not None:
            cameras = cameras * keep.to(cameras.device, cameras.dtype)[:, None, None]
        with torch.enable_grad():
            pred = self._predict(x_t, t, condition.cond, cameras)
            loss = (pred.float() - xi.float()).square().mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def state_dict(self) -> dict:
        """The trainable weights and the optimiser's state (copies, not views)."""
        return {
            "weights": [p.detach().cpu().clone() for p in self.trainable],
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
        }

    def load_state_dict(self, state: dict) -> None:
        weights = state["weights"]
        if len(weights) != len(self.trainable):
            raise ValueError(f"{len(weights)} saved weights for {len(self.trainable)} trainable")
        with torch.no_grad():
            for p, w in zip(self.trainable, weights, strict=True):
                p.copy_(w)
        self.optimizer.load_state_dict(state["optimizer"])
