"""MaskGIT sampling of next frames from the dynamics model, uncached and KV-cached.

A new frame starts fully masked. Each of `steps` steps predicts every still-masked token at once,
samples a code for each, and keeps a schedule-determined number of them; the rest are masked again
for the next step. `rollout_tokens` repeats this frame after frame. Uncached, it re-runs the whole
context each step: the ground truth. With `kv_cache=True` it keeps the context's temporal
keys/values (`prefill_cache`, `sample_next_frame_cached`, `commit_frame`, which the interactive
engine in simulator/engine/world_simulator.py uses too) and runs the same `unmask_frame` loop on
cached logits, so a step costs one frame; with query-by-query attention
(`worldsim.nn.attention.set_query_by_query`) both give identical tokens. Worlds whose windows
differ in length (the app's players) sample and commit in one pass through
`sample_next_frames_cached` and `commit_frames`.

Unmasking order: "random" (the default) keeps uniformly chosen positions; "confidence" keeps the
sampled tokens the model was surest of, as in MaskGIT. On video, confidence order tends to copy the
previous frame (static background tokens are the most confident), which is why 1X's GENIE
defaults to random order in its open code.

References: Chang et al. 2022, "MaskGIT: Masked Generative Image Transformer" (schedules,
confidence order); Bruce et al. 2024, "Genie" (MaskGIT sampling of frames, temperature 1 on
CoinRun).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor

from simulator.engine.sampling_config import SCHEDULES, SamplingConfig
from simulator.models.dynamics import ActionInputs, DynamicsModel
from worldsim.nn.kv_cache import KVCache, activation_dtype, check_hop, window_start


def masked_counts(steps: int, num_tokens: int, schedule: str) -> list[int]:
    """Tokens still masked after each of `steps` steps: the schedule's share, but at least one
    fewer per step while any are left, and none after the last step."""
    counts, left = [], num_tokens
    for step in range(1, steps + 1):
        target = 0 if step == steps else math.floor(num_tokens * SCHEDULES[schedule](step / steps))
        left = max(min(target, left - 1), 0)
        counts.append(left)
    return counts


# The random stream of a sampler: one generator for every world in the batch, or one per world
# (WorldSimulator.step_many stacks worlds that each keep their own, so that a world's frames do
# not depend on which others it was stepped with).
Generators = torch.Generator | Sequence[torch.Generator]


def uniform(shape: tuple[int, ...], device: torch.device, generator: Generators) -> Tensor:
    """Uniform numbers of `shape` (B, ...): from the one generator, or row b from generator b,
    drawn exactly as a batch of one draws them."""
    if isinstance(generator, torch.Generator):
        return torch.rand(shape, device=device, generator=generator)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    row = (1, *shape[1:])
    return torch.cat([torch.rand(row, device=device, generator=g) for g in generator])


# (frame_BN, masked_BN) -> logits (B, N, num_codes) float of the new frame's tokens; masked
# positions of frame_BN hold placeholders the model must not see.
LogitsFn = Callable[[Tensor, Tensor], Tensor]


@torch.no_grad()
def sample_next_frame(
    model: DynamicsModel,
    context_BThw: Tensor,
    actions: ActionInputs,
    cfg: SamplingConfig,
    generator: Generators,
) -> Tensor:
    """Tokens (B, h, w) of the frame after `context_BThw` (T frames, T + 1 <= max_frames).

    `actions` cover the context: A == T, the last one leads to the new frame. Deterministic for a
    given generator state; the generator must live on the model's device."""
    cfg.validate()
    b, t = context_BThw.shape[:2]
    if t + 1 > model.cfg.max_frames:
        raise ValueError(
            f"context of {t} frames + the new one exceeds max_frames={model.cfg.max_frames}; "
            "rollout_tokens slides a window"
        )
    _check_action_count(actions, t, "one per context frame, the last leads to the new frame")

    def logits(frame_BN: Tensor, masked_BN: Tensor, free: bool) -> Tensor:
        return _new_frame_logits(model, context_BThw, frame_BN, masked_BN, actions, free)

    logits_fn = guided(logits, cfg.guidance, model)
    frame_BN = unmask_frame(logits_fn, b, model.grid**2, context_BThw.device, cfg, generator)
    return rearrange(frame_BN, "b (h w) -> b h w", h=model.grid)


