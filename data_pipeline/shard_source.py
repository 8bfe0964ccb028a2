"""Shards already written, as a source: shard URL expansion and re-cutting stored clips.

Two users: the shard job, which can re-cut an existing dataset to another clip length, stride or
size (`worldsim data shard old/train-*.tar --frames 8 ...`), and the training loader, which shares
the URL expansion (brace patterns, globs, shard folders) and the per-shard reader that isolates a
corrupt shard from the rest of the stream.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import re
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import webdataset as wds
from braceexpand import braceexpand
from PIL import Image, ImageOps
from webdataset.tariterators import group_by_keys

from data_pipeline.config import ShardConfig
from data_pipeline.schema import META, ActionSpace, Clip, decode_sample

log = logging.getLogger(__name__)

URL_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://")  # streamed by webdataset's gopen
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
MANIFEST = "manifest.json"
META_FILE = re.compile(r"__[^/]*__($|/)")  # tar-level metadata webdataset skips too


def is_shard_spec(src: str) -> bool:
    """True for shard paths, globs and brace patterns, URLs webdataset opens, and shard folders."""
    if src.startswith(URL_PREFIXES) or src.endswith(SHARD_SUFFIXES):
        return True
    return (Path(src) / MANIFEST).is_file()


def expand_shard_urls(src: str, split: str | None = None) -> list[str]:
    """One shard spec -> shard URLs: braces expanded, local globs sorted, folders resolved with
    `folder_shards(dir, split)`. A local path that does not exist is a FileNotFoundError."""
    urls: list[str] = []
    for item in braceexpand(src):
        if item.startswith(URL_PREFIXES):
            urls.append(item)
        elif Path(item).is_dir():
            urls.extend(folder_shards(Path(item), split))
        elif any(c in item for c in "*?["):
            matches = sorted(glob.glob(item))
            if not matches:
                raise FileNotFoundError(f"no shard matches {item!r}")
            urls.extend(matches)
        elif Path(item).is_file():
            urls.append(item)
        else:
            raise FileNotFoundError(f"shard not found: {item}")
    return urls


def folder_shards(folder: Path, split: str | None) -> list[str]:
    """The shards of `split` in a shard folder: its manifest's list when there is one, else
    `<folder>/<split>-*.tar`. With no split, the folder's only split (ambiguity is an error:
    silently mixing a held-out split into training would spoil it)."""
    manifest_path = folder / MANIFEST
    splits: dict[str, Any] = {}
    if manifest_path.is_file():
        splits = json.loads(manifest_path.read_text()).get("splits", {})
    if split is None:
        if len(splits) != 1:
            raise ValueError(
                f"shard folder {folder} holds splits {sorted(splits) or 'unknown'}; name one, "
                f"e.g. {folder}/train-*.tar"
            )
        split = next(iter(splits))
    if split in splits and "shards" in splits[split]:
        # Entries are {"name", "count", "sha256"} records; plain names are accepted too.
        names = [s["name"] if isinstance(s, dict) else s for s in splits[split]["shards"]]
        paths = [str(folder / name) for name in names]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"{manifest_path} lists shards that are missing: {missing[:5]}")
        return paths
    paths = sorted(glob.glob(str(folder / f"{split}-*.tar")))
    if not paths:
        raise FileNotFoundError(
            f"no shards of split {split!r} in {folder} (splits in manifest: {sorted(splits)})"
        )
    return paths


def iter_shard_samples(url: str, on_error: Callable[[str, Exception], None]) -> Iterator[dict]:
    """Raw samples (bytes values) of one shard. A shard that cannot be opened, breaks part way or
    ends without the tar end-of-archive blocks ends there: `on_error(url, exn)` is called instead
    of raising, so one bad shard never stops a run. The sample being read at the break is
    dropped, never yielded with members missing."""
    try:
        with contextlib.closing(wds.gopen(url)) as stream:
            yield from group_by_keys(_tar_members(url, stream))
    except Exception as exn:  # any failure reading one shard (tar, gzip, OS, pipe) is that shard's
        on_error(url, exn)


def _tar_members(url: str, stream: BinaryIO) -> Iterator[dict]:
    # webdataset's tar_file_iterator, plus a check of how the archive ended: Python's tarfile
    # stops *silently* at a truncated or garbled header (it takes it for the end of the archive),
    # which would make a damaged shard look like a short one.
    tar = tarfile.open(fileobj=stream, mode="r|*")  # noqa: SIM115 (the caller closes `stream`)
    for info in tar:
        if info.isreg() and not META_FILE.match(info.name):
            member = tar.extractfile(info)
            assert member is not None  # a regular file always has data
            yield {"fname": info.name, "data": member.read(), "__url__": url}
    # A complete archive ends in two zero blocks (plus zero padding); tarfile consumed the
    # first, so at least one zero block, and nothing else, must remain.
    zeros = 0
    for chunk in iter(partial(tar.fileobj.read, 1 << 16), b""):
        if chunk.count(0) != len(chunk):
            raise tarfile.ReadError(f"{url} has a damaged header: the archive ends early")
        zeros += len(chunk)
    if zeros < tarfile.BLOCKSIZE:
        raise tarfile.ReadError(f"{url} is truncated")


def _describe(exn: Exception) -> str:
    # webdataset appends stream objects to exn.args; the first argument is the readable part.
    return f"{type(exn).__name__}: {exn.args[0] if exn.args else exn}"


def log_bad_shard(url: str, exn: Exception) -> None:
    log.warning("skipping the rest of corrupt shard %s (%s)", url, _describe(exn))


def resize_center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, size, size, 3): short side to `size`, then a centre crop."""
    out = [
        np.asarray(ImageOps.fit(Image.fromarray(f), (size, size), Image.Resampling.BICUBIC))
        for f in frames
    ]
    return np.stack(out)


