"""The white-noise texel field behind integral noise, materialised lazily in tiles.

The field is ``C`` channels of i.i.d. N(0, 1) values on every texel of every chart of a
:class:`~cfd3d.noise.charts.ChartLayout`. Storing it densely at the density integral noise
needs (hundreds of texels per noise pixel) would take hundreds of MB to GB (the CFD
reference stores 1.5 GiB), and drawing every value procedurally from a counter-based hash
costs ~100 ns per value on a CPU, ten times a table lookup. We do neither:

* **Tiles, materialised on first touch.** Charts are cut into small tiles (4 x 32 texels by
  default). A tile's base values are ``torch.randn`` from a generator seeded by
  ``(seed, tile id)``, so the field is a pure function of the seed, identical on every
  device and independent of the order in which tiles are first seen; memory grows only
  with the surface area actually rendered.
* **Row prefix sums.** A tile of ``R x L`` texels is stored as per-row prefix sums along
  columns, with a leading zero, ``(R, L + 1, C)``. The sum of any run of texels in one row
  is then a difference of two stored values, so summing a pixel footprint costs one lookup
  per texel *row* (tens per pixel) instead of one per texel (hundreds).
* **Exact lazy SDE refresh.** The clean-flow SDE refresh ``n <- sqrt(1 - g) n + sqrt(g) xi``
  applied ``k`` times composes to a single refresh ``n <- a n + sqrt(1 - a^2) xi`` with
  ``a = prod_j sqrt(1 - g_j)``. The field keeps a global clock (log of ``a`` since the start,
  and an epoch counting full redraws ``g = 1``) and each tile keeps the clock value of its
  last update. A tile is brought up to date only when a footprint touches it, by one
  composed refresh with fresh innovations. Because the refresh is a Markov chain with
  independent Gaussian innovations, every observed value has exactly the joint law of the
  eagerly refreshed field, at a cost proportional to the touched area instead of the whole
  field.
"""

from __future__ import annotations

import math

import torch

from cfd3d.noise.charts import ChartLayout

#: Stream ids that keep the seeded draws of different purposes apart: texel tiles, the
#: per-call generators and the seeded maps.
STREAM_TEXELS = 0
STREAM_CALL = 1
STREAM_MAP = 2


def mix_seed(*values: int) -> int:
    """A 63-bit seed mixing the integers ``values`` (splitmix64 finaliser per value)."""
    state = 0x9E3779B97F4A7C15
    mask = (1 << 64) - 1
    for value in values:
        state = (state ^ (value & mask)) * 0xBF58476D1CE4E5B9 & mask
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & mask
        state ^= state >> 29
    return state >> 1


class RefreshClock:
    """Global clock of the clean-flow SDE refresh.

    The state after refreshes with rates ``g_1, g_2, ...`` is the number ``epoch`` of full
    redraws (``g = 1``) and ``log_decay = sum_j log(sqrt(1 - g_j))`` over the refreshes since
    the last full redraw. An object stamped with ``(epoch_0, log_decay_0)`` is brought up to
    date by one refresh with ``a = exp(log_decay - log_decay_0)`` (``a = 0`` across a full
    redraw).
    """

    def __init__(self) -> None:
        self.epoch = 0
        self.log_decay = 0.0

    def advance(self, gamma: float) -> None:
        """Record one refresh with rate ``gamma`` (already validated, in [0, 1])."""
        if gamma >= 1.0:
            self.epoch += 1
            self.log_decay = 0.0
        elif gamma > 0.0:
            self.log_decay += 0.5 * math.log1p(-gamma)

    @property
    def pristine(self) -> bool:
        """True if nothing has been refreshed yet (every value is still its seeded base)."""
        return self.epoch == 0 and self.log_decay == 0.0

    def factor(self, epoch: int, log_decay: float) -> float:
        """``a`` for one object stamped ``(epoch, log_decay)``."""
        return math.exp(self.log_decay - log_decay) if epoch == self.epoch else 0.0

    def decay(self, epoch: torch.Tensor, log_decay: torch.Tensor) -> torch.Tensor:
        """``a`` for objects stamped ``(epoch, log_decay)`` (same-shape tensors, float64)."""
        same = epoch == self.epoch
        return torch.where(same, torch.exp(self.log_decay - log_decay), 0.0)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "log_decay": self.log_decay}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.log_decay = float(state["log_decay"])


