"""Turntable frames and their encodings: H.264 MP4, looping GIF, and a PNG preview grid.

Frames are ``(N, H, W, 3)`` uint8 arrays throughout. Encoding goes through imageio
(FFmpeg via imageio-ffmpeg for MP4, Pillow for GIF and PNG) and returns bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import imageio.v3 as iio
import numpy as np
import torch

from cfd3d.render.types import RenderOutput
from cfd3d.scene.cameras import Cameras, orbit

RenderFn = Callable[[Cameras], RenderOutput]


def turntable_frames(
    render_fn: RenderFn,
    n_frames: int,
    height: int,
    width: int,
    *,
    elevation_deg: float = 15.0,
    distance: float = 1.4,
    fovy_deg: float = 50.0,
    batch: int = 8,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Render a full orbit around the origin, starting at the front (azimuth 0).

    Args:
        render_fn: ``cameras -> RenderOutput`` whose ``rgb`` is ``(B, height, width, 3)``
            in [0, 1] (the caller fixes the resolution, e.g. in a closure).
        n_frames: number of views, evenly spaced in azimuth over 360°.
        height, width: expected image size; a renderer returning another size is an error.
        elevation_deg, distance, fovy_deg: the orbit (see :func:`cfd3d.scene.cameras.orbit`).
        batch: views per call of ``render_fn``.
        device: where the cameras are sent (default: CPU).

    Returns:
        ``(n_frames, height, width, 3)`` uint8 frames.

    Raises:
        ValueError: for a non-positive count, size or batch, or a wrongly sized rendering.
    """
    if n_frames < 1 or height < 1 or width < 1 or batch < 1:
        raise ValueError(
            f"n_frames, height, width and batch must be positive, got "
            f"{n_frames}, {height}, {width}, {batch}"
        )
    cameras = orbit(n_frames, elevation_deg, distance, fovy_deg)
    if device is not None:
        cameras = cameras.to(device)
    frames = np.empty((n_frames, height, width, 3), dtype=np.uint8)
    with torch.no_grad():
        for start in range(0, n_frames, batch):
            views = cameras[start : start + batch]
            rgb = render_fn(views).rgb
            if tuple(rgb.shape) != (len(views), height, width, 3):
                raise ValueError(
                    f"render_fn returned rgb of shape {tuple(rgb.shape)}, expected "
                    f"{(len(views), height, width, 3)}"
                )
            frames[start : start + len(views)] = to_uint8(rgb)
    return frames


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """Colours in [0, 1] (any shape, on any device) to rounded uint8 on the CPU."""
    return (rgb.detach().float().clamp(0.0, 1.0) * 255.0).round().to("cpu", torch.uint8).numpy()


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
    if frames.shape[0] == 0:
        raise ValueError("no frames to encode")
    return frames


def pad_to_even(frames: np.ndarray) -> np.ndarray:
    """Repeat the last row and/or column of ``(N, H, W, 3)`` frames to make H and W even.

    H.264 in yuv420p stores colour at half resolution and needs even sizes.
    """
    pad_h = frames.shape[1] % 2
    pad_w = frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def frames_to_mp4(frames: np.ndarray, fps: int = 24, quality: float = 7.0) -> bytes:
    """Encode frames as an H.264 MP4 (yuv420p, plays everywhere).

    Args:
        frames: ``(N, H, W, 3)`` uint8; odd sizes are padded by one pixel (edge repeated).
        fps: frames per second.
        quality: imageio-ffmpeg's quality, 1 (worst) to 10 (best); 7 is CRF 15.

    Returns:
        The MP4 file's bytes; it decodes to exactly ``N`` frames.
    """
    frames = pad_to_even(_check_frames(frames))
    return iio.imwrite(
        "<bytes>",
        frames,
        extension=".mp4",
        plugin="FFMPEG",
        fps=fps,
        codec="libx264",
        pixelformat="yuv420p",
        quality=quality,
        macro_block_size=1,
    )


def frames_to_gif(frames: np.ndarray, fps: int = 12) -> bytes:
    """Encode frames as a looping GIF (an adaptive 256-colour palette per frame).

    GIF stores delays in hundredths of a second, so the frame time is ``1/fps`` rounded
    to 10 ms. Pillow merges identical consecutive frames into one longer frame.

    Args:
        frames: ``(N, H, W, 3)`` uint8.
        fps: frames per second.

    Returns:
        The GIF file's bytes.
    """
    frames = _check_frames(frames)
    delay_ms = 10 * max(1, round(100.0 / fps))
    return iio.imwrite(
        "<bytes>", frames, extension=".gif", plugin="pillow", duration=delay_ms, loop=0
    )


def preview_grid(images: np.ndarray, ncols: int | None = None, pad: int = 2) -> bytes:
    """A PNG of images tiled row by row on a white background.

    Args:
        images: ``(N, H, W, 3)`` uint8.
        ncols: images per row (default: ``ceil(sqrt(N))``; at most ``N``).
        pad: white pixels between images and around the grid.

    Returns:
        PNG bytes of an image ``rows·(H + pad) + pad`` tall and ``ncols·(W + pad) + pad``
        wide, with ``rows = ceil(N / ncols)``.
    """
    images = _check_frames(images)
    n, height, width, _ = images.shape
    ncols = ncols if ncols is not None else math.ceil(math.sqrt(n))
    if ncols < 1 or pad < 0:
        raise ValueError(f"ncols must be >= 1 and pad >= 0, got {ncols} and {pad}")
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    grid = np.full(
        (nrows * (height + pad) + pad, ncols * (width + pad) + pad, 3), 255, dtype=np.uint8
    )
    for index, image in enumerate(images):
        row, col = divmod(index, ncols)
        top = pad + row * (height + pad)
        left = pad + col * (width + pad)
        grid[top : top + height, left : left + width] = image
    return iio.imwrite("<bytes>", grid, extension=".png", plugin="pillow")
