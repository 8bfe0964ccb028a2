"""The shard job (`worldsim data shard`): work units in, deterministic resumable shards out.

The plan groups the resolved units `units_per_shard` at a time, in order; group k becomes
`<out>/<split>-{k:06d}.tar`. A shard is a pure function of its units and the options, so one
function (`write_shard`) writes it in-process, in a spawned process or in a Ray task alike, and a
rerun skips every shard whose record matches the tar on disk. Tars are byte-deterministic (fixed
mtime, owner and mode; members in webdataset's sorted order), so the manifest's content hash
identifies a dataset: same options + inputs + seed -> same hash, however the job was scheduled.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from webdataset.writer import TarWriter

from data_pipeline.config import ShardConfig
from data_pipeline.manifest import (
    ShardRecord,
    UnitRecord,
    check_seed_overlap,
    job_path,
    merge_split,
    read_manifest,
    read_record,
    record_path,
    shard_name,
    split_entry,
)
from data_pipeline.schema import ActionSpace, encode_sample
from data_pipeline.sources import WorkUnit, resolve_sources
from worldsim.io.files import PARTIAL, file_sha256, write_json
from worldsim.io.progress import progress

# Options that decide how the job runs, not which bytes it writes; everything else is recorded
# in `<split>.job.json` and must match on a rerun into the same folder and split.
RUN_ONLY = frozenset({"out", "split", "workers", "engine", "ray_address"})
TAR_MTIME = 0.0  # fixed member mtime: without it every run writes different tar bytes


@dataclass(frozen=True)
class ShardTask:
    """One shard to write: picklable, so a spawned process or a Ray worker can run it."""

    index: int
    units: tuple[WorkUnit, ...]
    cfg: ShardConfig


@dataclass
class JobSummary:
    out: str
    split: str
    shards_written: int
    shards_skipped: int  # complete on disk from an earlier (interrupted) run
    shards_empty: int  # every clip filtered out: recorded, no tar
    clips: int
    clips_written: int  # by this run
    filters: dict[str, int] = field(default_factory=dict)
    bad_inputs: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    content_hash: str = ""

    def render(self) -> str:
        rate = self.clips_written / self.elapsed_s if self.elapsed_s > 0 else 0.0
        shown = {k: v for k, v in self.filters.items() if k != "bad_inputs"}
        filters = ", ".join(f"{k} {v}" for k, v in shown.items()) or "none"
        lines = [
            f"shards: {self.shards_written} written, {self.shards_skipped} skipped (resumed), "
            f"{self.shards_empty} empty",
            f"clips: {self.clips} ({self.clips_written} written by this run)",
            f"filtered: {filters}",
            f"bad inputs: {len(self.bad_inputs)}"
            + (f" ({', '.join(self.bad_inputs[:10])})" if self.bad_inputs else ""),
            f"elapsed: {self.elapsed_s:.1f} s ({rate:.1f} clips/s)",
            f"content hash: {self.content_hash}",
            f"out: {self.out} (split {self.split!r})",
        ]
        return "\n".join(lines)


def clip_options(cfg: ShardConfig) -> dict[str, Any]:
    return {k: v for k, v in asdict(cfg).items() if k not in RUN_ONLY}


def plan_shards(units: list[WorkUnit], cfg: ShardConfig) -> list[ShardTask]:
    dotted = [u.uid for u in units if "." in u.uid]
    if dotted:  # webdataset splits a member name at its first dot into key and field
        raise ValueError(f"work unit ids must not contain '.': {dotted[:5]}")
    n = cfg.units_per_shard
    return [
        ShardTask(index=k, units=tuple(units[i : i + n]), cfg=cfg)
        for k, i in enumerate(range(0, len(units), n))
    ]


def write_shard(task: ShardTask) -> ShardRecord:
    """Write one shard's tar (unless every clip was filtered) and then its record, atomically."""
    cfg = task.cfg
    out = Path(cfg.out)
    final = out / shard_name(cfg.split, task.index)
    tmp = final.with_name(final.name + PARTIAL)
    record = ShardRecord(index=task.index, name=final.name, count=0, sha256=None)
    shapes: set[tuple[int, ...]] = set()
    fps: set[float] = set()
    writer: TarWriter | None = None
    try:
        for unit in task.units:
            stats: Counter[str] = Counter()
            n = 0
            for n, clip in enumerate(unit.clips(cfg, stats), start=1):
                if writer is None:
                    writer = TarWriter(str(tmp), encoder=False, mtime=TAR_MTIME)
                writer.write(encode_sample(f"{unit.uid}-{n - 1:06d}", clip))
                shapes.add(clip.frames.shape)
                if "fps" in clip.meta:
                    fps.add(float(clip.meta["fps"]))
            record.units.append(_unit_record(unit, n, stats))
            record.count += n
    finally:
        if writer is not None:
            writer.close()
    if len(shapes) > 1:
        raise ValueError(f"{final.name}: its clips differ in shape {sorted(shapes)}")
    if writer is not None:
        record.sha256 = file_sha256(tmp)
        tmp.replace(final)
    else:
        final.unlink(missing_ok=True)
    record.frame_shape = list(shapes.pop()) if shapes else None
    record.fps = sorted(fps)
    write_json(record_path(out, cfg.split, task.index), record.to_dict())
    return record


