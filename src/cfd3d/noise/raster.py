"""Exact texel-to-pixel partition: scanline rasterisation of footprint quads into texel row
spans, and removal of overlaps between spans.

A noise pixel's footprint is a quad in a chart; a texel belongs to it when the texel
*centre* lies inside (Yan et al., CFD; the integral-noise idea is from Chang et al., "How I
Warped Your Noise", 2024). Texel centres sit at integer chart coordinates.

Instead of testing every texel of a bounding box we enumerate, per quad, the texel rows it
crosses and, per row, the run ``[start, end)`` of texel columns between its left and right
boundary (exact for convex quads; a non-convex quad, which only a folded or broken
footprint produces, gets an approximation that stays inside its bounding box).
Edges are inclusive up to :data:`EDGE_EPS`, far above the float32 rounding of chart
coordinates, so no texel on an edge shared by two footprints is lost; the overlaps this
creates, and any genuine overlap (a surface folding over itself in a chart), are removed by
:func:`remove_overlaps`, which sorts the spans by (row, start) and trims each one to start
after every earlier span of its row. Every covered texel therefore belongs to exactly one
span, hence to one pixel.

Everything is vectorised over all quads of all views with ``repeat_interleave``; the cost is
proportional to the number of texel rows, not texels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Tolerance (in texels) for a texel centre on a footprint edge: above the float32 rounding
#: of chart coordinates (< 1e-4 texels for charts up to 2048 texels), far below the spacing.
EDGE_EPS = 1e-3


@dataclass(frozen=True)
class Spans:
    """Runs of texels along chart rows: texels ``(row, start <= col < end)``.

    Attributes:
        owner: ``(S,)`` int64 index of the footprint that owns the run.
        row: ``(S,)`` int64 global texel row ``chart * size + row in chart``.
        start: ``(S,)`` int64 first texel column.
        end: ``(S,)`` int64 one past the last texel column.
    """

    owner: torch.Tensor
    row: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor

    def __len__(self) -> int:
        return self.owner.shape[0]

    def fields(self) -> tuple[torch.Tensor, ...]:
        """``(owner, row, start, end)``."""
        return (self.owner, self.row, self.start, self.end)

    def select(self, index: torch.Tensor) -> Spans:
        """The spans at the int64 positions ``index``."""
        return Spans(*(f.index_select(0, index) for f in self.fields()))

    @property
    def count(self) -> torch.Tensor:
        """``(S,)`` int64 texels per span."""
        return self.end - self.start


def ragged_arange(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``(M,)`` non-negative counts: ``(group, offset)`` of ``sum(counts)`` items, where
    ``group`` repeats ``m`` ``counts[m]`` times and ``offset`` runs ``0 .. counts[m] - 1``."""
    group = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts)
    first = torch.cumsum(counts, 0) - counts
    offset = torch.arange(group.shape[0], device=counts.device) - first.index_select(0, group)
    return group, offset


def _first_extreme(values: torch.Tensor, better) -> torch.Tensor:
    """Index of the first minimum (``better = torch.lt``) or maximum (``torch.gt``) of each
    row of ``(M, 4)`` values (a comparison tournament; ``argmin`` is slow on 4 columns)."""
    v = values.unbind(dim=1)
    low = torch.where(better(v[1], v[0]), 1, 0)
    low_value = torch.where(better(v[1], v[0]), v[1], v[0])
    high = torch.where(better(v[3], v[2]), 3, 2)
    high_value = torch.where(better(v[3], v[2]), v[3], v[2])
    return torch.where(better(high_value, low_value), high, low)


