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
