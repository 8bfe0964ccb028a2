"""Fixtures of the tokenizer tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_pipeline.config import ShardConfig
from data_pipeline.shard_job import run_shard_job


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("coinrun16")
    cfg = ShardConfig(
        sources=["procgen:coinrun"], out=str(out), size=16, frames=8, stride=8,
        episodes=4, max_steps=64, units_per_shard=2, workers=1,
    )  # fmt: skip
    run_shard_job(cfg)
    return out