def prefill_cache(model: DynamicsModel, tokens_BThw: Tensor, actions: ActionInputs) -> KVCache:
    """The temporal KV cache of a window of frames (B, T, h, w) from position 0; `actions` hold
    the window's T - 1 actions (or more; later ones are unused)."""
    x_BTND = model.embed(tokens_BThw, None, actions)
    b, _, n, _ = x_BTND.shape
    dtype = activation_dtype(x_BTND.device, model.to_logits.weight.dtype)
    cache = model.transformer.empty_cache(b * n, model.cfg.max_frames, dtype, x_BTND.device)
    return model.transformer.forward_cached(x_BTND, cache, commit=True)[1]


def sample_next_frame_cached(
    model: DynamicsModel,
    cache: KVCache,
    actions: ActionInputs,
    cfg: SamplingConfig,
    generator: Generators,
) -> Tensor:
    """`sample_next_frame` for the frame after the `cache.length` cached frames: tokens (B, h, w).
    `actions` are indexed from the window's first frame and hold A == cache.length."""
    return sample_next_frames_cached(model, [CachedWindow(cache, actions)], cfg, generator)


@dataclass(frozen=True)
class CachedWindow:
    """One group of worlds whose windows have the same length: their cache and actions (indexed
    from the window's first frame, A == cache.length: the last leads to the new frame)."""

    cache: KVCache
    actions: ActionInputs

    @property
    def position(self) -> int:  # the new frame's temporal position
        return self.cache.length


def sample_next_frames_cached(
    model: DynamicsModel,
    windows: Sequence[CachedWindow],
    cfg: SamplingConfig,
    generator: Generators,
) -> Tensor:
    """The next frame's tokens (B, h, w) of groups of worlds whose windows differ in length (the
    batch is the groups in order), sampled in one pass per MaskGIT step: each group is embedded at
    its own temporal position and attends over its own cache (STTransformer.forward_cached_many).
    With one generator per world, a world's tokens are those it samples alone."""
    g = model.grid
    for window in windows:
        why = "one per cached frame, the last leads to the new one"
        _check_action_count(window.actions, window.position, why)
        if window.position + 1 > model.cfg.max_frames:
            raise ValueError(f"{window.position} cached frames leave no room within max_frames")
    sizes = [_worlds(model, w.cache) for w in windows]
    caches = [w.cache for w in windows]

    def logits(frame_BN: Tensor, masked_BN: Tensor, free: bool) -> Tensor:
        new_B1hw = rearrange(frame_BN, "b (h w) -> b 1 h w", h=g)
        mask_B1hw = rearrange(masked_BN, "b (h w) -> b 1 h w", h=g)
        parts = zip(new_B1hw.split(sizes), mask_B1hw.split(sizes), windows, strict=True)
        x_B1ND = torch.cat(
            [model.embed(new, mask, w.actions, w.position, free) for new, mask, w in parts]
        )
        hidden_B1ND = model.transformer.forward_cached_many(x_B1ND, caches, commit=False)[0]
        return model.head(hidden_B1ND[:, 0]).float()

    device = caches[0].storage.keys[0].device
    logits_fn = guided(logits, cfg.guidance, model)
    frame_BN = unmask_frame(logits_fn, sum(sizes), g * g, device, cfg, generator)
    return rearrange(frame_BN, "b (h w) -> b h w", h=g)


def commit_frame(
    model: DynamicsModel, cache: KVCache, tokens_Bhw: Tensor, actions: ActionInputs
) -> KVCache:
    """`cache` extended by the final tokens (B, h, w) of its next frame."""
    return commit_frames(model, [CachedWindow(cache, actions)], tokens_Bhw)[0]


