"""Fréchet Video Distance, computed the way the reference implementation does.

Protocol (google-research/frechet_video_distance, which StyleGAN-V's port reproduces): each clip
is `frames` uint8 frames, resized bilinearly to 224x224 without cropping (TF1's
`resize_bilinear`: align_corners=False and no half-pixel offset), scaled to [-1, 1] and fed to
the Kinetics-400 I3D; its 400 logits are the features. Means and covariances are taken in
float64, and FVD = |mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)), real part. One clip per video:
its first `frames` frames, or a seeded random window (`sampling="random"`).

Features stream in batches (bounded memory, a progress bar) and are cached per input set, keyed
by the set's fingerprint and the protocol, so scoring new fakes against the same reals
recomputes only the fakes.

References: Unterthiner et al. 2018, "Towards Accurate Generative Models of Video: A New Metric &
Challenges"; Skorokhodov et al. 2022, "StyleGAN-V" (the protocol's pitfalls).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from torch import Tensor, nn

from simulator.evaluation.i3d_weights import I3D_SHA256, default_cache_dir
from simulator.evaluation.videos import VideoSet, iter_videos
from worldsim.io.files import write_atomic
from worldsim.io.progress import progress

RESOLUTION = 224
MIN_CLIPS = 400  # below this the 400x400 covariance is singular and FVD is biased upwards
SAMPLINGS = ("first", "random")
PROTOCOL_VERSION = 1  # bump when anything that changes features changes


@dataclass
class FVDConfig:
    clips: int = 2048  # clips per set (the standard protocol); a smaller set uses all it has
    frames: int = 16  # frames per clip, the standard FVD length
    sampling: str = "first"  # window of each video: "first" frames or a seeded "random" one
    seed: int = 0
    batch_size: int = 8  # clips per I3D forward pass; does not change the features

    def validate(self) -> None:
        problems = []
        if self.clips < 2:
            problems.append(f"clips must be >= 2 (a covariance needs two), got {self.clips}")
        if self.frames < 9:
            problems.append(f"frames must be >= 9 (I3D's temporal pooling), got {self.frames}")
        if self.sampling not in SAMPLINGS:
            problems.append(f"sampling must be one of {list(SAMPLINGS)}, got {self.sampling!r}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if problems:
            raise ValueError("bad FVD options: " + "; ".join(problems))


@dataclass
class SetFeatures:
    features: np.ndarray  # float64 (N, 400) I3D logits
    skipped_short: int  # videos shorter than `frames`
    seconds: float  # spent extracting (0 when read from the cache)
    cached: bool


@dataclass
class FVDResult:
    fvd: float
    real: str
    fake: str
    real_clips: int
    fake_clips: int
    config: FVDConfig
    clips_per_s: float | None  # feature extraction speed of this run (None: all cached)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def render(self) -> str:
        speed = f"{self.clips_per_s:.2f} clips/s" if self.clips_per_s else "features cached"
        lines = [
            f"FVD {self.fvd:.2f} ({self.real_clips} real vs {self.fake_clips} generated clips of "
            f"{self.config.frames} frames, {self.config.sampling} window; {speed})",
            f"real: {self.real}",
            f"fake: {self.fake}",
        ]
        return "\n".join(lines + [f"WARNING: {w}" for w in self.warnings])


def legacy_bilinear_matrix(size_in: int, size_out: int) -> Tensor:
    """(size_out, size_in) weights of TF1 `resize_bilinear` along one axis: output pixel i reads
    input position i * size_in / size_out (no half-pixel offset), clamped at the last pixel."""
    pos = torch.arange(size_out, dtype=torch.float64) * (size_in / size_out)
    lo = pos.floor().long().clamp(max=size_in - 1)
    hi = (lo + 1).clamp(max=size_in - 1)
    frac = pos - lo
    weights = torch.zeros(size_out, size_in, dtype=torch.float64)
    weights[torch.arange(size_out), lo] += 1 - frac
    weights[torch.arange(size_out), hi] += frac
    return weights.float()


def preprocess(clips_BTHWC: Tensor) -> Tensor:
    """uint8 clips (B, T, H, W, 3) -> float (B, T, 224, 224, 3) in [-1, 1], as the reference."""
    h, w = clips_BTHWC.shape[2:4]
    rows, cols = legacy_bilinear_matrix(h, RESOLUTION), legacy_bilinear_matrix(w, RESOLUTION)
    resized = torch.einsum("yh,bthwc,xw->btyxc", rows, clips_BTHWC.float(), cols)
    return 2.0 * resized / 255.0 - 1.0


def select_clips(
    videos: Iterable[tuple[str, np.ndarray]], cfg: FVDConfig, stats: dict[str, int]
) -> Iterator[np.ndarray]:
    """One (frames, H, W, 3) window per video, up to cfg.clips; shorter videos are counted in
    stats["skipped_short"] and skipped."""
    rng = np.random.default_rng(cfg.seed)
    taken = 0
    for _, video in videos:
        if taken == cfg.clips:
            return
        if len(video) < cfg.frames:
            stats["skipped_short"] = stats.get("skipped_short", 0) + 1
            continue
        start = 0 if cfg.sampling == "first" else int(rng.integers(0, len(video) - cfg.frames + 1))
        taken += 1
        yield video[start : start + cfg.frames]


@torch.no_grad()
def i3d_features(
    clips: Iterable[np.ndarray], model: nn.Module, batch_size: int, desc: str = "I3D"
) -> np.ndarray:
    """float64 (N, 400) logits of uint8 clips (T, H, W, 3) of one shape, batch by batch."""
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    bar = progress(desc=desc, unit="clip")
    for clip in itertools.chain(clips, [None]):  # None flushes the last batch
        if clip is not None:
            batch.append(clip)
        if batch and (clip is None or len(batch) == batch_size):
            x = preprocess(torch.from_numpy(np.stack(batch)).to(device))
            out.append(model(x).double().cpu().numpy())
            bar.update(len(batch))
            batch = []
    bar.close()
    return np.concatenate(out) if out else np.zeros((0, 400))


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrtm(S1 S2)), the real part, in float64."""
    covmean = scipy.linalg.sqrtm(s1.astype(np.float64) @ s2.astype(np.float64))
    diff = mu1.astype(np.float64) - mu2.astype(np.float64)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = features.astype(np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def set_features(
    videos: VideoSet, model: nn.Module, cfg: FVDConfig, cache_dir: str | os.PathLike[str] | None
) -> SetFeatures:
    """The set's I3D features under `cfg`, from the cache when this set and protocol were
    scored before; otherwise extracted and cached (written atomically)."""
    key = json.dumps(
        [PROTOCOL_VERSION, I3D_SHA256, videos.fingerprint(), cfg.clips, cfg.frames,
         cfg.sampling, cfg.seed],
    )  # fmt: skip
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    path = Path(cache_dir or default_cache_dir()) / "fvd-features" / f"{digest}.npz"
    if path.is_file():
        with np.load(path) as cached:
            return SetFeatures(cached["features"], int(cached["skipped_short"]), 0.0, True)
    stats: dict[str, int] = {}
    start = time.perf_counter()
    clips = select_clips(iter_videos(videos), cfg, stats)
    features = i3d_features(clips, model, cfg.batch_size, desc=f"I3D {videos.spec}")
    seconds = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, features=features, skipped_short=stats.get("skipped_short", 0))
    write_atomic(path, buffer.getvalue())
    return SetFeatures(features, stats.get("skipped_short", 0), seconds, False)


