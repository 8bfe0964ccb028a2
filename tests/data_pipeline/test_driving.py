"""The CarRacing source: the track-following driver stays on the road and uses every control,
episodes are deterministic per track seed, clips carry continuous actions, rewards and ends, and
the shard round trip keeps them."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from data_pipeline import driving
from data_pipeline.config import ShardConfig
from data_pipeline.games import episode_units
from data_pipeline.schema import decode_sample, encode_sample

pytest.importorskip("Box2D", reason="the driving extra: pip install -e '.[driving]'")


@pytest.fixture(scope="module")
def drive() -> driving.Drive:
    return driving.record_drive(track_seed=3, max_frames=60, frame_skip=2, seed=0)


def test_the_driver_follows_the_track_with_every_control(drive: driving.Drive) -> None:
    assert drive.frames.shape == (60, 96, 96, 3) and drive.frames.dtype == np.uint8
    assert drive.actions.shape == (60, 3) and drive.actions.dtype == np.float32
    assert drive.rewards.shape == drive.ends.shape == drive.on_road.shape == (60,)
    assert drive.on_road.mean() > 0.8  # a random policy spins on the grass instead
    steer, gas = drive.actions[:, 0], drive.actions[:, 1]
    assert steer.min() < -0.2 and steer.max() > 0.2  # both ways
    assert gas.max() > 0.5 and drive.rewards.sum() > 0  # it drives along and visits tiles
    assert (drive.actions[:, 1:] >= 0).all() and (np.abs(steer) <= 1).all()


def test_a_track_seed_gives_the_same_episode(drive: driving.Drive) -> None:
    again = driving.record_drive(track_seed=3, max_frames=60, frame_skip=2, seed=0)
    assert np.array_equal(again.frames, drive.frames)
    assert np.array_equal(again.actions, drive.actions)
    other = driving.record_drive(track_seed=4, max_frames=20, frame_skip=2, seed=0)
    assert not np.array_equal(other.frames[0], drive.frames[0])  # another track


def test_the_view_leaves_out_the_indicator_bar() -> None:
    frame = np.zeros((96, 96, 3), dtype=np.uint8)
    frame[84:] = 255  # the bar: speed, ABS, steering
    view = driving.without_hud(frame)
    assert view.shape == (84, 84, 3) and view.max() == 0


def test_clips_carry_controls_rewards_and_ends_through_shards() -> None:
    cfg = ShardConfig(sources=["gym:carracing-v3"], out="x", frames=8, stride=8, episodes=1,
                      max_steps=24, frame_skip=2, level_start=5)  # fmt: skip
    (unit,) = episode_units("gym:carracing-v3", cfg)
    assert unit.game == "gym:CarRacing-v3" and unit.level_seed == 5
    space = unit.action_space()
    assert space.type == "continuous" and space.shape == (3,)
    assert space.names == ("steer", "gas", "brake")
    clips = list(unit.clips(cfg, Counter()))
    assert len(clips) == 3
    clip = decode_sample(encode_sample("k", clips[0]))
    assert clip.frames.shape == (8, 64, 64, 3) and clip.actions.shape == (8, 3)
    assert clip.rewards is not None and clip.rewards.dtype == np.float32
    assert clip.ends is not None and clip.ends.dtype == bool and not clip.ends.any()
    assert clip.meta["fps"] == 25.0 and 0 <= clip.meta["on_road"] <= 1
    with pytest.raises(ValueError, match="the gym family has CarRacing-v3"):
        episode_units("gym:LunarLander-v3", cfg)


def test_a_driving_job_reports_its_controls_and_time_on_the_road(tmp_path) -> None:
    from data_pipeline.info import dataset_info
    from data_pipeline.shard_job import run_shard_job

    cfg = ShardConfig(sources=["gym:CarRacing-v3"], out=str(tmp_path / "cars"), frames=8,
                      stride=8, episodes=2, max_steps=24, frame_skip=2, workers=1)  # fmt: skip
    run_shard_job(cfg)
    (split,) = dataset_info(tmp_path / "cars").splits
    assert split.clips == 6 and split.fps == 25.0
    assert set(split.control_histograms) == {"steer", "gas", "brake"}
    low, high, counts = split.control_histograms["steer"]
    assert (low, high) == (-1.0, 1.0) and sum(counts) == 6 * 8
    assert split.on_road is not None and split.on_road > 0.5
    assert "steer -1..1 |" in split.render() and "on the road:" in split.render()
