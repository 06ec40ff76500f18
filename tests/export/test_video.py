"""Turntables and their encodings: MP4 frame count and size, GIF frames, preview grids."""

import io

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from cfd3d.export import frames_to_gif, frames_to_mp4, preview_grid, turntable_frames
from cfd3d.render.types import RenderOutput


def ramp_frames(n: int, height: int, width: int) -> np.ndarray:
    """``n`` frames, each one flat colour, clearly different from its neighbours."""
    levels = np.linspace(20, 235, n).round().astype(np.uint8)
    colours = np.stack([levels, levels[::-1], np.full(n, 128, np.uint8)], axis=-1)
    return np.broadcast_to(colours[:, None, None, :], (n, height, width, 3)).copy()


@pytest.mark.parametrize(("height", "width"), [(24, 32), (21, 31)])
def test_mp4_decodes_to_exactly_n_frames(height, width):
    frames = ramp_frames(9, height, width)
    data = frames_to_mp4(frames, fps=24)
    assert data[4:8] == b"ftyp"
    decoded = iio.imread(data, index=None, extension=".mp4")
    # yuv420p needs even sizes: odd ones gain one row/column (a copy of the edge).
    assert decoded.shape == (9, height + height % 2, width + width % 2, 3)
    # Same frames in the same order, up to H.264/yuv420p colour error on flat frames.
    error = np.abs(decoded[:, :height, :width].astype(int) - frames.astype(int))
    assert error.max() <= 6
    assert iio.immeta(data, extension=".mp4")["fps"] == 24


def test_gif_has_every_frame_and_loops():
    frames = ramp_frames(7, 16, 20)
    image = Image.open(io.BytesIO(frames_to_gif(frames, fps=12)))
    assert image.format == "GIF" and image.size == (20, 16)
    assert image.n_frames == 7
    assert image.info["loop"] == 0
    assert image.info["duration"] == 80  # 1/12 s in GIF's 10 ms steps
    image.seek(3)
    np.testing.assert_allclose(np.asarray(image.convert("RGB"))[0, 0], frames[3, 0, 0], atol=2)


def test_preview_grid_layout():
    images = ramp_frames(5, 10, 14)
    grid = iio.imread(preview_grid(images, pad=2), extension=".png")
    # ceil(sqrt(5)) = 3 columns, 2 rows.
    assert grid.shape == (2 * 12 + 2, 3 * 16 + 2, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[14:24, 18:32], images[4])  # row 1, column 1
    assert (grid[14:24, 34:48] == 255).all()  # the empty sixth cell
    assert (grid[:2] == 255).all() and (grid[:, :2] == 255).all()
    wide = iio.imread(preview_grid(images, ncols=5, pad=0), extension=".png")
    np.testing.assert_array_equal(wide, np.concatenate(list(images), axis=1))


@pytest.mark.parametrize(
    "bad",
    [np.zeros((0, 4, 4, 3), np.uint8), np.zeros((2, 4, 4, 3)), np.zeros((2, 4, 4), np.uint8)],
)
def test_encoders_reject_bad_frames(bad):
    for encode in (frames_to_mp4, frames_to_gif, preview_grid):
        with pytest.raises(ValueError):
            encode(bad)


class AzimuthRenderer:
    """Renders a flat image whose red channel is the camera's azimuth / 360."""

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width
        self.calls: list[tuple[int, bool]] = []
        self.azimuths: list[float] = []
        self.elevations: list[float] = []
        self.distances: list[float] = []

    def __call__(self, cameras) -> RenderOutput:
        self.calls.append((len(cameras), torch.is_grad_enabled()))
        self.azimuths += cameras.azimuth.tolist()
        self.elevations += cameras.elevation.tolist()
        self.distances += cameras.distance.tolist()
        b = len(cameras)
        rgb = torch.zeros(b, self.height, self.width, 3)
        rgb[..., 0] = (cameras.azimuth / 360.0)[:, None, None]
        rgb[..., 1] = 2.0  # clamped to 1
        return RenderOutput(
            rgb=rgb,
            opacity=torch.ones(b, self.height, self.width, 1),
            depth=torch.ones(b, self.height, self.width, 1),
        )


def test_turntable_orbits_the_object_in_batches():
    render = AzimuthRenderer(6, 10)
    frames = turntable_frames(render, 10, 6, 10, elevation_deg=20.0, distance=1.5, batch=4)
    assert frames.shape == (10, 6, 10, 3) and frames.dtype == np.uint8
    assert render.calls == [(4, False), (4, False), (2, False)]
    np.testing.assert_allclose(render.azimuths, np.arange(10) * 36.0, atol=1e-3)
    np.testing.assert_allclose(render.elevations, 20.0, atol=1e-3)
    np.testing.assert_allclose(render.distances, 1.5, atol=1e-5)
    # Azimuths come back from atan2 in float32: 25.5 may round either way.
    np.testing.assert_allclose(frames[:, 2, 3, 0], np.arange(10) * 0.1 * 255, atol=0.51)
    assert (frames[..., 1] == 255).all() and (frames[..., 2] == 0).all()


def test_turntable_rejects_a_wrongly_sized_rendering():
    with pytest.raises(ValueError, match="expected"):
        turntable_frames(AzimuthRenderer(8, 8), 3, 6, 10)
