"""Pictures and videos of frames: what a person looks at while a model trains, after an
evaluation, from `worldsim rollout` and in the app.

Frames are uint8 RGB arrays (T, H, W, 3) (`to_uint8_clips` converts model-space tensors).
`write_grid_png` draws one row per clip; `write_video` writes `.mp4` (H.264) or `.gif`, the
suffix choosing the writer; `write_side_by_side_mp4` plays clips next to each other. Enlarging is
by pixel repetition (nearest neighbour): 64x64 game frames stay crisp.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from einops import rearrange
from PIL import Image

from worldsim.io.files import atomic_path, write_atomic

if TYPE_CHECKING:  # torch loads only where tensors are converted: commands check args first
    import torch


def to_uint8_clips(frames: torch.Tensor) -> np.ndarray:
    """Model-space frames (..., C, H, W) floats in [-1, 1] -> (..., H, W, C) uint8 RGB."""
    import torch

    if frames.dim() < 3 or frames.shape[-3] != 3:
        raise ValueError(f"expected frames (..., 3, H, W), got shape {tuple(frames.shape)}")
    pixels = ((frames.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.movedim(-3, -1).cpu().numpy()


def upscale(frames_HWC: np.ndarray, scale: int) -> np.ndarray:
    """Enlarge (..., H, W, C) frames `scale` times by pixel repetition."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    if scale == 1:
        return frames_HWC
    return frames_HWC.repeat(scale, axis=-3).repeat(scale, axis=-2)


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(image: Image.Image | np.ndarray, path: str | os.PathLike[str]) -> Path:
    return write_atomic(path, png_bytes(image))


def write_grid_png(clips: Sequence[np.ndarray], path: str | Path, border: int = 2) -> Path:
    """One row per clip (T, H, W, 3) uint8, one column per frame, white borders between cells."""
    stack = _check_clips(clips)  # (R, T, H, W, 3)
    pad = ((0, 0), (0, 0), (border, border), (border, border), (0, 0))
    tiled = rearrange(np.pad(stack, pad, constant_values=255), "r t h w c -> (r h) (t w) c")
    return save_png(tiled, path)


def write_side_by_side_mp4(
    clips: Sequence[np.ndarray], path: str | Path, fps: float = 8.0, scale: int = 1
) -> Path:
    """Play the clips (each (T, H, W, 3) uint8) left to right in one H.264 video."""
    stack = _check_clips(clips)  # (R, T, H, W, 3)
    return _write_mp4(rearrange(stack, "r t h w c -> t h (r w) c"), Path(path), fps, scale)


def write_video(
    clip_THWC: np.ndarray, path: str | os.PathLike[str], fps: float = 8.0, scale: int = 1
) -> Path:
    """uint8 frames (T, H, W, 3) -> `path`; its suffix (a key of VIDEO_WRITERS) picks the format."""
    path = Path(path)
    writer = VIDEO_WRITERS.get(path.suffix.lower())
    if writer is None:
        raise ValueError(f"a video must end in {' or '.join(VIDEO_WRITERS)}, got {path.name!r}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return writer(_check_clips([clip_THWC])[0], path, fps, scale)


def _write_mp4(video_THWC: np.ndarray, path: Path, fps: float, scale: int) -> Path:
    import av  # PyAV's FFmpeg libraries load only where a video is written

    video = upscale(video_THWC, scale)
    # yuv420p halves chroma resolution, so H.264 needs even sides.
    pad_h, pad_w = video.shape[1] % 2, video.shape[2] % 2
    video = np.ascontiguousarray(np.pad(video, ((0, 0), (0, pad_h), (0, pad_w), (0, 0))))
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=max(round(fps), 1))
        stream.width, stream.height = video.shape[2], video.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}  # near-lossless: the videos are for judging frames
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def _write_gif(video_THWC: np.ndarray, path: Path, fps: float, scale: int) -> Path:
    images = [Image.fromarray(frame) for frame in upscale(video_THWC, scale)]
    with atomic_path(path) as tmp:
        images[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=round(1000 / fps),
            loop=0,
        )
    return path


VIDEO_WRITERS: dict[str, Callable[[np.ndarray, Path, float, int], Path]] = {
    ".mp4": _write_mp4,
    ".gif": _write_gif,
}


def _check_clips(clips: Sequence[np.ndarray]) -> np.ndarray:
    if not len(clips):
        raise ValueError("no clips to draw")
    shapes = {np.shape(c) for c in clips}
    if len(shapes) != 1:
        raise ValueError(f"clips must share one (T, H, W, 3) shape, got {sorted(shapes)}")
    stack = np.stack(clips)
    if stack.ndim != 5 or stack.shape[-1] != 3 or stack.dtype != np.uint8 or not stack.shape[1]:
        raise ValueError(
            f"clips must be uint8 (T, H, W, 3) with T >= 1, got {stack.dtype} "
            f"{tuple(stack.shape[1:])}"
        )
    return stack
