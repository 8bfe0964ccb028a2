"""What a person watches while a model trains: metric logs and reconstruction pictures.

`RunLog` writes one CSV per split (`train.csv`, `eval.csv`) on every log step, and the same scalars
to TensorBoard when it is installed. The picture writers take uint8 clips (T, H, W, 3) so that any
task can show real frames beside its model's frames: `write_grid_png` (one row per clip, one column
per frame) and `write_side_by_side_mp4` (the clips play next to each other).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from PIL import Image


def to_uint8_clips(frames: torch.Tensor) -> np.ndarray:
    """Model-space frames (..., C, H, W) floats in [-1, 1] -> (..., H, W, C) uint8 RGB."""
    if frames.dim() < 3 or frames.shape[-3] != 3:
        raise ValueError(f"expected frames (..., 3, H, W), got shape {tuple(frames.shape)}")
    pixels = ((frames.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.movedim(-3, -1).cpu().numpy()


def write_grid_png(clips: Sequence[np.ndarray], path: str | Path, border: int = 2) -> Path:
    """One row per clip (T, H, W, 3) uint8, one column per frame, white borders between cells."""
    stack = _check_clips(clips)  # (R, T, H, W, 3)
    pad = ((0, 0), (0, 0), (border, border), (border, border), (0, 0))
    tiled = rearrange(np.pad(stack, pad, constant_values=255), "r t h w c -> (r h) (t w) c")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(tiled).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def write_side_by_side_mp4(
    clips: Sequence[np.ndarray], path: str | Path, fps: float = 8.0, scale: int = 1
) -> Path:
    """Play the clips (each (T, H, W, 3) uint8) left to right in one H.264 video.

    `scale` enlarges by pixel repetition: 64x64 game frames are too small to judge in a player.
    """
    import av  # PyAV's FFmpeg libraries load only where a video is written

    stack = _check_clips(clips)  # (R, T, H, W, 3)
    video = rearrange(stack, "r t h w c -> t h (r w) c")
    if scale > 1:
        video = video.repeat(scale, axis=1).repeat(scale, axis=2)
    # yuv420p halves chroma resolution, so H.264 needs even sides.
    pad_h, pad_w = video.shape[1] % 2, video.shape[2] % 2
    video = np.ascontiguousarray(np.pad(video, ((0, 0), (0, pad_h), (0, pad_w), (0, 0))))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height = video.shape[2], video.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}  # near-lossless: the video is for judging reconstructions
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    os.replace(tmp, path)
    return path


def _check_clips(clips: Sequence[np.ndarray]) -> np.ndarray:
    if not clips:
        raise ValueError("no clips to draw")
    shapes = {np.shape(c) for c in clips}
    if len(shapes) != 1:
        raise ValueError(f"clips must share one (T, H, W, 3) shape, got {sorted(shapes)}")
    stack = np.stack(clips)
    if stack.ndim != 5 or stack.shape[-1] != 3 or stack.dtype != np.uint8:
        raise ValueError(
            f"clips must be uint8 (T, H, W, 3), got {stack.dtype} {tuple(stack.shape[1:])}"
        )
    return stack


class RunLog:
    """Scalar metrics per step to `<out>/<split>.csv` and TensorBoard (`<out>/tensorboard`).

    Build it on the main process only. `resume_step` drops rows logged after the checkpoint a run
    resumes from, so a crash-and-resume leaves one row per step, as an uninterrupted run would.
    """

    def __init__(self, out_dir: Path, resume_step: int = 0) -> None:
        self.out_dir = out_dir
        self._headers: dict[str, list[str]] = {}
        for split in ("train", "eval"):
            self._truncate(self._csv(split), resume_step)
        self._tb: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # TensorBoard is optional; the CSV always has everything
            return
        # purge_step hides events a crashed run wrote past the checkpoint it resumes from.
        purge = resume_step + 1 if resume_step else None
        self._tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=purge)

    def write(self, split: str, step: int, metrics: Mapping[str, float]) -> None:
        row = {"step": step, **metrics}
        path = self._csv(split)
        header = self._header(path)
        if not header or set(row) - set(header):
            # First row, or a metric appeared: rewrite the file under the wider header.
            header = header + sorted(set(row) - set(header)) if header else list(row)
            self._rewrite(path, header, self._rows(path))
            self._headers[split] = header
        with path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=header).writerow(row)
        if self._tb is not None:
            for key, value in metrics.items():
                self._tb.add_scalar(f"{split}/{key}", value, global_step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()

    def _csv(self, split: str) -> Path:
        return self.out_dir / f"{split}.csv"

    def _header(self, path: Path) -> list[str]:
        split = path.stem
        if split not in self._headers and path.is_file():
            with path.open(newline="") as f:
                self._headers[split] = next(csv.reader(f), [])
        return self._headers.get(split, [])

    def _truncate(self, path: Path, resume_step: int) -> None:
        if path.is_file():
            kept = [r for r in self._rows(path) if int(r["step"]) <= resume_step]
            self._rewrite(path, self._header(path), kept)

    @staticmethod
    def _rows(path: Path) -> list[dict[str, str]]:
        if not path.is_file():
            return []
        with path.open(newline="") as f:
            return list(csv.DictReader(f))

    @staticmethod
    def _rewrite(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
