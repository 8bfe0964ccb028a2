"""Held-out quality of a world model (tokenizer + latent actions + dynamics) on frame shards.

Every clip is tokenised on the fly; frame 0 is the one prompt frame and the dynamics generates
frames 1..H (H = `horizon`). Reported, as PSNR against the real frames (pixels in [-1, 1]):
next-frame PSNR (real tokens as context), the PSNR-vs-horizon curve of autoregressive rollouts
with the clip's true actions, with LAM-inferred latent actions and with uniformly random actions,
the copy-the-last-frame baseline (a model that loses to it has learned nothing), the tokenizer's
own reconstruction as the ceiling, Genie's ΔtPSNR at t = 4 and how often each latent action is
used. `worldsim eval world` writes `report.json`, `psnr_vs_horizon.png`, `latent_actions.png`.

References: Bruce et al. 2024, "Genie: Generative Interactive Environments" (ΔtPSNR).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from data_pipeline.loader import Batch, LoaderConfig, ShardLoader
from simulator.dynamics import ActionInputs, DynamicsModel
from simulator.evaluation.actions import (
    ACTION_DRAW,
    LAM,
    RANDOM,
    TRUE,
    Conditioning,
    action_sources,
    generator_for,
)
from simulator.evaluation.figures import write_action_sheet, write_psnr_plot
from simulator.evaluation.metrics import (
    CurveMeter,
    delta_t_psnr,
    entropy_bits,
    frame_psnr_per_frame,
    mutual_information_bits,
)
from simulator.lam import LatentActionModel
from simulator.sampling import (
    SamplingConfig,
    commit_frame,
    prefill_cache,
    rollout_tokens,
    sample_next_frame,
    sample_next_frame_cached,
)
from tokenizer.model import VideoTokenizer
from worldsim.nn.kv_cache import window_start

TOKENIZER, COPY = "tokenizer", "copy_last_frame"
CURVES = (TOKENIZER, COPY, TRUE, LAM, RANDOM)  # report and plot order


@dataclass
class WorldEvalConfig:
    horizon: int = 15  # frames generated after the one prompt frame: 16-frame CoinRun clips
    delta_t: int = 4  # the generated frame Genie's ΔtPSNR compares
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    seed: int = 0  # every rollout of batch i uses generator seed (seed, i): lam vs random share it
    max_batches: int | None = None  # None: the whole split
    device: str = "cpu"
    # Dynamics KV caches (a step costs one frame, ~8x faster at a 16-frame context); False
    # re-runs every window, the reference path (models without caches, e.g. test fakes).
    kv_cache: bool = True

    def validate(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"world eval: horizon must be >= 1, got {self.horizon}")
        if not 1 <= self.delta_t <= self.horizon:
            raise ValueError(
                f"world eval: delta_t must lie in 1..horizon ({self.horizon}), got {self.delta_t}"
            )


@dataclass
class WorldReport:
    clips: int
    horizon: int
    conditioning: list[str]  # action inputs the dynamics takes: latent, discrete, continuous
    sampling: dict[str, Any]
    seed: int
    next_frame_psnr_db: float  # real tokens of frames < t as context, frame t sampled, t=1..H
    next_frame_copy_psnr_db: float  # frame t-1's tokens again as the guess for frame t
    tokenizer_psnr_db: float  # reconstruction of frames 1..H: the ceiling of every curve
    curves: dict[str, list[float]]  # name -> mean PSNR (dB) of generated frame k, k = 1..H
    delta_t: int
    delta_t_psnr_db: float | None  # primary actions minus random actions at frame delta_t
    delta_t_actions: str | None  # "latent" (Genie: LAM vs uniform) or "discrete" (true vs uniform)
    num_latent_actions: int
    latent_action_counts: list[int]  # LAM codes over every transition of the evaluated clips
    # What latent actions say about the clips' true discrete actions (None without them):
    # I(latent; true) in bits, and H(true), its ceiling.
    latent_true_mutual_info_bits: float | None = None
    true_action_entropy_bits: float | None = None
    tokenizer: str = ""
    lam: str = ""
    dynamics: str = ""
    shards: str = ""
    split: str = ""

    def plot_title(self) -> str:
        title = f"PSNR vs horizon: {self.clips} clips"
        if self.delta_t_psnr_db is not None:
            title += f", delta-t PSNR (t={self.delta_t}) {self.delta_t_psnr_db:+.2f} dB"
        return title

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> WorldReport:
        data = json.loads(text)
        try:
            return cls(**data)
        except TypeError as err:  # missing or unknown fields
            raise ValueError(f"not a world-model report: {err}") from err

    def render(self) -> str:
        s = self.sampling
        lines = [
            f"world model {self.dynamics} on {self.shards} [{self.split}]: {self.clips} clips, "
            f"{self.horizon}-frame rollouts from 1 prompt frame",
            f"  conditioning {'+'.join(self.conditioning)}; sampling {s.get('steps')} steps, "
            f"temperature {s.get('temperature')}, {s.get('schedule')}, {s.get('order')} order; "
            f"seed {self.seed}",
            f"  next-frame PSNR {self.next_frame_psnr_db:.2f} dB (copy last frame "
            f"{self.next_frame_copy_psnr_db:.2f} dB, tokenizer ceiling "
            f"{self.tokenizer_psnr_db:.2f} dB)",
        ]
        marks = sorted({1, self.delta_t, self.horizon // 2, self.horizon} - {0})
        lines.append("  rollout PSNR (dB) at frame " + " / ".join(map(str, marks)) + ":")
        for name, curve in self.curves.items():
            values = " / ".join(f"{curve[k - 1]:.2f}" for k in marks)
            lines.append(f"    {name:<16} {values}")
        if self.delta_t_psnr_db is not None:
            lines.append(
                f"  ΔtPSNR (t={self.delta_t}, {self.delta_t_actions} actions vs uniformly "
                f"random): {self.delta_t_psnr_db:+.2f} dB"
            )
        if self.latent_true_mutual_info_bits is not None:
            lines.append(
                f"  latent actions carry {self.latent_true_mutual_info_bits:.2f} bits about the "
                f"true actions (whose entropy is {self.true_action_entropy_bits:.2f} bits)"
            )
        total = max(1, sum(self.latent_action_counts))
        use = ", ".join(f"{a}: {n / total:.0%}" for a, n in enumerate(self.latent_action_counts))
        lines.append(f"  latent action use over {total} transitions: {use}")
        lines += [f"  WARNING: {name} {w}" for name, w in self.warnings().items()]
        return "\n".join(lines)

    def warnings(self) -> dict[str, str]:
        """Curves that lose to copying the prompt frame on average over the horizon."""
        copy = sum(self.curves[COPY]) / self.horizon
        return {
            name: f"loses to copy-the-last-frame ({sum(c) / self.horizon:.2f} vs {copy:.2f} dB)"
            for name, c in self.curves.items()
            if name in (TRUE, LAM) and sum(c) / self.horizon < copy
        }


def next_frame_psnr(
    tokenizer: VideoTokenizer,
    dynamics: DynamicsModel,
    tokens_BThw: Tensor,
    frames_BTCHW: Tensor,
    actions: ActionInputs,
    cfg: WorldEvalConfig,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """PSNR (B, T-1) of frame t sampled from the real tokens of frames < t, t = 1..T-1, and of
    the copy-the-last-frame guess. The decoder (and with `cfg.kv_cache` the dynamics) caches
    the real frames; each guess is decoded after them. Windows jump as in `rollout_tokens`."""
    hop, t_total = dynamics.cfg.max_frames // 2, tokens_BThw.shape[1]
    model_psnr: list[Tensor] = []
    copy_psnr: list[Tensor] = []
    cache, cache_start = None, -1
    decoder = tokenizer.decode_start(tokens_BThw[:, :1])[1]
    for t in range(1, t_total):
        start = window_start(t, dynamics.cfg.max_frames, hop)
        window, context_BThw = actions.window(start, t), tokens_BThw[:, start:t]
        if not cfg.kv_cache:
            pred_Bhw = sample_next_frame(dynamics, context_BThw, window, cfg.sampling, generator)
        else:
            if cache is None or start != cache_start:
                cache, cache_start = prefill_cache(dynamics, context_BThw, window), start
            pred_Bhw = sample_next_frame_cached(dynamics, cache, window, cfg.sampling, generator)
            if t + 1 < t_total:
                cache = commit_frame(dynamics, cache, tokens_BThw[:, t], window)
        target = frames_BTCHW[:, t : t + 1]
        for guess, out in ((pred_Bhw, model_psnr), (tokens_BThw[:, t - 1], copy_psnr)):
            frame_B1CHW = tokenizer.decode_step(guess, decoder)[0][:, None]
            out.append(frame_psnr_per_frame(frame_B1CHW, target))
        decoder = tokenizer.decode_step(tokens_BThw[:, t], decoder)[1]
    return torch.cat(model_psnr, dim=1), torch.cat(copy_psnr, dim=1)


def _check_clip_length(frames_BTCHW: Tensor, horizon: int) -> None:
    length = frames_BTCHW.shape[1]
    if length < horizon + 1:
        raise ValueError(
            f"clips have {length} frames; a {horizon}-frame rollout from one prompt frame needs "
            f"{horizon + 1} (lower the horizon or use longer clips)"
        )


class _Meters:
    """Every running mean of an evaluation."""

    def __init__(self) -> None:
        self.curves = {name: CurveMeter() for name in CURVES}
        self.next_frame, self.next_copy, self.delta = CurveMeter(), CurveMeter(), CurveMeter()


@torch.no_grad()
def evaluate_world(
    tokenizer: VideoTokenizer,
    dynamics: DynamicsModel,
    lam: LatentActionModel,
    loader: Iterable[Batch],
    cfg: WorldEvalConfig,
) -> WorldReport:
    """Score the three models together on the batches of `loader` (frame clips)."""
    cfg.validate()
    for model in (tokenizer, dynamics, lam):
        model.eval()
    cond = Conditioning.of(dynamics)
    meters = _Meters()
    counts = torch.zeros(lam.num_actions, dtype=torch.int64)
    pairs: list[Tensor] = []  # (N, 2) (latent id, true discrete id) of transitions
    for i, batch in enumerate(tqdm(loader, desc="eval world", unit="batch", disable=None)):
        if cfg.max_batches is not None and i >= cfg.max_batches:
            break
        _check_clip_length(batch.frames, cfg.horizon)
        frames = batch.frames[:, : cfg.horizon + 1].to(cfg.device)  # (B, H+1, C, H, W)
        latent = lam.encode(frames)  # (B, H)
        counts += torch.bincount(latent.flatten().cpu(), minlength=lam.num_actions)
        if bool(batch.action_mask.all()) and not batch.actions.is_floating_point():
            true = batch.actions[:, : cfg.horizon].to(latent.device)
            pairs.append(torch.stack([latent.flatten(), true.flatten()], dim=1).cpu())
        draw = generator_for(cfg.seed, i, "cpu", ACTION_DRAW)
        sources = action_sources(cond, batch, latent, cfg.horizon, draw)
        _score_batch(tokenizer, dynamics, frames, sources, cfg, i, meters)
    if meters.next_frame.clips == 0:
        raise ValueError("evaluation data yielded no clips")
    kind = "latent" if cond.latent is not None else "discrete"
    info = _action_information(pairs)
    return WorldReport(
        clips=meters.next_frame.clips,
        horizon=cfg.horizon,
        conditioning=cond.names,
        sampling=asdict(cfg.sampling),
        seed=cfg.seed,
        next_frame_psnr_db=_mean(meters.next_frame.mean()),
        next_frame_copy_psnr_db=_mean(meters.next_copy.mean()),
        tokenizer_psnr_db=_mean(meters.curves[TOKENIZER].mean()),
        curves={name: m.mean() for name, m in meters.curves.items() if m.clips},
        delta_t=cfg.delta_t,
        delta_t_psnr_db=meters.delta.mean()[0] if meters.delta.clips else None,
        delta_t_actions=kind if meters.delta.clips else None,
        num_latent_actions=lam.num_actions,
        latent_action_counts=counts.tolist(),
        latent_true_mutual_info_bits=info[0] if info else None,
        true_action_entropy_bits=info[1] if info else None,
    )


def _action_information(pairs: list[Tensor]) -> tuple[float, float] | None:
    """(I(latent; true), H(true)) in bits from (latent id, true id) pairs; None without any."""
    if not pairs:
        return None
    both = torch.cat(pairs)
    joint = torch.zeros(int(both[:, 0].max()) + 1, int(both[:, 1].max()) + 1, dtype=torch.int64)
    joint.index_put_((both[:, 0], both[:, 1]), torch.ones(len(both), dtype=torch.int64), True)
    return mutual_information_bits(joint), entropy_bits(joint.sum(0))


def _score_batch(
    tokenizer: VideoTokenizer,
    dynamics: DynamicsModel,
    frames_BTCHW: Tensor,
    sources: dict[str, ActionInputs],
    cfg: WorldEvalConfig,
    batch_index: int,
    meters: _Meters,
) -> None:
    """Add one batch of clips (B, H+1, C, H, W) to every meter."""
    h, real = cfg.horizon, frames_BTCHW[:, 1:]
    tokens = tokenizer.encode(frames_BTCHW)  # (B, H+1, h, w)
    meters.curves[TOKENIZER].add(frame_psnr_per_frame(tokenizer.decode(tokens)[:, 1:], real))
    copies = tokenizer.decode(tokens[:, :1].expand(-1, h + 1, -1, -1).contiguous())
    meters.curves[COPY].add(frame_psnr_per_frame(copies[:, 1:], real))
    videos = {}
    for name, actions in sources.items():
        # The same seed for every source: LAM and random rollouts differ only in their actions.
        gen = generator_for(cfg.seed, batch_index, cfg.device)
        rolled = rollout_tokens(
            dynamics, tokens[:, :1], actions, h, cfg.sampling, gen, kv_cache=cfg.kv_cache
        )
        videos[name] = tokenizer.decode(rolled)  # (B, H+1, C, H, W)
        meters.curves[name].add(frame_psnr_per_frame(videos[name][:, 1:], real))
    primary = LAM if LAM in sources else TRUE
    if RANDOM in videos:
        delta = delta_t_psnr(frames_BTCHW, videos[primary], videos[RANDOM], cfg.delta_t)
        meters.delta.add(torch.full((frames_BTCHW.shape[0], 1), delta))
    gen = generator_for(cfg.seed, batch_index, cfg.device)
    psnr, copy_psnr = next_frame_psnr(
        tokenizer, dynamics, tokens, frames_BTCHW, sources[primary], cfg, gen
    )
    meters.next_frame.add(psnr)
    meters.next_copy.add(copy_psnr)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def write_text_atomic(text: str, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def eval_world_command(
    tokenizer_path: str,
    lam_path: str,
    dynamics_path: str,
    shards: str,
    split: str = "test",
    out_dir: str | None = None,
    batch_size: int = 8,
    max_batches: int | None = None,
    cfg: WorldEvalConfig | None = None,
    sheet_rows: int = 4,
    sheet_steps: int = 4,
) -> int:
    """`worldsim eval world`: load the three checkpoints, check they fit together, evaluate on
    `shards` [split] and write report.json, psnr_vs_horizon.png and latent_actions.png to
    `out_dir` (default DYNAMICS/eval_SPLIT). `cfg.max_batches` is replaced by `max_batches`."""
    cfg = replace(cfg or WorldEvalConfig(), max_batches=max_batches)
    cfg.validate()
    cfg.sampling.validate()
    tokenizer = VideoTokenizer.from_pretrained(tokenizer_path).to(cfg.device)
    lam = LatentActionModel.from_pretrained(lam_path).to(cfg.device)
    dynamics = DynamicsModel.from_pretrained(dynamics_path).to(cfg.device)
    dynamics.check_compatible(tokenizer, lam)
    data = LoaderConfig(
        shards=shards, split=split, batch_size=batch_size, shuffle=False, num_workers=0
    )
    report = evaluate_world(tokenizer, dynamics, lam, ShardLoader(data, 0, 1), cfg)
    report.tokenizer, report.lam, report.dynamics = tokenizer_path, lam_path, dynamics_path
    report.shards, report.split = shards, split
    out = Path(out_dir) if out_dir else Path(dynamics_path) / f"eval_{split}"
    print(report.render())
    print(f"report: {write_text_atomic(report.to_json(), out / 'report.json')}")
    plot = write_psnr_plot(report.curves, report.plot_title(), out / "psnr_vs_horizon.png")
    print(f"plot: {plot}")
    cond = Conditioning.of(dynamics)
    if cond.latent is None and cond.discrete is None:
        print("no action sheet: the dynamics takes only continuous actions")
        return 0
    batch = next(iter(ShardLoader(replace(data, batch_size=sheet_rows), 0, 1)))
    sheet = write_action_sheet(
        tokenizer,
        dynamics,
        lam,
        batch.frames[:, : sheet_steps + 1].to(cfg.device),
        out / "latent_actions.png",
        true_actions=batch.actions if bool(batch.action_mask.all()) else None,
        steps=sheet_steps,
        sampling=cfg.sampling,
        seed=cfg.seed,
        usage=report.latent_action_counts if cond.latent is not None else None,
        kv_cache=cfg.kv_cache,
    )
    print(f"action sheet: {sheet}")
    return 0
