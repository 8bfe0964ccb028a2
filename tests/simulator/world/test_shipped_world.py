"""The world shipped inside the package (worldsim/worlds/coinrun) still keeps CoinRun's themes
and still obeys its keys on unseen all-theme levels: a regression test of the released weights.
Figures from `worldsim eval world` on 128 unseen levels are in the README ("Evaluation")."""

from __future__ import annotations

from pathlib import Path

import torch

from data_pipeline.loader import LoaderConfig, ShardLoader
from simulator.evaluation.world import WorldEvalConfig, evaluate_world
from simulator.world.checkpoint import load_world
from worldsim.worlds import shipped_world

# Measured on this fixture at release: 24.55 dB and +2.95 dB (the two releases before: +3.20 and
# +2.81 dB; on 128 levels the release scores +3.90 dB against their +3.37 and +2.54: 12 clips
# are noisy); the single-theme world before them scored about 12 dB and +0.46 dB (on 128 levels)
# on all-theme levels.
TOKENIZER_DB, DELTA_T_DB = 22.0, 2.0


def test_shipped_world_keeps_the_themes_and_obeys_true_actions(heldout_coinrun_hard: Path) -> None:
    world = load_world(shipped_world())
    loader = ShardLoader(
        LoaderConfig(shards=str(heldout_coinrun_hard), split="test", batch_size=12,
                     shuffle=False, num_workers=0),
    )  # fmt: skip
    # The world's own sampling (world.json: 4 MaskGIT steps), as players get it.
    eval_cfg = WorldEvalConfig(horizon=4, delta_t=4, sampling=world.spec.sampling, max_batches=1)
    torch.manual_seed(0)
    report = evaluate_world(world.tokenizer, world.dynamics, None, loader, eval_cfg).report
    assert report.clips == 12
    ceiling = sum(report.psnr["tokenizer"]) / len(report.psnr["tokenizer"])
    assert ceiling > TOKENIZER_DB, ceiling
    assert report.delta_t_psnr["true"] > DELTA_T_DB, report.delta_t_psnr
