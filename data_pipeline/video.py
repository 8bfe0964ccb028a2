"""Video files as a source: one work unit per file, decoded with decord into curated clips.

Per file: resize in the decoder (short side -> `size`, so full-resolution frames never reach
Python), centre-crop to `size` x `size`, resample to `fps` by picking the source frame nearest each
output timestamp, then cut T-frame windows within scenes (data_pipeline.curation). Frames are
decoded `DECODE_CHUNK` output frames at a time, so a long video never sits in memory whole.

Bad input never stops a job: a file that cannot be opened or decoded is logged, counted in
stats["bad_inputs"] and skipped. A file that breaks mid-stream (e.g. truncated) keeps the clips
completed before the break: their frames were decoded correctly, and a generator cannot take
back what it has already yielded.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import decord
import numpy as np

from data_pipeline.config import ShardConfig
from data_pipeline.curation import SceneWindower
from data_pipeline.schema import ActionSpace, Clip

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".mkv", ".webm", ".avi", ".mov"})
DECODE_CHUNK = 128  # output frames per get_batch: ~3 MB at size 64 (16:9), amortises the call
# 0 lets FFmpeg pick its thread count: ~25% faster than 1 thread for a lone decoder on 2 cores;
# with 2 workers on 2 cores the two settings were within measurement noise.
DECODE_THREADS = 0
# Errors decord and PyAV raise for unreadable media. Anything else is a bug and propagates.
MEDIA_ERRORS = (av.FFmpegError, decord.DECORDError, RuntimeError)


class BadVideo(Exception):
    """A file that is not a decodable video; caught in VideoUnit.clips and counted."""


def video_units(src: str) -> list[VideoUnit]:
    """A video file, a folder (searched recursively) or a glob -> one unit per video file.

    Raises FileNotFoundError for a missing path and ValueError for a folder or glob holding no
    video. An explicitly named file is taken whatever its extension or content: a bad one is
    skipped, with a warning, when its clips are made.
    """
    return [VideoUnit.from_path(p) for p in find_videos(src)]


def find_videos(src: str) -> list[str]:
    """Video paths named by `src`, sorted so the shard plan is the same on every run."""
    if os.path.isfile(src):
        return [src]
    if os.path.isdir(src):
        found = _videos_in(src)
        kind = "folder"
    elif glob.has_magic(src):
        found = []
        for match in glob.glob(src, recursive=True):
            found += _videos_in(match) if os.path.isdir(match) else [match]
        found = [p for p in found if _is_video(p)]
        kind = "glob"
    else:
        raise FileNotFoundError(f"video source {src!r} does not exist")
    if not found:
        exts = " ".join(sorted(VIDEO_EXTENSIONS))
        raise ValueError(f"{kind} {src!r} holds no video files (looked for {exts})")
    return sorted(set(found))


def _videos_in(folder: str) -> list[str]:
    return [str(p) for p in Path(folder).rglob("*") if _is_video(str(p))]


def _is_video(path: str) -> bool:
    return os.path.isfile(path) and os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


@dataclass(frozen=True)
class VideoUnit:
    """One video file. Its clips are a pure function of (file content, ShardConfig)."""

    path: str
    uid: str

    @classmethod
    def from_path(cls, path: str) -> VideoUnit:
        # The stem keeps keys readable; the hash of the real path keeps same-named files in
        # different folders apart and makes one file named twice a detectable duplicate.
        stem = re.sub(r"[^A-Za-z0-9_]+", "_", Path(path).stem).strip("_")[:48] or "video"
        digest = hashlib.sha1(os.path.realpath(path).encode()).hexdigest()[:10]
        return cls(path=path, uid=f"{stem}_{digest}")

    def action_space(self) -> ActionSpace | None:
        return None  # raw video carries no actions; latent actions are learned later

    def clips(self, cfg: ShardConfig, stats: Counter[str]) -> Iterator[Clip]:
        try:
            reader, indices, src_fps = open_video(self.path, cfg.size, cfg.video_fps)
        except (BadVideo, OSError, *MEDIA_ERRORS) as e:  # OSError: vanished or unreadable
            self._skip(stats, e)
            return
        windower = SceneWindower(
            cfg.frames, cfg.stride, cfg.scene_cut_threshold, cfg.static_threshold, stats
        )
        meta = {
            "source": self.path,
            "fps": cfg.video_fps,
            "src_fps": src_fps,
            "license": cfg.license,
            "kind": "video",
        }
        for lo in range(0, len(indices), DECODE_CHUNK):
            try:
                frames_THWC = decode_chunk(reader, indices[lo : lo + DECODE_CHUNK], cfg.size)
            except (BadVideo, *MEDIA_ERRORS) as e:
                self._skip(stats, e, decoded=lo)
                return
            for start, window_THWC in windower.push(frames_THWC):
                start_time = round(start / cfg.video_fps, 6)
                yield Clip(window_THWC, None, {**meta, "start_time": start_time})
        windower.finish()

    def _skip(self, stats: Counter[str], err: Exception, decoded: int = 0) -> None:
        stats["bad_inputs"] += 1
        # decord appends a C++ stack trace to its messages; the first line is the reason.
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if decoded:
            log.warning("video %s broke after %d output frames: %s", self.path, decoded, reason)
        else:
            log.warning("skipping video %s: %s", self.path, reason)


def open_video(path: str, size: int, fps: float) -> tuple[decord.VideoReader, np.ndarray, float]:
    """Open `path` for decoding at short side `size`; return (reader, source frame index of each
    output frame at `fps`, source fps). Raises BadVideo or a media error for unusable input."""
    width, height = probe_frame_size(path)
    dec_w, dec_h = decode_size(width, height, size)
    reader = decord.VideoReader(path, width=dec_w, height=dec_h, num_threads=DECODE_THREADS)
    src_fps = float(reader.get_avg_fps())
    if len(reader) == 0 or not src_fps > 0:
        raise BadVideo(f"{len(reader)} frames at {src_fps} fps")
    starts = reader.get_frame_timestamp(range(len(reader)))[:, 0]
    return reader, resample_indices(starts, src_fps, fps), src_fps


def probe_frame_size(path: str) -> tuple[int, int]:
    """(width, height) of a video's frames from its header. Raises BadVideo or a media error."""
    if os.path.getsize(path) == 0:
        raise BadVideo("empty file")
    # PyAV only probes the header: decord cannot report the frame size without decoding one.
    with av.open(path) as container:
        if not container.streams.video:
            raise BadVideo("no video stream")
        codec = container.streams.video[0].codec_context
        width, height = codec.width, codec.height
    if width < 1 or height < 1:
        raise BadVideo(f"bad frame size {width}x{height}")
    return width, height