def _unit_record(unit: WorkUnit, clips: int, stats: Counter[str]) -> UnitRecord:
    return UnitRecord(
        uid=unit.uid,
        clips=clips,
        stats=dict(sorted(stats.items())),
        level_seed=getattr(unit, "level_seed", None),
        game=getattr(unit, "game", None),
        name=str(getattr(unit, "path", unit.uid)),
    )


def completed_record(task: ShardTask) -> ShardRecord | None:
    """The shard's record if an earlier run finished it (same units, tar matching its sha256)."""
    out = Path(task.cfg.out)
    record = read_record(record_path(out, task.cfg.split, task.index))
    if record is None or [u.uid for u in record.units] != [u.uid for u in task.units]:
        return None
    tar = out / record.name
    if record.sha256 is None:
        return None if tar.exists() else record
    return record if tar.is_file() and file_sha256(tar) == record.sha256 else None


def _claim_split(out: Path, split: str, options: dict[str, Any]) -> None:
    """Refuse to mix shards made with different options into one split; else record ours."""
    path = job_path(out, split)
    earlier = json.loads(path.read_text()) if path.is_file() else None
    if earlier is None and any(out.glob(f"{split}-*.tar")):
        # Shards without their job file (an older layout); deleted ones no longer bind.
        earlier = read_manifest(out)["splits"].get(split, {}).get("options")
    if earlier is not None and earlier != options:
        changed = sorted(k for k in set(earlier) | set(options) if earlier.get(k) != options.get(k))
        diffs = ", ".join(f"{k} {earlier.get(k)!r} -> {options.get(k)!r}" for k in changed)
        raise ValueError(
            f"split {split!r} in {out} was written with other options ({diffs}); use another "
            f"--out or --split, or delete {out}/{split}-* and {path} to rebuild it"
        )
    write_json(path, options)


def _common_action_space(units: list[WorkUnit]) -> ActionSpace | None:
    spaces = {s for s in (u.action_space() for u in units) if s is not None}
    if len(spaces) > 1:
        raise ValueError(
            f"sources have different action spaces {sorted(map(str, spaces))}; "
            "shard them into separate folders"
        )
    return spaces.pop() if spaces else None


def _level_seeds(units: list[WorkUnit]) -> dict[str, list[int]]:
    seeds: dict[str, list[int]] = {}
    for u in units:
        seed = getattr(u, "level_seed", None)
        if seed is not None:
            seeds.setdefault(getattr(u, "game", None) or "game", []).append(seed)
    return seeds


def _run_inline(tasks: list[ShardTask], cfg: ShardConfig) -> Iterator[ShardRecord]:
    for task in tasks:
        yield write_shard(task)


def _run_processes(tasks: list[ShardTask], cfg: ShardConfig) -> Iterator[ShardRecord]:
    if cfg.workers == 1 or len(tasks) <= 1:
        yield from _run_inline(tasks, cfg)
        return
    # spawn, not fork: procgen and decord hold threads and native state that break under fork.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(cfg.workers, len(tasks)), mp_context=ctx) as pool:
        futures = [pool.submit(write_shard, t) for t in tasks]
        for future in as_completed(futures):
            yield future.result()


