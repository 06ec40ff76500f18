"""Ground-truth toy scenes: coloured analytic primitives and pairs of them.

The embedded prior is trained on renders of these scenes and the benchmarks compare fitted
or distilled fields against them, so each scene is at once

* a :class:`~cfd3d.scene.fields.Field` (``scene(points)``): its signed distance function
  becomes a density with a sharp sigmoid transition, its colour the albedo, so the one
  volume renderer renders ground truth and learned fields alike;
* an exact occupancy test, :meth:`ToyScene.contains`;
* an exact triangle mesh (trimesh primitives), :meth:`ToyScene.to_mesh`.

Names: ``"red_cube"`` for one primitive, ``"red_cube_on_blue_sphere"`` (a red cube on top
of a blue sphere) or ``"green_cylinder_next_to_purple_cone"`` (the cylinder on the left as
seen from the front) for pairs; see :func:`get_scene`. World +z is up and the front faces
+x (see :mod:`cfd3d.scene.cameras`); at scale 1 a single primitive has a half-extent of
about 0.36-0.42, which fills roughly 60-80 % of the image height from the training
cameras (distance 1.3-1.5, fovy 40-65°).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
import trimesh

from cfd3d.errors import ConfigError
from cfd3d.export.mesh import cell_centres
from cfd3d.scene.fields import FieldOutput, density_gradient

ShapeName = Literal["sphere", "cube", "cylinder", "cone", "torus", "capsule", "head"]
RelationName = Literal["on", "next_to"]

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.12),
    "green": (0.15, 0.65, 0.20),
    "blue": (0.12, 0.30, 0.85),
    "yellow": (0.95, 0.80, 0.10),
    "orange": (0.96, 0.50, 0.08),
    "purple": (0.55, 0.22, 0.75),
    "pink": (0.96, 0.45, 0.68),
    "cyan": (0.10, 0.72, 0.80),
    "brown": (0.52, 0.30, 0.12),
    "gray": (0.50, 0.50, 0.50),
}
"""Named albedos, all clearly distinct from each other and from a white background."""

RELATIONS: dict[str, str] = {"on": "on top of", "next_to": "next to"}
"""Relation name (as in scene names) -> its English phrase (for captions)."""

# Name aliases accepted by get_scene, mapped to the canonical relation.
_RELATION_ALIASES = {"on": "on", "on_top_of": "on", "next_to": "next_to"}

COMPOSITION_SCALE = 0.5
"""Scale of each primitive in a pair. Pairs fit the middle of the training views; the
largest (two tori side by side, two cubes stacked) touch the border of the tightest."""

NEXT_TO_GAP = 0.05
"""World-space gap between the two primitives of a ``next_to`` pair."""


def _length(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last axis (zero gradient at 0 instead of NaN)."""
    return torch.linalg.vector_norm(x, dim=-1)


def _radial(points: torch.Tensor) -> torch.Tensor:
    """``(N, 2)`` (distance from the z axis, z) of ``(N, 3)`` points."""
    return torch.stack([_length(points[:, :2]), points[:, 2]], dim=-1)


def _convex_polygon_sdf(q: torch.Tensor, vertices: tuple[tuple[float, float], ...]) -> torch.Tensor:
    """Signed distance from 2D points ``(N, 2)`` to a convex polygon (CCW vertices)."""
    poly = torch.tensor(vertices, dtype=q.dtype, device=q.device)
    a, b = poly, poly.roll(-1, dims=0)
    edge = b - a  # (V, 2)
    rel = q[:, None, :] - a  # (N, V, 2)
    s = ((rel * edge).sum(-1) / (edge * edge).sum(-1)).clamp(0.0, 1.0)
    dist = _length(rel - s[..., None] * edge).min(dim=1).values
    cross = edge[:, 0] * rel[..., 1] - edge[:, 1] * rel[..., 0]
    inside = (cross >= 0.0).all(dim=1)
    return torch.where(inside, -dist, dist)


class Shape(Protocol):
    """A primitive in canonical pose: centred at the origin, axis along +z, scale 1."""

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        """``(N,)`` exact signed distance (negative inside) at ``(N, 3)`` points."""
        ...

    def half_extents(self) -> tuple[float, float, float]:
        """Half-size of the axis-aligned bounding box."""
        ...

    def mesh(self) -> trimesh.Trimesh:
        """A watertight triangle mesh of the surface, centred at the origin."""
        ...


