"""The inverse-dynamics model: effect classes, shapes, and train -> save -> resume -> predict on
clips where the action visibly moves a block."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from commands.main import main
from data_pipeline.loader import LoaderConfig, ShardLoader
from data_pipeline.schema import Clip, encode_sample
from simulator.evaluation.controllability import idm_accuracy
from simulator.evaluation.idm import IDMConfig, InverseDynamicsModel, idm_preset
from tokenizer.delta import DeltaTokenizer
from tokenizer.delta_config import delta_tokenizer_preset

SIZE, T = 16, 8


def test_classes_merge_grouped_ids_and_groups_must_partition() -> None:
    model = InverseDynamicsModel(idm_preset("tiny", action_groups=[[0, 2], [1]]))
    assert model.cfg.num_classes == 2
    assert model.classes(torch.tensor([[0, 1, 2]])).tolist() == [[0, 1, 0]]
    out = model(torch.zeros(2, T, 3, SIZE, SIZE), torch.zeros(2, T, dtype=torch.long))
    assert out.logits.shape == (2 * (T - 1), 2) and out.loss.ndim == 0
    with pytest.raises(ValueError, match="must partition ids 0..2"):
        IDMConfig(num_actions=3, action_groups=[[0], [1]], image_size=16, stages=2).validate()


def moving_block_clips(n: int, seed: int) -> list[Clip]:
    """A white 4x4 block on black that moves left (0), stays (1) or moves right (2)."""
    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(n):
        actions, x = rng.integers(0, 3, T), int(rng.integers(4, 8))
        frames = np.zeros((T, SIZE, SIZE, 3), dtype=np.uint8)
        for t in range(T):
            frames[t, 6:10, x : x + 4] = 255
            x = int(np.clip(x + (actions[t] - 1) * 2, 0, SIZE - 4))
        clips.append(Clip(frames, actions, {}))
    return clips


def write_shards(folder: Path) -> None:
    for split, seed, n in (("train", 0, 64), ("test", 1, 16)):
        with wds.TarWriter(str(folder / f"{split}-000000.tar")) as sink:
            for i, clip in enumerate(moving_block_clips(n, seed)):
                sink.write(encode_sample(f"{split}{i}", clip))


def test_train_save_resume_and_predict(tmp_path: Path) -> None:
    write_shards(tmp_path)
    run = tmp_path / "run"
    args = ["train", "idm", "--config", "tiny", f"data.shards={tmp_path}", f"train.out_dir={run}",
            "train.batch_size=8", "train.lr=3e-3", f"eval_shards={tmp_path}"]  # fmt: skip
    assert main([*args, "train.steps=40"]) == 0
    assert main([*args, "train.steps=80"]) == 0  # resumes from step 40
    rows = (run / "train.csv").read_text().splitlines()
    assert rows[-1].startswith("80,")
    model = InverseDynamicsModel.from_pretrained(run / "final").eval()
    clips = moving_block_clips(32, seed=2)
    frames = torch.from_numpy(np.stack([c.frames for c in clips])).permute(0, 1, 4, 2, 3)
    frames = frames.float() / 127.5 - 1
    actions = torch.from_numpy(np.stack([c.actions for c in clips]))
    with torch.no_grad():
        accuracy = float(model(frames, actions).metrics["accuracy"])
    assert accuracy > 0.8  # chance is 1/3; blocks at a wall hide some moves
    # A tokenizer's renders scored beside the real frames: an untrained delta renderer holds
    # frame 0 still, so its renders lose the moves; a perfect one would tie the real frames.
    torch.manual_seed(0)
    DeltaTokenizer(delta_tokenizer_preset("tiny")).save_pretrained(tmp_path / "tok")
    evaluate = ["eval", "idm", "--checkpoint", str(run / "final"), "--shards", str(tmp_path)]
    assert main([*evaluate, "--tokenizer", str(tmp_path / "tok")]) == 0
    report = json.loads((tmp_path / "tok" / "idm_test.json").read_text())
    assert report["reconstructed"]["accuracy"] < report["real"]["accuracy"] - 0.2, report
    loader = ShardLoader(LoaderConfig().for_eval(str(tmp_path), "test", batch_size=8))
    perfect = idm_accuracy(model, loader, reconstruct=lambda frames, tokens, actions: frames)
    assert perfect.reconstructed == perfect.real


def test_a_continuous_idm_regresses_controls_scored_by_r2() -> None:
    from simulator.evaluation.controllability import REAL, RegressionMeter
    from simulator.evaluation.idm import r_squared

    cfg = idm_preset("tiny", continuous_dim=2, control_names=["steer", "gas"])
    idm = InverseDynamicsModel(cfg)
    frames = torch.rand(2, 4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    actions = torch.rand(2, 4, 2, generator=torch.Generator().manual_seed(1))
    out = idm(frames, actions)
    assert out.logits.shape == (6, 2) and set(out.metrics) == {"r2_steer", "r2_gas"}
    out.loss.backward()  # a regression loss that trains
    target = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 1.0]])
    assert torch.allclose(r_squared(target, target), torch.ones(2))
    assert torch.allclose(r_squared(target.mean(0).expand(3, -1), target), torch.zeros(2))
    meter = RegressionMeter(idm)
    meter.add(REAL, frames, actions[:, :-1])
    real = meter.agreement(REAL)
    assert real is not None and real.transitions == 6 and set(real.r2) == {"steer", "gas"}
    assert meter.agreement("floor") is not None  # mismatched pairs, scored alike
    with pytest.raises(ValueError, match="control_names needs one name per continuous control"):
        idm_preset("tiny", continuous_dim=2, control_names=["steer"]).validate()