def _chain(
    quads: torch.Tensor, vertices: torch.Tensor, length: torch.Tensor, bounds: tuple
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Columns where the rows ``first .. last`` of each quad cross one of its two chains.

    Args:
        quads: ``(M, 4, 2)`` corners.
        vertices: ``(M, 4)`` vertex indices along the chain, from the top vertex.
        length: ``(M,)`` number of edges of the chain (0 for degenerate quads).
        bounds: ``(first, last)``, ``(M,)`` float rows.

    Returns:
        ``(row, col)`` of every (quad, row) in quad-then-row order.
    """
    first, last = bounds
    col = quads[..., 0].gather(1, vertices)
    row = quads[..., 1].gather(1, vertices)
    d_row = row[:, 1:] - row[:, :-1]
    flat = d_row == 0
    slope = torch.where(flat, 0.0, (col[:, 1:] - col[:, :-1]) / torch.where(flat, 1.0, d_row))
    # Edge j serves rows [break_j, break_j+1): the vertex rows rounded up, made monotone and
    # clamped to the quad's rows, so the chain's edges tile first .. last exactly.
    breaks = torch.cummax(torch.ceil(row - EDGE_EPS), dim=1).values
    breaks = torch.minimum(torch.maximum(breaks, first[:, None]), last[:, None] + 1)
    edge = torch.arange(4, device=quads.device)
    breaks = torch.where(edge == 0, first[:, None], breaks)
    breaks = torch.where(edge[None, :] >= length[:, None], last[:, None] + 1, breaks)
    counts = (breaks[:, 1:] - breaks[:, :-1]).to(torch.int64).flatten()
    slot, offset = ragged_arange(counts)
    y = breaks[:, :-1].flatten().index_select(0, slot) + offset.to(quads.dtype)
    crossing = col[:, :-1].flatten().index_select(0, slot) + (
        y - row[:, :-1].flatten().index_select(0, slot)
    ) * slope.flatten().index_select(0, slot)
    return y, crossing


def rasterize_quads(quads: torch.Tensor, chart: torch.Tensor, size: int) -> Spans:
    """Texel runs covered by quads in chart coordinates.

    Each quad's boundary splits at its top and bottom vertices into two chains; every row
    between them crosses one edge of each chain, the left one giving the run's start and the
    right one its end.

    Args:
        quads: ``(M, 4, 2)`` float32 corners ``(col, row)`` in texel units, in order around
            the quad (texel ``(i, j)`` has its centre at ``(i, j)``).
        chart: ``(M,)`` int64 chart of each quad.
        size: chart edge ``N``; texels outside ``[0, N)^2`` are clipped.

    Returns:
        :class:`Spans` (owner = quad index) in quad order, one per quad and row crossed,
        possibly empty and possibly overlapping on shared edges (see
        :func:`remove_overlaps`).
    """
    col, row = quads[..., 0], quads[..., 1]
    first = torch.ceil(row.amin(dim=1) - EDGE_EPS).clamp_min(0)
    last = torch.floor(row.amax(dim=1) + EDGE_EPS).clamp_max(size - 1)
    area = (col * row.roll(-1, dims=1) - col.roll(-1, dims=1) * row).sum(dim=1)
    top = _first_extreme(row, torch.lt)
    bottom = _first_extreme(row, torch.gt)
    # With positive area (counter-clockwise for x = col, y = row) the chain that follows the
    # vertex order from the top vertex is on the right, so the left chain goes backwards.
    positive = area > 0
    forward_length = (bottom - top) & 3
    degenerate = (area == 0) | (forward_length == 0)
    left_length = torch.where(
        degenerate, 0, torch.where(positive, 4 - forward_length, forward_length)
    )
    right_length = torch.where(degenerate, 0, 4 - left_length)
    step = torch.where(positive, -1, 1)[:, None] * torch.arange(4, device=quads.device)
    y, crossing = _chain(
        torch.cat([quads, quads]),
        torch.cat([(top[:, None] + step) & 3, (top[:, None] - step) & 3]),
        torch.cat([left_length, right_length]),
        (torch.cat([first, first]), torch.cat([last, last])),
    )
    n_rows = torch.where(degenerate, 0, (last - first + 1).clamp_min(0).to(torch.int64))
    owner = torch.repeat_interleave(torch.arange(quads.shape[0], device=quads.device), n_rows)
    total = owner.shape[0]
    start = torch.ceil(crossing[:total] - EDGE_EPS).clamp(0, size).to(torch.int64)
    end = (torch.floor(crossing[total:] + EDGE_EPS) + 1).clamp(0, size).to(torch.int64)
    start = torch.minimum(start, end)
    row_id = chart.index_select(0, owner) * size + y[:total].to(torch.int64)
    return Spans(owner, row_id, start, end)


def remove_overlaps(spans: Spans, group: torch.Tensor, num_rows: int, size: int) -> Spans:
    """Trim spans so that no texel is covered twice within a group, and drop empty ones.

    Spans are ordered by (group, row, start, input order); each span loses the texels
    covered by spans before it in that order. The result covers exactly the union of the
    input spans of each group, each texel once per group.

    Args:
        spans: possibly overlapping spans.
        group: ``(S,)`` int64 group of each span (the view: different views share texels).
        num_rows: number of global rows (rows are below it).
        size: chart edge (columns are at most ``size``).

    Returns:
        Disjoint non-empty spans, sorted by (group, row, start).
    """
    stride = size + 1
    line = group * num_rows + spans.row
    key = line * stride + spans.start
    if (int(group.max()) + 1 if len(spans) else 0) * num_rows * stride < 2**31:
        key = key.to(torch.int32)  # radix sort, twice as fast
    order = torch.sort(key, stable=True).indices
    base = line.index_select(0, order) * stride
    start = spans.start.index_select(0, order)
    end = spans.end.index_select(0, order)
    reach = torch.cummax(base + end, dim=0).values
    before = torch.cat([reach.new_full((1,), -1), reach[:-1]])
    start = torch.maximum(start, before - base)
    keep = torch.nonzero(end > start)[:, 0]
    index = order.index_select(0, keep)
    return Spans(
        spans.owner.index_select(0, index),
        spans.row.index_select(0, index),
        start.index_select(0, keep),
        end.index_select(0, keep),
    )
