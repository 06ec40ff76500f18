"""Grid encodings in pure PyTorch: trilinear interpolation of dense grids and the
multiresolution hash grid of Instant-NGP (Müller et al. 2022, "Instant Neural Graphics
Primitives with a Multiresolution Hash Encoding", Sec. 3).

Both work on points in the unit cube [0, 1]³. Interpolation gathers the 8 corner values
with ``index_select`` (whose backward is a scatter-add), which on CPU is several times
faster than ``grid_sample``'s backward and supports double backward. The
pure-PyTorch path is the reference: a future fused accelerator (tiny-cuda-nn) would sit
behind a flag and be tested against :class:`HashGridEncoding`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn

from cfd3d.errors import ConfigError

# Instant-NGP's spatial hash: xor of the integer corner coordinates times these primes.
HASH_PRIMES = (1, 2_654_435_761, 805_459_861)


def _corner_terms(points: torch.Tensor, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower/upper corner coordinates and their linear weights, per axis.

    Args:
        points: ``(N, 3)`` in [0, 1].
        cells: ``(L,)`` number of cells per axis of each grid (``cells + 1`` vertices).

    Returns:
        corners ``(N, L, 3, 2)`` integer vertex coordinates (lower, upper) and
        weights ``(N, L, 3, 2)`` (``1 - frac``, ``frac``).
    """
    scale = cells.to(points.dtype)
    x = points[:, None, :] * scale[:, None]
    lower = torch.minimum(x.floor(), (scale - 1.0)[:, None]).clamp_min(0.0)
    frac = x - lower
    lower = lower.long()
    corners = torch.stack([lower, lower + 1], dim=-1)
    weights = torch.stack([1.0 - frac, frac], dim=-1)
    return corners, weights


def _outer3(terms: torch.Tensor, op: str) -> torch.Tensor:
    """Combine per-axis terms ``(..., 3, 2)`` into the 8 corners ``(..., 8)``.

    Corner ``c = 4 a + 2 b + d`` combines x-term ``a``, y-term ``b`` and z-term ``d``
    with ``op`` in {"add", "mul", "xor"}.
    """
    x = terms[..., 0, :, None, None]
    y = terms[..., 1, None, :, None]
    z = terms[..., 2, None, None, :]
    if op == "add":
        out = x + y + z
    elif op == "mul":
        out = x * y * z
    else:
        out = x ^ y ^ z
    return out.flatten(-3)


