"""simulator.models.lam: the latent action model, its bottleneck, save/load, input checks,
training."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from data_pipeline.loader import LoaderConfig
from data_pipeline.schema import Clip, encode_sample
from simulator.models.lam import LatentActionModel
from simulator.models.lam_config import PRESETS, LAMConfig, lam_preset
from simulator.tasks.lam_task import LAMTask, LAMTrainConfig, action_sheet, lam_task
from worldsim.config import preset_path
from worldsim.train import train

MOVES = ((0, -2), (0, 2), (-2, 0), (2, 0))  # toy actions: (dy, dx) of the square


def toy_clips(n: int, frames: int, seed: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A 4x4 bright square on a dark background, moved by one of 4 actions a step (wrapping):
    uint8 (n, T, H, W, 3) and the actions (n, T) int64 (actions[t] leads to frame t+1)."""
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, len(MOVES), (n, frames))
    clips = np.full((n, frames, size, size, 3), 30, dtype=np.uint8)
    for i in range(n):
        y, x = rng.integers(0, size, 2)
        for t in range(frames):
            square = np.ix_((y + np.arange(4)) % size, (x + np.arange(4)) % size)
            clips[i, t][square] = (220, 200, 60)
            dy, dx = MOVES[actions[i, t]]
            y, x = (y + dy) % size, (x + dx) % size
    return clips, actions


def to_model(clips: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(clips).permute(0, 1, 4, 2, 3).float() / 127.5 - 1


def tiny(**overrides: object) -> LatentActionModel:
    torch.manual_seed(0)
    return LatentActionModel(lam_preset("tiny", **overrides)).eval()


@pytest.fixture
def frames() -> torch.Tensor:
    return to_model(toy_clips(2, 5, seed=0)[0])  # (2, 5, 3, 16, 16)


def test_shapes_and_metrics(frames: torch.Tensor) -> None:
    lam = tiny()
    actions = lam.encode(frames)
    assert actions.shape == (2, 4) and actions.dtype == torch.int64
    assert int(actions.min()) >= 0 and int(actions.max()) < lam.num_actions == 4
    assert torch.equal(lam.infer_actions(frames), actions)
    pred = lam.decode(frames[:, :-1], actions)
    assert pred.shape == (2, 4, 3, 16, 16) and pred.abs().max() <= 1
    out = lam.loss(frames)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss) and out.recon.shape == pred.shape
    shares = [float(out.metrics[f"action_share_{i}"]) for i in range(4)]
    assert sum(shares) == pytest.approx(1.0)
    assert {"mse", "copy_mse", "psnr", "copy_psnr", "usage", "active_actions"} <= set(out.metrics)
    # The loss decodes with the codes of the ids `encode` returns.
    assert torch.allclose(out.recon.clamp(-1, 1), pred, atol=1e-5)


@pytest.mark.parametrize("context", ["last_frame", "all_frames"])
def test_frame_after_an_action_reaches_the_decoder_only_through_it(
    frames: torch.Tensor, context: str
) -> None:
    lam = tiny(decoder_context=context)
    actions = lam.encode(frames)
    k = 2  # perturb frame k: predictions of frames 1..k (made from frames < k) must not move
    changed = frames.clone()
    changed[:, k] = -changed[:, k]
    before = lam.decode(frames[:, :-1], actions)
    after = lam.decode(changed[:, :-1], actions)
    assert torch.equal(before[:, :k], after[:, :k])
    assert not torch.allclose(before[:, k], after[:, k])  # frame k itself is seen at step k
    if context == "last_frame":  # ... and nothing later than it
        assert torch.equal(before[:, k + 1 :], after[:, k + 1 :])
    # The action does reach the prediction.
    other = (actions + 1) % lam.num_actions
    assert not torch.allclose(lam.decode(frames[:, :-1], other)[:, 0], before[:, 0])
    # The encoder is causal: action t reads frames <= t+1 only.
    assert torch.equal(lam.encode(changed)[:, : k - 1], actions[:, : k - 1])


def test_save_load_round_trip(frames: torch.Tensor, tmp_path: Path) -> None:
    lam = tiny().train()
    lam.loss(frames)  # initialises the codebook from this batch, as training does
    lam.eval()
    lam.save_pretrained(tmp_path / "lam")
    loaded = LatentActionModel.from_pretrained(tmp_path / "lam").eval()
    assert loaded.cfg == lam.cfg
    actions = lam.encode(frames)
    assert torch.equal(loaded.encode(frames), actions)
    assert torch.equal(loaded.decode(frames[:, :-1], actions), lam.decode(frames[:, :-1], actions))
    assert torch.equal(loaded.loss(frames).loss, lam.loss(frames).loss)


