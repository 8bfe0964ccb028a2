"""The CoinRun LAM and dynamics shipped in checkpoints/ still load together with the released
tokenizer and still steer held-out levels: a regression test of the released weights."""

from __future__ import annotations

from pathlib import Path

import torch

from data_pipeline.loader import LoaderConfig, ShardLoader
from simulator.engine.sampling_config import SamplingConfig
from simulator.evaluation.world import WorldEvalConfig, evaluate_world
from simulator.models.dynamics import DynamicsModel
from simulator.models.lam import LatentActionModel
from tokenizer.model import VideoTokenizer

RELEASED = Path(__file__).parents[3] / "checkpoints"


def test_released_world_model_is_steered_by_latent_actions(heldout_coinrun: Path) -> None:
    tokenizer = VideoTokenizer.from_pretrained(RELEASED / "tokenizer_coinrun")
    lam = LatentActionModel.from_pretrained(RELEASED / "lam_coinrun")
    dynamics = DynamicsModel.from_pretrained(RELEASED / "dynamics_coinrun")
    dynamics.check_compatible(tokenizer, lam)
    loader = ShardLoader(
        LoaderConfig(shards=str(heldout_coinrun), split="test", batch_size=6, shuffle=False,
                     num_workers=0),
    )  # fmt: skip
    sampling = SamplingConfig(steps=4)
    eval_cfg = WorldEvalConfig(horizon=4, delta_t=4, sampling=sampling, max_batches=1)
    torch.manual_seed(0)
    report = evaluate_world(tokenizer, dynamics, lam, loader, eval_cfg).report
    assert report.clips == 6
    # +4.8 dB over 48 held-out clips (checkpoints/dynamics_coinrun/report.json).
    assert report.delta_t_psnr["latent"] > 1.0
    lam_curve, random_curve = report.psnr["lam_actions"], report.psnr["random_latent_actions"]
    assert all(a > b for a, b in zip(lam_curve, random_curve, strict=True))