def trilinear_interpolate(grid: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Trilinear interpolation of a dense vertex grid.

    Vertex ``grid[i, j, k]`` sits at ``(i, j, k) / (V - 1)``; points outside [0, 1]³ are
    clamped to the boundary cell (the result extrapolates linearly; clamp the points
    first if that is not wanted).

    Args:
        grid: ``(V, V, V, C)`` values, x index first.
        points: ``(N, 3)`` in [0, 1].

    Returns:
        ``(N, C)`` interpolated values (differentiable in ``grid`` and ``points``).
    """
    n_vertices = grid.shape[0]
    if grid.shape[:3] != (n_vertices,) * 3 or n_vertices < 2:
        raise ValueError(f"grid must be (V, V, V, C) with V >= 2, got {tuple(grid.shape)}")
    cells = torch.tensor([n_vertices - 1], device=points.device)
    corners, weights = _corner_terms(points, cells)
    strides = torch.tensor([n_vertices * n_vertices, n_vertices, 1], device=points.device)
    index = _outer3(corners * strides[:, None], "add")[:, 0]  # (N, 8)
    w = _outer3(weights, "mul")[:, 0]  # (N, 8)
    values = grid.reshape(-1, grid.shape[-1]).index_select(0, index.reshape(-1))
    return (values.view(*index.shape, -1) * w[..., None]).sum(dim=1)


@dataclass(frozen=True)
class HashGridConfig:
    """A multiresolution hash-grid encoding.

    Level ``l`` has ``floor(base_resolution * b**l)`` cells per axis, with ``b`` chosen so
    the last level has ``max_resolution``. A level whose ``(cells + 1)**3`` vertices fit
    in the table is stored densely (one entry per vertex, no collisions); finer levels
    hash their vertices into ``2**log2_table_size`` entries.

    Attributes:
        n_levels: number of resolution levels.
        features_per_level: features stored per table entry.
        log2_table_size: log2 of the entries per hashed level (Instant-NGP uses 19 on GPU;
            smaller tables are faster on CPU).
        base_resolution: cells per axis of the coarsest level.
        max_resolution: cells per axis of the finest level.
        init_scale: table entries start uniform in ``[-init_scale, init_scale]``.
    """

    n_levels: int = 12
    features_per_level: int = 2
    log2_table_size: int = 17
    base_resolution: int = 16
    max_resolution: int = 512
    init_scale: float = 1e-4

    def __post_init__(self) -> None:
        if self.n_levels < 1 or self.features_per_level < 1:
            raise ConfigError("a hash grid needs n_levels >= 1 and features_per_level >= 1")
        if not 4 <= self.log2_table_size <= 26:
            raise ConfigError(f"log2_table_size must lie in [4, 26], got {self.log2_table_size}")
        if not 1 <= self.base_resolution <= self.max_resolution:
            raise ConfigError(
                "hash grid resolutions need 1 <= base_resolution <= max_resolution, got "
                f"{self.base_resolution} and {self.max_resolution}"
            )
        if self.init_scale < 0.0:
            raise ConfigError(f"init_scale must be >= 0, got {self.init_scale}")

    @property
    def output_dim(self) -> int:
        return self.n_levels * self.features_per_level

    def resolutions(self) -> list[int]:
        """Cells per axis of each level, coarse to fine."""
        if self.n_levels == 1:
            return [self.base_resolution]
        growth = math.exp(
            (math.log(self.max_resolution) - math.log(self.base_resolution)) / (self.n_levels - 1)
        )
        # The small epsilon keeps floor() from losing a cell to rounding at the last level.
        return [
            math.floor(self.base_resolution * growth**lvl + 1e-6) for lvl in range(self.n_levels)
        ]


class HashGridEncoding(nn.Module):
    """Instant-NGP's multiresolution hash encoding, ``(N, 3) in [0,1]³ -> (N, L * F)``.

    All levels share one parameter table (concatenated); the coarse, dense levels come
    first. Features of level ``l`` are ``output[:, l * F:(l + 1) * F]``.
    """

    def __init__(self, config: HashGridConfig, generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        table_size = 2**config.log2_table_size
        cells = config.resolutions()
        dense = [(r + 1) ** 3 <= table_size for r in cells]
        sizes = [(r + 1) ** 3 if d else table_size for r, d in zip(cells, dense, strict=True)]
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.n_dense = sum(dense)
        self.register_buffer("cells", torch.tensor(cells), persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets), persistent=False)
        self.register_buffer("primes", torch.tensor(HASH_PRIMES), persistent=False)
        table = torch.rand(sum(sizes), config.features_per_level, generator=generator)
        self.table = nn.Parameter((2.0 * table - 1.0) * config.init_scale)

    @property
    def output_dim(self) -> int:
        return self.config.output_dim

    def level_sizes(self) -> list[int]:
        """Entries of each level in the table."""
        bounds = [*self.offsets.tolist(), self.table.shape[0]]
        return [b - a for a, b in itertools.pairwise(bounds)]

    def indices_and_weights(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Table rows and trilinear weights of the 8 corners at every level.

        Args:
            points: ``(N, 3)`` in [0, 1] (clamped).

        Returns:
            rows ``(N, L, 8)`` into :attr:`table` and weights ``(N, L, 8)``.
        """
        points = points.clamp(0.0, 1.0)
        corners, weights = _corner_terms(points, self.cells)
        rows = []
        n_dense = self.n_dense
        if n_dense > 0:
            vertices = self.cells[:n_dense] + 1
            strides = torch.stack([vertices * vertices, vertices, torch.ones_like(vertices)], -1)
            terms = corners[:, :n_dense] * strides[..., None]
            rows.append(_outer3(terms, "add") + self.offsets[:n_dense, None])
        if n_dense < len(self.cells):
            mask = 2**self.config.log2_table_size - 1
            terms = (corners[:, n_dense:] * self.primes[:, None]) & mask
            rows.append(_outer3(terms, "xor") + self.offsets[n_dense:, None])
        return torch.cat(rows, dim=1), _outer3(weights, "mul")

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Encode ``points`` ``(N, 3)`` in [0, 1]³ as ``(N, n_levels * features_per_level)``."""
        rows, weights = self.indices_and_weights(points)
        values = self.table.index_select(0, rows.reshape(-1)).view(*rows.shape, -1)
        features = (values * weights[..., None].to(values.dtype)).sum(dim=2)
        return features.flatten(1)
