"""An occupancy grid for empty-space skipping (Müller et al. 2022, "Instant Neural Graphics
Primitives", Sec. 4 and App. E.2; Li et al. 2023, "NerfAcc", the occupancy-grid estimator).

A binary grid over the field's cube ``[-bound, bound]³`` marks the cells where the field
may hold density; the renderer never queries the field at samples in unmarked cells. The
grid follows the field during training: every ``update_every`` steps it evaluates the
density at one random point in each visited cell and keeps, per cell, a running maximum
that decays geometrically, ``m ← max(decay · m, σ(x))`` (Instant-NGP's "EMA" of the
density). During a warm-up every cell is visited; afterwards the occupied cells and a
random share of the others. A cell is occupied when its running maximum exceeds a density
threshold; the mask is then dilated so that it errs on the side of occupied.

The state lives in buffers, so ``state_dict()`` checkpoints it, and an update is a pure
function of (grid state, field, step, generator state): a resumed run stays bit-identical.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cfd3d.errors import ConfigError
from cfd3d.render.rays import uniform


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_non_negative_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True)
class OccupancyConfig:
    """The occupancy grid of empty-space skipping.

    Attributes:
        resolution: cells per axis inside the field's cube ``[-bound, bound]³``.
        update_every: refresh the grid on steps that are multiples of this.
        warmup_steps: before this step every update re-samples every cell; from it on, an
            update samples the occupied cells and a random share (``explore_fraction``) of
            the empty ones.
        ema_decay: per-update decay of each visited cell's running density maximum
            ``m ← max(ema_decay · m, σ)``; closer to 1 forgets emptied space more slowly.
        density_threshold: a cell is occupied when its running maximum exceeds this density
            (per unit length). Skipped space below it costs a ray at most
            ``1 - exp(-density_threshold · length)`` of opacity: 2 % for a ray crossing
            the whole unit-bound sphere through faint fog at the default 0.01, nothing for
            truly empty space.
        dilation: occupied cells grow by this many cells in every direction (a max-pool
            of width ``2 * dilation + 1``), so that density between the visited points of
            a cell is not missed.
        explore_fraction: after the warm-up, the share of empty cells re-sampled by each
            update (each one drawn independently), so that space that fills up is found.
        chunk_points: points per density query during an update; bounds its memory.
    """

    resolution: int = 128
    update_every: int = 16
    warmup_steps: int = 256
    ema_decay: float = 0.95
    density_threshold: float = 0.01
    dilation: int = 1
    explore_fraction: float = 0.25
    chunk_points: int = 65536

    def __post_init__(self) -> None:
        for name in ("resolution", "update_every", "chunk_points"):
            value = getattr(self, name)
            if not _is_positive_int(value):
                raise ConfigError(f"occupancy {name} must be a positive integer, got {value!r}")
        for name in ("warmup_steps", "dilation"):
            value = getattr(self, name)
            if not _is_non_negative_int(value):
                raise ConfigError(f"occupancy {name} must be an integer >= 0, got {value!r}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ConfigError(f"occupancy ema_decay must lie in [0, 1], got {self.ema_decay}")
        if not (self.density_threshold >= 0.0 and math.isfinite(self.density_threshold)):
            raise ConfigError(
                f"occupancy density_threshold must be a finite number >= 0, got "
                f"{self.density_threshold}"
            )
        if not 0.0 <= self.explore_fraction <= 1.0:
            raise ConfigError(
                f"occupancy explore_fraction must lie in [0, 1], got {self.explore_fraction}"
            )


class OccupancyGrid(nn.Module):
    """A binary occupancy grid over ``[-bound, bound]³``; see :class:`OccupancyConfig`.

    Until its first :meth:`update` every cell is occupied (nothing is skipped). Points
    outside the cube count as occupied: the grid knows nothing about them.

    Example::

        grid = OccupancyGrid(OccupancyConfig(), bound=field.config.bound).to(device)
        for step in range(n_steps):
            grid.update(field.density, step)  # refreshes on multiples of update_every
            out = renderer(field, cameras, h, w, generator=gen, occupancy=grid)

    Attributes:
        density_max: ``(res, res, res)`` running (decaying) maximum of the density per
            cell, x index first.
        mask: ``(res, res, res)`` bool, the dilated occupancy the renderer uses.
    """

    density_max: torch.Tensor
    mask: torch.Tensor

    def __init__(self, config: OccupancyConfig | None = None, bound: float = 1.0):
        super().__init__()
        if not bound > 0.0:
            raise ConfigError(f"occupancy grid bound must be positive, got {bound}")
        self.config = config = config or OccupancyConfig()
        self.bound = float(bound)
        res = config.resolution
        self.register_buffer("density_max", torch.zeros(res, res, res))
        self.register_buffer("mask", torch.ones(res, res, res, dtype=torch.bool))

    def cell_indices(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat cell index of each point and whether it lies inside the cube.

        Args:
            points: ``(N, 3)`` world-space points.

        Returns:
            ``index`` ``(N,)`` int64 flat index into ``(res, res, res)`` (clamped to the
            nearest cell for points outside) and ``inside`` ``(N,)`` bool.
        """
        res = self.config.resolution
        unit = (points / self.bound + 1.0) * 0.5
        inside = ((unit >= 0.0) & (unit <= 1.0)).all(dim=-1)
        ijk = (unit * res).floor().clamp(0, res - 1).long()
        index = (ijk[:, 0] * res + ijk[:, 1]) * res + ijk[:, 2]
        return index, inside

    def occupied(self, points: torch.Tensor) -> torch.Tensor:
        """``(N,)`` bool: the points ``(N, 3)`` lie in occupied cells or outside the cube."""
        index, inside = self.cell_indices(points)
        return self.mask.view(-1)[index] | ~inside

    def occupied_fraction(self) -> float:
        """Share of the cells that are occupied (after dilation)."""
        return float(self.mask.float().mean())

    def cell_points(self, cells: torch.Tensor, jitter: torch.Tensor) -> torch.Tensor:
        """World points inside cells.

        Args:
            cells: ``(N,)`` flat cell indices.
            jitter: ``(N, 3)`` position inside each cell, in ``[0, 1)³``.

        Returns:
            ``(N, 3)`` world-space points.
        """
        res = self.config.resolution
        ijk = torch.stack([cells // (res * res), (cells // res) % res, cells % res], dim=-1)
        unit = (ijk.to(jitter.dtype) + jitter) / res
        return (unit * 2.0 - 1.0) * self.bound

    @torch.no_grad()
    def update(
        self,
        density_fn: Callable[[torch.Tensor], torch.Tensor],
        step: int,
        generator: torch.Generator | None = None,
    ) -> bool:
        """Refresh the grid from the field's density, on multiples of ``update_every``.

        Args:
            density_fn: ``points (N, 3) -> density (N,)``, e.g. ``field.density``; called
                without gradients, in chunks of ``chunk_points``, on the grid's device.
            step: the optimisation step (decides whether to update and the warm-up).
            generator: randomness for the visited points and the explored cells;
                ``None`` uses a CPU generator seeded with ``step``, so that the update is
                a pure function of the grid, the field and the step and leaves every
                other random stream alone.

        Returns:
            Whether the grid was updated.
        """
        cfg = self.config
        if step % cfg.update_every != 0:
            return False
        if generator is None:
            generator = torch.Generator().manual_seed(step)
        running = self.density_max.view(-1)
        if step < cfg.warmup_steps:
            cells = torch.arange(running.shape[0], device=running.device)
        else:
            explore = uniform((running.shape[0],), generator, running) < cfg.explore_fraction
            cells = (self.mask.view(-1) | explore).nonzero()[:, 0]
        jitter = uniform((cells.shape[0], 3), generator, running)
        if cells.shape[0] > 0:
            points = self.cell_points(cells, jitter)
            density = torch.cat(
                [
                    density_fn(chunk).to(running.dtype).reshape(-1)
                    for chunk in points.split(cfg.chunk_points)
                ]
            )
            running[cells] = torch.maximum(running[cells] * cfg.ema_decay, density)
        occupied = self.density_max > cfg.density_threshold
        if cfg.dilation > 0:
            width = 2 * cfg.dilation + 1
            pooled = F.max_pool3d(
                occupied[None, None].float(), width, stride=1, padding=cfg.dilation
            )
            occupied = pooled[0, 0] > 0.0
        self.mask.copy_(occupied)
        return True