class TexelField:
    """Lazily materialised, lazily refreshed white-noise texel field (see module doc).

    Args:
        layout: the charts.
        channels: ``C``, values per texel.
        seed: seed of the base field.
        clock: the refresh clock shared with the background noise.
    """

    def __init__(self, layout: ChartLayout, channels: int, seed: int, clock: RefreshClock):
        self.layout = layout
        self.channels = channels
        self.seed = seed
        self.clock = clock
        self.device = torch.device("cpu")
        self._tile_slot = torch.full((layout.num_tiles,), -1, dtype=torch.int64)
        self._marker = torch.zeros(layout.num_tiles, dtype=torch.bool)
        self._pool = torch.zeros(0, layout.tile_rows, layout.tile_cols + 1, channels)
        self._epoch = torch.zeros(0, dtype=torch.int64)
        self._log_decay = torch.zeros(0, dtype=torch.float64)
        self._used = 0

    @property
    def num_materialised(self) -> int:
        """Number of tiles materialised so far."""
        return self._used

    def to(self, device: torch.device) -> None:
        """Move the stored tiles to ``device`` (in place)."""
        device = torch.device(device)
        if device == self.device:
            return
        self.device = device
        self._tile_slot = self._tile_slot.to(device)
        self._marker = self._marker.to(device)
        self._pool = self._pool.to(device)
        self._epoch = self._epoch.to(device)
        self._log_decay = self._log_decay.to(device)

    def base_tile(self, tile_id: int) -> torch.Tensor:
        """``(R, L, C)`` seeded base values of the tile with global id ``tile_id`` (on CPU)."""
        generator = torch.Generator().manual_seed(mix_seed(self.seed, STREAM_TEXELS, tile_id))
        shape = (self.layout.tile_rows, self.layout.tile_cols, self.channels)
        return torch.randn(shape, generator=generator)

    def _grow(self, extra: int) -> None:
        need = self._used + extra
        if need <= self._pool.shape[0]:
            return
        capacity = max(need, 2 * self._pool.shape[0], 64)
        pool = self._pool.new_zeros((capacity, *tuple(self._pool.shape[1:])))
        pool[: self._used] = self._pool[: self._used]
        self._pool = pool
        epoch = self._epoch.new_zeros(capacity)
        epoch[: self._used] = self._epoch[: self._used]
        self._epoch = epoch
        log_decay = self._log_decay.new_zeros(capacity)
        log_decay[: self._used] = self._log_decay[: self._used]
        self._log_decay = log_decay

    def _add_base_tiles(self, tile_ids: torch.Tensor) -> None:
        """Store the seeded base values of ``tile_ids`` (unique, not yet stored), stamped with
        the start of time (a later refresh brings them up to date like any stale tile)."""
        n = tile_ids.shape[0]
        values = torch.stack([self.base_tile(int(i)) for i in tile_ids.tolist()]).to(self.device)
        self._grow(n)
        slots = torch.arange(self._used, self._used + n, device=self.device)
        self._pool[self._used : self._used + n, :, 1:] = torch.cumsum(values, dim=2)
        self._epoch[slots] = 0
        self._log_decay[slots] = 0.0
        self._tile_slot[tile_ids] = slots
        self._used += n

    def _bring_up_to_date(self, slots: torch.Tensor, generator: torch.Generator) -> None:
        """Apply the refreshes since their last update to the tiles in ``slots`` (unique).

        The composed refresh ``v <- a v + b xi`` is linear, so it acts on the row prefix
        sums directly: ``P <- a P + b cumsum(xi)``.
        """
        a = self.clock.decay(self._epoch[slots], self._log_decay[slots])
        b = torch.sqrt((1.0 - a * a).clamp_min(0.0))
        prefix = self._pool.index_select(0, slots)
        sums = prefix[:, :, 1:]
        xi = torch.randn(sums.shape, generator=generator, dtype=sums.dtype, device=sums.device)
        walk = torch.cumsum(xi, dim=2).mul_(b.to(sums.dtype).view(-1, 1, 1, 1))
        prefix[:, :, 1:] = walk.addcmul_(sums, a.to(sums.dtype).view(-1, 1, 1, 1))
        self._pool.index_copy_(0, slots, prefix)
        self._epoch[slots] = self.clock.epoch
        self._log_decay[slots] = self.clock.log_decay

    def _unique_tiles(self, tile_ids: torch.Tensor) -> torch.Tensor:
        """The distinct values of ``tile_ids``, sorted (a marker array, no sort)."""
        self._marker[tile_ids] = True
        unique = torch.nonzero(self._marker)[:, 0]
        self._marker[unique] = False
        return unique

    def slots(self, tile_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Pool slots of the tiles ``tile_ids`` (any shape, repeats allowed), up to date.

        Missing tiles are created from their seed; stale ones are refreshed in increasing
        tile-id order with innovations from ``generator``, so the values depend only on the
        seed, the refresh history and the sequence of generators, not on what was cached.
        """
        slot = self._tile_slot.index_select(0, tile_ids)
        missing = slot < 0
        if bool(missing.any()):
            self._add_base_tiles(self._unique_tiles(tile_ids[missing]))
            slot = self._tile_slot.index_select(0, tile_ids)
        if not self.clock.pristine:
            touched = self._unique_tiles(tile_ids)
            touched_slots = self._tile_slot.index_select(0, touched)
            stale = (self._epoch.index_select(0, touched_slots) != self.clock.epoch) | (
                self._log_decay.index_select(0, touched_slots) != self.clock.log_decay
            )
            if bool(stale.any()):
                self._bring_up_to_date(touched_slots[stale], generator)
        return slot

    def run_sums(
        self, row: torch.Tensor, start: torch.Tensor, end: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """Sums of the texel runs ``(row, start <= col < end)`` that lie in one tile each.

        Args:
            row: ``(S,)`` int64 global rows ``chart * size + row in chart``.
            start, end: ``(S,)`` int64 column range, ``start`` and ``end - 1`` in one tile.
            generator: source of innovations for tiles that need refreshing.

        Returns:
            ``(S, C)`` float32 sums.
        """
        layout = self.layout
        rows, cols = layout.tile_rows, layout.tile_cols
        slot = self.slots(layout.tile_id(row, start), generator)
        base = (slot * rows + (row & (rows - 1))) * (cols + 1) - (
            (start >> layout.col_shift) << layout.col_shift
        )
        ends = self._pool.view(-1, self.channels).index_select(
            0, torch.cat([base + end, base + start])
        )
        return ends[: row.shape[0]] - ends[row.shape[0] :]

    def state_dict(self) -> dict:
        """The stored tiles, or nothing while the field is still its seeded base."""
        if self.clock.pristine:
            return {"tile_ids": torch.zeros(0, dtype=torch.int64)}
        tile_ids = torch.nonzero(self._tile_slot >= 0)[:, 0]
        slots = self._tile_slot[tile_ids]
        return {
            "tile_ids": tile_ids.cpu(),
            "pool": self._pool[slots].cpu(),
            "epoch": self._epoch[slots].cpu(),
            "log_decay": self._log_decay[slots].cpu(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore tiles saved by :meth:`state_dict` (other tiles are re-derived on demand)."""
        tile_ids = state["tile_ids"].to(self.device)
        n = tile_ids.shape[0]
        self._tile_slot = torch.full(
            (self.layout.num_tiles,), -1, dtype=torch.int64, device=self.device
        )
        self._used = 0
        if n == 0:
            return
        self._grow(n)
        slots = torch.arange(n, device=self.device)
        self._pool[slots] = state["pool"].to(self.device)
        self._epoch[slots] = state["epoch"].to(self.device)
        self._log_decay[slots] = state["log_decay"].to(self.device)
        self._tile_slot[tile_ids] = slots
        self._used = n
