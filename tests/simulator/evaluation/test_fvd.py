"""FVD: the Fréchet distance against closed forms, the reference's resize, batching, caching and
determinism (with a stand-in feature network: the protocol, not I3D, is under test here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from torch import nn

from commands.main import main
from data_pipeline.config import ShardConfig
from data_pipeline.shard_job import run_shard_job
from simulator.evaluation.fvd import (
    FVDConfig,
    compute_fvd,
    frechet_distance,
    i3d_features,
    legacy_bilinear_matrix,
    preprocess,
)
from simulator.evaluation.videos import iter_videos, paired_metrics, resolve_video_set


class StandIn(nn.Module):
    """(B, T, 224, 224, 3) -> (B, 400): a fixed random projection of pooled pixels, counting
    the clips it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3 * 16, 400)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))
        torch.nn.init.zeros_(self.proj.bias)
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0]
        pooled = torch.nn.functional.adaptive_avg_pool3d(x.permute(0, 4, 1, 2, 3), (1, 4, 4))
        return self.proj(pooled.flatten(1))


def test_frechet_distance_closed_forms() -> None:
    d, mu = 5, np.arange(5.0)
    # N(0, I) vs N(mu, 4I): |mu|^2 + tr(I + 4I - 2 * 2I) = |mu|^2 + d
    assert frechet_distance(np.zeros(d), np.eye(d), mu, 4 * np.eye(d)) == pytest.approx(
        mu @ mu + d, abs=1e-9
    )
    assert frechet_distance(mu, np.eye(d), mu, np.eye(d)) == pytest.approx(0.0, abs=1e-9)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T + np.eye(d), b @ b.T + np.eye(d)
    # An independent route: tr sqrtm(S1 S2) = tr sqrtm(S1^1/2 S2 S1^1/2), symmetric and PSD.
    root = scipy.linalg.sqrtm(s1).real
    eig = np.linalg.eigvalsh(root @ s2 @ root)
    expected = (mu - 1) @ (mu - 1) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(eig).sum()
    assert frechet_distance(mu, s1, np.ones(d), s2) == pytest.approx(expected, rel=1e-9)


def test_resize_is_tf1_legacy_bilinear_and_scales_to_unit_range() -> None:
    weights = legacy_bilinear_matrix(2, 4)  # output i reads input i * 2 / 4: 0, .5, 1, 1.5
    expected = torch.tensor([[1, 0], [0.5, 0.5], [0, 1], [0, 1]], dtype=torch.float32)
    torch.testing.assert_close(weights, expected)
    clips = torch.zeros(1, 2, 8, 6, 3, dtype=torch.uint8)
    clips[0, 1] = 255
    out = preprocess(clips)
    assert out.shape == (1, 2, 224, 224, 3)
    torch.testing.assert_close(out[0, 0], torch.full_like(out[0, 0], -1.0))
    torch.testing.assert_close(out[0, 1], torch.full_like(out[0, 1], 1.0))


def test_features_do_not_depend_on_the_batch_size() -> None:
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8) for _ in range(5)]
    model = StandIn()
    one, three = (i3d_features(iter(clips), model, b) for b in (1, 3))
    assert one.shape == (5, 400) and one.dtype == np.float64
    np.testing.assert_allclose(one, three, rtol=1e-5, atol=1e-5)


def write_gif_set(folder: Path, seed: int, n: int = 6, frames: int = 20) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        video = rng.integers(0, 256, (frames, 16, 16, 3), dtype=np.uint8)
        images = [Image.fromarray(f) for f in video]
        images[0].save(folder / f"v{i}.gif", save_all=True, append_images=images[1:])
    return folder