def _run_ray(tasks: list[ShardTask], cfg: ShardConfig) -> Iterator[ShardRecord]:
    try:
        import ray
    except ImportError as err:
        raise ImportError("--engine ray needs Ray: pip install 'worldsim[distributed]'") from err
    started = not ray.is_initialized()
    if started and cfg.ray_address:
        ray.init(address=cfg.ray_address)
    elif started:
        ray.init(num_cpus=cfg.workers, include_dashboard=False)
    try:
        remote = ray.remote(num_cpus=1)(write_shard)
        pending = [remote.remote(t) for t in tasks]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started:
            ray.shutdown()


def _resolve_fps(cfg: ShardConfig, units: list[WorkUnit]) -> ShardConfig:
    """Record the rate videos are resampled to, so the manifest's options say what the clips
    hold; refuse --fps for a job without videos, whose clips keep their own rate."""
    from data_pipeline.video import VideoUnit

    has_video = any(isinstance(u, VideoUnit) for u in units)
    if cfg.fps is not None and not has_video:
        raise ValueError(
            f"--fps {cfg.fps:g} resamples videos, but no SOURCE is a video: game episodes and "
            "input shards keep their own frame rate (Procgen and Atari: 15 fps); drop --fps"
        )
    return replace(cfg, fps=cfg.video_fps) if has_video else cfg


def _discard_split(out: Path, split: str, tasks: list[ShardTask]) -> None:
    """Remove what a job that wrote no clip left (shard records, the job file): a split with
    nothing in it is not recorded."""
    for task in tasks:
        record_path(out, split, task.index).unlink(missing_ok=True)
    if split not in read_manifest(out)["splits"]:
        job_path(out, split).unlink(missing_ok=True)
    if not any(out.iterdir()):
        out.rmdir()  # the job made the folder and nothing else


def _nothing_written(entry: dict[str, Any], split: str) -> str:
    bad = entry["bad_inputs"]
    filters = {k: v for k, v in entry["filters"].items() if k != "bad_inputs"}
    why = [f"{len(bad)} bad input(s) ({', '.join(bad[:5])}; the warnings above say why)"]
    why = why if bad else []
    why += [f"{v} clip(s) {k.replace('_', ' ')}" for k, v in filters.items()]
    reasons = "; ".join(why) or "the inputs hold no clip"
    return f"no clip was written for split {split!r}: {reasons}; nothing was recorded"


ENGINES: dict[str, Callable[[list[ShardTask], ShardConfig], Iterator[ShardRecord]]] = {
    "process": _run_processes,
    "ray": _run_ray,
}


def run_shard_job(cfg: ShardConfig) -> JobSummary:
    """Write (or finish writing) split `cfg.split` of `cfg.out` and merge it into the manifest."""
    cfg.validate()
    start = time.perf_counter()
    units = resolve_sources(cfg)
    cfg = _resolve_fps(cfg, units)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    options = clip_options(cfg)
    check_seed_overlap(read_manifest(out), cfg.split, _level_seeds(units))
    action_space = _common_action_space(units)
    _claim_split(out, cfg.split, options)
    for leftover in out.glob(f"{cfg.split}-*{PARTIAL}"):
        leftover.unlink()

    tasks = plan_shards(units, cfg)
    records = {t.index: r for t in tasks if (r := completed_record(t)) is not None}
    pending = [t for t in tasks if t.index not in records]
    skipped = len(records)
    clips = sum(r.count for r in records.values())
    # A bar on a terminal, a line a minute in logs (worldsim/io/progress.py).
    bar = progress(total=len(tasks), initial=skipped, unit="shard", desc=f"shard {cfg.split}")
    with bar:
        bar.set_postfix(clips=clips)
        for record in ENGINES[cfg.engine](pending, cfg):
            records[record.index] = record
            clips += record.count
            bar.set_postfix(clips=clips)
            bar.update()

    ordered = [records[t.index] for t in tasks]
    entry = split_entry(ordered, options, action_space.to_dict() if action_space else None)
    if entry["clips"] == 0:
        _discard_split(out, cfg.split, tasks)
        raise ValueError(_nothing_written(entry, cfg.split))
    merge_split(out, cfg.split, entry)
    return JobSummary(
        out=str(out),
        split=cfg.split,
        shards_written=sum(1 for t in pending if records[t.index].count > 0),
        shards_skipped=skipped,
        shards_empty=sum(1 for r in ordered if r.count == 0),
        clips=entry["clips"],
        clips_written=sum(records[t.index].count for t in pending),
        filters=entry["filters"],
        bad_inputs=entry["bad_inputs"],
        elapsed_s=time.perf_counter() - start,
        content_hash=entry["content_hash"],
    )
