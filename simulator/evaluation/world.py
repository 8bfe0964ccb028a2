"""Held-out quality of a world (tokenizer + dynamics + optional LAM), scored through the engine.

Every clip is encoded; its frame 0 is the prompt, and the engine (`WorldSimulator`, the same
object players step) generates frames 1..H (H = `horizon`) with several action streams: the
clip's true actions and uniformly random true ones, the LAM's latent actions read from the clip
and uniformly random latent ones, as far as the dynamics takes them. Reported per generated
frame (the curves), as PSNR and SSIM against the real frames: every stream, copying the prompt
frame, and the tokenizer's own reconstruction (the ceiling). Also: Genie's ΔtPSNR at t = 4 for
latent and for true actions (identical samplers and seeds); teacher-forced next-frame prediction
(each frame sampled from the real past, which the engine `observe`s) against copying the last
frame, as mean and pooled PSNR, with its error split between the tokens that change (motion) and
those that stay (redrawing a still scene); with an IDM, the controllability score
(simulator.evaluation.controllability); with the I3D, FVD of the true-action rollouts against the
real clips. `worldsim eval world` writes report.json, a plot per metric and an mp4 grid.

References: Bruce et al. 2024, "Genie: Generative Interactive Environments" (ΔtPSNR).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from data_pipeline.loader import Batch
from simulator.engine.sampling_config import SamplingConfig
from simulator.engine.state import EngineConfig, WorldState
from simulator.engine.world_simulator import WorldSimulator
from simulator.evaluation.action_check import ShuffleMeter
from simulator.evaluation.actions import (
    ACTION_DRAW,
    COPY,
    LAM,
    RANDOM_LATENT,
    RANDOM_TRUE,
    TOKENIZER,
    TRUE,
    Conditioning,
    generator_for,
)
from simulator.evaluation.controllability import (
    GENERATED,
    KINDS,
    ONE_STEP,
    REAL,
    RECONSTRUCTED,
    meter_for,
)
from simulator.evaluation.fvd import frechet_distance, gaussian_stats, i3d_features
from simulator.evaluation.idm import InverseDynamicsModel
from simulator.evaluation.metrics import (
    MIN_MSE,
    CurveMeter,
    delta_t_psnr,
    entropy_bits,
    frame_psnr_per_frame,
    frame_ssim_per_frame,
    mutual_information_bits,
)
from simulator.evaluation.world_report import WorldReport
from simulator.models.dynamics import ActionInputs, DynamicsModel
from simulator.models.lam import LatentActionModel
from simulator.world.spec import WorldActionSpace, WorldSpec, discrete_space
from tokenizer.registry import AnyTokenizer
from worldsim.io.media import to_uint8_clips
from worldsim.io.progress import progress

# Stream -> the engine that plays it: "latent", or "true" (the game's discrete ids or its
# continuous controls, whichever the dynamics takes).
STREAMS = {LAM: "latent", RANDOM_LATENT: "latent", TRUE: "true", RANDOM_TRUE: "true"}
DELTA_T = {"latent": (LAM, RANDOM_LATENT), "true": (TRUE, RANDOM_TRUE)}  # steered vs random


@dataclass
class WorldEvalConfig:
    horizon: int = 15  # frames generated after the one prompt frame: 16-frame CoinRun clips
    delta_t: int = 4  # the generated frame Genie's ΔtPSNR compares
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    seed: int = 0  # the engines of batch i are reset with seed (seed, i): streams share it
    max_batches: int | None = None  # None: the whole split
    device: str = "cpu"
    kv_cache: bool = True  # False: the engine's uncached reference path
    fvd_clips: int = 0  # clips per set for FVD (needs the I3D); 0: no FVD

    def validate(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"world eval: horizon must be >= 1, got {self.horizon}")
        if not 1 <= self.delta_t <= self.horizon:
            raise ValueError(
                f"world eval: delta_t must lie in 1..horizon ({self.horizon}), got {self.delta_t}"
            )
        if self.fvd_clips and self.horizon + 1 < 9:
            raise ValueError(f"FVD needs clips of >= 9 frames; horizon {self.horizon} gives fewer")
        self.sampling.validate()


def world_engines(
    tokenizer: AnyTokenizer,
    dynamics: DynamicsModel,
    lam: LatentActionModel | None,
    cfg: WorldEvalConfig,
) -> dict[str, WorldSimulator]:
    """One engine per action source it can steer alone: "latent" (with a LAM to read the
    clip's latent actions) and "true" (discrete ids or continuous controls)."""
    cond = Conditioning.of(dynamics)
    if len(cond.names) > 1 and not cond.separable:
        raise ValueError(
            f"the dynamics needs {cond.names} actions together; the engine steers one source, "
            "so it evaluates models on one source or trained with source_dropout"
        )
    true = cond.discrete if cond.discrete is not None else cond.continuous
    sizes = {"latent": cond.latent if lam is not None else None, "true": true}
    engine_cfg = EngineConfig(sampling=cfg.sampling, kv_cache=cfg.kv_cache, device=cfg.device)
    n = cond.continuous or 0  # recorded controls are fed as they are: no range to enforce
    spaces = {  # the discrete space carries the game-id mapping of an effect-class model
        "latent": WorldActionSpace("latent", sizes["latent"] or 0),
        "true": discrete_space(dynamics)
        if cond.discrete is not None
        else WorldActionSpace("continuous", n, low=[-np.inf] * n, high=[np.inf] * n),
    }
    engines = {
        kind: WorldSimulator(
            tokenizer,
            dynamics,
            WorldSpec(spaces[kind], cfg.sampling),
            engine_cfg,
            lam if kind == "latent" else None,
        )  # fmt: skip
        for kind, n in sizes.items()
        if n is not None
    }
    if not engines:
        raise ValueError(f"nothing to steer: the dynamics takes {cond.names} actions")
    return engines


# The pooled next-frame errors: the sample, copying the last frame, and the sample with the
# real tokens where they stayed still / where they changed (`_error_sources`).
POOLED = {
    "model": "pooled_psnr",
    "copy": "copy_pooled_psnr",
    "still_kept": "pooled_psnr_still_kept",
    "motion_given": "pooled_psnr_motion_given",
}
SAMPLE_CLIPS = 4  # clips of the first batch kept for the rollouts video


@dataclass
class WorldEvaluation:
    report: WorldReport
    samples: dict[str, np.ndarray]  # "real" and each stream -> uint8 (N, H+1, H, W, 3) clips


class _Meters:
    def __init__(self, idm: InverseDynamicsModel | None, i3d: nn.Module | None) -> None:
        self.psnr: dict[str, CurveMeter] = {}
        self.ssim: dict[str, CurveMeter] = {}
        self.delta = {"latent": CurveMeter(), "true": CurveMeter()}
        self.next_frame = {k: CurveMeter() for k in ("psnr", "ssim", "copy_psnr", "copy_ssim")}
        self.sq_err = dict.fromkeys(POOLED, 0.0)  # next-frame squared errors, summed per frame
        self.frames = 0  # next frames scored
        self.tokens = dict.fromkeys(("positions", "changed", "hit_changed", "hit_still"), 0)
        self.control = meter_for(idm) if idm is not None else None
        self.shuffle = ShuffleMeter()  # the dynamics' loss with its own and shuffled actions
        self.i3d = i3d
        self.samples: dict[str, np.ndarray] = {}
        self.fvd: dict[str, list[np.ndarray]] = {"real": [], "fake": []}  # I3D features

    def add_curves(self, name: str, video_BTCHW: Tensor, real_BTCHW: Tensor) -> None:
        self.psnr.setdefault(name, CurveMeter()).add(frame_psnr_per_frame(video_BTCHW, real_BTCHW))
        self.ssim.setdefault(name, CurveMeter()).add(frame_ssim_per_frame(video_BTCHW, real_BTCHW))


@torch.no_grad()
def evaluate_world(
    tokenizer: AnyTokenizer,
    dynamics: DynamicsModel,
    lam: LatentActionModel | None,
    loader: Iterable[Batch],
    cfg: WorldEvalConfig,
    idm: InverseDynamicsModel | None = None,
    i3d: nn.Module | None = None,
) -> WorldEvaluation:
    """Score the world on the clips of `loader` (see the module docstring)."""
    cfg.validate()
    for model in (tokenizer, dynamics, lam, idm, i3d):
        if model is not None:
            model.eval()
    engines = world_engines(tokenizer, dynamics, lam, cfg)
    meters = _Meters(idm, i3d if cfg.fvd_clips else None)
    counts = torch.zeros(lam.num_actions if lam is not None else 0, dtype=torch.int64)
    pairs: list[Tensor] = []  # (N, 2) (latent id, true discrete id) of transitions
    for i, batch in enumerate(progress(loader, desc="eval world", unit="batch")):
        if cfg.max_batches is not None and i >= cfg.max_batches:
            break
        streams = _streams(engines, lam, batch, cfg, i)
        if LAM in streams:
            latent = streams[LAM].cpu()
            counts += torch.bincount(latent.flatten(), minlength=len(counts))
            if TRUE in streams:
                pairs.append(torch.stack([latent.flatten(), streams[TRUE].cpu().flatten()], 1))
        _score_batch(engines, batch, streams, cfg, i, meters)
    if not meters.psnr:
        raise ValueError("evaluation data yielded no clips")
    return WorldEvaluation(_report(meters, engines, cfg, counts, pairs), meters.samples)


def _streams(
    engines: dict[str, WorldSimulator],
    lam: LatentActionModel | None,
    batch: Batch,
    cfg: WorldEvalConfig,
    index: int,
) -> dict[str, Tensor]:
    """Stream name -> actions (B, H) for this batch's rollouts."""
    length = batch.frames.shape[1]
    if length < cfg.horizon + 1:
        raise ValueError(
            f"clips have {length} frames; a {cfg.horizon}-frame rollout from one prompt frame "
            f"needs {cfg.horizon + 1} (lower the horizon or use longer clips)"
        )
    b, h, out = batch.frames.shape[0], cfg.horizon, {}
    draw = generator_for(cfg.seed, index, "cpu", ACTION_DRAW)
    if "latent" in engines and lam is not None:
        out[LAM] = lam.encode(batch.frames[:, : h + 1].to(cfg.device))
        out[RANDOM_LATENT] = torch.randint(engines["latent"].action_space.n, (b, h), generator=draw)
    if "true" in engines:
        space = engines["true"].action_space
        kind_differs = batch.actions.is_floating_point() != space.continuous
        if not bool(batch.action_mask.all()) or kind_differs:
            missing = int((~batch.action_mask).sum())
            raise ValueError(
                f"the dynamics conditions on true {space.type} actions but batch "
                f"{batch.keys[:3]}... holds {missing} clips without actions, or "
                f"{'discrete' if space.continuous else 'continuous'} ones"
            )
        out[TRUE] = batch.actions[:, :h]
        if space.continuous:  # the next clip's controls: real, but not this clip's
            out[RANDOM_TRUE] = out[TRUE].roll(1, dims=0)
        else:
            out[RANDOM_TRUE] = torch.randint(space.n, (b, h), generator=draw)
    return out


def _score_batch(
    engines: dict[str, WorldSimulator],
    batch: Batch,
    streams: dict[str, Tensor],
    cfg: WorldEvalConfig,
    index: int,
    meters: _Meters,
) -> None:
    any_engine = next(iter(engines.values()))
    frames = batch.frames[:, : cfg.horizon + 1].to(any_engine.device)  # (B, H+1, C, H, W)
    real, h = frames[:, 1:], cfg.horizon
    # The actions between the real frames: a renderer told the controls reads them too.
    taken = batch.actions[:, :h].to(any_engine.device)
    tokens = any_engine.encode(frames, taken)
    reconstruct = any_engine.tokenizer.reconstruct  # what a perfect dynamics would show
    reconstructed = reconstruct(frames, tokens, taken)
    meters.add_curves(TOKENIZER, reconstructed[:, 1:], real)
    still = frames[:, :1].expand(-1, h, -1, -1, -1)
    meters.add_curves(COPY, reconstruct(still, actions=torch.zeros_like(taken)), real)
    seed = cfg.seed * 1_000_003 + index
    videos, steering = {}, _world_actions(engines, streams)
    for name, actions in steering.items():
        videos[name] = engines[STREAMS[name]].rollout(frames[:, :1], actions, seed=seed)
        meters.add_curves(name, videos[name][:, 1:], real)
    if not meters.samples:
        shown = {"real": frames, **videos}
        meters.samples = {k: to_uint8_clips(v[:SAMPLE_CLIPS]) for k, v in shown.items()}
    for kind, (steered, random) in DELTA_T.items():
        if steered in videos:
            delta = delta_t_psnr(frames, videos[steered], videos[random], cfg.delta_t)
            meters.delta[kind].add(torch.full((frames.shape[0], 1), delta))
    primary = TRUE if TRUE in streams else LAM
    commanded = streams[TRUE] if primary == TRUE else None  # what the IDM reads back
    _teacher_forced(
        engines[STREAMS[primary]], frames, tokens, steering[primary], seed, meters, commanded
    )
    source = engines[STREAMS[primary]].action_space.type  # the dynamics' input it steers
    own = ActionInputs(**{source: steering[primary].to(any_engine.device)})
    meters.shuffle.add(any_engine.dynamics, tokens, own, seed)
    if meters.control is not None and TRUE in videos:
        meters.control.add(GENERATED, videos[TRUE], streams[TRUE])
        meters.control.add(RECONSTRUCTED, reconstructed, streams[TRUE])
        meters.control.add(REAL, frames, streams[TRUE])
    left = cfg.fvd_clips - sum(map(len, meters.fvd["real"]))
    if meters.i3d is not None and left > 0:  # features now, so memory stays bounded
        for name, video in (("real", frames), ("fake", videos[primary])):
            clips = to_uint8_clips(video[:left])
            meters.fvd[name].append(i3d_features(iter(clips), meters.i3d, 8, desc=f"I3D {name}"))


def _world_actions(
    engines: dict[str, WorldSimulator], streams: dict[str, Tensor]
) -> dict[str, Tensor]:
    """The streams as the engines take them: a clip's true game ids become the world's actions
    (its effect classes, for a world steered by them); the IDM keeps reading the game ids."""
    out = dict(streams)
    if TRUE in out and not engines[STREAMS[TRUE]].action_space.continuous:
        out[TRUE] = engines[STREAMS[TRUE]].action_space.from_game(out[TRUE])
    return out


def _teacher_forced(
    engine: WorldSimulator,
    frames_BTCHW: Tensor,
    tokens_BThw: Tensor,
    actions_BH: Tensor,
    seed: int,
    meters: _Meters,
    commanded_BH: Tensor | None = None,
) -> None:
    """Frame t+1 sampled from the real frames 0..t (observed by the engine), against copying
    frame t: per-frame PSNR and SSIM, the squared errors for the pooled PSNR, where the
    sampled frame's error comes from (`_error_sources`) and, given the `commanded` true
    actions, the control the IDM reads from real frame t to it (ONE_STEP)."""
    state = engine.reset(frames_BTCHW[:, :1], seed=seed)
    guesses, copies = [], []
    for t in range(actions_BH.shape[1]):
        guess_BCHW, guessed = engine.step(state, actions_BH[:, t])
        guesses.append(guess_BCHW)
        if meters.control is not None and commanded_BH is not None:
            meters.control.add_pair(ONE_STEP, frames_BTCHW[:, t], guess_BCHW, commanded_BH[:, t], t)
        copies.append(state.frame_BCHW)
        real_Bhw = tokens_BThw[:, t + 1]
        _error_sources(
            engine, state, (guessed.tokens_BThw[:, -1], real_Bhw), guessed.actions_BA[:, -1],
            frames_BTCHW[:, t + 1], meters,
        )  # fmt: skip
        state = engine.observe(state, actions_BH[:, t], real_Bhw, frames_BTCHW[:, t + 1])[1]
    real = frames_BTCHW[:, 1:]
    for name, video in (("", torch.stack(guesses, 1)), ("copy_", torch.stack(copies, 1))):
        meters.next_frame[f"{name}psnr"].add(frame_psnr_per_frame(video, real).mean(1, True))
        meters.next_frame[f"{name}ssim"].add(frame_ssim_per_frame(video, real).mean(1, True))
        meters.sq_err["model" if not name else "copy"] += _squared_error(video, real)
    meters.frames += real.shape[0] * real.shape[1]


def _error_sources(
    engine: WorldSimulator,
    state: WorldState,
    sampled_and_real: tuple[Tensor, Tensor],
    action_B: Tensor,
    real_BCHW: Tensor,
    meters: _Meters,
) -> None:
    """Split the next frame's error between motion and stillness. Token counts: positions whose
    real token differs from the last frame's ("changed"), and the sampled token's exact hits on
    changed and on still positions. Two frames decoded after the same real past: the sample with
    the real tokens wherever they stayed still (what is left is the error on motion), and with
    the real tokens wherever they changed (the error of redrawing what stood still), each told
    the action taken (`action_B`, as the engine gave it) when the renderer reads controls."""
    sampled_Bhw, real_Bhw = sampled_and_real
    changed = real_Bhw != state.tokens_BThw[:, -1]
    hit = sampled_Bhw == real_Bhw
    hits = meters.tokens
    hits["positions"] += changed.numel()
    hits["changed"] += int(changed.sum())
    hits["hit_changed"] += int((hit & changed).sum())
    hits["hit_still"] += int((hit & ~changed).sum())
    mixes = {
        "still_kept": torch.where(changed, sampled_Bhw, real_Bhw),
        "motion_given": torch.where(changed, real_Bhw, sampled_Bhw),
    }
    for name, tokens_Bhw in mixes.items():
        frame_BCHW = engine.tokenizer.decode_step(tokens_Bhw, state.decoder, action=action_B)[0]
        meters.sq_err[name] += _squared_error(frame_BCHW[:, None], real_BCHW[:, None])


def _squared_error(video_BTCHW: Tensor, real_BTCHW: Tensor) -> float:
    """Per-frame mean squared errors, summed over the frames (for pooled PSNR)."""
    err = (video_BTCHW.float().clamp(-1, 1) - real_BTCHW.float()).pow(2).mean(dim=(2, 3, 4))
    return float(err.sum())


def _report(
    meters: _Meters,
    engines: dict[str, WorldSimulator],
    cfg: WorldEvalConfig,
    counts: Tensor,
    pairs: list[Tensor],
) -> WorldReport:
    any_engine = next(iter(engines.values()))
    next_frame = {k: m.mean()[0] for k, m in meters.next_frame.items()}
    for key, name in POOLED.items():
        mse = max(meters.sq_err[key] / meters.frames, MIN_MSE)
        next_frame[name] = 10 * float(np.log10(4.0 / mse))
    hits = meters.tokens
    still = hits["positions"] - hits["changed"]
    next_frame.update(
        changed_token_share=hits["changed"] / hits["positions"],
        changed_token_accuracy=hits["hit_changed"] / max(hits["changed"], 1),
        still_token_accuracy=hits["hit_still"] / max(still, 1),
    )
    info = _action_information(pairs)
    control = None
    if meters.control is not None and meters.control.agreement(GENERATED) is not None:
        control = {
            kind: asdict(a) for kind in KINDS
            if (a := meters.control.agreement(kind)) is not None
        }  # fmt: skip
    return WorldReport(
        clips=meters.psnr[TOKENIZER].clips,
        horizon=cfg.horizon,
        conditioning=Conditioning.of(any_engine.dynamics).names,
        sampling=asdict(cfg.sampling),
        seed=cfg.seed,
        psnr={name: m.mean() for name, m in meters.psnr.items()},
        ssim={name: m.mean() for name, m in meters.ssim.items()},
        next_frame=next_frame,
        delta_t=cfg.delta_t,
        delta_t_psnr={k: m.mean()[0] for k, m in meters.delta.items() if m.clips},
        latent_action_counts=counts.tolist(),
        latent_true_mutual_info_bits=info[0] if info else None,
        true_action_entropy_bits=info[1] if info else None,
        controllability=control,
        action_shuffle=meters.shuffle.result(),
        fvd=_fvd(meters.fvd, cfg.horizon + 1) if meters.fvd["real"] else None,
    )


def _fvd(features: dict[str, list[np.ndarray]], frames: int) -> dict[str, Any]:
    real, fake = (np.concatenate(features[k]) for k in ("real", "fake"))
    fvd = frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))
    return {"fvd": fvd, "clips": len(real), "frames": frames, "protocol": _fvd_protocol(len(real))}


def _fvd_protocol(clips: int) -> str:
    if clips >= 2048:
        return "standard (2048 clips)"
    return f"small: {clips} clips per set, not comparable to 2048-clip FVDs (biased upwards)"


def _action_information(pairs: list[Tensor]) -> tuple[float, float] | None:
    """(I(latent; true), H(true)) in bits from (latent id, true id) pairs; None without any."""
    if not pairs:
        return None
    both = torch.cat(pairs)
    joint = torch.zeros(int(both[:, 0].max()) + 1, int(both[:, 1].max()) + 1, dtype=torch.int64)
    joint.index_put_((both[:, 0], both[:, 1]), torch.ones(len(both), dtype=torch.int64), True)
    return mutual_information_bits(joint), entropy_bits(joint.sum(0))