@dataclass(frozen=True)
class Sphere:
    """A ball.

    Attributes:
        radius: radius.
    """

    radius: float = 0.38

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        return _length(points) - self.radius

    def half_extents(self) -> tuple[float, float, float]:
        return (self.radius,) * 3

    def mesh(self) -> trimesh.Trimesh:
        return trimesh.creation.icosphere(subdivisions=4, radius=self.radius)


@dataclass(frozen=True)
class Box:
    """An axis-aligned box (the "cube").

    Attributes:
        half_size: half edge lengths along x, y, z.
    """

    half_size: tuple[float, float, float] = (0.28, 0.28, 0.28)

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        h = torch.tensor(self.half_size, dtype=points.dtype, device=points.device)
        q = points.abs() - h
        return _length(q.clamp_min(0.0)) + q.max(dim=-1).values.clamp_max(0.0)

    def half_extents(self) -> tuple[float, float, float]:
        return self.half_size

    def mesh(self) -> trimesh.Trimesh:
        return trimesh.creation.box(extents=[2.0 * h for h in self.half_size])


@dataclass(frozen=True)
class Cylinder:
    """A solid cylinder along z.

    Attributes:
        radius: radius.
        half_height: half the height.
    """

    radius: float = 0.3
    half_height: float = 0.32

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        d = _radial(points).abs() - torch.tensor(
            [self.radius, self.half_height], dtype=points.dtype, device=points.device
        )
        return _length(d.clamp_min(0.0)) + d.max(dim=-1).values.clamp_max(0.0)

    def half_extents(self) -> tuple[float, float, float]:
        return (self.radius, self.radius, self.half_height)

    def mesh(self) -> trimesh.Trimesh:
        return trimesh.creation.cylinder(
            radius=self.radius, height=2.0 * self.half_height, sections=64
        )


@dataclass(frozen=True)
class Cone:
    """A solid cone along z: base disc at ``-half_height``, apex at ``+half_height``.

    Attributes:
        radius: base radius.
        half_height: half the height.
    """

    radius: float = 0.34
    half_height: float = 0.33

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        # The solid of revolution of a triangle: its distance is the 2D distance in the
        # (radial, z) plane to the triangle mirrored about the axis.
        r, h = self.radius, self.half_height
        return _convex_polygon_sdf(_radial(points), ((-r, -h), (r, -h), (0.0, h)))

    def half_extents(self) -> tuple[float, float, float]:
        return (self.radius, self.radius, self.half_height)

    def mesh(self) -> trimesh.Trimesh:
        mesh = trimesh.creation.cone(radius=self.radius, height=2.0 * self.half_height, sections=64)
        mesh.apply_translation([0.0, 0.0, -self.half_height])
        return mesh


@dataclass(frozen=True)
class Torus:
    """A torus lying in the xy-plane (a ring seen from above).

    Attributes:
        major_radius: distance from the centre to the tube's centre line.
        minor_radius: radius of the tube.
    """

    major_radius: float = 0.28
    minor_radius: float = 0.14

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        q = _radial(points)
        q = torch.stack([q[:, 0] - self.major_radius, q[:, 1]], dim=-1)
        return _length(q) - self.minor_radius

    def half_extents(self) -> tuple[float, float, float]:
        outer = self.major_radius + self.minor_radius
        return (outer, outer, self.minor_radius)

    def mesh(self) -> trimesh.Trimesh:
        return trimesh.creation.torus(
            major_radius=self.major_radius,
            minor_radius=self.minor_radius,
            major_sections=64,
            minor_sections=32,
        )


@dataclass(frozen=True)
class Capsule:
    """A capsule along z: a cylinder with hemispherical caps.

    Attributes:
        radius: radius of the cylinder and caps.
        half_length: half the distance between the two cap centres.
    """

    radius: float = 0.2
    half_length: float = 0.18

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        axis = torch.zeros_like(points)
        axis[:, 2] = points[:, 2].clamp(-self.half_length, self.half_length)
        return _length(points - axis) - self.radius

    def half_extents(self) -> tuple[float, float, float]:
        return (self.radius, self.radius, self.half_length + self.radius)

    def mesh(self) -> trimesh.Trimesh:
        mesh = trimesh.creation.capsule(
            height=2.0 * self.half_length, radius=self.radius, count=[32, 32]
        )
        mesh.apply_translation(-mesh.bounds.mean(axis=0))
        return mesh


