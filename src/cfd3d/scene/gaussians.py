"""A field of 3D Gaussians (3D Gaussian splatting, Kerbl et al. 2023) for distillation.

Each Gaussian ``i`` has a centre ``μ_i``, a covariance ``Σ_i = R_i S_i² R_iᵀ`` (``S_i`` the
diagonal of ``exp(log_scales_i)``, ``R_i`` the rotation of the unit quaternion
``(w, x, y, z)``), an opacity ``o_i = sigmoid(opacity_logit_i)`` and a colour given by
real spherical-harmonic coefficients (``sh_degree`` 0: one RGB DC term). The colour seen
along a unit direction ``d`` is ``clamp(0.5 + Σ_k c_k Y_k(d), 0, 1)``, the convention of
the 3DGS PLY files that common viewers read.

:mod:`cfd3d.render.splat` renders the Gaussians. For the mesh export and the occupancy
tools, :meth:`GaussianField.density` is the opacity-weighted sum of the kernels
``Σ_i o_i exp(-½ (x-μ_i)ᵀ Σ_i⁻¹ (x-μ_i))``, each kernel cut where ``o_i`` times it falls
below 1/255 (the rasteriser's alpha floor), which lets the sum skip far Gaussians exactly.

Adaptive density control follows the paper's Sec. 5: the norm of each Gaussian's
view-space (NDC) positional gradient is averaged over the views that saw it; above a
threshold, small Gaussians are cloned and large ones split in two (children drawn from
the parent, scales divided by 1.6); transparent and oversized Gaussians are pruned; the
opacities are periodically reset to at most 0.01. Parameters are resized in place, so an
optimiser keeps its references; :func:`adaptive_density_control` carries Adam's moments
over for surviving Gaussians and starts new ones at zero, as 3DGS does.

Initialisation: a blob (``init="blob"``), the Gaussians of a 3DGS PLY file (``init="ply"``;
:func:`cfd3d.export.ply.read_gaussian_ply` reads it and :meth:`GaussianField.set_parameters`
takes its values), or samples of an earlier field's density (:func:`gaussians_from_field`:
the hand-over of a voxel or NeRF stage to a Gaussian stage).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cfd3d.errors import ConfigError, UserError
from cfd3d.scene.fields import Field, FieldOutput

GaussianInit = Literal["blob", "ply"]
GAUSSIAN_INITS: tuple[str, ...] = ("blob", "ply")
MAX_SH_DEGREE = 3
ALPHA_FLOOR = 1.0 / 255.0
"""Kernel values (times the opacity) below this are cut: the rasteriser's alpha floor."""

PARAMETER_NAMES: tuple[str, ...] = ("means", "log_scales", "quats", "opacity_logits", "sh")
"""The per-Gaussian parameters, in the order of :meth:`GaussianField.parameter_groups`."""

_STAT_NAMES: tuple[str, ...] = ("grad_accum", "grad_count", "max_radius")

_INTEGER_FIELDS: tuple[str, ...] = (
    "count",
    "max_count",
    "sh_degree",
    "densify_from",
    "densify_until",
    "densify_every",
    "opacity_reset_every",
)

# Real spherical-harmonic basis constants (orthonormal, the 3DGS ordering).
_SH_C0 = 0.28209479177387814
_SH_C1 = 0.4886025119029199
_SH_C2 = (
    1.0925484305920792,
    -1.0925484305920792,
    0.31539156525252005,
    -1.0925484305920792,
    0.5462742152960396,
)
_SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


