"""Charts of the texel field: axis-aligned planes chosen by the surface normal, in slabs.

Integral noise needs a 2D parameterisation of every surface that can appear inside the
bounding cube ``[-bound, bound]^3``, from any viewpoint, that does not depend on the camera.
The CFD reference (Yan et al., "Consistent Flow Distillation for Text-to-3D Generation")
uses the directions from the origin (six cube faces with an equal-area map) times several
radial shells. We use *triplanar* charts instead, like triplanar texture mapping:

* a footprint whose normal ``n`` has its largest component along axis ``a`` with sign ``s``
  belongs to the *family* ``2 a + (s < 0)``; its texels are those of a square grid of
  spacing ``texel_size`` on the plane orthogonal to ``a``, reached by dropping coordinate
  ``a`` (an orthogonal projection);
* each family is cut along ``a`` into ``num_layers`` slabs of equal thickness, so
  surfaces facing the same way at different depths along ``a`` (the near and far walls of
  a torus, seen through its hole) use different texels; the slab is chosen by the
  footprint's centre point. Slab boundaries are shifted by :data:`LAYER_PHASE` of a slab
  so that they avoid the planes that symmetric objects centred at the origin tend to put
  surfaces on (0, +-bound / 2, ...). A chart is one (family, slab) pair.

Why not the reference's radial charts: a surface is mapped to a direction chart with area
factor ``|cos(angle between its normal and the radial direction)| / r^2``, which goes to zero
wherever the surface contains the radial direction (e.g. any plane through the origin, the
sides of a torus) and varies with the radius, so texel counts collapse or explode there.
Here the projection keeps at least ``1 / sqrt(3)`` of a footprint's area (the normal's
largest component is at least ``1 / sqrt(3)``), texel density is uniform in world units, and
the map is affine, so planar footprints map exactly and straight edges stay straight. Both
schemes have seams (here between normal families and between slabs) where a pixel's texels
switch charts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: Offset of the slab boundaries, in slab thicknesses (an irrational-looking fraction).
LAYER_PHASE = 0.382


@dataclass(frozen=True)
class ChartLayout:
    """Geometry and numbering of the ``6 * num_layers`` charts (chart id =
    ``family * num_layers + layer``; family = ``2 * axis + (1 if the normal points to -axis)``).

    Every chart is a ``size x size`` grid of texels of edge ``texel_size`` covering
    ``[-bound, bound]^2`` of the two coordinates other than the family's axis (column from
    ``axis + 1``, row from ``axis + 2``, modulo 3); texel ``(col, row)`` has its centre at
    ``-bound + (col + 1/2, row + 1/2) * texel_size``. Charts are cut into tiles of
    ``tile_rows x tile_cols`` texels (powers of two), numbered row-major within a chart.

    Attributes:
        bound: half-edge of the covered cube in world units.
        texel_size: texel edge in world units.
        num_layers: slabs per family along its axis.
        tile_rows: texel rows per tile.
        tile_cols: texel columns per tile.
        size: texels per chart edge (a multiple of both tile dimensions).
    """

    bound: float
    texel_size: float
    num_layers: int
    tile_rows: int
    tile_cols: int
    size: int

    @staticmethod
    def build(
        bound: float, texel_size: float, num_layers: int, tile_rows: int, tile_cols: int
    ) -> ChartLayout:
        """Layout covering ``[-bound, bound]^3`` with texels of edge ``texel_size``."""
        multiple = math.lcm(tile_rows, tile_cols)
        size = multiple * math.ceil(2.0 * bound / texel_size / multiple)
        return ChartLayout(bound, texel_size, num_layers, tile_rows, tile_cols, size)

    @property
    def num_charts(self) -> int:
        return 6 * self.num_layers

    @property
    def tiles_per_row(self) -> int:
        """Tiles across one chart."""
        return self.size // self.tile_cols

    @property
    def tiles_per_chart(self) -> int:
        return (self.size // self.tile_rows) * self.tiles_per_row

    @property
    def num_tiles(self) -> int:
        return self.num_charts * self.tiles_per_chart

    @property
    def num_rows(self) -> int:
        """Texel rows over all charts (global row id = ``chart * size + row``)."""
        return self.num_charts * self.size

    @property
    def row_shift(self) -> int:
        """``log2(tile_rows)``."""
        return self.tile_rows.bit_length() - 1

    @property
    def col_shift(self) -> int:
        """``log2(tile_cols)``."""
        return self.tile_cols.bit_length() - 1

    def tile_id(self, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        """Global id of the tile holding texel ``col`` of global row ``row`` (int64 tensors;
        global row = ``chart * size + row in chart``, tiles numbered row-major per chart)."""
        return (row >> self.row_shift) * self.tiles_per_row + (col >> self.col_shift)

    def charts(
        self, normal: torch.Tensor, centre: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Chart of footprints with ``(P, 3)`` normals (any length, any sign convention the
        caller keeps consistent) and ``(P, 3)`` centre points.

        Returns:
            ``(chart, axis)``: ``(P,)`` int64 chart ids and the family axes.
        """
        axis = normal.abs().argmax(dim=-1)
        negative = normal.gather(-1, axis[:, None])[:, 0] < 0
        height = centre.gather(-1, axis[:, None])[:, 0]
        scaled = (height + self.bound) * (self.num_layers / (2.0 * self.bound))
        layer = torch.floor(scaled + LAYER_PHASE)
        layer = layer.clamp(0, self.num_layers - 1).to(torch.int64)
        family = 2 * axis + negative.to(torch.int64)
        return family * self.num_layers + layer, axis

    def texel_coordinates(self, points: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
        """``(P, K, 2)`` continuous ``(col, row)`` texel coordinates of ``(P, K, 3)`` points
        projected along ``(P,)`` axes (texel centres at integers)."""
        index = torch.stack([(axis + 1) % 3, (axis + 2) % 3], dim=-1)
        planar = points.gather(-1, index[:, None, :].expand(-1, points.shape[1], -1))
        return (planar + self.bound) / self.texel_size - 0.5