@dataclass(frozen=True)
class Head(Sphere):
    """A ball with a pale face on its front (+x): the toy world's view-dependent object.

    From the front the face fills the middle of the ball, from the side it is a sliver at
    one edge and from the back it is hidden, so a distilled head that shows a face from
    several sides is a Janus failure that can be counted.

    Attributes:
        face_cos: a surface point is part of the face when the cosine between its
            direction from the centre and +x exceeds this (0.6: a cap of about 53°).
    """

    face_cos: float = 0.6

    def face(self, points: torch.Tensor) -> torch.Tensor:
        """``(N,)`` bool: canonical-frame points in the face's cone."""
        return points[:, 0] > self.face_cos * _length(points)


FACE_RGB = (0.97, 0.94, 0.86)
"""Albedo of a head's face."""

SHAPES: dict[str, Shape] = {
    "sphere": Sphere(),
    "cube": Box(),
    "cylinder": Cylinder(),
    "cone": Cone(),
    "torus": Torus(),
    "capsule": Capsule(),
    "head": Head(),
}
"""Shape name -> canonical geometry (scale 1, centred, axis +z)."""


@dataclass(frozen=True)
class Primitive:
    """One coloured primitive of a toy scene (everything a caption needs).

    Attributes:
        shape: a key of :data:`SHAPES`.
        color: the colour's name (a key of :data:`COLORS` for named scenes).
        rgb: albedo in [0, 1].
        center: world-space centre of the bounding box.
        scale: uniform scale of the canonical shape.
        face_rgb: albedo of a head's face (other shapes have none).
    """

    shape: ShapeName
    color: str
    rgb: tuple[float, float, float]
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 1.0
    face_rgb: tuple[float, float, float] = FACE_RGB

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ConfigError(f"unknown shape {self.shape!r}; valid: {', '.join(SHAPES)}")
        if self.scale <= 0.0:
            raise ConfigError(f"primitive scale must be positive, got {self.scale}")

    @property
    def geometry(self) -> Shape:
        return SHAPES[self.shape]

    def half_extents(self) -> tuple[float, float, float]:
        """Half-size of the world-space bounding box."""
        return tuple(self.scale * h for h in self.geometry.half_extents())  # type: ignore[return-value]

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        """``(N,)`` exact signed distance at world-space ``(N, 3)`` points."""
        center = torch.tensor(self.center, dtype=points.dtype, device=points.device)
        return self.scale * self.geometry.sdf((points - center) / self.scale)

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        """``(N, 3)`` albedo at world-space points (uniform, except a head's face)."""
        rgb = torch.tensor(self.rgb, dtype=points.dtype, device=points.device)
        rgb = rgb.expand(points.shape[0], 3)
        geometry = self.geometry
        if isinstance(geometry, Head):
            center = torch.tensor(self.center, dtype=points.dtype, device=points.device)
            face = geometry.face((points - center) / self.scale)[:, None]
            rgb = torch.where(face, rgb.new_tensor(self.face_rgb), rgb)
        return rgb

    def to_mesh(self) -> trimesh.Trimesh:
        """World-space mesh with the primitive's colour as vertex colours."""
        mesh = self.geometry.mesh()
        mesh.apply_scale(self.scale)
        mesh.apply_translation(self.center)
        vertices = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float64)
        rgb = self.albedo(vertices).numpy()
        rgba = np.concatenate([np.round(255 * rgb), np.full((len(rgb), 1), 255.0)], axis=1)
        mesh.visual.vertex_colors = rgba.astype(np.uint8)
        return mesh


@dataclass(frozen=True)
class ToyFieldConfig:
    """How a toy scene's signed distance becomes a density.

    ``density = sigmoid(-sdf / sharpness) / sharpness``. A ray crossing a flat surface
    head-on then keeps the transmittance ``sigmoid(sdf / sharpness)``: exactly 1/2 on the
    surface, so the rendered surface lies on the SDF's zero set (the logistic density of
    NeuS, Wang et al. 2021, Sec. 3.1), with an edge about ``4 * sharpness`` wide. The
    interior density is ``1 / sharpness``.

    Attributes:
        sharpness: width of the transition in world units; with the default 0.01 one
            interior sample at the renderer's usual spacing (about 0.03) is 95 % opaque.
    """

    sharpness: float = 0.005

    def __post_init__(self) -> None:
        if self.sharpness <= 0.0:
            raise ConfigError(f"toy field sharpness must be positive, got {self.sharpness}")