@dataclass(frozen=True)
class GaussianConfig:
    """The Gaussian field, its learning rates and its density-control schedule.

    Steps below count completed optimisation steps: an event "every k steps" happens after
    steps k, 2k, ...

    Attributes:
        count: number of Gaussians at initialisation (a blob, or samples of an earlier
            field's density when a run starts from a voxel or NeRF run); with ``init="ply"``
            the file's Gaussians are taken, all of them.
        max_count: densification never grows the field beyond this many Gaussians (the
            candidates with the largest gradients go first).
        init: ``"blob"``: centres uniform in a ball of ``init_radius`` around the origin;
            ``"ply"``: the Gaussians of the 3DGS PLY file ``init_path``.
        init_path: with ``init="ply"``, the 3DGS PLY file (as written by
            :mod:`cfd3d.export.ply` or the reference 3DGS code; positions are taken in
            cfd3d's world frame, +z up; spherical-harmonic bands above ``sh_degree`` are
            dropped, missing ones start at zero). A relative path is relative to the
            working directory; ``cfd3d generate`` reads the file whenever it builds the
            run (a resumed run too, before its checkpoint replaces the Gaussians).
            ``None`` otherwise.
        init_radius: radius of the initial blob in world units.
        init_scale: initial standard deviation of every Gaussian (isotropic) in world
            units; ``None``: half the mean spacing of the blob's centres.
        init_opacity: initial opacity of every Gaussian, in (0, 1).
        sh_degree: degree of the spherical-harmonic colour (0: view-independent RGB).
        bound: half-size of the cube [-bound, bound]³ the field lives in (the mesh
            export's grid); centres are not constrained to it.
        lr_means: Adam learning rate of the centres (world units).
        lr_scales: Adam learning rate of the log-scales.
        lr_quats: Adam learning rate of the quaternions.
        lr_opacity: Adam learning rate of the opacity logits.
        lr_colors: Adam learning rate of the spherical-harmonic colour coefficients.
        densify_from: densification starts after this many steps.
        densify_until: and stops after this many (the opacity resets stop with it).
        densify_every: steps between densifications.
        densify_grad_threshold: clone or split a Gaussian whose view-space positional
            gradient (in NDC units, averaged over the views that saw it) reaches this. Its
            scale follows the loss's: distillation gradients are not photometric ones.
        dense_scale: Gaussians whose largest scale is at most this (world units) are
            cloned, larger ones split.
        prune_opacity: Gaussians with a lower opacity are pruned at each densification.
        max_screen_size: prune Gaussians whose projected radius (3 σ) exceeded this
            fraction of the image height since the last densification; ``None``: never.
        max_world_size: prune Gaussians whose largest scale exceeds this (world units);
            ``None``: never.
        opacity_reset_every: steps between resets of every opacity to at most 0.01
            (during densification only); ``None``: never.
    """

    count: int = 2048
    max_count: int = 16384
    init: GaussianInit = "blob"
    init_path: str | None = None
    init_radius: float = 0.4
    init_scale: float | None = None
    init_opacity: float = 0.1
    sh_degree: int = 0
    bound: float = 1.0
    lr_means: float = 1e-3
    lr_scales: float = 5e-3
    lr_quats: float = 5e-3
    lr_opacity: float = 5e-2
    lr_colors: float = 1e-2
    densify_from: int = 100
    densify_until: int = 400
    densify_every: int = 100
    densify_grad_threshold: float = 2e-4
    dense_scale: float = 0.02
    prune_opacity: float = 5e-3
    max_screen_size: float | None = None
    max_world_size: float | None = None
    opacity_reset_every: int | None = None

    def __post_init__(self) -> None:
        for name in _INTEGER_FIELDS:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"Gaussian {name} must be an integer, got {value!r}")
        if self.count < 1:
            raise ConfigError(f"the Gaussian count must be a positive integer, got {self.count}")
        if self.max_count < self.count:
            raise ConfigError(
                f"max_count ({self.max_count}) must be at least the initial count ({self.count})"
            )
        if self.init not in GAUSSIAN_INITS:
            raise ConfigError(
                f"unknown Gaussian init {self.init!r}; valid: {', '.join(GAUSSIAN_INITS)}"
            )
        if self.init == "ply" and not (self.init_path or "").strip():
            raise ConfigError("Gaussian init ply needs init_path, the 3DGS PLY file to start from")
        if self.init != "ply" and self.init_path is not None:
            raise ConfigError(
                f"Gaussian init_path applies to init ply only; set init ply or drop init_path "
                f"(init is {self.init!r})"
            )
        if not 0 <= self.sh_degree <= MAX_SH_DEGREE:
            raise ConfigError(f"sh_degree must be 0..{MAX_SH_DEGREE}, got {self.sh_degree}")
        if self.init_radius <= 0.0 or self.bound <= 0.0:
            raise ConfigError("Gaussian init_radius and bound must be positive")
        if self.init_scale is not None and self.init_scale <= 0.0:
            raise ConfigError(f"init_scale must be positive (or null), got {self.init_scale}")
        if not 0.0 < self.init_opacity < 1.0:
            raise ConfigError(f"init_opacity must lie in (0, 1), got {self.init_opacity}")
        rates = (self.lr_means, self.lr_scales, self.lr_quats, self.lr_opacity, self.lr_colors)
        if min(rates) <= 0.0:
            raise ConfigError("the Gaussians' learning rates must be positive")
        if self.densify_every < 1:
            raise ConfigError(
                f"densify_every must be a positive number of steps, got {self.densify_every}"
            )
        if self.opacity_reset_every is not None and self.opacity_reset_every < 1:
            raise ConfigError(
                "opacity_reset_every must be a positive number of steps (or null for never), "
                f"got {self.opacity_reset_every}"
            )
        if self.densify_from < 0 or self.densify_until < self.densify_from:
            raise ConfigError(
                "need 0 <= densify_from <= densify_until, got "
                f"{self.densify_from} and {self.densify_until}"
            )
        if self.densify_grad_threshold <= 0.0 or self.dense_scale <= 0.0:
            raise ConfigError("densify_grad_threshold and dense_scale must be positive")
        if not 0.0 <= self.prune_opacity < 1.0:
            raise ConfigError(f"prune_opacity must lie in [0, 1), got {self.prune_opacity}")
        for name in ("max_screen_size", "max_world_size"):
            value = getattr(self, name)
            if value is not None and value <= 0.0:
                raise ConfigError(f"{name} must be positive (or null for no limit), got {value}")

    def densifies_after(self, steps_done: int) -> bool:
        """Whether density control runs after ``steps_done`` completed steps."""
        return (
            self.densify_from < steps_done <= self.densify_until
            and steps_done % self.densify_every == 0
        )

    def resets_opacity_after(self, steps_done: int) -> bool:
        """Whether the opacities are reset after ``steps_done`` completed steps."""
        every = self.opacity_reset_every
        return every is not None and steps_done <= self.densify_until and steps_done % every == 0


