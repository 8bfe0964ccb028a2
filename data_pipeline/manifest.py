"""The on-disk bookkeeping of a shard folder: per-shard records and `manifest.json`.

A shard folder holds, per split (`train`, `test`, ...):

| file                         | written                   | content                              |
| ---------------------------- | ------------------------- | ------------------------------------ |
| `<split>.job.json`           | at job start              | the options that shape the bytes     |
| `<split>-000000.tar`         | per shard, when non-empty | webdataset samples (see schema.py)   |
| `<split>-000000.record.json` | per shard, after its tar  | count, sha256, per-unit filter stats |
| `manifest.json`              | at job end, merged        | one entry per split (below)          |

`manifest.json` is `{"format": 1, "splits": {<split>: entry}}` where entry holds: `shards` (list
of `{"name", "count", "sha256"}`, non-empty shards only, in plan order), `clips`, `frame_shape`
[T, H, W, 3], `fps` (a number, or a sorted list when sources differ), `action_space` (dict or
null), `options`, `sources`, `level_seeds` (`{game: [[first, last], ...]}` or null), `filters`
(summed skip counters such as scene_cuts, static_dropped, too_short, bad_inputs), `bad_inputs`
(names) and `content_hash` (sha256 over the ordered shard sha256s).

Every file is written to a temporary name and renamed (worldsim.io.files), so a killed job never
leaves a half-written file under a final name.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from worldsim.io.files import write_json

MANIFEST = "manifest.json"
FORMAT = 1


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def record_path(out: Path, split: str, index: int) -> Path:
    return out / f"{split}-{index:06d}.record.json"


def job_path(out: Path, split: str) -> Path:
    return out / f"{split}.job.json"


@dataclass
class UnitRecord:
    uid: str
    clips: int
    stats: dict[str, int]  # the unit's skip counters (scene_cuts, static_dropped, ...)
    level_seed: int | None = None  # game episodes only
    game: str | None = None  # game episodes only: the SOURCE spec, e.g. "procgen:coinrun"
    name: str | None = None  # what to call the input when it is bad (a path for video files)


@dataclass
class ShardRecord:
    """What one shard task produced; also the proof, on resume, that the shard is complete."""

    index: int
    name: str
    count: int
    sha256: str | None  # None for an empty shard: no tar is written
    units: list[UnitRecord] = field(default_factory=list)
    frame_shape: list[int] | None = None  # (T, H, W, 3) of its clips; None when empty
    fps: list[float] = field(default_factory=list)  # distinct clip frame rates

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardRecord:
        units = [UnitRecord(**u) for u in d["units"]]
        return cls(**{**d, "units": units})


def read_record(path: Path) -> ShardRecord | None:
    """The record at `path`, or None when it is missing or unreadable (then the shard is redone)."""
    try:
        return ShardRecord.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def seed_ranges(seeds: Iterable[int]) -> list[list[int]]:
    """[0, 1, 2, 5, 6] -> [[0, 2], [5, 6]]: compact for thousands of consecutive level seeds."""
    ranges: list[list[int]] = []
    for s in sorted(set(seeds)):
        if ranges and s == ranges[-1][1] + 1:
            ranges[-1][1] = s
        else:
            ranges.append([s, s])
    return ranges


def _expand(ranges: list[list[int]]) -> Iterator[int]:
    for first, last in ranges:
        yield from range(first, last + 1)


def check_seed_overlap(manifest: dict[str, Any], split: str, seeds: dict[str, list[int]]) -> None:
    """Refuse level seeds that another split of the same folder already uses: a held-out split
    that shares levels with training measures memorisation, not generalisation."""
    for other, entry in manifest.get("splits", {}).items():
        if other == split:
            continue
        for game, ranges in (entry.get("level_seeds") or {}).items():
            common = set(seeds.get(game, ())) & set(_expand(ranges))
            if common:
                shown = seed_ranges(common)[:3]
                raise ValueError(
                    f"split {split!r} would reuse {len(common)} {game} level seed(s) of split "
                    f"{other!r} (e.g. ranges {shown}); choose a disjoint --level-start"
                )


def split_entry(
    records: list[ShardRecord], options: dict[str, Any], action_space: dict[str, Any] | None
) -> dict[str, Any]:
    """The manifest entry of one split, from its shard records in plan order."""
    listed = [r for r in records if r.count > 0]
    shapes = {tuple(r.frame_shape) for r in listed if r.frame_shape}
    if len(shapes) > 1:
        raise ValueError(f"clips of one split differ in shape: {sorted(shapes)}")
    fps = sorted({f for r in records for f in r.fps})
    filters: Counter[str] = Counter()
    seeds: dict[str, list[int]] = {}
    bad: list[str] = []
    for unit in (u for r in records for u in r.units):
        filters.update(unit.stats)
        if unit.level_seed is not None:
            seeds.setdefault(unit.game or "game", []).append(unit.level_seed)
        if unit.stats.get("bad_inputs"):
            bad.append(unit.name or unit.uid)
    digest = hashlib.sha256("\n".join(r.sha256 or "" for r in listed).encode()).hexdigest()
    return {
        "shards": [{"name": r.name, "count": r.count, "sha256": r.sha256} for r in listed],
        "clips": sum(r.count for r in listed),
        "frame_shape": list(shapes.pop()) if shapes else None,
        "fps": fps[0] if len(fps) == 1 else fps,
        "action_space": action_space,
        "options": options,
        "sources": options.get("sources", []),
        "level_seeds": {g: seed_ranges(s) for g, s in sorted(seeds.items())} or None,
        "filters": dict(sorted(filters.items())),
        "bad_inputs": bad,
        "content_hash": digest,
    }


def read_manifest(out: Path) -> dict[str, Any]:
    """The folder's manifest, or an empty one when none has been written yet."""
    path = out / MANIFEST
    if not path.is_file():
        return {"format": FORMAT, "splits": {}}
    manifest: dict[str, Any] = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported manifest format {manifest.get('format')!r}")
    return manifest


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    # Two jobs (say train and test) may finish at once in one folder; the lock keeps one from
    # overwriting the other's freshly merged split.
    with open(out / ".manifest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def merge_split(out: Path, split: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Put `entry` into `<out>/manifest.json` as split `split`, keeping the other splits."""
    with _locked(out):
        manifest = read_manifest(out)
        seeds = {g: list(_expand(r)) for g, r in (entry.get("level_seeds") or {}).items()}
        check_seed_overlap(manifest, split, seeds)
        manifest["splits"][split] = entry
        manifest["splits"] = dict(sorted(manifest["splits"].items()))
        write_json(out / MANIFEST, manifest)
    return manifest