@dataclass(frozen=True)
class ToyScene:
    """One primitive, or two in a spatial relation.

    Attributes:
        primitives: one or two primitives.
        relation: for two primitives, how the first relates to the second
            (``"on"``: on top of; ``"next_to"``: to its left as seen from the front);
            ``None`` for one.
        field_config: how :meth:`__call__` turns the SDF into a density.
    """

    primitives: tuple[Primitive, ...]
    relation: RelationName | None = None
    field_config: ToyFieldConfig = field(default_factory=ToyFieldConfig)

    def __post_init__(self) -> None:
        if len(self.primitives) not in (1, 2):
            raise ConfigError(f"a toy scene has 1 or 2 primitives, got {len(self.primitives)}")
        if (len(self.primitives) == 2) != (self.relation is not None):
            raise ConfigError("a toy scene has a relation exactly when it has two primitives")
        if self.relation is not None and self.relation not in RELATIONS:
            raise ConfigError(f"unknown relation {self.relation!r}; valid: {', '.join(RELATIONS)}")

    @property
    def name(self) -> str:
        """The scene's canonical name, e.g. ``"red_cube_on_blue_sphere"``."""
        parts = [f"{p.color}_{p.shape}" for p in self.primitives]
        if self.relation is None:
            return parts[0]
        return f"{parts[0]}_{self.relation}_{parts[1]}"

    def caption(self) -> str:
        """A plain English description, e.g. ``"a red cube on top of a blue sphere"``."""
        parts = [f"a {p.color} {p.shape}" for p in self.primitives]
        if self.relation is None:
            return parts[0]
        return f"{parts[0]} {RELATIONS[self.relation]} {parts[1]}"

    def _sdfs(self, points: torch.Tensor) -> torch.Tensor:
        return torch.stack([p.sdf(points) for p in self.primitives], dim=-1)

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        """``(N,)`` signed distance of the union at ``(N, 3)`` points."""
        return self._sdfs(points).min(dim=-1).values

    def contains(self, points: torch.Tensor) -> torch.Tensor:
        """``(N,)`` bool: the point lies inside (or on) the ideal solid."""
        return self.sdf(points) <= 0.0

    def occupancy(self, resolution: int, bound: float, yaw_deg: float = 0.0) -> np.ndarray:
        """``(res, res, res)`` bool :meth:`contains` at the cell centres of the grid of
        :mod:`cfd3d.export.mesh` (``resolution`` cells over ``[-bound, bound]``, x first),
        of the scene turned by ``yaw_deg`` about the vertical (+z) axis, counter-clockwise
        seen from above."""
        axis = torch.as_tensor(cell_centres(resolution, bound))
        points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
        points = points.reshape(-1, 3)
        if yaw_deg:
            # A point of the turned scene is the point of the scene turned back.
            c, s = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
            x, y = points[:, 0], points[:, 1]
            points = torch.stack((c * x + s * y, -s * x + c * y, points[:, 2]), dim=-1)
        inside = self.contains(points)
        return inside.reshape((resolution,) * 3).numpy()

    def __call__(self, points: torch.Tensor) -> FieldOutput:
        """The scene as a field: density from the SDF, albedo of the nearest primitive."""
        sdfs = self._sdfs(points)
        sdf, nearest = sdfs.min(dim=-1)
        sharpness = self.field_config.sharpness
        density = torch.sigmoid(-sdf / sharpness) / sharpness
        if len(self.primitives) == 1:
            albedo = self.primitives[0].albedo(points)
        else:
            albedos = torch.stack([p.albedo(points) for p in self.primitives], dim=1)
            albedo = albedos.gather(1, nearest[:, None, None].expand(-1, 1, 3))[:, 0]
        return FieldOutput(density=density, albedo=albedo)

    def normals(self, points: torch.Tensor) -> torch.Tensor:
        """``(N, 3)`` exact outward unit normals, the normalised SDF gradient."""
        with torch.no_grad():
            grad = density_gradient(self.sdf, points, "autograd")
        return F.normalize(grad, dim=-1, eps=1e-12)

    def to_mesh(self) -> trimesh.Trimesh:
        """The scene's surface with vertex colours (pairs are concatenated, not fused)."""
        meshes = [p.to_mesh() for p in self.primitives]
        return meshes[0] if len(meshes) == 1 else trimesh.util.concatenate(meshes)


def _primitive(color: str, shape: str, scale: float) -> Primitive:
    return Primitive(shape=shape, color=color, rgb=COLORS[color], scale=scale)  # type: ignore[arg-type]


def _moved(prim: Primitive, center: tuple[float, float, float]) -> Primitive:
    return dataclasses.replace(prim, center=center)


def single(color: str, shape: str, face_rgb: tuple[float, float, float] = FACE_RGB) -> ToyScene:
    """One primitive of ``shape`` in ``color`` at the origin, scale 1 (a head's face in
    ``face_rgb``)."""
    _check_names(color, shape)
    return ToyScene((dataclasses.replace(_primitive(color, shape, 1.0), face_rgb=face_rgb),))


