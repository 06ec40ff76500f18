"""A NeRF for text-to-3D: hash-grid encoding plus two small MLPs (density, albedo).

Following Magic3D/DreamFusion practice (as in the CFD reference code): the raw density
gets a fixed blob bias (:func:`cfd3d.scene.fields.blob_bias`) so training starts from a
soft ball, the density activation is a shifted softplus, the albedo a sigmoid, and there
is no view dependence (the prior cannot supervise it). Normals are the normalised
negative density gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from cfd3d.errors import ConfigError
from cfd3d.scene.encoding import HashGridConfig, HashGridEncoding
from cfd3d.scene.fields import (
    NORMAL_METHODS,
    FieldOutput,
    NormalMethod,
    blob_bias,
    density_gradient,
)

DensityActivation = Literal["softplus", "exp"]
DENSITY_ACTIVATIONS: tuple[str, ...] = ("softplus", "exp")


class _TruncExp(torch.autograd.Function):
    """``exp(x)`` whose gradient uses ``exp(min(x, 15))`` (Instant-NGP's density
    activation; the clamp keeps early large activations from exploding the gradient)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


def density_activation(raw: torch.Tensor, kind: DensityActivation) -> torch.Tensor:
    """Non-negative density from a raw value: ``softplus`` or truncated-gradient ``exp``."""
    if kind == "exp":
        return _TruncExp.apply(raw)
    return F.softplus(raw)


@dataclass(frozen=True)
class NeRFConfig:
    """The hash-grid NeRF.

    Attributes:
        bound: half-size of the cube [-bound, bound]³ the encoding covers.
        encoding: the hash-grid encoding.
        hidden_dim: width of the hidden layers of both MLPs.
        n_hidden_layers: hidden layers per MLP.
        density_activation: ``"softplus"`` (DreamFusion; grows linearly, gentle for
            distillation) or ``"exp"`` (Instant-NGP's truncated exponential; reaches the
            high densities of hard surfaces quickly when fitting images).
        density_shift: added to the raw density before the activation (a negative shift
            makes empty space emptier at initialisation).
        blob_density: raw density of the initial blob at the origin (0 disables the blob).
        blob_radius: radius of the initial blob in world units.
        normal_method: how normals are differentiated: ``"central"`` differences or
            ``"autograd"``.
        normal_eps: central-difference step in world units (about one cell of a mid-level
            grid smooths the hash noise).
    """

    bound: float = 1.0
    encoding: HashGridConfig = field(default_factory=HashGridConfig)
    hidden_dim: int = 64
    n_hidden_layers: int = 1
    density_activation: DensityActivation = "softplus"
    density_shift: float = -1.0
    blob_density: float = 10.0
    blob_radius: float = 0.5
    normal_method: NormalMethod = "central"
    normal_eps: float = 1e-2

    def __post_init__(self) -> None:
        if self.bound <= 0.0:
            raise ConfigError(f"bound must be positive, got {self.bound}")
        if self.hidden_dim < 1 or self.n_hidden_layers < 0:
            raise ConfigError("NeRF MLPs need hidden_dim >= 1 and n_hidden_layers >= 0")
        if self.density_activation not in DENSITY_ACTIVATIONS:
            raise ConfigError(
                f"unknown density_activation {self.density_activation!r}; valid: "
                f"{', '.join(DENSITY_ACTIVATIONS)}"
            )
        if self.blob_radius <= 0.0:
            raise ConfigError(f"blob_radius must be positive, got {self.blob_radius}")
        if self.normal_method not in NORMAL_METHODS:
            raise ConfigError(
                f"unknown normal_method {self.normal_method!r}; valid: {', '.join(NORMAL_METHODS)}"
            )
        if self.normal_eps <= 0.0:
            raise ConfigError(f"normal_eps must be positive, got {self.normal_eps}")


def _mlp(in_dim: int, hidden: int, n_hidden: int, out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(n_hidden):
        layers += [nn.Linear(dim, hidden), nn.ReLU()]
        dim = hidden
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)


