"""The streaming loader: batch contract, exactly-once epochs, determinism, resume, bad shards."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from data_pipeline.loader import Batch, LoaderConfig, ShardLoader
from data_pipeline.schema import Clip, encode_sample

T, H, W = 4, 6, 8


def write_shards(folder: Path, counts: list[int], split: str = "train") -> dict[str, Clip]:
    """Shards `<split>-00000i.tar` holding counts[i] clips; odd clips carry discrete actions."""
    rng = np.random.default_rng(len(counts))
    clips: dict[str, Clip] = {}
    for s, count in enumerate(counts):
        with wds.TarWriter(str(folder / f"{split}-{s:06d}.tar")) as sink:
            for i in range(count):
                key = f"src{s}-{i:06d}"
                frames = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
                actions = rng.integers(0, 15, T) if i % 2 else None
                clips[key] = Clip(frames, actions, {"fps": 10.0})
                sink.write(encode_sample(key, clips[key]))
    return clips


def epoch_keys(loader: ShardLoader) -> list[list[str]]:
    return [batch.keys for batch in loader]


def flat(batches: list[list[str]]) -> list[str]:
    return [k for keys in batches for k in keys]


def make(folder: Path, **kw: object) -> ShardLoader:
    args: dict = {"shards": str(folder / "train-*.tar"), "batch_size": 3, "num_workers": 0}
    args.update(kw)
    rank, world = args.pop("rank", 0), args.pop("world_size", 1)
    return ShardLoader(LoaderConfig(**args), rank=rank, world_size=world)


def test_batch_contract_frames_actions_mask(tmp_path: Path) -> None:
    clips = write_shards(tmp_path, [5, 4])
    batches: list[Batch] = list(make(tmp_path, batch_size=4))
    assert [len(b.keys) for b in batches] == [4, 4, 1]
    for b in batches:
        B = len(b.keys)
        assert b.frames.shape == (B, T, 3, H, W) and b.frames.dtype == torch.float32
        assert b.frames.is_contiguous()
        assert b.actions.shape == (B, T) and b.actions.dtype == torch.int64
        assert b.action_mask.dtype == torch.bool
        for i, key in enumerate(b.keys):
            clip = clips[key]
            want = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            torch.testing.assert_close(b.frames[i], want)
            assert bool(b.action_mask[i]) == (clip.actions is not None)
            expected = clip.actions if clip.actions is not None else np.zeros(T)
            assert b.actions[i].tolist() == expected.tolist()
    mask = torch.cat([b.action_mask for b in batches])
    assert 0 < int(mask.sum()) < len(mask)  # clips with and without actions were mixed
    lo = min(float(b.frames.min()) for b in batches)
    hi = max(float(b.frames.max()) for b in batches)
    assert lo == -1.0 and hi == 1.0


def test_continuous_actions_and_action_dim(tmp_path: Path) -> None:
    with wds.TarWriter(str(tmp_path / "train-000000.tar")) as sink:
        for i in range(4):
            frames = np.full((T, H, W, 3), i, np.uint8)
            actions = np.full((T, 2), i, np.float32) if i < 2 else None
            sink.write(encode_sample(f"car-{i:06d}", Clip(frames, actions)))
    batches = list(make(tmp_path, batch_size=2, shuffle=False, action_dim=2))
    assert [b.actions.shape for b in batches] == [(2, T, 2), (2, T, 2)]
    assert batches[0].actions.dtype == torch.float32
    assert batches[0].action_mask.tolist() == [True, True]
    assert batches[1].action_mask.tolist() == [False, False]
    assert batches[0].actions[1].eq(1.0).all() and batches[1].actions.eq(0).all()


def test_workers_see_every_clip_once_per_epoch(tmp_path: Path) -> None:
    clips = write_shards(tmp_path, [4, 7, 3, 5, 6])
    loader = make(tmp_path, num_workers=2)
    for _ in range(2):
        keys = flat(epoch_keys(loader))
        assert sorted(keys) == sorted(clips)  # all seen, none twice
    assert loader.epoch == 2


def test_rank_split_is_disjoint_and_covering(tmp_path: Path) -> None:
    clips = write_shards(tmp_path, [3, 4, 5, 2, 6, 3])
    seen = [flat(epoch_keys(make(tmp_path, rank=r, world_size=2, num_workers=2))) for r in (0, 1)]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(clips)


def test_deterministic_for_seed_and_reshuffled_per_epoch(tmp_path: Path) -> None:
    write_shards(tmp_path, [6, 6, 6, 6])
    a, b, c = make(tmp_path, seed=3), make(tmp_path, seed=3), make(tmp_path, seed=4)
    first = epoch_keys(a)
    assert first == epoch_keys(b)
    assert first != epoch_keys(c)
    second = epoch_keys(a)
    assert second != first and sorted(flat(second)) == sorted(flat(first))


def test_no_shuffle_keeps_stored_order(tmp_path: Path) -> None:
    clips = write_shards(tmp_path, [3, 4])
    assert flat(epoch_keys(make(tmp_path, shuffle=False))) == list(clips)


@pytest.mark.parametrize(
    ("num_workers", "counts", "stop_at"),
    [
        (0, [9, 2, 8, 3, 7], 3),
        (2, [9, 2, 8, 3, 7], 3),
        (2, [9, 2, 8, 3, 7], 6),
        (2, [12, 1, 1, 1], -2),
    ],
)
def test_resume_reproduces_uninterrupted_run(
    tmp_path: Path, num_workers: int, counts: list[int], stop_at: int
) -> None:
    # [12, 1, 1, 1]: one worker holds 13 clips, the other 2 or 3, so stopping 2 batches before
    # the end stops after a worker ran dry, testing the round-robin without it.
    write_shards(tmp_path, counts)
    kw = {"num_workers": num_workers, "seed": 7, "shuffle_buffer": 5}
    reference = make(tmp_path, **kw)
    whole = epoch_keys(reference)
    next_epoch = epoch_keys(reference)
    stop_at %= len(whole)
    assert 0 < stop_at < len(whole)

    interrupted = make(tmp_path, **kw)
    for i, _ in enumerate(interrupted, 1):
        if i == stop_at:
            break
    state = json.loads(json.dumps(interrupted.state_dict()))  # survives a JSON checkpoint
    assert state["epoch"] == 0 and state["batches_yielded_this_epoch"] == stop_at

    resumed = make(tmp_path, **kw)
    resumed.load_state_dict(state)
    assert epoch_keys(resumed) == whole[stop_at:]
    assert epoch_keys(resumed) == next_epoch
    assert epoch_keys(interrupted) == whole[stop_at:]  # iterating again continues the epoch


def test_resume_from_another_ranks_state(tmp_path: Path) -> None:
    # Trainers often checkpoint rank 0 only; rank 1 then derives its position from the count.
    write_shards(tmp_path, [6, 6, 6, 6, 6, 6, 6, 6])
    kw = {"num_workers": 2, "world_size": 2, "shuffle_buffer": 4}
    whole = epoch_keys(make(tmp_path, rank=1, **kw))
    rank0 = make(tmp_path, rank=0, **kw)
    for i, _ in enumerate(rank0, 1):
        if i == 5:
            break
    resumed = make(tmp_path, rank=1, **kw)
    resumed.load_state_dict(rank0.state_dict())
    assert epoch_keys(resumed) == whole[5:]


def test_resume_refuses_another_layout(tmp_path: Path) -> None:
    write_shards(tmp_path, [3, 3])
    state = make(tmp_path, batch_size=3).state_dict()
    with pytest.raises(ValueError, match="cannot resume exactly"):
        make(tmp_path, batch_size=2).load_state_dict(state)


def corrupt_shards(folder: Path) -> None:
    """A truncated copy of a good shard (cut mid-member) and a file of garbage."""
    good = (folder / "train-000000.tar").read_bytes()
    (folder / "train-000003.tar").write_bytes(good[: len(good) // 2 + 100])
    (folder / "train-000004.tar").write_bytes(np.random.default_rng(0).bytes(5000))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_shards_are_skipped_and_counted(
    tmp_path: Path, num_workers: int, caplog: pytest.LogCaptureFixture
) -> None:
    clips = write_shards(tmp_path, [6, 5, 4])
    corrupt_shards(tmp_path)
    loader = make(tmp_path, num_workers=num_workers)
    with caplog.at_level(logging.WARNING):
        keys = flat(epoch_keys(loader))
    counts = Counter(keys)
    assert set(clips) <= set(counts)  # every good clip arrived
    assert all(counts[k] <= 1 + (k.startswith("src0-")) for k in counts)  # truncated copy's
    assert loader.bad_shards == 2 and loader.skipped["bad_samples"] == 0
    if num_workers == 0:  # worker processes log on their own
        assert sum("corrupt shard" in r.message for r in caplog.records) == 2
    epoch_keys(loader)
    assert loader.bad_shards == 4  # counted again when met again next epoch


def test_fewer_shards_than_consumers_warns(tmp_path: Path) -> None:
    clips = write_shards(tmp_path, [4])
    with pytest.warns(UserWarning, match="1 shard.* 2 worker"):
        loader = make(tmp_path, num_workers=2)
    assert sorted(flat(epoch_keys(loader))) == sorted(clips)


def test_shard_folder_uses_manifest_then_split_glob(tmp_path: Path) -> None:
    train = write_shards(tmp_path, [2, 3])
    test = write_shards(tmp_path, [4], split="test")
    folder = str(tmp_path)
    assert sorted(flat(epoch_keys(make(tmp_path, shards=folder, split="test")))) == sorted(test)
    assert sorted(flat(epoch_keys(make(tmp_path, shards=folder)))) == sorted(train)
    manifest = {"format": 1, "splits": {"train": {"shards": [{"name": "train-000001.tar"}]}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert len(flat(epoch_keys(make(tmp_path, shards=folder)))) == 3


def test_bad_shard_specs_fail_clearly(tmp_path: Path) -> None:
    write_shards(tmp_path, [2])
    with pytest.raises(FileNotFoundError, match="train-000009.tar"):
        make(tmp_path, shards=[str(tmp_path / "train-000009.tar")])
    with pytest.raises(ValueError, match="more than once"):
        make(tmp_path, shards=[str(tmp_path / "train-*.tar"), str(tmp_path / "train-000000.tar")])
    with pytest.raises(ValueError, match="batch_size"):
        make(tmp_path, batch_size=0)