def quaternion_to_rotation(quats: torch.Tensor) -> torch.Tensor:
    """``(N, 3, 3)`` rotation matrices of ``(N, 4)`` quaternions ``(w, x, y, z)``
    (normalised here; the columns are the Gaussians' axes)."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rows = (
        (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)),
        (2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)),
        (2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)),
    )
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def covariances(log_scales: torch.Tensor, quats: torch.Tensor) -> torch.Tensor:
    """``(N, 3, 3)`` world covariances ``R S² Rᵀ`` from ``(N, 3)`` log-scales and ``(N, 4)``
    quaternions."""
    rotation = quaternion_to_rotation(quats)
    axes = rotation * torch.exp(log_scales)[:, None, :]
    return axes @ axes.transpose(1, 2)


def sh_basis(directions: torch.Tensor, degree: int) -> torch.Tensor:
    """``(..., (degree+1)²)`` real spherical harmonics of unit ``directions`` ``(..., 3)``."""
    x, y, z = directions.unbind(-1)
    basis = [torch.full_like(x, _SH_C0)]
    if degree >= 1:
        basis += [-_SH_C1 * y, _SH_C1 * z, -_SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        basis += [
            _SH_C2[0] * x * y,
            _SH_C2[1] * y * z,
            _SH_C2[2] * (2 * zz - xx - yy),
            _SH_C2[3] * x * z,
            _SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        basis += [
            _SH_C3[0] * y * (3 * xx - yy),
            _SH_C3[1] * x * y * z,
            _SH_C3[2] * y * (4 * zz - xx - yy),
            _SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            _SH_C3[4] * x * (4 * zz - xx - yy),
            _SH_C3[5] * z * (xx - yy),
            _SH_C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(basis, dim=-1)


def rgb_to_sh_dc(rgb: torch.Tensor) -> torch.Tensor:
    """The DC coefficient whose colour is ``rgb`` (``(rgb - 0.5) / Y_0``)."""
    return (rgb - 0.5) / _SH_C0


@dataclass(frozen=True)
class GaussianParameters:
    """The per-Gaussian values of ``N`` Gaussians (see :class:`GaussianField`).

    Attributes:
        means: ``(N, 3)`` centres.
        log_scales: ``(N, 3)`` log standard deviations.
        quats: ``(N, 4)`` quaternions ``(w, x, y, z)``.
        opacity_logits: ``(N,)`` pre-sigmoid opacities.
        sh: ``(N, K, 3)`` spherical-harmonic colour coefficients.
    """

    means: torch.Tensor
    log_scales: torch.Tensor
    quats: torch.Tensor
    opacity_logits: torch.Tensor
    sh: torch.Tensor


def kernel_cutoff(opacity: torch.Tensor) -> torch.Tensor:
    """Squared Mahalanobis radius beyond which ``opacity · kernel < 1/255``:
    ``2 ln(255 · opacity)`` (negative: the Gaussian is never seen)."""
    return 2.0 * torch.log(opacity.clamp_min(1e-30) / ALPHA_FLOOR)


class GaussianField(nn.Module):
    """A variable-size set of 3D Gaussians; see the module doc and :class:`GaussianConfig`.

    The constructor draws the blob; with ``init="ply"`` (or a hand-over from an earlier
    field) the caller then sets the Gaussians with :meth:`set_parameters`.

    Attributes:
        means: ``(N, 3)`` centres.
        log_scales: ``(N, 3)`` log standard deviations along the Gaussians' axes.
        quats: ``(N, 4)`` rotations as (unnormalised) quaternions ``(w, x, y, z)``.
        opacity_logits: ``(N,)`` pre-sigmoid opacities.
        sh: ``(N, (sh_degree+1)², 3)`` spherical-harmonic colour coefficients.
        grad_accum, grad_count, max_radius: ``(N,)`` density-control statistics since the
            last densification (summed view-space gradient norms, views that saw the
            Gaussian, largest projected radius as a fraction of the image height). They
            are buffers, so checkpoints hold them and a resumed run densifies alike.
    """

    def __init__(
        self, config: GaussianConfig | None = None, generator: torch.Generator | None = None
    ):
        super().__init__()
        self.config = config = config or GaussianConfig()
        n = config.count
        direction = F.normalize(torch.randn(n, 3, generator=generator), dim=-1)
        radius = config.init_radius * torch.rand(n, 1, generator=generator) ** (1.0 / 3.0)
        scale = config.init_scale
        if scale is None:
            scale = 0.5 * (4.0 / 3.0 * math.pi * config.init_radius**3 / n) ** (1.0 / 3.0)
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        n_sh = (config.sh_degree + 1) ** 2
        self.means = nn.Parameter(direction * radius)
        self.log_scales = nn.Parameter(torch.full((n, 3), math.log(scale)))
        self.quats = nn.Parameter(quats)
        self.opacity_logits = nn.Parameter(
            torch.full((n,), math.log(config.init_opacity / (1.0 - config.init_opacity)))
        )
        self.sh = nn.Parameter(torch.zeros(n, n_sh, 3))
        for name in _STAT_NAMES:
            self.register_buffer(name, torch.zeros(n))

    # ----------------------------------------------------------------- attributes

    @property
    def count(self) -> int:
        return self.means.shape[0]

    @property
    def scales(self) -> torch.Tensor:
        """``(N, 3)`` standard deviations along the axes."""
        return torch.exp(self.log_scales)

    @property
    def opacity(self) -> torch.Tensor:
        """``(N,)`` opacities in (0, 1)."""
        return torch.sigmoid(self.opacity_logits)

    def covariances(self) -> torch.Tensor:
        """``(N, 3, 3)`` world-space covariances."""
        return covariances(self.log_scales, self.quats)

    def colors(self, directions: torch.Tensor | None = None) -> torch.Tensor:
        """``(..., N, 3)`` colours in [0, 1] seen along unit ``directions`` ``(..., N, 3)``
        (from the viewer towards each Gaussian); ``None``: the DC colour ``(N, 3)``."""
        if directions is None or self.config.sh_degree == 0:
            rgb = _SH_C0 * self.sh[:, 0, :]
            if directions is not None:
                rgb = rgb.expand(*directions.shape[:-1], 3)
        else:
            basis = sh_basis(directions, self.config.sh_degree)
            rgb = (basis[..., None] * self.sh).sum(dim=-2)
        return (rgb + 0.5).clamp(0.0, 1.0)

    def shortest_axes(self) -> torch.Tensor:
        """``(N, 3)`` unit axis of each Gaussian's smallest scale (its normal, unoriented)."""
        rotation = quaternion_to_rotation(self.quats)
        index = self.log_scales.argmin(dim=-1)
        return rotation.gather(2, index[:, None, None].expand(-1, 3, 1))[..., 0]

    def parameter_groups(self) -> list[dict]:
        """Adam parameter groups with the configured per-group learning rates."""
        c = self.config
        rates = (c.lr_means, c.lr_scales, c.lr_quats, c.lr_opacity, c.lr_colors)
        return [
            {"params": [getattr(self, name)], "lr": lr, "name": name}
            for name, lr in zip(PARAMETER_NAMES, rates, strict=True)
        ]

    @torch.no_grad()
    def set_parameters(self, values: GaussianParameters) -> None:
        """Replace every Gaussian by ``values`` (their count may differ) and clear the
        density-control statistics. The parameter objects stay (an optimiser built on
        them stays valid); call it before any render, while no autograd graph of the
        field is alive.

        Raises:
            ValueError: shapes that do not fit together or the field's ``sh_degree``.
        """
        n = values.means.shape[0]
        n_sh = (self.config.sh_degree + 1) ** 2
        expected = {
            "means": (n, 3),
            "log_scales": (n, 3),
            "quats": (n, 4),
            "opacity_logits": (n,),
            "sh": (n, n_sh, 3),
        }
        new = {}
        for name, shape in expected.items():
            value = getattr(values, name)
            if tuple(value.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {shape}")
            new[name] = value.detach()
        for name in _STAT_NAMES:
            new[name] = torch.zeros(n)
        self._resize(new, new_parameters=False)

    # --------------------------------------------------------------- as a field

    def _kernel_sum(
        self, points: torch.Tensor, colors: bool, cells: int = 8
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``Σ_i o_i k_i(x)`` ``(P,)`` and, if ``colors``, ``Σ_i o_i k_i(x) c_i`` ``(P, 3)``.

        The points are grouped by a ``cells³`` grid over ``[-bound, bound]³`` (outside
        points join the nearest border cell); each group is evaluated against the
        Gaussians whose cut-off box meets the group's bounding box only.
        """
        opacity = self.opacity
        cutoff = kernel_cutoff(opacity)
        seen = cutoff > 0.0
        rotation = quaternion_to_rotation(self.quats)
        inv_scales = torch.exp(-self.log_scales)
        diagonal = torch.diagonal(self.covariances(), dim1=1, dim2=2)
        half_extent = torch.sqrt(cutoff.clamp_min(0.0)[:, None] * diagonal)
        albedo = self.colors() if colors else None
        bound = self.config.bound
        cell = ((points.detach() + bound) * (cells / (2.0 * bound))).floor().long()
        cell = cell.clamp(0, cells - 1)
        key = (cell[:, 0] * cells + cell[:, 1]) * cells + cell[:, 2]
        key, order = torch.sort(key, stable=True)
        starts = torch.unique_consecutive(key, return_counts=True)[1].cumsum(0).tolist()
        density_parts, color_parts = [], []
        begin = 0
        for end in starts:
            p = points[order[begin:end]]
            begin = end
            lo, hi = p.detach().min(dim=0).values, p.detach().max(dim=0).values
            near = seen & ((self.means + half_extent >= lo) & (self.means - half_extent <= hi)).all(
                -1
            )
            index = near.nonzero()[:, 0]
            offset = p[:, None, :] - self.means[index][None]
            local = torch.einsum("pni,nij->pnj", offset, rotation[index]) * inv_scales[index]
            mahalanobis = local.square().sum(-1)
            inside = mahalanobis <= cutoff[index]
            weight = torch.where(inside, opacity[index] * torch.exp(-0.5 * mahalanobis), 0.0)
            density_parts.append(weight.sum(-1))
            if albedo is not None:
                color_parts.append(weight @ albedo[index])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        density = torch.cat(density_parts)[inverse] if density_parts else points.new_zeros(0)
        color = None
        if colors:
            color = torch.cat(color_parts)[inverse] if color_parts else points.new_zeros(0, 3)
        return density, color

    def density(self, points: torch.Tensor) -> torch.Tensor:
        """``(P,)`` opacity-weighted sum of the (cut) kernels at ``points`` ``(P, 3)``."""
        return self._kernel_sum(points, colors=False)[0]

    def forward(self, points: torch.Tensor) -> FieldOutput:
        """Density ``(P,)`` as :meth:`density` and albedo ``(P, 3)``: the kernel-weighted
        mean DC colour (grey where no Gaussian reaches)."""
        density, color = self._kernel_sum(points, colors=True)
        assert color is not None
        weight = density[:, None]
        albedo = (color + 0.5 * 1e-6) / (weight + 1e-6)
        return FieldOutput(density=density, albedo=albedo.clamp(0.0, 1.0))

    # ------------------------------------------------------------ density control

    def _values(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).detach() for name in (*PARAMETER_NAMES, *_STAT_NAMES)}

    def _resize(self, values: dict[str, torch.Tensor], new_parameters: bool) -> None:
        """Set parameters and statistics to ``values`` (gradients are dropped).

        ``new_parameters``: replace the parameter objects (safe while an autograd graph
        of the old ones is alive; optimisers must be pointed at the new ones). Otherwise
        resize the existing objects in place (an optimiser's references stay valid, but
        no graph of the field may be alive: autograd remembers a leaf's shape).
        """
        for name, value in values.items():
            target = getattr(self, name)
            value = value.to(target.device, target.dtype).contiguous()
            if isinstance(target, nn.Parameter) and new_parameters:
                setattr(self, name, nn.Parameter(value))
                continue
            target.data = value
            if isinstance(target, nn.Parameter):
                target.grad = None

    @torch.no_grad()
    def accumulate_stats(
        self, means2d_grad: torch.Tensor, visible: torch.Tensor, radius: torch.Tensor
    ) -> None:
        """Add one step's view-space gradients to the density-control statistics.

        Args:
            means2d_grad: ``(B, N, 2)`` gradient of the loss with respect to the projected
                centres in NDC units (``[-1, 1]`` across the image).
            visible: ``(B, N)`` whether each view rasterised each Gaussian.
            radius: ``(B, N)`` projected 3 σ radius as a fraction of the image height.
        """
        norm = means2d_grad.norm(dim=-1) * visible
        self.grad_accum += norm.sum(0).to(self.grad_accum.dtype)
        self.grad_count += visible.sum(0).to(self.grad_count.dtype)
        seen = torch.where(visible, radius, 0.0).amax(0).to(self.max_radius.dtype)
        self.max_radius.copy_(torch.maximum(self.max_radius, seen))

    @torch.no_grad()
    def densify_and_prune(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Clone, split and prune once (see the module doc); resets the statistics.

        Pruning is decided on the current Gaussians (opacity, ``max_screen_size``,
        ``max_world_size``); pruned ones are neither cloned nor split. Large-gradient
        Gaussians are cloned (small) or replaced by two children drawn from them (large),
        largest gradients first while ``max_count`` allows. Order of the result: the kept
        Gaussians, then the clones, then the first and the second children. The
        parameters are new objects (:func:`adaptive_density_control` moves an optimiser
        over to them).

        Args:
            generator: randomness of the split children's positions.

        Returns:
            ``(N_new,)`` index of each new Gaussian's source among the old ones (its
            optimiser state carries over), ``-1`` for clones and children (fresh state).
        """
        c = self.config
        v = self._values()
        n = self.count
        scale_max = torch.exp(v["log_scales"]).amax(-1)
        prune = torch.sigmoid(v["opacity_logits"]) < c.prune_opacity
        if c.max_screen_size is not None:
            prune |= v["max_radius"] > c.max_screen_size
        if c.max_world_size is not None:
            prune |= scale_max > c.max_world_size
        grad = v["grad_accum"] / v["grad_count"].clamp_min(1.0)
        candidate = (grad >= c.densify_grad_threshold) & ~prune
        order = torch.sort(grad, descending=True, stable=True).indices
        ranked = order[candidate[order]]
        budget = max(c.max_count - int((~prune).sum()), 0)
        chosen = torch.zeros(n, dtype=torch.bool)
        chosen[ranked[:budget]] = True
        clone = chosen & (scale_max <= c.dense_scale)
        split = chosen & (scale_max > c.dense_scale)
        keep = ~prune & ~split
        kept, cloned, parents = keep.nonzero()[:, 0], clone.nonzero()[:, 0], split.nonzero()[:, 0]
        rotation = quaternion_to_rotation(v["quats"][parents])
        children = []
        for _ in range(2):
            xi = torch.randn(len(parents), 3, generator=generator).to(v["means"])
            offset = (rotation * torch.exp(v["log_scales"][parents])[:, None, :]) @ xi[..., None]
            children.append(v["means"][parents] + offset[..., 0])
        source = torch.cat([kept, cloned, parents, parents])
        new = {name: v[name][source] for name in PARAMETER_NAMES}
        new["means"] = torch.cat([v["means"][kept], v["means"][cloned], *children])
        new["log_scales"][len(kept) + len(cloned) :] -= math.log(1.6)
        for name in _STAT_NAMES:
            new[name] = v[name].new_zeros(len(source))
        self._resize(new, new_parameters=True)
        return torch.cat([kept, torch.full((len(source) - len(kept),), -1, dtype=torch.long)])

    @torch.no_grad()
    def reset_opacity(self, ceiling: float = 0.01) -> None:
        """Clamp every opacity to at most ``ceiling`` (3DGS's periodic reset)."""
        logit = math.log(ceiling / (1.0 - ceiling))
        self.opacity_logits.clamp_(max=logit)

    # ------------------------------------------------------------------ checkpoints

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Resize to the saved count first (densification changes it), then load.

        The parameter objects stay (an optimiser built on them loads its state next);
        load before any render, while no autograd graph of the field is alive.
        """
        sizes = {
            name: state_dict[name].shape
            for name in (*PARAMETER_NAMES, *_STAT_NAMES)
            if name in state_dict
        }
        self._resize(
            {name: getattr(self, name).new_zeros(shape) for name, shape in sizes.items()},
            new_parameters=False,
        )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def point_spacing(points: torch.Tensor, neighbours: int = 3, chunk: int = 2048) -> torch.Tensor:
    """``(N,)`` root mean square distance of each of ``points`` ``(N, 3)`` to its
    ``neighbours`` nearest others (3DGS's initial scale of a point cloud); the mean distance
    of a single point is 0."""
    n = points.shape[0]
    k = min(neighbours, n - 1)
    if k < 1:
        return points.new_zeros(n)
    parts = []
    for first in range(0, n, chunk):
        block = points[first : first + chunk]
        squared = torch.cdist(block, points).square()
        rows = torch.arange(block.shape[0], device=points.device)
        squared[rows, rows + first] = torch.inf  # not its own neighbour
        parts.append(torch.topk(squared, k, dim=1, largest=False).values.mean(dim=1).sqrt())
    return torch.cat(parts)


@torch.no_grad()
def gaussians_from_field(
    source: Field,
    bound: float,
    config: GaussianConfig,
    generator: torch.Generator | None = None,
    resolution: int = 64,
    chunk: int = 65536,
    device: torch.device | str = "cpu",
) -> GaussianParameters:
    """``config.count`` Gaussians sampled from an earlier field's density (the hand-over of
    a voxel or NeRF stage to a Gaussian stage).

    The source is evaluated at the centres of a ``resolution³`` grid of cells over
    ``[-bound, bound]³``. Cells whose density reaches half the field's interior density
    (``Σσ³ / Σσ²``, the level of the automatic mesh threshold,
    :func:`cfd3d.export.mesh.auto_threshold`) are the object; ``count`` of them are drawn
    with replacement, with probability proportional to their opacity across one cell
    ``1 - exp(-σ h)`` (``h`` the cell size), and each centre is placed uniformly inside its
    cell. Colours are the source's albedo at the centres (the DC term; higher bands zero).
    Scales are isotropic: half the root mean square distance to the three nearest other
    centres (3DGS starts a point cloud at the whole distance; its points lie on surfaces,
    these fill a volume, whose rendered silhouette grows by about one scale beyond the
    outermost centres: at half the spacing neighbours still overlap at one standard
    deviation, and on ``red_cube`` at 32² the silhouette IoU against the source's render
    rose from 0.79 to 0.97), at least an eighth of a cell. Opacity is
    ``config.init_opacity``; rotations are the identity.

    Args:
        source: the earlier field (``points (P, 3) -> FieldOutput``).
        bound: half-size of the cube the source lives in.
        config: the Gaussians' config (``count``, ``init_opacity``, ``sh_degree``).
        generator: randomness of the draw (the run's seed makes it deterministic).
        resolution: grid cells per axis.
        chunk: points evaluated at a time.
        device: where the source is evaluated (the result is on the CPU).

    Raises:
        UserError: the source holds no density.
    """
    h = 2.0 * bound / resolution
    axis = -bound + (torch.arange(resolution, dtype=torch.float32) + 0.5) * h
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    density = torch.cat(
        [
            source(grid[first : first + chunk].to(device)).density.float().cpu()
            for first in range(0, grid.shape[0], chunk)
        ]
    ).clamp_min(0.0)
    squares = density.double().square()
    if not float(squares.sum()) > 0.0:
        raise UserError(
            "the earlier field holds no density, so there is nothing to place Gaussians on; "
            "run the earlier stage longer or start the Gaussians from a blob"
        )
    interior = float((squares * density.double()).sum() / squares.sum())
    weight = torch.where(density >= 0.5 * interior, -torch.expm1(-density * h), 0.0)
    cells = torch.multinomial(weight, config.count, replacement=True, generator=generator)
    jitter = torch.rand(config.count, 3, generator=generator) - 0.5
    means = grid[cells] + h * jitter
    albedo = torch.cat(
        [
            source(means[first : first + chunk].to(device)).albedo.float().cpu()
            for first in range(0, config.count, chunk)
        ]
    )
    scales = (0.5 * point_spacing(means)).clamp_min(h / 8.0)
    n_sh = (config.sh_degree + 1) ** 2
    sh = torch.zeros(config.count, n_sh, 3)
    sh[:, 0] = rgb_to_sh_dc(albedo.clamp(0.0, 1.0))
    quats = torch.zeros(config.count, 4)
    quats[:, 0] = 1.0
    logit = math.log(config.init_opacity / (1.0 - config.init_opacity))
    return GaussianParameters(
        means=means,
        log_scales=torch.log(scales)[:, None].expand(-1, 3).clone(),
        quats=quats,
        opacity_logits=torch.full((config.count,), logit),
        sh=sh,
    )


@dataclass(frozen=True)
class DensityControlReport:
    """What one call of :func:`adaptive_density_control` did.

    Attributes:
        count_before, count_after: Gaussians before and after.
        densified: whether clone/split/prune ran.
        opacity_reset: whether the opacities were reset.
    """

    count_before: int
    count_after: int
    densified: bool
    opacity_reset: bool


def _move_parameter(
    optimizer: torch.optim.Optimizer, old: nn.Parameter, new: nn.Parameter, source: torch.Tensor
) -> None:
    """Point ``optimizer`` at ``new`` instead of ``old`` and gather ``old``'s per-element
    state (Adam's moments) by ``source`` (zeros where ``-1``)."""
    for group in optimizer.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    state = optimizer.state.pop(old, None)
    if not state:
        return
    optimizer.state[new] = state
    keep = source >= 0
    for key, value in state.items():
        if not torch.is_tensor(value) or value.ndim == 0:
            continue
        fresh = value.new_zeros((len(source), *value.shape[1:]))
        fresh[keep.to(value.device)] = value[source[keep].to(value.device)]
        state[key] = fresh


def _zero_state(optimizer: torch.optim.Optimizer, param: nn.Parameter) -> None:
    for key, value in optimizer.state.get(param, {}).items():
        if torch.is_tensor(value) and value.ndim > 0:
            optimizer.state[param][key] = torch.zeros_like(value)


def adaptive_density_control(
    field: GaussianField,
    optimizer: torch.optim.Optimizer,
    steps_done: int,
    generator: torch.Generator | None = None,
) -> DensityControlReport:
    """Run the density-control events due after ``steps_done`` completed steps.

    Densification (:meth:`GaussianField.densify_and_prune`) keeps the Adam moments of
    surviving Gaussians and starts clones and children at zero; an opacity reset zeroes
    the opacity's moments (both as in 3DGS). The optimiser must hold the field's
    parameters (any grouping); after a densification it holds the new parameter objects.

    Args:
        field: the Gaussians.
        optimizer: the optimiser of their parameters (Adam or any optimiser whose
            per-parameter state tensors have the parameter's leading dimension).
        steps_done: completed optimisation steps.
        generator: randomness of split children.
    """
    c = field.config
    before = field.count
    densified = c.densifies_after(steps_done)
    if densified:
        old = {name: getattr(field, name) for name in PARAMETER_NAMES}
        source = field.densify_and_prune(generator)
        for name in PARAMETER_NAMES:
            _move_parameter(optimizer, old[name], getattr(field, name), source)
    reset = c.resets_opacity_after(steps_done)
    if reset:
        field.reset_opacity()
        _zero_state(optimizer, field.opacity_logits)
    return DensityControlReport(before, field.count, densified, reset)