def test_bad_inputs_name_the_problem(frames: torch.Tensor) -> None:
    lam = tiny()
    cases = {
        "channels": frames[:, :, :2],
        "16x16": frames[..., :8, :8],
        "NaN": frames.clone().fill_(float("nan")),
        r"\[-1, 1\]": frames * 3,
        "2..8 frames": frames[:, :1],
        "float tensor": frames.long(),
        r"\(B, T, C, H, W\)": frames[0],
    }
    for message, bad in cases.items():
        with pytest.raises(ValueError, match=message):
            lam.encode(bad)
    past = frames[:, :-1]
    good = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 4\)"):
        lam.decode(past, good + 4)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 4\)"):
        lam.decode(past, good - 1)
    with pytest.raises(ValueError, match="one after each past frame"):
        lam.decode(past, good[:, :3])
    with pytest.raises(ValueError, match="integer tensor"):
        lam.decode(past, good.float())
    with pytest.raises(ValueError, match="1..7 frames"):
        lam.decode(torch.zeros(1, 8, 3, 16, 16), torch.zeros(1, 8, dtype=torch.long))


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown latent action model preset 'huge'"):
        lam_preset("huge")
    with pytest.raises(ValueError, match="num_heads"):
        lam_preset("tiny", width=33)
    with pytest.raises(ValueError, match="max_frames must be >= 2"):
        lam_preset("tiny", max_frames=1)
    with pytest.raises(ValueError, match="decoder_context"):
        LatentActionModel(lam_preset("tiny", decoder_context="future"))
    with pytest.raises(ValueError, match="unknown key"):
        LAMConfig.from_dict({"widht": 3})
    assert set(PRESETS) == {"tiny", "coinrun", "base", "large"}
    assert lam_preset("large").num_actions == 6 and lam_preset("coinrun").num_actions == 8


def actions_in_use(dead_after: int, steps: int = 24) -> list[int]:
    """Train the tiny LAM on toy clips from a codebook in which only code 0 can win; returns how
    many actions each training batch used."""
    quantizer = dataclasses.replace(lam_preset("tiny").quantizer, dead_after=dead_after)
    lam = tiny(quantizer=quantizer).train()
    opt = torch.optim.AdamW(lam.parameters(), lr=1e-3)
    vq, used = lam.quantizer, []
    for step in range(steps):
        batch = to_model(toy_clips(8, 4, seed=step)[0])
        if step == 1:  # after the first batch initialised it: codes 1.. opposite code 0
            vq.codebook[1:] = -vq.codebook[:1]
            vq.ema_sum.copy_(vq.codebook)
        opt.zero_grad()
        out = lam.loss(batch)
        out.loss.backward()
        opt.step()
        used.append(int(out.metrics["active_actions"]))
    return used


def test_dead_code_restarts_keep_several_actions_in_use() -> None:
    assert actions_in_use(dead_after=10**6)[1:] == [1] * 23  # the collapse restarts must undo
    with_restarts = actions_in_use(dead_after=2)[-12:]
    assert sum(with_restarts) / len(with_restarts) > 1.5 and max(with_restarts) >= 3


def write_toy_shards(folder: Path) -> str:
    folder.mkdir()
    clips, actions = toy_clips(12, 8, seed=1)
    for s in range(2):
        with wds.TarWriter(str(folder / f"train-{s:06d}.tar")) as sink:
            for i in range(s * 6, s * 6 + 6):
                sink.write(encode_sample(f"toy-{i:06d}", Clip(clips[i], actions[i], {"fps": 8})))
    return str(folder / "train-*.tar")


def test_train_resume_and_pictures(tmp_path: Path) -> None:
    shards = write_toy_shards(tmp_path / "shards")
    run = tmp_path / "run"
    task, train_cfg = lam_task(
        "tiny", [f"data.shards={shards}", f"eval_shards={shards}", f"train.out_dir={run}"]
    )
    cfg = dataclasses.replace(train_cfg, steps=4, checkpoint_every=2, log_every=2, eval_every=0)
    assert train(task, cfg).step == 4
    resumed = train(task, dataclasses.replace(cfg, steps=6))
    assert resumed.step == 6 and len(resumed.losses) == 2  # continued, not restarted
    with open(run / "train.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 4, 6] and "action_share_3" in rows[0]
    pictures = sorted(p.name for p in (run / "visuals").iterdir())
    kinds = ("actions", "next")
    assert pictures == [f"step-0000000{s}_{kind}.png" for s in (4, 6) for kind in kinds]
    lam = LatentActionModel.from_pretrained(run / "final")
    assert lam.encode(to_model(toy_clips(1, 8, seed=5)[0])).shape == (1, 7)


def test_action_sheet_shows_every_action_from_each_start() -> None:
    lam = tiny(decoder_context="all_frames")
    start = to_model(toy_clips(3, 1, seed=2)[0])[:, 0]
    sheet = action_sheet(lam, start, steps=9)  # more steps than the decoder's context
    assert sheet.shape == (3, 1 + lam.num_actions, 3, 16, 16)
    assert torch.equal(sheet[:, 0], start)
    assert not torch.allclose(sheet[:, 1], sheet[:, 2])


def test_task_config_and_presets_load() -> None:
    for preset in ("tiny", "coinrun", "base", "large"):
        task, train_cfg = lam_task(preset, [])
        assert isinstance(task, LAMTask) and train_cfg.out_dir.startswith("runs/lam")
    assert preset_path("lam", "coinrun").parent.name == "lam"
    task, _ = lam_task("tiny", ["model.width=48", "model.quantizer.codebook_size=6"])
    assert task.model_cfg.width == 48 and task.model_cfg.num_actions == 6
    with pytest.raises(ValueError, match="stepz"):
        lam_task("tiny", ["train.stepz=3"])
    with pytest.raises(ValueError, match="sheet_steps"):
        LAMTask(LAMTrainConfig(preset="tiny", sheet_steps=0, data=LoaderConfig(shards="x")))