def commit_frames(
    model: DynamicsModel, windows: Sequence[CachedWindow], tokens_Bhw: Tensor
) -> list[KVCache]:
    """Each window's cache extended by its worlds' final tokens (rows of `tokens_Bhw` in the
    order of the windows), in one pass."""
    sizes = [_worlds(model, w.cache) for w in windows]
    x_B1ND = torch.cat(
        [
            model.embed(tokens[:, None], None, w.actions, start_frame=w.position)
            for tokens, w in zip(tokens_Bhw.split(sizes), windows, strict=True)
        ]
    )
    caches = [w.cache for w in windows]
    return model.transformer.forward_cached_many(x_B1ND, caches, commit=True)[1]


def _worlds(model: DynamicsModel, cache: KVCache) -> int:
    """Worlds in a dynamics cache: its buffer rows are their grid * grid token positions."""
    return cache.storage.keys[0].shape[0] // model.grid**2


# (frame_BN, masked_BN, free) -> logits as LogitsFn; free=True hides the new frame's action.
ActionLogitsFn = Callable[[Tensor, Tensor, bool], Tensor]


def guided(logits_fn: ActionLogitsFn, guidance: float, model: DynamicsModel) -> LogitsFn:
    """Classifier-free guidance on the actions: logits_free + guidance * (logits - logits_free).
    Guidance 1 is the plain conditional logits (one forward pass a step).

    References: Ho & Salimans 2022, "Classifier-Free Diffusion Guidance"."""
    model.cfg.check_guidance(guidance)
    if guidance == 1:
        return lambda frame_BN, masked_BN: logits_fn(frame_BN, masked_BN, False)

    def logits(frame_BN: Tensor, masked_BN: Tensor) -> Tensor:
        free_BNV = logits_fn(frame_BN, masked_BN, True)
        return free_BNV + guidance * (logits_fn(frame_BN, masked_BN, False) - free_BNV)

    return logits


def unmask_frame(
    logits_fn: LogitsFn,
    b: int,
    n: int,
    device: torch.device,
    cfg: SamplingConfig,
    generator: Generators,
) -> Tensor:
    """MaskGIT's loop over the n tokens (B, N) of one new frame: one `logits_fn` call per step.
    The KV-cached engine runs this same loop (same draws from `generator`) with cached logits."""
    frame_BN = torch.zeros(b, n, dtype=torch.long, device=device)
    masked_BN = torch.ones(b, n, dtype=torch.bool, device=device)
    left = n
    for target in masked_counts(cfg.steps, n, cfg.schedule):
        keep, left = left - target, target  # the same count for every clip
        if keep == 0:
            continue
        logits_BNV = logits_fn(frame_BN, masked_BN)
        if cfg.order == "confidence":
            sampled_BN, prob_BN = _draw(logits_BNV, cfg.temperature, generator)
            chosen_BK = prob_BN.masked_fill(~masked_BN, -math.inf).topk(keep, dim=1).indices
            sampled_BK = sampled_BN.gather(1, chosen_BK)
        else:  # pick the positions first, then draw codes only for them
            score_BN = uniform((b, n), device, generator)
            chosen_BK = score_BN.masked_fill(~masked_BN, -math.inf).topk(keep, dim=1).indices
            index_BKV = chosen_BK[..., None].expand(-1, -1, logits_BNV.shape[-1])
            sampled_BK = _draw(logits_BNV.gather(1, index_BKV), cfg.temperature, generator)[0]
        frame_BN.scatter_(1, chosen_BK, sampled_BK)  # decided tokens stay decided
        masked_BN.scatter_(1, chosen_BK, False)
    return frame_BN


