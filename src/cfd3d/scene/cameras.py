"""Pinhole cameras.

Conventions (used everywhere in cfd3d):

* world space is right-handed with +z up; objects live inside the sphere of radius
  ``bound`` (1.0 by default) around the origin;
* camera-to-world matrices follow the OpenGL convention: camera +x is image right,
  camera +y is image up, and the camera looks down its -z axis;
* pixel ``(row, col)`` has its centre at ``(col + 0.5, row + 0.5)`` in image coordinates;
  row 0 is the top of the image; pixels are square;
* azimuth is measured in the xy-plane from +x towards +y (0° looks at the object's front,
  which faces +x), elevation is the angle above the xy-plane.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Cameras:
    """A batch of ``B`` pinhole cameras.

    Attributes:
        c2w: ``(B, 4, 4)`` camera-to-world transforms (OpenGL convention, see module doc).
        fovy: ``(B,)`` vertical field of view in radians.
    """

    c2w: torch.Tensor
    fovy: torch.Tensor

    def __post_init__(self) -> None:
        if self.c2w.ndim != 3 or self.c2w.shape[1:] != (4, 4):
            raise ValueError(f"c2w must be (B, 4, 4), got {tuple(self.c2w.shape)}")
        if self.fovy.shape != self.c2w.shape[:1]:
            raise ValueError(f"fovy must be (B,), got {tuple(self.fovy.shape)}")

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, index: int | slice | torch.Tensor) -> Cameras:
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Cameras(self.c2w[index], self.fovy[index])

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    def to(self, device: torch.device | str) -> Cameras:
        return Cameras(self.c2w.to(device), self.fovy.to(device))

    @property
    def position(self) -> torch.Tensor:
        """``(B, 3)`` camera centres in world space."""
        return self.c2w[:, :3, 3]

    @property
    def distance(self) -> torch.Tensor:
        """``(B,)`` distance of the camera centre from the origin."""
        return self.position.norm(dim=-1)

    @property
    def azimuth(self) -> torch.Tensor:
        """``(B,)`` azimuth of the camera centre in degrees, in [0, 360)."""
        p = self.position
        return torch.rad2deg(torch.atan2(p[:, 1], p[:, 0])) % 360.0

    @property
    def elevation(self) -> torch.Tensor:
        """``(B,)`` elevation of the camera centre above the xy-plane in degrees."""
        p = self.position
        return torch.rad2deg(torch.asin((p[:, 2] / p.norm(dim=-1)).clamp(-1.0, 1.0)))

    def focal(self, height: int) -> torch.Tensor:
        """``(B,)`` focal length in pixels for an image ``height`` pixels tall."""
        return 0.5 * height / torch.tan(0.5 * self.fovy)

    def pixel_directions(self, height: int, width: int, corners: bool = False) -> torch.Tensor:
        """Ray directions in camera space, *not* normalised: ``(x, y, -1)``.

        Args:
            height, width: image size in pixels.
            corners: if True, directions through the ``(height+1) x (width+1)`` pixel
                corners instead of the pixel centres.

        Returns:
            ``(B, height, width, 3)`` (or ``(B, height+1, width+1, 3)`` for corners)
            directions with z = -1, so a point's ray parameter is its camera-space depth.
        """
        focal = self.focal(height)
        offset = 0.0 if corners else 0.5
        n_rows, n_cols = (height + 1, width + 1) if corners else (height, width)
        dtype, device = self.c2w.dtype, self.device
        v, u = torch.meshgrid(
            torch.arange(n_rows, dtype=dtype, device=device) + offset,
            torch.arange(n_cols, dtype=dtype, device=device) + offset,
            indexing="ij",
        )
        x = (u - 0.5 * width)[None] / focal[:, None, None]
        y = -(v - 0.5 * height)[None] / focal[:, None, None]
        return torch.stack([x, y, -torch.ones_like(x)], dim=-1)

    def rays(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """World-space rays through pixel centres.

        Returns:
            origins ``(B, H, W, 3)`` and unit directions ``(B, H, W, 3)``.
        """
        dirs_cam = self.pixel_directions(height, width)
        dirs = torch.einsum("bij,bhwj->bhwi", self.c2w[:, :3, :3], dirs_cam)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        origins = self.position[:, None, None, :].expand_as(dirs)
        return origins, dirs


def look_at(eye: torch.Tensor, target: torch.Tensor | None = None, up: torch.Tensor | None = None):
    """Camera-to-world matrices for cameras at ``eye`` looking at ``target``.

    Args:
        eye: ``(B, 3)`` camera centres.
        target: ``(B, 3)`` or ``(3,)`` points looked at (default: the origin).
        up: world up vector (default +z). Cameras looking straight along ``up`` use +y.

    Returns:
        ``(B, 4, 4)`` camera-to-world transforms.
    """
    eye = eye.to(torch.get_default_dtype()) if not eye.is_floating_point() else eye
    if target is None:
        target = torch.zeros(3, dtype=eye.dtype, device=eye.device)
    if up is None:
        up = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype, device=eye.device)
    forward = target - eye
    forward = forward / forward.norm(dim=-1, keepdim=True)
    up = up.expand_as(forward)
    right = torch.cross(forward, up, dim=-1)
    degenerate = right.norm(dim=-1) < 1e-6
    if degenerate.any():
        alt = torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device).expand_as(forward)
        right = torch.where(degenerate[:, None], torch.cross(forward, alt, dim=-1), right)
    right = right / right.norm(dim=-1, keepdim=True)
    true_up = torch.cross(right, forward, dim=-1)
    c2w = torch.zeros(eye.shape[0], 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = true_up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = eye
    c2w[:, 3, 3] = 1.0
    return c2w


def spherical_cameras(
    azimuth_deg: torch.Tensor,
    elevation_deg: torch.Tensor,
    distance: torch.Tensor,
    fovy_deg: torch.Tensor,
) -> Cameras:
    """Cameras on spheres around the origin, looking at it (all inputs ``(B,)``)."""
    az = torch.deg2rad(azimuth_deg)
    el = torch.deg2rad(elevation_deg)
    eye = torch.stack(
        [
            distance * torch.cos(el) * torch.cos(az),
            distance * torch.cos(el) * torch.sin(az),
            distance * torch.sin(el),
        ],
        dim=-1,
    )
    return Cameras(look_at(eye), torch.deg2rad(fovy_deg))


def orbit(n: int, elevation_deg: float = 15.0, distance: float = 1.4, fovy_deg: float = 50.0):
    """``n`` evenly spaced cameras on a circle, starting at azimuth 0 (the front)."""
    azimuth = torch.arange(n, dtype=torch.float32) * (360.0 / n)
    full = torch.ones(n)
    return spherical_cameras(azimuth, elevation_deg * full, distance * full, fovy_deg * full)