class NeRFField(nn.Module):
    """A hash-grid NeRF: ``field(points (N, 3)) -> FieldOutput``; see :class:`NeRFConfig`.

    Parameter groups for the optimiser: :meth:`grid_parameters` (the hash table; the
    reference recipe uses a 10x larger learning rate there) and :meth:`mlp_parameters`.

    Memory: with gradients on, :meth:`forward` and :meth:`normals` keep only the points
    for backward, which re-evaluates them with a graph (activation checkpointing, Chen
    et al. 2016, "Training Deep Nets with Sublinear Memory Cost"), and the hash encoding
    keeps only the points too (:func:`cfd3d.scene.encoding.hash_grid_encode`). The six
    density probes of central-difference normals and the MLPs' hidden activations then
    cost time in backward instead of memory for the whole render: the default field keeps
    12 bytes per point (the float32 point) instead of 1.8 KB, or 10.8 KB with normals.
    Backward evaluates the field a second time, which the lean encoding more than pays
    for on the CPU.

    Attributes:
        lean: ``False`` evaluates the reference way (the pure-autograd encoding, every
            activation kept), the twin the lean evaluation is tested against; the values
            and gradients are the same.
        density_scale: a factor on the density (1; a run sets it from its config's
            ``density_scale`` schedule, which is not part of the field's state).
    """

    def __init__(self, config: NeRFConfig | None = None, generator: torch.Generator | None = None):
        super().__init__()
        self.config = config = config or NeRFConfig()
        self.encoding = HashGridEncoding(config.encoding, generator=generator)
        dim = self.encoding.output_dim
        if generator is None:
            self.density_mlp = _mlp(dim, config.hidden_dim, config.n_hidden_layers, 1)
            self.albedo_mlp = _mlp(dim, config.hidden_dim, config.n_hidden_layers, 3)
        else:
            # nn.Linear draws from the global RNG; fork it so a seeded field is reproducible
            # without touching the caller's random state.
            seed = int(torch.randint(2**62, (), generator=generator))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.density_mlp = _mlp(dim, config.hidden_dim, config.n_hidden_layers, 1)
                self.albedo_mlp = _mlp(dim, config.hidden_dim, config.n_hidden_layers, 3)
        self.lean = True
        self.density_scale = 1.0

    def grid_parameters(self) -> list[nn.Parameter]:
        return [self.encoding.table]

    def mlp_parameters(self) -> list[nn.Parameter]:
        return [*self.density_mlp.parameters(), *self.albedo_mlp.parameters()]

    def _encode(self, points: torch.Tensor) -> torch.Tensor:
        unit = (points / self.config.bound + 1.0) * 0.5
        return self.encoding(unit) if self.lean else self.encoding.reference(unit)

    def _raw_density(self, points: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        raw = self.density_mlp(features)[:, 0]
        if self.config.blob_density != 0.0:
            raw = raw + blob_bias(points, self.config.blob_density, self.config.blob_radius)
        return raw + self.config.density_shift

    def density(self, points: torch.Tensor) -> torch.Tensor:
        """``(N,)`` density at ``points`` ``(N, 3)`` (skips the albedo MLP; not recomputed in
        backward by itself: :meth:`normals` recomputes around it)."""
        raw = self._raw_density(points, self._encode(points))
        return density_activation(raw, self.config.density_activation) * self.density_scale

    def _recomputed(self) -> bool:
        return self.lean and torch.is_grad_enabled()

    def forward(self, points: torch.Tensor) -> FieldOutput:
        """Density ``(N,)`` and albedo ``(N, 3)`` at world-space ``points`` ``(N, 3)``."""
        if self._recomputed():
            return checkpoint(self._evaluate, points, use_reentrant=False)
        return self._evaluate(points)

    def _evaluate(self, points: torch.Tensor) -> FieldOutput:
        features = self._encode(points)
        raw = self._raw_density(points, features)
        density = density_activation(raw, self.config.density_activation) * self.density_scale
        albedo = torch.sigmoid(self.albedo_mlp(features))
        return FieldOutput(density=density, albedo=albedo)

    def normals(self, points: torch.Tensor) -> torch.Tensor:
        """``(N, 3)`` outward unit normals, ``-∇σ/|∇σ|``, by the configured method."""
        if self._recomputed():
            return checkpoint(self._normals, points, use_reentrant=False)
        return self._normals(points)

    def _normals(self, points: torch.Tensor) -> torch.Tensor:
        grad = density_gradient(
            self.density, points, self.config.normal_method, self.config.normal_eps
        )
        return -F.normalize(grad, dim=-1, eps=1e-12)