@torch.no_grad()
def rollout_tokens(
    model: DynamicsModel,
    prompt_BThw: Tensor,
    actions: ActionInputs,
    num_frames: int,
    cfg: SamplingConfig,
    generator: Generators,
    hop: int | None = None,
    kv_cache: bool = False,
) -> Tensor:
    """The prompt followed by `num_frames` sampled frames: (B, T_prompt + num_frames, h, w).

    `actions` hold A == T_prompt + num_frames - 1 actions (action i follows frame i). Frame k is
    sampled in the window of frames [start, k], re-based so that its first frame sits at temporal
    position 0 as a training clip's does; when frame k would not fit max_frames, start jumps by
    `hop` frames (default max_frames // 2; `worldsim.nn.kv_cache.window_start`). `kv_cache`
    keeps the window's keys/values (rebuilt once per jump); the engine follows the same rule."""
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    t_prompt = prompt_BThw.shape[1] if prompt_BThw.ndim == 4 else 0
    if t_prompt < 1:
        raise ValueError(f"the prompt must be (B, T >= 1, h, w), got {tuple(prompt_BThw.shape)}")
    _check_action_count(actions, t_prompt + num_frames - 1, "prompt frames + num_frames - 1")
    max_frames = model.cfg.max_frames
    hop = max_frames // 2 if hop is None else hop
    check_hop(hop, max_frames)
    frames = list(prompt_BThw.unbind(dim=1))
    cache, cache_start = None, -1
    for k in range(t_prompt, t_prompt + num_frames):
        start = window_start(k, max_frames, hop)
        window = actions.window(start, k)
        if not kv_cache:
            context_BThw = torch.stack(frames[start:k], dim=1)
            frames.append(sample_next_frame(model, context_BThw, window, cfg, generator))
            continue
        if cache is None or start != cache_start:
            cache, cache_start = (
                prefill_cache(model, torch.stack(frames[start:k], 1), window),
                start,
            )
        frames.append(sample_next_frame_cached(model, cache, window, cfg, generator))
        if k + 1 < t_prompt + num_frames:
            cache = commit_frame(model, cache, frames[-1], window)
    return torch.stack(frames, dim=1)


def _new_frame_logits(
    model: DynamicsModel,
    context_BThw: Tensor,
    frame_BN: Tensor,
    masked_BN: Tensor,
    actions: ActionInputs,
    free: bool,
) -> Tensor:
    """Logits (B, h*w, num_codes) of the new frame; only its hidden states reach the head.
    `free` hides the action leading into it (guidance's action-free branch)."""
    g = model.grid
    new_B1hw = rearrange(frame_BN, "b (h w) -> b 1 h w", h=g)
    tokens_BThw = torch.cat([context_BThw, new_B1hw], dim=1)
    mask_BThw = torch.zeros_like(tokens_BThw, dtype=torch.bool)
    mask_BThw[:, -1] = rearrange(masked_BN, "b (h w) -> b h w", h=g)
    x_BTND = model.embed(tokens_BThw, mask_BThw, actions, drop_last_action=free)
    hidden_BTND = model.transform(x_BTND)
    return model.head(hidden_BTND[:, -1]).float()


def _draw(logits_BKV: Tensor, temperature: float, generator: Generators) -> tuple[Tensor, Tensor]:
    """A code per position and its probability under the untempered softmax. Codes are drawn
    by inverting the tempered CDF with one uniform number per position: the same distribution
    as torch.multinomial at a fraction of the random numbers, which dominated a CPU step."""
    probs_BKV = logits_BKV.softmax(dim=-1)
    if temperature == 0:
        sampled_BK = logits_BKV.argmax(dim=-1)
    else:
        cdf_BKV = (logits_BKV / temperature).softmax(dim=-1).cumsum(dim=-1)
        u_BK1 = uniform((*cdf_BKV.shape[:-1], 1), cdf_BKV.device, generator) * cdf_BKV[..., -1:]
        # right=True: the first code whose CDF exceeds u, so codes of zero mass are never drawn.
        sampled_BK = torch.searchsorted(cdf_BKV, u_BK1, right=True)[..., 0]
        sampled_BK = sampled_BK.clamp_max(logits_BKV.shape[-1] - 1)
    return sampled_BK, probs_BKV.gather(-1, sampled_BK[..., None])[..., 0]


def _check_action_count(actions: ActionInputs, expected: int, why: str) -> None:
    """Every action source given must hold exactly `expected` actions (off-by-one guard)."""
    if not isinstance(actions, ActionInputs):
        raise ValueError(f"actions must be an ActionInputs, got {type(actions).__name__}")
    for name, a in zip(("latent", "discrete", "continuous"), actions.as_tuple(), strict=True):
        if a is not None and (a.ndim < 2 or a.shape[1] != expected):
            got = a.shape[1] if a.ndim >= 2 else f"shape {tuple(a.shape)}"
            raise ValueError(f"{name} actions: expected {expected} ({why}), got {got}")
