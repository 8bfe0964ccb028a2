"""The CoinRun tokenizer shipped in checkpoints/ still loads and still reconstructs held-out
CoinRun levels well: a regression test of the released weights, not of training."""

from __future__ import annotations

from pathlib import Path

import torch

from data_pipeline.config import ShardConfig
from data_pipeline.loader import LoaderConfig, ShardLoader
from data_pipeline.shard_job import run_shard_job
from tokenizer.evaluate import evaluate_tokenizer
from tokenizer.model import VideoTokenizer

RELEASED = Path(__file__).parents[2] / "checkpoints" / "tokenizer_coinrun"


def record_heldout_coinrun(folder: Path) -> None:
    """Two fresh CoinRun episodes on levels no training run saw: 8 test clips of 16 frames."""
    cfg = ShardConfig(
        sources=["procgen:coinrun"], out=str(folder), split="test", size=64, frames=16,
        stride=16, episodes=2, level_start=200_000, max_steps=64, workers=1,
    )  # fmt: skip
    run_shard_job(cfg)


def test_released_coinrun_tokenizer_reconstructs_heldout_levels(tmp_path: Path) -> None:
    record_heldout_coinrun(tmp_path)
    model = VideoTokenizer.from_pretrained(RELEASED)
    loader = ShardLoader(
        LoaderConfig(shards=str(tmp_path), split="test", batch_size=4, shuffle=False,
                     num_workers=0),
    )  # fmt: skip
    torch.manual_seed(0)
    report = evaluate_tokenizer(model, loader)
    assert report.frames >= 32
    assert report.psnr_db > 29.0  # 31.5 dB over 4640 held-out frames (eval_test.json)
    assert report.psnr_db > report.bicubic_psnr_db + 8
    assert report.num_codes == 1000


def test_released_checkpoint_is_safetensors_only() -> None:
    assert not list(RELEASED.glob("*.bin")) and list(RELEASED.glob("*.safetensors"))
