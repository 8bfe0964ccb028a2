"""`worldsim train tokenizer` end to end on the tiny preset: train, save, resume, load, encode."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from commands.main import main
from data_pipeline.loader import LoaderConfig, ShardLoader
from tokenizer.evaluate import bicubic_side
from tokenizer.model import VideoTokenizer
from tokenizer.train_task import AugmentConfig, TokenizerTask, TokenizerTrainConfig


def train(shards: Path, run: Path, steps: int, extra: list[str] | None = None) -> int:
    return main(
        ["train", "tokenizer", "--config", "tiny", f"data.shards={shards}",
         f"train.out_dir={run}", f"train.steps={steps}", "train.checkpoint_every=4", *(extra or [])]
    )  # fmt: skip


def logged_steps(run: Path) -> list[int]:
    with open(run / "train.csv") as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


def test_train_save_resume_load_encode(tiny_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train(tiny_shards, run, steps=8) == 0
    assert (run / "checkpoints" / "step-00000008").is_dir()
    assert train(tiny_shards, run, steps=12) == 0  # resumes at step 8, not from scratch
    assert logged_steps(run) == [5, 10]  # one row per log interval, none repeated by the resume

    model = VideoTokenizer.from_pretrained(run / "final")
    batch = next(iter(ShardLoader(LoaderConfig(shards=str(tiny_shards), batch_size=2))))
    tokens = model.encode(batch.frames)
    assert tokens.shape == (2, 8, 4, 4) and tokens.dtype == torch.int64
    assert model.decode(tokens).shape == batch.frames.shape


def test_decoder_only_fine_tune_keeps_the_tokens(tiny_shards: Path, tmp_path: Path) -> None:
    assert train(tiny_shards, tmp_path / "base", steps=4) == 0
    start = tmp_path / "base" / "final"
    run = tmp_path / "decoder"
    args = ["decoder_only=true", f"train.init_from={start}", "train.lr=1e-2"]
    assert train(tiny_shards, run, steps=4, extra=args) == 0
    batch = next(iter(ShardLoader(LoaderConfig(shards=str(tiny_shards), batch_size=2))))
    before, after = (VideoTokenizer.from_pretrained(p) for p in (start, run / "final"))
    tokens = before.encode(batch.frames)
    assert torch.equal(after.encode(batch.frames), tokens)
    assert not torch.allclose(after.decode(tokens), before.decode(tokens))


def test_eval_writes_a_report_and_bicubic_matches_bits(tiny_shards: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train(tiny_shards, run, steps=4) == 0
    out = tmp_path / "report.json"
    args = ["eval", "tokenizer", "--checkpoint", str(run / "final"), "--shards", str(tiny_shards)]
    assert main([*args, "--split", "train", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["clips"] == 32 and report["frames"] == 32 * 8
    assert 0 < report["codebook_usage"] <= 1 and report["num_codes"] == 125
    # 4x4 tokens of log2(125) bits = 111 bits: a 2x2 RGB thumbnail (96 bits) is the same budget.
    assert report["bicubic_side"] == 2
    assert bicubic_side(24 * 16 * 16) == 16 and bicubic_side(24 * 16 * 16 - 1) == 15
    assert math.isfinite(report["psnr_db"]) and -1 <= report["ssim"] <= 1
    grid = Image.open(out.with_suffix(".png"))  # 4 clips x (original, tokenizer, bicubic) rows
    assert grid.size == (8 * (16 + 4), 12 * (16 + 4))


def test_bad_override_names_the_key(tiny_shards: Path, tmp_path: Path, capsys) -> None:
    code = main(["train", "tokenizer", "--config", "tiny", "train.stepz=3"])
    assert code == 2 and "stepz" in capsys.readouterr().err


def test_token_noise_needs_decoder_only() -> None:
    with pytest.raises(ValueError, match="token_noise needs decoder_only"):
        TokenizerTask(TokenizerTrainConfig(preset="tiny", token_noise=0.2))
    with pytest.raises(ValueError, match=r"token_noise must be in \[0, 1\]"):
        TokenizerTask(TokenizerTrainConfig(preset="tiny", decoder_only=True, token_noise=1.5))


def test_model_overrides_reach_the_model() -> None:
    cfg = TokenizerTrainConfig(preset="tiny", model={"width": 48, "quantizer": {"levels": [4, 4]}})
    model_cfg = cfg.model_config()
    assert model_cfg.width == 48 and model_cfg.quantizer.levels == [4, 4]
    with pytest.raises(ValueError, match="num_heads"):
        TokenizerTrainConfig(preset="tiny", model={"width": 33}).model_config()


def test_augment_greys_and_mirrors_whole_clips() -> None:
    torch.manual_seed(0)
    frames = torch.rand(64, 2, 3, 4, 4) * 2 - 1
    grey = AugmentConfig(grayscale_prob=1.0).apply(frames)
    assert torch.allclose(grey[:, :, 0], grey[:, :, 2])
    assert torch.allclose(
        grey[:, :, 0], (frames * torch.tensor([0.299, 0.587, 0.114]).view(1, 1, 3, 1, 1)).sum(2)
    )
    assert torch.equal(AugmentConfig(hflip_prob=1.0).apply(frames), frames.flip(-1))
    some = AugmentConfig(grayscale_prob=0.5).apply(frames)
    greyed = torch.isclose(some[:, :, 0], some[:, :, 1]).flatten(1).all(1)
    assert 10 < int(greyed.sum()) < 54  # per clip, about half
    assert torch.equal(AugmentConfig().apply(frames), frames)
    with pytest.raises(ValueError, match="augment.hflip_prob must be in"):
        AugmentConfig(hflip_prob=1.5).validate()


def test_jitter_spans_its_ranges_per_clip() -> None:
    torch.manual_seed(0)
    frames = torch.rand(256, 2, 3, 4, 4) * 1.6 - 0.8
    grey = AugmentConfig(jitter_prob=1.0, saturation=[0.0, 0.0]).apply(frames)
    assert torch.allclose(grey[:, :, 0], grey[:, :, 2])
    flat = AugmentConfig(jitter_prob=1.0, contrast=[0.0, 0.0]).apply(frames)
    assert torch.allclose(flat, frames.mean(dim=(1, 2, 3, 4), keepdim=True).expand_as(flat))
    shifted = AugmentConfig(jitter_prob=1.0, brightness=[-0.1, 0.1]).apply(frames) - frames
    per_clip = shifted.flatten(1)
    assert torch.allclose(per_clip, per_clip[:, :1].expand_as(per_clip), atol=1e-6)
    assert per_clip[:, 0].min() < -0.09 and per_clip[:, 0].max() > 0.09
    assert per_clip.abs().max() <= 0.1 + 1e-6
    half = AugmentConfig(jitter_prob=0.5, brightness=[0.05, 0.05]).apply(frames)
    changed = (half != frames).flatten(1).any(1)
    assert 96 < int(changed.sum()) < 160
    with pytest.raises(ValueError, match=r"augment.contrast must be a \[low, high\] range"):
        AugmentConfig(contrast=[1.0, 0.5]).validate()