def compute_fvd(
    real: VideoSet,
    fake: VideoSet,
    model: nn.Module,
    cfg: FVDConfig | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> FVDResult:
    """FVD between two video sets (see the module docstring)."""
    cfg = cfg or FVDConfig()
    cfg.validate()
    sets = [set_features(s, model, cfg, cache_dir) for s in (real, fake)]
    notes = []
    for name, s, f in zip(("real", "fake"), (real, fake), sets, strict=True):
        if len(f.features) < 2:
            raise ValueError(
                f"{name} set {s.spec} has {len(f.features)} clip(s) of >= {cfg.frames} frames; "
                "FVD needs at least 2"
            )
        if len(f.features) < MIN_CLIPS:
            notes.append(
                f"{name} set has {len(f.features)} clips (< {MIN_CLIPS}): the covariance is "
                "singular and FVD is biased upwards; compare only at equal clip counts"
            )
        if f.skipped_short:
            notes.append(f"{name} set: {f.skipped_short} video(s) shorter than {cfg.frames} frames")
    fvd = frechet_distance(*gaussian_stats(sets[0].features), *gaussian_stats(sets[1].features))
    extracted = [f for f in sets if not f.cached]
    seconds = sum(f.seconds for f in extracted)
    speed = sum(len(f.features) for f in extracted) / seconds if extracted and seconds else None
    return FVDResult(
        fvd, real.spec, fake.spec, len(sets[0].features), len(sets[1].features), cfg, speed, notes
    )
