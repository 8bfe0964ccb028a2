"""Fixtures shared across the test packages."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_pipeline.config import ShardConfig
from data_pipeline.shard_job import run_shard_job


@pytest.fixture(scope="session")
def heldout_coinrun(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shard folder of two fresh CoinRun episodes on levels no training run saw: split "test",
    8 clips of 16 frames at 64x64. Recorded once per session; tests only read it."""
    folder = tmp_path_factory.mktemp("heldout_coinrun")
    cfg = ShardConfig(
        sources=["procgen:coinrun"], out=str(folder), split="test", size=64, frames=16,
        stride=16, episodes=2, level_start=200_000, max_steps=64, workers=1,
    )  # fmt: skip
    run_shard_job(cfg)
    return folder


@pytest.fixture(scope="session")
def heldout_coinrun_hard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like `heldout_coinrun`, on the game's full visual distribution (distribution_mode "hard"):
    4 levels, 12 clips of 16 frames at 64x64, split "test"."""
    folder = tmp_path_factory.mktemp("heldout_coinrun_hard")
    cfg = ShardConfig(
        sources=["procgen:coinrun"], out=str(folder), split="test", size=64, frames=16,
        stride=16, episodes=4, level_start=300_000, max_steps=48, sticky_max=8, workers=1,
        distribution_mode="hard",
    )  # fmt: skip
    run_shard_job(cfg)
    return folder
