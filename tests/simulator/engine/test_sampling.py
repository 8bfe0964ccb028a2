"""MaskGIT sampling on the tiny dynamics model: schedules, determinism, every token filled,
greedy decoding, action alignment in rollouts, the sliding window, and bad options."""

from __future__ import annotations

import pytest
import torch

from simulator.engine.sampling import (
    SCHEDULES,
    SamplingConfig,
    masked_counts,
    rollout_tokens,
    sample_next_frame,
)
from simulator.models.dynamics import ActionInputs, DynamicsModel
from simulator.models.dynamics_config import dynamics_preset
from worldsim.nn.attention import set_query_by_query

B, G, CODES, LATENT = 2, 4, 125, 4
N = G * G


@pytest.fixture(scope="module")
def model() -> DynamicsModel:
    torch.manual_seed(0)
    model = DynamicsModel(dynamics_preset("tiny", action_sources=["latent"]))
    with torch.no_grad():  # code 0 is never sampled, so a 0 in a sample is a token left unfilled
        model.to_logits.bias[0] = -1e4
    return model.eval()


def context(t: int, seed: int = 0) -> tuple[torch.Tensor, ActionInputs]:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, CODES, (B, t, G, G), generator=gen)
    return tokens, ActionInputs(latent=torch.randint(0, LATENT, (B, t), generator=gen))


