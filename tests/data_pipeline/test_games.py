"""Game episode source: real CoinRun and Breakout recordings (offline, a few seconds each)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from data_pipeline.config import ShardConfig
from data_pipeline.games import (
    EpisodeUnit,
    episode_units,
    fit_frame,
    procgen_action_space,
    sticky_actions,
    sticky_segments,
)

pytest.importorskip("procgen")


def cfg_for(**kw: object) -> ShardConfig:
    base: dict[str, object] = dict(frames=8, stride=8, size=64, max_steps=64, episodes=1)
    base.update(kw)
    return ShardConfig(**base)  # type: ignore[arg-type]


def coinrun(level: int, cfg: ShardConfig) -> EpisodeUnit:
    return episode_units("procgen:coinrun", replace(cfg, level_start=level, episodes=1))[0]


def run_lengths(actions: np.ndarray) -> list[int]:
    change = np.flatnonzero(np.diff(actions)) + 1
    return np.diff(np.concatenate([[0], change, [len(actions)]])).tolist()


@pytest.fixture(scope="module")
def short_episode() -> tuple[EpisodeUnit, ShardConfig, int]:
    """A CoinRun level whose random-policy episode ends (agent dies) well before max_steps."""
    cfg = cfg_for(max_steps=1000)
    for level in range(20):
        unit = coinrun(level, cfg)
        n = len(unit.record(cfg)[0])
        if 24 <= n < 300:
            return unit, cfg, n
    raise AssertionError("no CoinRun level among 0..19 ended within 300 frames")


def test_units_carry_level_seeds_and_canonical_names() -> None:
    units = episode_units("procgen:CoinRun", cfg_for(level_start=100, episodes=3))
    assert [u.level_seed for u in units] == [100, 101, 102]
    assert [u.uid for u in units] == [f"procgen-coinrun-L{s:06d}" for s in (100, 101, 102)]
    assert {u.game for u in units} == {"procgen:coinrun"}
    atari = episode_units("atari:breakout", cfg_for(level_start=7))
    assert atari[0].uid == "atari-Breakout-L000007" and atari[0].game == "atari:Breakout"


def test_unknown_games_and_modes_are_named() -> None:
    with pytest.raises(ValueError, match=r"'bogus'.*coinrun.*starpilot"):
        episode_units("procgen:bogus", cfg_for())
    with pytest.raises(ValueError, match=r"Atari game 'Breakot'.*Breakout"):
        episode_units("atari:Breakot", cfg_for())
    with pytest.raises(ValueError, match="'nes:mario'"):
        episode_units("nes:mario", cfg_for())
    with pytest.raises(ValueError, match="distribution-mode 'exploration'"):
        episode_units("procgen:coinrun", cfg_for(distribution_mode="exploration"))


def test_procgen_action_space_from_key_combos() -> None:
    space = procgen_action_space()
    assert space.type == "discrete" and space.n == 15 and space.names is not None
    assert {"LEFT+UP", "RIGHT", "NOOP", "UP"} <= set(space.names)
    assert len(set(space.names)) == 15


def test_coinrun_clips_shapes_dtypes_and_meta() -> None:
    cfg = cfg_for(level_start=3, max_steps=64)  # level 3 lasts hundreds of frames
    unit = episode_units("procgen:coinrun", cfg)[0]
    stats: Counter[str] = Counter()
    clips = list(unit.clips(cfg, stats))
    assert len(unit.record(cfg)[0]) == 64  # max_steps caps the episode
    assert len(clips) == 8 and not stats
    for k, clip in enumerate(clips):
        assert clip.frames.shape == (8, 64, 64, 3) and clip.frames.dtype == np.uint8
        assert clip.actions is not None and clip.actions.dtype == np.int64
        assert clip.actions.shape == (8,) and 0 <= clip.actions.min() <= clip.actions.max() < 15
        assert clip.meta["episode_step"] == 8 * k and clip.meta["start_time"] == pytest.approx(
            8 * k / 15, abs=1e-6
        )
    meta = clips[0].meta
    assert meta["source"] == "procgen:coinrun" and meta["kind"] == "game"
    assert meta["game"] == "coinrun" and meta["level_seed"] == 3 and meta["fps"] == 15.0
    assert meta["distribution_mode"] == "easy" and "MIT" in meta["license"]
    assert meta["action_space"]["n"] == 15 and "sticky" in meta["policy"]


def test_resize_and_frame_skip() -> None:
    cfg = cfg_for(level_start=3, size=32, frame_skip=2, max_steps=16)
    clips = list(episode_units("procgen:coinrun", cfg)[0].clips(cfg, Counter()))
    assert len(clips) == 2 and clips[0].frames.shape == (8, 32, 32, 3)
    assert clips[0].meta["fps"] == 7.5


def test_recording_is_deterministic_per_seed_and_level() -> None:
    cfg = cfg_for(max_steps=48)
    frames_a, actions_a = coinrun(5, cfg).record(cfg)
    frames_b, actions_b = coinrun(5, cfg).record(cfg)
    assert np.array_equal(frames_a, frames_b) and np.array_equal(actions_a, actions_b)
    frames_c, _ = coinrun(6, cfg).record(cfg)
    assert not np.array_equal(frames_a[0], frames_c[0])  # another level, another layout
    other_seed = replace(cfg, seed=1)
    _, actions_d = coinrun(5, other_seed).record(other_seed)
    assert not np.array_equal(actions_a, actions_d)


def test_recording_is_identical_in_another_process() -> None:
    cfg = cfg_for(max_steps=48)
    frames, actions = coinrun(5, cfg).record(cfg)
    here = hashlib.sha256(frames.tobytes() + actions.tobytes()).hexdigest()
    code = (
        "import hashlib; from data_pipeline.config import ShardConfig; "
        "from data_pipeline.games import episode_units; "
        "c = ShardConfig(frames=8, stride=8, size=64, max_steps=48, episodes=1, level_start=5); "
        "f, a = episode_units('procgen:coinrun', c)[0].record(c); "
        "print(hashlib.sha256(f.tobytes() + a.tobytes()).hexdigest())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == here


@pytest.mark.parametrize("frame_skip", [1, 2])
def test_actions_replayed_reproduce_the_frames(frame_skip: int) -> None:
    cfg = cfg_for(max_steps=40, frame_skip=frame_skip)
    unit = coinrun(4, cfg)
    frames, actions = unit.record(cfg)
    assert len(frames) == len(actions) == 40

    def replay(acts: np.ndarray) -> np.ndarray:
        game = unit.open(cfg)
        try:
            out = [game.reset()]
            for a in acts[:-1]:
                frame, ended = game.step(int(a), frame_skip)
                assert frame is not None and not ended
                out.append(frame)
        finally:
            game.close()
        return np.stack(out)

    assert np.array_equal(replay(actions), frames)  # actions[t] takes frame t to t+1
    assert not np.array_equal(replay(np.roll(actions, 1)), frames)  # off by one: diverges


def test_no_clip_crosses_the_episode_end(
    short_episode: tuple[EpisodeUnit, ShardConfig, int],
) -> None:
    unit, cfg, n = short_episode
    frames, actions = unit.record(cfg)
    assert len(frames) == len(actions) == n < cfg.max_steps
    # Replaying: every recorded action but the last stays in the episode; the last one ends it,
    # so the recording holds exactly the episode and nothing of the next one.
    game = unit.open(cfg)
    try:
        assert np.array_equal(game.reset(), frames[0])
        for t in range(n - 1):
            frame, ended = game.step(int(actions[t]), 1)
            assert not ended and frame is not None and np.array_equal(frame, frames[t + 1])
        assert game.step(int(actions[-1]), 1) == (None, True)
    finally:
        game.close()
    clips = list(unit.clips(replace(cfg, stride=4), Counter()))
    assert len(clips) == (n - cfg.frames) // 4 + 1
    assert all(c.meta["episode_step"] + cfg.frames <= n for c in clips)


def test_episode_shorter_than_a_clip_is_counted(
    short_episode: tuple[EpisodeUnit, ShardConfig, int],
) -> None:
    unit, cfg, n = short_episode
    stats: Counter[str] = Counter()
    assert list(unit.clips(replace(cfg, frames=n + 1), stats)) == []
    assert stats == Counter(too_short=1)


def test_sticky_holds_stay_in_range() -> None:
    rng = np.random.default_rng(0)
    segments = [s for _, s in zip(range(2000), sticky_segments(5, 2, 6, rng), strict=False)]
    holds = [h for _, h in segments]
    assert min(holds) == 2 and max(holds) == 6  # both ends reached, nothing outside
    assert {a for a, _ in segments} == set(range(5))
    expanded = [a for a, h in segments[:50] for _ in range(h)]
    policy = sticky_actions(5, 2, 6, np.random.default_rng(0))
    assert [next(policy) for _ in expanded] == expanded
    # In a recorded episode with fixed holds of 3, every run of equal actions is a whole number
    # of holds (repeats merge runs), except the last, which the episode may cut short.
    cfg = cfg_for(max_steps=200, sticky_min=3, sticky_max=3, level_start=3)
    _, actions = coinrun(3, cfg).record(cfg)
    runs = run_lengths(actions)
    assert len(runs) > 10 and all(r % 3 == 0 for r in runs[:-1])


def test_atari_breakout_episode() -> None:
    pytest.importorskip("ale_py")
    cfg = cfg_for(max_steps=24, size=64)
    unit = episode_units("atari:Breakout", cfg)[0]
    space = unit.action_space()
    assert space.n == 4 and space.names == ("NOOP", "FIRE", "RIGHT", "LEFT")
    clips = list(unit.clips(cfg, Counter()))
    assert len(clips) == 3
    clip = clips[0]
    assert clip.frames.shape == (8, 64, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.actions is not None and clip.actions.max() < 4
    assert clip.meta["fps"] == 15.0 and "GPL" in clip.meta["license"]
    frames, actions = unit.record(cfg)
    assert np.array_equal(np.concatenate([c.frames for c in clips]), frames)
    assert np.array_equal(
        np.concatenate([c.actions for c in clips if c.actions is not None]), actions
    )


def test_fit_frame_resizes_short_side_and_centre_crops() -> None:
    frame = np.full((210, 160, 3), 100, dtype=np.uint8)
    frame[:20] = (255, 0, 0)  # scaled by 0.4 to 8 rows, inside the 10 rows cropped off the top
    frame[100:110] = (0, 0, 255)  # a band across the middle survives
    out = fit_frame(frame, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert out[..., 0].max() <= 100 and out[..., 2].max() > 200
    small = np.zeros((64, 64, 3), dtype=np.uint8)
    assert fit_frame(small, 64) is small