def decode_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Decoder output (w, h) for a `width` x `height` video: short side `size`, aspect kept."""
    w = decord_safe_width(max(size, round(width * size / min(width, height))))
    return w, max(size, round(height * w / width))


def decord_safe_width(width: int) -> int:
    """The smallest width >= `width` that decord returns as 3-channel frames.

    decord infers the channel count as row stride // width, and FFmpeg pads each row to a width
    aligned to 16-64 pixels; when the padded stride is another multiple of the width (48, 72,
    ...) frames come back with 4+ channels and fail to copy (dmlc/decord#336). The few extra
    pixels this may add are removed by the centre crop.
    """

    def misread(w: int) -> bool:
        padded = (-(-w // align) * align for align in (16, 32, 64))
        return any(p != w and 3 * p % w == 0 for p in padded)

    while misread(width):
        width += 1
    return width


def resample_indices(starts: np.ndarray, src_fps: float, fps: float) -> np.ndarray:
    """Source frame nearest each output time k/fps, for every k/fps before the video ends.

    `starts` are the source frames' presentation times (s). Timestamps rather than
    round(k * src_fps / fps) keep variable-frame-rate video in sync; ties go to the earlier frame.
    """
    starts = np.asarray(starts, dtype=np.float64) - starts[0]
    if len(starts) > 1 and not (np.all(np.isfinite(starts)) and np.all(np.diff(starts) >= 0)):
        starts = np.arange(len(starts)) / src_fps  # unusable timestamps: assume constant rate
    duration = starts[-1] + 1.0 / src_fps  # the last frame shows for one nominal frame period
    t = np.arange(math.ceil(duration * fps - 1e-6)) / fps
    if len(starts) == 1:
        return np.zeros(len(t), dtype=np.int64)
    right = np.clip(np.searchsorted(starts, t), 1, len(starts) - 1)
    # The epsilon makes exact ties (25 -> 10 fps) pick the earlier frame despite rounding.
    take_left = t - starts[right - 1] <= starts[right] - t + 1e-9
    return np.where(take_left, right - 1, right).astype(np.int64)


def decode_chunk(reader: decord.VideoReader, indices: np.ndarray, size: int) -> np.ndarray:
    """Decode source frames `indices` (non-decreasing) -> centre-cropped (N, size, size, 3)."""
    # Upsampling repeats indices; decode each frame once instead of seeking back for it.
    unique, inverse = np.unique(indices, return_inverse=True)
    frames_NHWC = reader.get_batch(unique.tolist()).asnumpy()
    if len(unique) < len(indices):
        frames_NHWC = frames_NHWC[inverse]
    return center_crop(frames_NHWC, size)


def center_crop(frames_NHWC: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, C) -> (N, size, size, C), centred, as a view (no copy)."""
    _, h, w, _ = frames_NHWC.shape
    if h < size or w < size:
        raise BadVideo(f"decoder returned {w}x{h} frames, smaller than {size}x{size}")
    top, left = (h - size) // 2, (w - size) // 2
    return frames_NHWC[:, top : top + size, left : left + size]