def sample(model: DynamicsModel, cfg: SamplingConfig, seed: int = 0, t: int = 3) -> torch.Tensor:
    tokens, actions = context(t)
    return sample_next_frame(model, tokens, actions, cfg, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("steps", [1, 2, 8, 25, 300])
def test_schedule_falls_every_step_and_ends_at_zero(schedule: str, steps: int) -> None:
    counts = masked_counts(steps, 256, schedule)
    assert len(counts) == steps and counts[-1] == 0 and counts[0] < 256
    assert all(a > b or a == 0 for a, b in zip([256, *counts], counts, strict=False))


def test_cosine_unmasks_few_tokens_first() -> None:
    cosine, linear = masked_counts(8, 256, "cosine"), masked_counts(8, 256, "linear")
    assert 256 - cosine[0] < 256 - linear[0]


@pytest.mark.parametrize("order", ["random", "confidence"])
@pytest.mark.parametrize("steps", [*range(1, N + 1), N + 5])
def test_every_token_is_filled(model: DynamicsModel, order: str, steps: int) -> None:
    frame = sample(model, SamplingConfig(steps=steps, order=order))
    assert frame.shape == (B, G, G) and frame.dtype == torch.long
    assert frame.min() >= 1 and frame.max() < CODES


def test_one_forward_pass_per_step(model: DynamicsModel, monkeypatch) -> None:
    calls = []
    transform = model.transform

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return transform(x)

    monkeypatch.setattr(model, "transform", counted)
    sample(model, SamplingConfig(steps=5))
    assert len(calls) == 5
    calls.clear()
    sample(model, SamplingConfig(steps=N + 5))  # one token per step at most N steps
    assert len(calls) == N


@pytest.mark.parametrize("order", ["random", "confidence"])
def test_deterministic_for_a_seed(model: DynamicsModel, order: str) -> None:
    cfg = SamplingConfig(steps=4, order=order, temperature=2.0)
    assert torch.equal(sample(model, cfg, seed=1), sample(model, cfg, seed=1))
    assert not torch.equal(sample(model, cfg, seed=1), sample(model, cfg, seed=2))


def test_greedy_single_step_is_the_argmax(model: DynamicsModel) -> None:
    tokens, actions = context(3)
    new = torch.cat([tokens, torch.zeros_like(tokens[:, :1])], dim=1)
    mask = torch.zeros_like(new, dtype=torch.bool)
    mask[:, -1] = True
    expected = model.logits(new, mask, actions).argmax(-1)[:, -1]
    assert torch.equal(sample(model, SamplingConfig(steps=1, temperature=0.0), seed=5), expected)


def test_rollout_keeps_the_prompt_and_follows_the_actions(model: DynamicsModel) -> None:
    tokens, actions = context(9)  # 2 prompt frames + 8 new ones need 9 actions
    prompt, cfg = tokens[:, :2], SamplingConfig(steps=3)
    rolled = rollout_tokens(model, prompt, actions, 8, cfg, torch.Generator().manual_seed(0))
    assert rolled.shape == (B, 10, G, G) and torch.equal(rolled[:, :2], prompt)
    # The first new frame is what sample_next_frame makes from the prompt with the same seed.
    first = sample_next_frame(
        model, prompt, actions.window(0, 2), cfg, torch.Generator().manual_seed(0)
    )
    assert torch.equal(rolled[:, 2], first)
    # The last action only leads to the last frame: every earlier frame stays the same.
    assert actions.latent is not None
    changed = actions.latent.clone()
    changed[:, -1] = (changed[:, -1] + 1) % LATENT
    other = rollout_tokens(
        model, prompt, ActionInputs(latent=changed), 8, cfg, torch.Generator().manual_seed(0)
    )
    assert torch.equal(other[:, :-1], rolled[:, :-1])


def test_rollout_past_max_frames_slides_a_window(model: DynamicsModel) -> None:
    tokens, actions = context(12)  # max_frames is 8: frames 8.. see only the last 7 frames
    rolled = rollout_tokens(
        model, tokens[:, :1], actions, 12, SamplingConfig(steps=2), torch.Generator()
    )
    assert rolled.shape == (B, 13, G, G) and rolled.min() >= 1


@pytest.mark.parametrize("hop", [1, 4])
def test_cached_rollout_gives_the_uncached_tokens(model: DynamicsModel, hop: int) -> None:
    set_query_by_query(model)  # the uncached path attends query by query, as the cache does
    tokens, actions = context(14)  # max_frames 8: the window jumps, the cache is rebuilt
    cfg = SamplingConfig(steps=3)
    rolled = [
        rollout_tokens(
            model, tokens[:, :2], actions, 13, cfg, torch.Generator().manual_seed(3), hop, cached
        )
        for cached in (False, True)
    ]
    assert torch.equal(rolled[0], rolled[1])


def test_bad_options_and_inputs_are_named(model: DynamicsModel) -> None:
    with pytest.raises(ValueError, match="schedule must be one of"):
        SamplingConfig(schedule="exp").validate()
    with pytest.raises(ValueError, match="order must be one of"):
        SamplingConfig(order="raster").validate()
    with pytest.raises(ValueError, match="steps must be >= 1.*temperature"):
        SamplingConfig(steps=0, temperature=-1).validate()
    tokens, actions = context(3)
    gen = torch.Generator()
    with pytest.raises(ValueError, match="latent actions: expected 3"):
        sample_next_frame(model, tokens, actions.window(0, 2), SamplingConfig(), gen)
    long_tokens, long_actions = context(8)
    with pytest.raises(ValueError, match="max_frames=8"):
        sample_next_frame(model, long_tokens, long_actions, SamplingConfig(), gen)
    with pytest.raises(ValueError, match="latent actions: expected 6"):
        rollout_tokens(model, tokens[:, :2], actions, 5, SamplingConfig(), gen)
    with pytest.raises(ValueError, match="'latent' actions"):
        sample_next_frame(model, tokens, ActionInputs(), SamplingConfig(), gen)


@pytest.fixture(scope="module")
def guidable() -> DynamicsModel:
    """The tiny model as if trained with action_dropout: guidance may contrast with no action."""
    torch.manual_seed(1)
    model = DynamicsModel(dynamics_preset("tiny", action_sources=["latent"], action_dropout=0.1))
    with torch.no_grad():
        model.action_embeds["latent"].weight.mul_(50)  # actions that visibly steer the logits
    return model.eval()


def new_frame_logits(model: DynamicsModel, actions: ActionInputs, free: bool) -> torch.Tensor:
    tokens, _ = context(3)
    new = torch.cat([tokens, torch.zeros_like(tokens[:, :1])], dim=1)
    mask = torch.zeros_like(new, dtype=torch.bool)
    mask[:, -1] = True
    x = model.embed(new, mask, actions, drop_last_action=free)
    return model.head(model.transform(x))[:, -1]


def test_guidance_extrapolates_from_the_action_free_logits(guidable: DynamicsModel) -> None:
    _, actions = context(3)
    cond, free = (new_frame_logits(guidable, actions, f) for f in (False, True))
    expected = (free + 3.0 * (cond - free)).argmax(-1).reshape(B, G, G)
    greedy = SamplingConfig(steps=1, temperature=0.0, guidance=3.0)
    got = sample_next_frame(guidable, context(3)[0], actions, greedy, torch.Generator())
    assert torch.equal(got, expected)
    assert not torch.equal(expected, cond.argmax(-1).reshape(B, G, G))  # guidance did something


def test_guidance_zero_ignores_the_new_frame_action(guidable: DynamicsModel) -> None:
    tokens, actions = context(3)
    assert actions.latent is not None
    other = actions.latent.clone()
    other[:, -1] = (other[:, -1] + 1) % LATENT
    cfg = SamplingConfig(steps=3, guidance=0.0)
    frames = [
        sample_next_frame(guidable, tokens, a, cfg, torch.Generator().manual_seed(0))
        for a in (actions, ActionInputs(latent=other))
    ]
    assert torch.equal(frames[0], frames[1])
    cfg.guidance = 1.0  # the plain conditional sampler does follow the action
    plain = [
        sample_next_frame(guidable, tokens, a, cfg, torch.Generator().manual_seed(0))
        for a in (actions, ActionInputs(latent=other))
    ]
    assert not torch.equal(plain[0], plain[1])


def test_guided_cached_rollout_gives_the_uncached_tokens(guidable: DynamicsModel) -> None:
    set_query_by_query(guidable)
    tokens, actions = context(14)
    cfg = SamplingConfig(steps=3, guidance=2.5)
    rolled = [
        rollout_tokens(
            guidable, tokens[:, :2], actions, 13, cfg, torch.Generator().manual_seed(3), 4, cached
        )
        for cached in (False, True)
    ]
    assert torch.equal(rolled[0], rolled[1])


def test_guidance_needs_a_model_trained_for_it(model: DynamicsModel) -> None:
    tokens, actions = context(3)
    with pytest.raises(ValueError, match="trained with action_dropout > 0"):
        sample_next_frame(model, tokens, actions, SamplingConfig(guidance=2.0), torch.Generator())
    with pytest.raises(ValueError, match="guidance must be finite and >= 0"):
        SamplingConfig(guidance=-1.0).validate()