def pair(color_a: str, shape_a: str, relation: str, color_b: str, shape_b: str) -> ToyScene:
    """Two primitives, the first ``relation`` the second, centred on the origin.

    ``"on"`` stacks the first on top of the second (touching); ``"next_to"`` puts the
    first on the left (-y, as seen from the front camera at +x) and the second on the
    right, :data:`NEXT_TO_GAP` apart, both standing on the same ground level.
    """
    _check_names(color_a, shape_a)
    _check_names(color_b, shape_b)
    if relation not in RELATIONS:
        raise ConfigError(f"unknown relation {relation!r}; valid: {', '.join(RELATIONS)}")
    a = _primitive(color_a, shape_a, COMPOSITION_SCALE)
    b = _primitive(color_b, shape_b, COMPOSITION_SCALE)
    (_, wa, ha), (_, wb, hb) = a.half_extents(), b.half_extents()
    if relation == "on":
        a, b = _moved(a, (0.0, 0.0, hb)), _moved(b, (0.0, 0.0, -ha))
    else:
        floor = -max(ha, hb)
        a = _moved(a, (0.0, -0.5 * NEXT_TO_GAP - wb, floor + ha))
        b = _moved(b, (0.0, 0.5 * NEXT_TO_GAP + wa, floor + hb))
    return ToyScene((a, b), relation)  # type: ignore[arg-type]


def softened(
    scene: ToyScene, sharpness: tuple[float, float], generator: torch.Generator
) -> ToyScene:
    """``scene`` with a surface as soft as a sharpness drawn log-uniformly from ``(low,
    high)`` (:class:`ToyFieldConfig`): the same shapes with the blurred edges of a
    distilled field, for judges that must name shapes whatever their edges."""
    low, high = sharpness
    if not 0.0 < low <= high:
        raise ConfigError(f"sharpness range must satisfy 0 < low <= high, got {sharpness}")
    u = float(torch.rand((), generator=generator))
    value = low * (high / low) ** u
    return dataclasses.replace(scene, field_config=ToyFieldConfig(sharpness=value))


def _check_names(color: str, shape: str) -> None:
    if color not in COLORS:
        raise ConfigError(f"unknown colour {color!r}; valid: {', '.join(COLORS)}")
    if shape not in SHAPES:
        raise ConfigError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")


def _name_help() -> str:
    relations = ", ".join(sorted(_RELATION_ALIASES))
    return (
        "expected COLOUR_SHAPE (e.g. red_cube) or COLOUR_SHAPE_RELATION_COLOUR_SHAPE "
        f"(e.g. red_cube_on_blue_sphere); colours: {', '.join(COLORS)}; "
        f"shapes: {', '.join(SHAPES)}; relations: {relations}"
    )


def get_scene(name: str) -> ToyScene:
    """The toy scene called ``name`` (case, spaces and hyphens are forgiven).

    Raises:
        ConfigError: for an unknown colour, shape or relation, or a malformed name; the
            message lists the valid words.
    """
    words = name.strip().lower().replace("-", "_").replace(" ", "_").split("_")
    words = [w for w in words if w]
    if len(words) == 2:
        color, shape = words
        if color in COLORS and shape in SHAPES:
            return single(color, shape)
    elif len(words) >= 5:
        relation = _RELATION_ALIASES.get("_".join(words[2:-2]))
        ca, sa, cb, sb = words[0], words[1], words[-2], words[-1]
        if relation is not None and {ca, cb} <= COLORS.keys() and {sa, sb} <= SHAPES.keys():
            return pair(ca, sa, relation, cb, sb)
    raise ConfigError(f"unknown scene {name!r}: {_name_help()}")


def scene_names(relations: bool = False) -> list[str]:
    """All single-primitive scene names, plus (if ``relations``) every pair of distinct
    colour-shape combinations in every relation."""
    singles = [f"{c}_{s}" for c in COLORS for s in SHAPES]
    if not relations:
        return singles
    return [f"{a}_{r}_{b}" for a in singles for r in RELATIONS for b in singles if a != b]


def bounding_radius(scene: ToyScene) -> float:
    """Radius of the smallest origin-centred sphere containing the scene's bounding boxes."""
    radius = 0.0
    for p in scene.primitives:
        corner = [abs(c) + h for c, h in zip(p.center, p.half_extents(), strict=True)]
        radius = max(radius, math.sqrt(sum(c * c for c in corner)))
    return radius
