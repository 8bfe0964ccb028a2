"""Shard job: plan, byte-determinism, resume, option and level-seed guards, engines.

Most tests use in-memory fake work units (fast, no decoding); the procgen tests at the end run
the real `worldsim data shard procgen:coinrun` path, including a SIGKILLed-then-resumed job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from data_pipeline import shard_job
from data_pipeline.config import ShardConfig
from data_pipeline.manifest import MANIFEST, read_manifest
from data_pipeline.schema import ActionSpace, Clip
from data_pipeline.shard_job import plan_shards, run_shard_job
from data_pipeline.sources import WorkUnit
from tests.data_pipeline.conftest import make_video, moving_square, static_frames

SPACE = ActionSpace("discrete", n=3, names=("left", "right", "jump"))


@dataclass
class FakeUnit:
    """A work unit whose clips are a pure function of (uid, cfg): random pixels and actions.
    Every third clip counts as static and is dropped, like the real filters do."""

    uid: str
    n_clips: int = 3
    level_seed: int | None = None
    game: str | None = None
    bad: bool = False
    space: ActionSpace | None = SPACE

    def action_space(self) -> ActionSpace | None:
        return self.space

    def clips(self, cfg: ShardConfig, stats: Counter[str]) -> Iterator[Clip]:
        if self.bad:
            stats["bad_inputs"] += 1
            return
        rng = np.random.default_rng([cfg.seed, zlib.crc32(self.uid.encode())])
        for i in range(self.n_clips):
            frames = rng.integers(0, 256, (cfg.frames, cfg.size, cfg.size, 3), dtype=np.uint8)
            actions = rng.integers(0, 3, cfg.frames)
            if i % 3 == 2:
                stats["static_dropped"] += 1
                continue
            yield Clip(frames, actions, {"fps": cfg.video_fps, "source": self.uid})


def fake_units(n: int, first_seed: int = 0) -> list[WorkUnit]:
    return [
        FakeUnit(f"ep{first_seed + i:04d}", level_seed=first_seed + i, game="fake:g")
        for i in range(n)
    ]


def make_cfg(out: Path, **kw: object) -> ShardConfig:
    base: dict[str, object] = dict(
        sources=["fake:g"], out=str(out), frames=4, stride=4, size=8, units_per_shard=2, workers=1
    )
    base.update(kw)
    return ShardConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def units(monkeypatch: pytest.MonkeyPatch) -> list[WorkUnit]:
    """The units every run_shard_job in the test resolves to (edit the list to change them)."""
    chosen = fake_units(5)
    monkeypatch.setattr(shard_job, "resolve_sources", lambda cfg: list(chosen))
    return chosen


def tar_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


def test_plan_groups_consecutive_units_deterministically(tmp_path: Path) -> None:
    units = fake_units(5)
    plan = plan_shards(list(units), make_cfg(tmp_path, units_per_shard=2))
    assert [t.index for t in plan] == [0, 1, 2]
    assert [[u.uid for u in t.units] for t in plan] == [
        ["ep0000", "ep0001"],
        ["ep0002", "ep0003"],
        ["ep0004"],
    ]
    assert plan == plan_shards(list(units), make_cfg(tmp_path, units_per_shard=2))
    with pytest.raises(ValueError, match="must not contain '.'"):
        plan_shards([FakeUnit("a.b")], make_cfg(tmp_path))


def test_same_inputs_give_identical_files_and_manifest(tmp_path: Path, units: list) -> None:
    units[3] = FakeUnit("broken", bad=True)
    a = run_shard_job(make_cfg(tmp_path / "a"))
    b = run_shard_job(make_cfg(tmp_path / "b"))
    assert tar_bytes(tmp_path / "a") == tar_bytes(tmp_path / "b")
    assert a.content_hash == b.content_hash
    assert (a.shards_written, a.shards_skipped, a.shards_empty) == (3, 0, 0)
    assert a.clips == a.clips_written == 8  # 4 good units x (3 clips - 1 static)

    entry = read_manifest(tmp_path / "a")["splits"]["train"]
    assert [s["name"] for s in entry["shards"]] == [
        "train-000000.tar",
        "train-000001.tar",
        "train-000002.tar",
    ]
    assert [s["count"] for s in entry["shards"]] == [4, 2, 2]
    assert entry["frame_shape"] == [4, 8, 8, 3]
    assert entry["fps"] == 10.0
    assert entry["action_space"] == SPACE.to_dict()
    assert entry["filters"] == {"bad_inputs": 1, "static_dropped": 4}
    assert entry["bad_inputs"] == ["broken"]
    assert entry["level_seeds"] == {"fake:g": [[0, 2], [4, 4]]}
    assert entry["options"]["frames"] == 4 and "workers" not in entry["options"]

    text = a.render()
    for part in (
        "3 written",
        "0 skipped",
        "clips: 8",
        "static_dropped 4",
        "broken",
        a.content_hash,
    ):
        assert part in text

    c = run_shard_job(make_cfg(tmp_path / "c", seed=1))
    assert c.content_hash != a.content_hash


def test_resume_skips_verified_shards_and_redoes_the_rest(tmp_path: Path, units: list) -> None:
    out = tmp_path / "ds"
    first = run_shard_job(make_cfg(out))
    before = tar_bytes(out)
    (out / "train-000001.tar").write_bytes(b"truncated")  # sha256 no longer matches
    (out / "train-000002.record.json").unlink()  # killed between tar and record
    (out / "train-000000.tar.partial").write_bytes(b"leftover of a killed writer")
    os.remove(out / MANIFEST)

    again = run_shard_job(make_cfg(out, workers=2))  # run-only options may change
    assert (again.shards_skipped, again.shards_written) == (1, 2)
    assert again.clips_written == 6 and again.clips == 10
    assert again.content_hash == first.content_hash
    assert tar_bytes(out) == before
    assert not list(out.glob("*.partial"))

    third = run_shard_job(make_cfg(out))
    assert (third.shards_skipped, third.shards_written, third.clips_written) == (3, 0, 0)


def test_changed_options_on_rerun_are_refused(tmp_path: Path, units: list) -> None:
    run_shard_job(make_cfg(tmp_path))
    with pytest.raises(ValueError, match=r"other options \(frames 4 -> 6\)"):
        run_shard_job(make_cfg(tmp_path, frames=6))
    with pytest.raises(ValueError, match="seed 0 -> 3"):
        run_shard_job(make_cfg(tmp_path, seed=3))
    units[:] = fake_units(2, first_seed=50)
    run_shard_job(make_cfg(tmp_path, frames=6, split="other"))  # another split is fine
    for path in [*tmp_path.glob("train-*"), tmp_path / "train.job.json"]:
        path.unlink()  # what the refusal tells the user to delete
    units[:] = fake_units(5)
    run_shard_job(make_cfg(tmp_path, frames=6))


def test_overlapping_level_seeds_between_splits_are_refused(tmp_path: Path, units: list) -> None:
    run_shard_job(make_cfg(tmp_path))  # seeds 0..4
    units[:] = fake_units(3, first_seed=3)
    with pytest.raises(ValueError, match=r"reuse 2 fake:g level seed\(s\) of split 'train'"):
        run_shard_job(make_cfg(tmp_path, split="test"))
    assert not (tmp_path / "test-000000.tar").exists()  # refused before any work
    units[:] = fake_units(3, first_seed=100)
    run_shard_job(make_cfg(tmp_path, split="test"))
    manifest = read_manifest(tmp_path)
    assert sorted(manifest["splits"]) == ["test", "train"]
    assert manifest["splits"]["test"]["level_seeds"] == {"fake:g": [[100, 102]]}


def test_empty_shard_is_recorded_without_a_tar(tmp_path: Path, units: list) -> None:
    units[2:4] = [FakeUnit("e0", n_clips=0), FakeUnit("e1", bad=True)]
    summary = run_shard_job(make_cfg(tmp_path))
    assert summary.shards_empty == 1 and summary.shards_written == 2
    assert not (tmp_path / "train-000001.tar").exists()
    record = json.loads((tmp_path / "train-000001.record.json").read_text())
    assert record["count"] == 0 and record["sha256"] is None
    names = [s["name"] for s in read_manifest(tmp_path)["splits"]["train"]["shards"]]
    assert names == ["train-000000.tar", "train-000002.tar"]
    assert run_shard_job(make_cfg(tmp_path)).shards_skipped == 3


def test_a_job_that_writes_no_clip_fails_and_records_nothing(tmp_path: Path, units: list) -> None:
    units[:] = [FakeUnit("broken", bad=True), FakeUnit("none", n_clips=0)]
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"no clip was written for split 'train': 1 bad input"):
        run_shard_job(make_cfg(out))
    assert not out.exists()  # no manifest, record or job file: nothing empty is recorded
    units[:] = fake_units(2)
    run_shard_job(make_cfg(tmp_path, split="test"))  # a folder with another split keeps it
    units[:] = [FakeUnit("broken", bad=True)]
    with pytest.raises(ValueError, match="no clip was written"):
        run_shard_job(make_cfg(tmp_path))
    assert sorted(read_manifest(tmp_path)["splits"]) == ["test"]
    assert sorted(p.name for p in tmp_path.glob("train*")) == []


def test_fps_is_refused_without_videos_and_recorded_with_them(tmp_path: Path, units: list) -> None:
    with pytest.raises(ValueError, match="--fps 10 resamples videos, but no SOURCE is a video"):
        run_shard_job(make_cfg(tmp_path, fps=10.0))
    run_shard_job(make_cfg(tmp_path))
    assert read_manifest(tmp_path)["splits"]["train"]["options"]["fps"] is None


def test_mixed_action_spaces_are_refused(tmp_path: Path, units: list) -> None:
    units.append(FakeUnit("other", space=ActionSpace("discrete", n=18)))
    with pytest.raises(ValueError, match="different action spaces"):
        run_shard_job(make_cfg(tmp_path))
    units[-1] = FakeUnit("video", space=None)  # clips without actions mix fine
    assert run_shard_job(make_cfg(tmp_path)).clips == 12


# --- real inputs ---------------------------------------------------------------------------


def test_video_folder_records_filters_and_bad_files(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    make_video(videos / "a_moving.mp4", moving_square(40), fps=10.0)
    make_video(videos / "b_still.mp4", static_frames(40), fps=10.0)
    (videos / "c_broken.mp4").write_bytes(b"not a video at all" * 50)
    cfg = ShardConfig(
        sources=[str(videos)],
        out=str(tmp_path / "out"),
        frames=8,
        stride=8,
        size=32,
        units_per_shard=2,
        workers=1,
    )
    summary = run_shard_job(cfg)
    entry = read_manifest(tmp_path / "out")["splits"]["train"]
    assert entry["clips"] == summary.clips == 5  # 40 frames at 10 fps -> 5 clips of 8
    assert entry["frame_shape"] == [8, 32, 32, 3] and entry["fps"] == 10.0
    assert entry["options"]["fps"] == 10.0  # the default rate, recorded as the clips have it
    assert entry["filters"]["static_dropped"] == 5 and entry["filters"]["bad_inputs"] == 1
    assert entry["bad_inputs"] == [str(videos / "c_broken.mp4")]
    assert entry["level_seeds"] is None and entry["action_space"] is None
    assert [s["name"] for s in entry["shards"]] == ["train-000000.tar"]  # shard 1: no clip
    assert "c_broken.mp4" in summary.render()


# --- real game recording -------------------------------------------------------------------

GAME_FLAGS = ["--frames", "8", "--stride", "8", "--size", "32", "--max-steps", "64"]


def game_cfg(out: Path, **kw: object) -> ShardConfig:
    base: dict[str, object] = dict(
        sources=["procgen:coinrun"],
        out=str(out),
        frames=8,
        stride=8,
        size=32,
        max_steps=64,
        units_per_shard=1,
        episodes=6,
        workers=1,
    )
    base.update(kw)
    return ShardConfig(**base)  # type: ignore[arg-type]


def test_killed_job_resumes_to_the_same_dataset(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "commands",
        "data",
        "shard",
        "procgen:coinrun",
        "--out",
        str(out),
    ]
    cmd += GAME_FLAGS + ["--units-per-shard", "1", "--episodes", "6", "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (out / "train-000000.record.json").exists():
        assert proc.poll() is None, "the job ended before its first shard was recorded"
        assert time.monotonic() < deadline, "no shard recorded within 60 s"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / MANIFEST).exists(), "the job finished before it could be killed"

    resumed = run_shard_job(game_cfg(out))
    assert resumed.shards_skipped >= 1
    fresh = run_shard_job(game_cfg(tmp_path / "fresh"))
    assert fresh.clips > 0 and resumed.content_hash == fresh.content_hash
    assert tar_bytes(out) == tar_bytes(tmp_path / "fresh")


@pytest.mark.slow  # starting a local Ray takes 15-30 s on 2 loaded cores
def test_ray_engine_matches_process_engine(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    by_ray = run_shard_job(game_cfg(tmp_path / "ray", engine="ray", workers=2, episodes=4))
    by_process = run_shard_job(game_cfg(tmp_path / "proc", episodes=4))
    assert by_ray.shards_written == by_process.shards_written == 4
    assert by_ray.content_hash == by_process.content_hash
