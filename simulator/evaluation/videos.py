"""Sets of videos to score, from any model: a folder of video files (mp4, webm, GIF, ...), a
folder of folders of PNG/JPEG frames (one folder a video), or webdataset shards (a .tar, a glob
of them, or a folder holding them). Every video comes out as uint8 (T, H, W, 3), in a fixed
order, one at a time, so a scorer's memory stays bounded whatever the set's size."""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

from data_pipeline.schema import decode_sample
from data_pipeline.shard_source import iter_shard_samples

FILE_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".gif"}
FRAME_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass(frozen=True)
class VideoSet:
    """The resolved members of one input: video files, frame folders or shards (one kind)."""

    spec: str
    kind: str  # "files", "frames" or "shards"
    members: tuple[Path, ...]

    def fingerprint(self) -> str:
        """sha256 over the members' paths, sizes and modification times: a feature cache key
        that changes whenever a member does."""
        h = hashlib.sha256(self.kind.encode())
        for path in self.members:
            files = sorted(path.iterdir()) if path.is_dir() else [path]
            for f in files:
                st = f.stat()
                h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


def resolve_video_set(spec: str) -> VideoSet:
    """What `spec` holds; ValueError or FileNotFoundError naming the problem otherwise."""
    path = Path(spec)
    if any(ch in spec for ch in "*?["):
        tars = tuple(sorted(Path(p) for p in glob.glob(spec) if p.endswith(".tar")))
        if not tars:
            raise FileNotFoundError(f"no .tar shard matches {spec!r}")
        return VideoSet(spec, "shards", tars)
    if path.is_file():
        if path.suffix == ".tar":
            return VideoSet(spec, "shards", (path,))
        if path.suffix.lower() in FILE_SUFFIXES:
            return VideoSet(spec, "files", (path,))
        raise ValueError(f"{spec} is neither a video ({sorted(FILE_SUFFIXES)}) nor a .tar shard")
    if not path.is_dir():
        raise FileNotFoundError(f"video set {spec} does not exist")
    entries = sorted(path.iterdir())
    for kind, members in (
        ("shards", [p for p in entries if p.suffix == ".tar"]),
        ("files", [p for p in entries if p.suffix.lower() in FILE_SUFFIXES]),
        ("frames", [p for p in entries if p.is_dir() and _frame_files(p)]),
    ):
        if members:
            return VideoSet(spec, kind, tuple(members))
    raise ValueError(
        f"{spec} holds no videos: expected .tar shards, video files ({sorted(FILE_SUFFIXES)}) "
        "or folders of PNG/JPEG frames"
    )


def iter_videos(videos: VideoSet) -> Iterator[tuple[str, np.ndarray]]:
    """(name, uint8 frames (T, H, W, 3)) of every video of the set, in order."""
    for member in videos.members:
        if videos.kind == "shards":
            yield from _shard_clips(member)
        elif videos.kind == "frames":
            yield member.name, np.stack([_rgb(Image.open(f)) for f in _frame_files(member)])
        else:
            yield member.name, _read_video_file(member)


def _frame_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in FRAME_SUFFIXES)


def _rgb(image: Image.Image) -> np.ndarray:
    with image:
        return np.asarray(image.convert("RGB"))


def _read_video_file(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".gif":
        with Image.open(path) as gif:
            return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)])
    import decord

    try:
        reader = decord.VideoReader(os.fspath(path))
        return reader.get_batch(list(range(len(reader)))).asnumpy()
    except decord.DECORDError as err:
        raise ValueError(f"cannot decode video {path}: {err}") from err


def _shard_clips(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    def on_error(url: str, exn: Exception) -> None:
        raise ValueError(f"cannot read shard {url}: {exn}") from exn

    for sample in iter_shard_samples(os.fspath(path), on_error):
        yield f"{path.name}#{sample.get('__key__', '?')}", decode_sample(sample).frames


@dataclass
class PairedReport:
    """PSNR and SSIM of generated videos against their references, paired in order."""

    pairs: int
    psnr: list[float]  # mean over pairs of frame t's PSNR (dB), t = 0..frames-1
    ssim: list[float]
    real: str
    fake: str

    def render(self) -> str:
        marks = sorted({0, len(self.psnr) // 2, len(self.psnr) - 1})
        at = " / ".join(f"{self.psnr[t]:.2f} dB, {self.ssim[t]:.3f}" for t in marks)
        return (
            f"{self.pairs} video pairs ({self.fake} against {self.real}): mean PSNR "
            f"{sum(self.psnr) / len(self.psnr):.2f} dB, SSIM {sum(self.ssim) / len(self.ssim):.3f}"
            f"; at frame {' / '.join(map(str, marks))}: {at}"
        )


def paired_metrics(real: VideoSet, fake: VideoSet, frames: int) -> PairedReport:
    """Per-frame PSNR/SSIM of the i-th fake video against the i-th real one, over their first
    `frames` frames. ValueError names a pair whose shapes differ or that is too short."""
    import torch

    from simulator.evaluation.metrics import CurveMeter, frame_psnr_per_frame, frame_ssim_per_frame

    psnr, ssim, pairs = CurveMeter(), CurveMeter(), 0
    for (real_name, r), (fake_name, f) in zip(iter_videos(real), iter_videos(fake), strict=False):
        if min(len(r), len(f)) < frames or r.shape[1:] != f.shape[1:]:
            raise ValueError(
                f"{fake_name} {f.shape} and {real_name} {r.shape} cannot be compared over "
                f"{frames} frames: they need one frame size and at least {frames} frames"
            )
        clips = [torch.from_numpy(v[:frames]).permute(0, 3, 1, 2)[None] / 127.5 - 1 for v in (f, r)]
        psnr.add(frame_psnr_per_frame(*clips))
        ssim.add(frame_ssim_per_frame(*clips))
        pairs += 1
    if not pairs:
        raise ValueError(f"no video pairs in {real.spec} and {fake.spec}")
    return PairedReport(pairs, psnr.mean(), ssim.mean(), real.spec, fake.spec)
