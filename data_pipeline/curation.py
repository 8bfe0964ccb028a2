"""Clip curation for raw video: scene-cut detection, static-clip filtering and T-frame windowing.

Genie trained on curated internet video: clips that cross a hard cut teach the dynamics model
teleportation, and near-still clips teach it nothing, so both are removed before sharding. The
tests are deliberately cheap (a mean absolute frame difference at output resolution) because
they run on every decoded frame of every input.

References: Bruce et al. 2024, "Genie: Generative Interactive Environments" (dataset curation).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from itertools import pairwise
from typing import NamedTuple

import numpy as np


def frame_diffs(frames_THWC: np.ndarray, prev_HWC: np.ndarray | None = None) -> np.ndarray:
    """Mean |difference| (0-255 scale) of each frame from the one before it, shape (T,) float64.

    Entry 0 compares frames_THWC[0] with `prev_HWC` (the last frame of the previous chunk) and is
    NaN when there is none, so a stream can be scored chunk by chunk with the same result.
    """
    if prev_HWC is not None:
        x = np.concatenate([prev_HWC[None], frames_THWC])
    else:
        x = np.ascontiguousarray(frames_THWC)
    # |a - b| as max - min stays in uint8 without wrapping: no widened copy of the frames, which
    # makes this ~8x faster than going through int16 (it runs on every decoded frame).
    d = np.maximum(x[1:], x[:-1])
    d -= np.minimum(x[1:], x[:-1])
    pixels = x[0].size
    means = d.reshape(len(d), pixels).sum(axis=1, dtype=np.uint64) / pixels
    return means if prev_HWC is not None else np.concatenate([[np.nan], means])


def is_scene_cut(diffs: np.ndarray, threshold: float) -> np.ndarray:
    """Bool mask, True where a frame starts a new scene (NaN, i.e. no predecessor, is never one)."""
    return np.nan_to_num(diffs, nan=0.0) > threshold


def is_static(window_diffs: np.ndarray, threshold: float) -> bool:
    """True when a window's consecutive-frame differences (T-1 values) average below threshold."""
    return float(np.mean(window_diffs)) < threshold


class Window(NamedTuple):
    start: int  # index of the window's first frame in the whole stream
    frames: np.ndarray  # (T, H, W, C) uint8


class SceneWindower:
    """Cuts a stream of frames, pushed chunk by chunk, into T-frame windows every `stride` frames.

    Windows restart at every scene cut and never straddle one; near-static windows are dropped.
    Only the frames a future window can still use are buffered, so memory stays O(T + chunk)
    however long the stream. Counts "scene_cuts", "static_dropped" and "too_short" (scenes
    shorter than T, counted by `finish()` or at the next cut) in `stats`.
    """

    def __init__(
        self,
        frames: int,
        stride: int,
        scene_cut_threshold: float,
        static_threshold: float,
        stats: Counter[str],
    ) -> None:
        self.frames = frames
        self.stride = stride
        self.scene_cut_threshold = scene_cut_threshold
        self.static_threshold = static_threshold
        self.stats = stats
        self._prev: np.ndarray | None = None  # last frame pushed, to score the next chunk's first
        self._pos = 0  # stream index of the next frame to arrive
        self._scene_start = 0
        self._next = 0  # stream index where the next window starts
        self._buf_start = 0  # the buffer holds frames [_buf_start, _pos) of the current scene
        self._buf: np.ndarray | None = None  # (N, H, W, C)
        self._buf_diffs = np.zeros(0)  # (N,) frame_diffs of the buffered frames

    def push(self, frames_THWC: np.ndarray) -> Iterator[Window]:
        """Add the next frames of the stream; yield every window they complete."""
        if len(frames_THWC) == 0:
            return
        diffs = frame_diffs(frames_THWC, self._prev)
        self._prev = frames_THWC[-1]
        cuts = np.flatnonzero(is_scene_cut(diffs, self.scene_cut_threshold)).tolist()
        bounds = [0, *cuts, len(frames_THWC)]
        for i, (lo, hi) in enumerate(pairwise(bounds)):
            if i > 0:  # `lo` starts a new scene
                self._close_scene()
                self.stats["scene_cuts"] += 1
                self._scene_start = self._next = self._buf_start = self._pos
                self._buf = None
                self._buf_diffs = np.zeros(0)
            self._append(frames_THWC[lo:hi], diffs[lo:hi])
            yield from self._emit()

    def finish(self) -> None:
        """End of stream: account for the last scene."""
        self._close_scene()

    def _close_scene(self) -> None:
        if self._pos - self._scene_start < self.frames:
            self.stats["too_short"] += 1

    def _append(self, frames_THWC: np.ndarray, diffs: np.ndarray) -> None:
        if self._buf is None or len(self._buf) == 0:
            self._buf, self._buf_diffs = frames_THWC, diffs
        else:
            self._buf = np.concatenate([self._buf, frames_THWC])
            self._buf_diffs = np.concatenate([self._buf_diffs, diffs])
        self._pos += len(frames_THWC)

    def _emit(self) -> Iterator[Window]:
        assert self._buf is not None
        while self._next + self.frames <= self._pos:
            lo = self._next - self._buf_start
            # The window's own T-1 differences: the one into its first frame belongs to the past.
            if is_static(self._buf_diffs[lo + 1 : lo + self.frames], self.static_threshold):
                self.stats["static_dropped"] += 1
            else:
                # A copy, so a kept clip does not pin the whole decode chunk in memory.
                yield Window(self._next, self._buf[lo : lo + self.frames].copy())
            self._next += self.stride
        drop = min(self._next - self._buf_start, len(self._buf))
        self._buf, self._buf_diffs = self._buf[drop:], self._buf_diffs[drop:]
        self._buf_start += drop