def recut(clip: Clip, key: str, cfg: ShardConfig, stats: Counter[str]) -> Iterator[Clip]:
    """A stored clip -> clips of cfg.frames every cfg.stride frames at cfg.size, actions (and a
    driving clip's rewards and ends) sliced alike; meta keeps the parent's, plus `parent` (its
    key) and `parent_frame` (the offset)."""
    frames = clip.frames
    if frames.shape[1:3] != (cfg.size, cfg.size):
        frames = resize_center_crop(frames, cfg.size)
    if len(frames) < cfg.frames:
        stats["too_short"] += 1
        return
    fps = clip.meta.get("fps")
    for start in range(0, len(frames) - cfg.frames + 1, cfg.stride):
        meta = {**clip.meta, "parent": key, "parent_frame": start}
        if fps and isinstance(meta.get("start_time"), (int, float)):
            # start_time describes frame 0 of the clip, which moved by `start` frames.
            meta["start_time"] = meta["start_time"] + start / fps
        window = slice(start, start + cfg.frames)
        actions, rewards, ends = (
            None if a is None else a[window] for a in (clip.actions, clip.rewards, clip.ends)
        )
        yield Clip(frames[window], actions, meta, rewards=rewards, ends=ends)


def _uid(url: str) -> str:
    # Webdataset splits a sample name at its first '.', so the uid (a key prefix) must have none;
    # the hash of the full location keeps same-named shards of different folders apart.
    where = url if url.startswith(URL_PREFIXES) else os.path.realpath(url)
    stem = re.sub(r"\.(tar|tar\.gz|tgz)$", "", url.rsplit("/", 1)[-1])
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem) or "shard"
    return f"{stem}-{hashlib.sha256(where.encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class ShardUnit:
    """One existing shard as a work unit of the shard job."""

    url: str
    uid: str

    def action_space(self) -> ActionSpace | None:
        """The action space recorded in the first sample's meta; None when absent."""
        for sample in iter_shard_samples(self.url, log_bad_shard):
            meta = json.loads(sample[META]) if META in sample else {}
            return ActionSpace.from_dict(meta.get("action_space"))
        return None

    def clips(self, cfg: ShardConfig, stats: Counter[str]) -> Iterator[Clip]:
        bad: list[str] = []

        def on_error(url: str, exn: Exception) -> None:
            log_bad_shard(url, exn)
            bad.append(url)

        for sample in iter_shard_samples(self.url, on_error):
            key = sample.get("__key__", "?")
            try:
                clip = decode_sample(sample)
            except (ValueError, EOFError, OSError) as exn:
                log.warning("skipping malformed sample %s in shard %s (%s)", key, self.url, exn)
                bad.append(key)
                continue
            yield from recut(clip, key, cfg, stats)
        if bad:
            stats["bad_inputs"] += 1


def shard_units(src: str) -> list[ShardUnit]:
    """A shard spec -> one unit per shard, in expansion order."""
    return [ShardUnit(url=url, uid=_uid(url)) for url in expand_shard_urls(src)]