def test_fvd_is_deterministic_cached_and_flags_few_clips(tmp_path: Path) -> None:
    real = resolve_video_set(str(write_gif_set(tmp_path / "real", 0)))
    fake = resolve_video_set(str(write_gif_set(tmp_path / "fake", 1)))
    cfg = FVDConfig(clips=6, sampling="random", seed=3, batch_size=4)
    model = StandIn()
    first = compute_fvd(real, fake, model, cfg, cache_dir=tmp_path / "cache")
    assert len(first.warnings) == 2 and "real set has 6 clips (< 400)" in first.warnings[0]
    assert model.seen == 12 and first.fvd > 0 and first.clips_per_s
    again = compute_fvd(real, fake, model, cfg, cache_dir=tmp_path / "cache")
    assert model.seen == 12 and again.fvd == first.fvd and again.clips_per_s is None
    other = resolve_video_set(str(write_gif_set(tmp_path / "other", 2)))
    third = compute_fvd(real, other, model, cfg, cache_dir=tmp_path / "cache")
    assert model.seen == 18  # the real set came from the cache: only the new fakes ran
    assert third.fvd != first.fvd
    fresh = compute_fvd(real, fake, StandIn(), cfg, cache_dir=tmp_path / "cache2")
    assert fresh.fvd == pytest.approx(first.fvd, rel=1e-9)  # no cache, same seed, same result
    reseeded = FVDConfig(clips=6, sampling="random", seed=4)
    reseeded = compute_fvd(real, fake, StandIn(), reseeded, cache_dir=tmp_path / "cache2")
    assert reseeded.fvd != first.fvd  # another window of each video


def test_short_videos_and_bad_sets_are_named(tmp_path: Path) -> None:
    real = resolve_video_set(str(write_gif_set(tmp_path / "real", 0, frames=10)))
    with pytest.raises(ValueError, match="has 0 clip\\(s\\) of >= 16 frames"):
        compute_fvd(real, real, StandIn(), FVDConfig(clips=4), cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_video_set(str(tmp_path / "none"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no videos"):
        resolve_video_set(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="frames must be >= 9"):
        FVDConfig(frames=4).validate()


def test_frames_folders_and_shards_are_video_sets(tmp_path: Path) -> None:
    frames = tmp_path / "frames" / "clip0"
    frames.mkdir(parents=True)
    for t in range(3):
        Image.fromarray(np.full((8, 8, 3), t, dtype=np.uint8)).save(frames / f"{t:03d}.png")
    [(name, video)] = list(iter_videos(resolve_video_set(str(tmp_path / "frames"))))
    assert name == "clip0" and video.shape == (3, 8, 8, 3) and video[2, 0, 0, 0] == 2
    cfg = ShardConfig(sources=["procgen:coinrun"], out=str(tmp_path / "shards"), frames=16,
                      stride=16, size=32, episodes=1, max_steps=40, workers=1)  # fmt: skip
    run_shard_job(cfg)
    shards = resolve_video_set(str(tmp_path / "shards" / "train-*.tar"))
    clips = list(iter_videos(shards))
    assert shards.kind == "shards" and clips and clips[0][1].shape == (16, 32, 32, 3)
    assert clips[0][0].startswith("train-000000.tar#procgen-coinrun")


def test_eval_videos_pairs_videos_in_order(tmp_path: Path, capsys) -> None:
    real = write_gif_set(tmp_path / "real", 0, n=3)
    report = paired_metrics(resolve_video_set(str(real)), resolve_video_set(str(real)), 12)
    assert report.pairs == 3 and len(report.psnr) == 12
    assert min(report.psnr) > 100 and report.ssim == pytest.approx([1.0] * 12)
    fake = write_gif_set(tmp_path / "fake", 1, n=3)
    assert main(["eval", "videos", "--real", str(real), "--fake", str(fake), "--frames", "12"]) == 0
    assert "3 video pairs" in capsys.readouterr().out
    short = write_gif_set(tmp_path / "short", 1, n=3, frames=8)
    with pytest.raises(ValueError, match="cannot be compared over 12 frames"):
        paired_metrics(resolve_video_set(str(real)), resolve_video_set(str(short)), 12)
